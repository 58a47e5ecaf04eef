"""The command lines as a newcomer meets them: every bad flag or path is a one-line error before any
model is loaded, a rerun never destroys a run, Ctrl-C says what was saved.
pytest -q tests/test_cli.py"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import config
import eval as ev
import models
import sample
import toy
import train
from conftest import ROOT, kill_tree


def error_of(fn, argv, capsys):
    """The message of the SystemExit that fn(argv) must raise (argparse's usage error or our
    one-line error)."""
    with pytest.raises(SystemExit) as e:
        fn(argv)
    assert e.value.code not in (0, None)
    return str(e.value.code) + capsys.readouterr().err


SFT = [
    "--algo",
    "sft",
    "--task",
    "toy-arith",
    "--micro-batch",
    "4",
    "--n-train",
    "8",
    "--save-every",
    "2",
]


@pytest.mark.parametrize(
    "flags, says",
    [
        (
            ["--gen-length", "41", "--block-lengths", "10"],
            "--block-lengths 10: must be sizes that divide --gen-length 41",
        ),
        (["--steps", "0"], "--steps 0: must be >= 1"),
        (
            ["--steps", "7", "--block-lengths", "10"],
            "--steps 7: must be a multiple of every block count [4]",
        ),
        (["--group-size", "1"], "--group-size 1: must be >= 2"),
        (["--top-c", "0"], "--top-c 0: must be >= 1"),
        (["--micro-batch", "0"], "--micro-batch 0: must be >= 1"),
        (["--lr", "-1"], "--lr -1.0: must be > 0"),
        (["--temperature", "0"], "--temperature 0.0: must be > 0 (greedy rollouts"),
        (
            ["--task", "math500"],
            "--train-file is needed: --task math500 generates no training prompts",
        ),
        (["--task", "nonsense"], "argument --task: invalid choice: 'nonsense'"),
        (
            ["--task", "math500", "--train-file", "x.csv"],
            "--model toy: must be a model path or HF name",
        ),
        (["--mask-id", "-3"], "--mask-id -3: must be >= 0"),
    ],
)
def test_train_flags_fail_at_once_naming_the_flag(flags, says, capsys):
    assert says in error_of(train.main, flags, capsys)


def test_algorithm_defaults():
    """MDPO takes one optimiser step per batch of rollouts (paper: mu = 1); diffu-GRPO d1's mu (8
    countdown, 12 math)."""
    got = {
        (a, t): config.from_args(["--algo", a, "--task", t])
        for a in ("mdpo", "diffu-grpo")
        for t in ("toy-countdown", "toy-arith")
    }
    assert [got["mdpo", t].inner_steps for t in ("toy-countdown", "toy-arith")] == [1, 1]
    assert [got["diffu-grpo", t].inner_steps for t in ("toy-countdown", "toy-arith")] == [8, 12]
    assert (got["mdpo", "toy-countdown"].eps, got["diffu-grpo", "toy-countdown"].eps) == (0.2, 0.5)
    assert (
        got["mdpo", "toy-countdown"].format_score,
        got["diffu-grpo", "toy-countdown"].format_score,
    ) == (0.0, 0.1)
    paper = config.from_args(["--task", "math500", "--model", "m", "--train-file", "f"])
    assert (paper.beta, paper.lr, paper.steps, paper.gen_length, paper.inner_steps) == (
        0.08,
        7e-7,
        128,
        512,
        1,
    )
    assert paper.preset == "paper" and got["mdpo", "toy-arith"].preset == "toy"
    assert paper.activation_checkpointing and not got["mdpo", "toy-arith"].activation_checkpointing
    # an explicit flag wins over the preset, also when it repeats the dataclass default
    assert (
        config.from_args(
            ["--task", "math500", "--model", "m", "--train-file", "f", "--lr", "3e-05"]
        ).lr
        == 3e-5
    )
    small = config.from_args(
        ["--preset", "toy", "--task", "math500", "--model", "m", "--train-file", "f"]
    )
    assert (small.gen_length, small.steps) == (40, 16)


def test_help_shows_the_real_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping: argparse would break lines at hyphens
    with pytest.raises(SystemExit):
        config.from_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "[toy: 3e-05 (sft 0.002); paper: 7e-07 (sft 1e-05)]" in text  # --lr
    assert (
        "[default: 1 (diffu-grpo and cj-grpo 8 countdown, 12 math; igpo 4)]" in text
    )  # --inner-steps
    assert (
        "[toy: 10,40; paper: 128,512]" in text and "[default: 8]" in text
    )  # --block-lengths, --group-size


def test_train_world_size_checked_before_anything(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert "--prompts-per-update 8: must be a multiple of the 3 processes" in error_of(
        train.main, ["--prompts-per-update", "8"], capsys
    )


def test_model_paths_fail_at_once_naming_the_path(tiny, tmp_path, capsys):
    t0 = time.time()
    for fn, extra in (
        (train.main, []),
        (ev.main, ["--task", "toy-arith", "--out", str(tmp_path / "e")]),
    ):
        assert f"--model {tmp_path}/nope: no such model directory" in error_of(
            fn, ["--model", f"{tmp_path}/nope", *extra], capsys
        )
        said = error_of(fn, ["--model", str(tiny.parent), *extra], capsys)
        assert (
            f"--model {tiny.parent}: not a model directory (no config.json); "
            f"checkpoints below it: {tiny}" in said
        )
        assert "--mask-id 999: outside the vocabulary" in error_of(
            fn, ["--model", str(tiny), "--mask-id", "999", *extra], capsys
        )
    assert time.time() - t0 < 10  # no hub retries
    with pytest.raises(ValueError, match="no such model directory"):
        models.load_model(f"{tmp_path}/nope")
    (tmp_path / "weights.txt").write_text("x")
    for fn, extra in ((train.main, []), (sample.main, ["--prompt", "1"])):
        said = error_of(fn, ["--model", str(tmp_path / "weights.txt"), *extra], capsys)
        assert (
            f"--model {tmp_path / 'weights.txt'}: is a file; "
            "give the directory that holds config.json" in said
        )


def test_data_errors_are_one_line(tiny, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n")
    said = error_of(
        ev.main,
        [
            "--model",
            str(tiny),
            "--task",
            "toy-arith",
            "--data",
            str(tmp_path / "empty.jsonl"),
            "--out",
            str(tmp_path / "e"),
        ],
        capsys,
    )
    assert said.startswith("eval.py: error: ") and "empty.jsonl: no examples in the file" in said
    said = error_of(
        train.main,
        ["--model", str(tiny), "--task", "math500", "--train-file", str(tmp_path / "empty.jsonl")],
        capsys,
    )
    assert (
        said.startswith("train.py: error: ")
        and "no examples in the file" in said
        and "pre-filter" not in said
    )
    (tmp_path / "a-file").write_text(
        ""
    )  # an --out that cannot be created (works as root too, unlike chmod)
    said = error_of(
        train.main, ["--model", str(tiny), "--out", str(tmp_path / "a-file" / "run")], capsys
    )
    assert (
        said.startswith("train.py: error: ")
        and "--out " in said
        and "a-file/run: cannot write there" in said
    )
    said = error_of(train.main, ["--model", str(tiny), "--out", str(tmp_path / "a-file")], capsys)
    assert f"--out {tmp_path / 'a-file'}: is a file, not a directory" in said
    said = error_of(
        train.main, ["--out", str(tmp_path / "a-file" / "run")], capsys
    )  # the toy pipeline
    assert (
        "--out " in said and "base" not in said.split("--out")[0]
    )  # names the flag the user typed first


def test_eval_flags_fail_at_once(tiny, tmp_path, capsys):
    base = ["--model", str(tiny), "--task", "toy-arith", "--out", str(tmp_path / "e")]
    for flags, says in [
        (["--batch-size", "0"], "--batch-size 0: out of range"),
        (["--top-p", "0"], "--top-p 0.0: out of range"),
        (["--schedule", "wavy"], "--schedule wavy: choose from"),
        (["--remasking", "lcr,best"], "--remasking lcr,best: choose from"),
        (["--steps", "7"], "--steps 7 be a positive multiple"),
    ]:
        assert says in error_of(ev.main, base + flags, capsys)


def logged(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()[1:]]


def test_rerun_resumes_same_settings_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    train.main([*SFT, "--max-updates", "4", "--out", str(out)])
    assert [r["step"] for r in logged(out)] == [1, 2, 3, 4] and all(
        r["reward_failures"] == 0 for r in logged(out)
    )
    before = (out / "last" / "model.safetensors").read_bytes()
    train.main(
        [*SFT, "--max-updates", "4", "--out", str(out)]
    )  # the same command again: nothing to do
    assert [r["step"] for r in logged(out)] == [1, 2, 3, 4] and (
        out / "last" / "model.safetensors"
    ).read_bytes() == before
    said = error_of(
        train.main, [*SFT, "--max-updates", "4", "--lr", "1e-3", "--out", str(out)], capsys
    )
    assert f"--out {out} holds a run with other settings (--lr 0.002 there, 0.001 here)" in said
    assert "Pass --resume" in said and f"delete {out}" in said
    assert [r["step"] for r in logged(out)] == [1, 2, 3, 4] and (
        out / "last" / "model.safetensors"
    ).read_bytes() == before
    train.main(
        [*SFT, "--max-updates", "6", "--out", str(out), "--resume"]
    )  # continue with new settings
    assert [r["step"] for r in logged(out)] == [1, 2, 3, 4, 5, 6] and (out / "plot.png").exists()
    said = capsys.readouterr().out
    assert (
        f"results: {out / 'config.json'}, {out / 'log.jsonl'}, {out / 'last'}, {out / 'plot.png'}"
        in said
    )
    train.main(
        [*SFT, "--max-updates", "6", "--out", str(out), "--resume"]
    )  # finished: says so, trains nothing
    assert f"{out}: finished (sft, update 6 of 6); nothing to train" in capsys.readouterr().out


def test_a_checkpoint_whose_unpickling_would_run_code_is_refused(tmp_path, capsys):
    """trainer_state.pt is read with weights_only=True: a crafted pickle (here one that would create
    a marker file when unpickled) is refused with a one-line error naming the file, and its code
    never runs.
    """
    out = tmp_path / "run"
    train.main([*SFT, "--max-updates", "2", "--out", str(out)])
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save(
        {"step": 2, "pos": 0, "best": -1.0, "gen": [], "x": Payload()},
        out / "last" / "trainer_state.pt",
    )
    said = error_of(train.main, [*SFT, "--max-updates", "4", "--out", str(out), "--resume"], capsys)
    assert said.startswith(
        f"train.py: error: {out / 'last' / 'trainer_state.pt'}: not a trainer state"
    )
    assert "\n" not in said.strip() and not marker.exists()


@pytest.mark.slow
def test_ctrl_c_says_what_was_saved_and_how_to_continue(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, ROOT / "train.py", *SFT, "--max-updates", "400", "--out", out]
    proc = subprocess.Popen(
        [str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "last" / "trainer_state.pt").exists():
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        kill_tree(proc.pid, grace_s=0)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    step = checkpoint.saved_step(out / "last")
    assert (
        f"interrupted: {out / 'last'} holds update {step}; run the same command again to continue"
        in stdout + stderr
    )


def test_ctrl_c_inside_a_save_is_held_until_the_checkpoint_is_whole(tmp_path, monkeypatch):
    """The CLI test above cannot choose when its SIGINT lands; here it lands inside the collective
    save (DCP would otherwise turn it into a failed save and exit 1): the checkpoint is finished,
    then Ctrl-C is raised.
    """
    torch.manual_seed(0)
    model, tok = toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32)), toy.ToyTokenizer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    real_save = checkpoint.dcp.save

    def save_hit_by_ctrl_c(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the signal is delivered here, mid-save
        return real_save(*a, **kw)

    monkeypatch.setattr(checkpoint.dcp, "save", save_hit_by_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path / "last", model, tok, optimizer, {"step": 7}, rank=0)
    assert signal.getsignal(signal.SIGINT) is handler
    assert checkpoint.latest(tmp_path) == tmp_path / "last" and not (tmp_path / "last.tmp").exists()
    fresh = toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32))
    assert (
        checkpoint.load(tmp_path / "last", fresh, torch.optim.AdamW(fresh.parameters()))["step"]
        == 7
    )
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values())
    )


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--prompt", "  "], "--prompt '  ': must be a non-empty text"),
        (
            ["--gen-length", "41", "--block-length", "10"],
            "--block-length 10: must be a size that divides --gen-length 41",
        ),
        (["--steps", "0"], "--steps 0: must be a positive multiple of the 1 blocks"),
        (
            ["--steps", "7", "--block-length", "10"],
            "--steps 7: must be a positive multiple of the 4 blocks",
        ),
        (["--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
        (["--temperature", "-1"], "--temperature -1.0: must be >= 0"),
        (["--mask-id", "999"], "--mask-id 999: outside the vocabulary"),
        (["--prompt", "nums 3 5 7 -> 22 \\u00e9"], "not in the vocabulary"),
    ],
)
def test_sample_flags_fail_at_once_naming_the_flag(flags, says, tiny, capsys):
    argv = ["--model", str(tiny), "--prompt", "nums 3 5 7 -> 22", *flags]
    argv = [a.encode().decode("unicode_escape") for a in argv]
    assert says in error_of(sample.main, argv, capsys)
