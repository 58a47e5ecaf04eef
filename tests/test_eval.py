"""eval.py: data loading and its errors, over-denoising statistics, evaluate() and the CLI end to
end.

Run: pytest -q tests/test_eval.py   (CPU, about 20 s)
"""

import csv
import json
import os
import random
import sys
from types import SimpleNamespace

import pytest
import torch

import eval as ev
import models
import overdenoise
import rewards
import sample
import tasks
import toy
from conftest import DATA, ROOT, run_bounded


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The toy model is tiny: one thread is faster, and far faster when another process holds the
    cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def checkpoint(tiny):
    """conftest's tiny toy model, as the path string the CLIs take."""
    return str(tiny)


class OverDenoiser(torch.nn.Module):
    """A scripted MDLM that over-denoises: while more than half of the completion is masked it
    predicts "<answer>1+2+3</answer>", afterwards "<answer>1+2-3</answer>". The second '+'
    (completion offset 4) gets a low logit, so confidence remasking reveals it last, in the late
    phase, as '-'."""

    def __init__(self, tok, gen_length):
        super().__init__()
        self.anchor = torch.nn.Parameter(
            torch.zeros(1)
        )  # only so that evaluate() can find the device
        self.config = SimpleNamespace(mask_token_id=tok.mask_token_id)
        self.tok, self.L = tok, gen_length
        pad = lambda ids: ids + [tok.eos_token_id] * (gen_length - len(ids))  # noqa: E731
        self.early = torch.tensor(pad(tok.encode("<answer>1+2+3</answer>")))  # (L,)
        self.late = torch.tensor(pad(tok.encode("<answer>1+2-3</answer>")))  # (L,)

    def forward(self, input_ids, attention_mask=None):
        B, S = input_ids.shape
        late = ((input_ids[:, -self.L :] == self.tok.mask_token_id).sum(1) <= self.L // 2)[
            :, None
        ]  # (B, 1)
        target = torch.where(late, self.late, self.early)  # (B, L)
        height = torch.full((B, self.L), 10.0)
        height[:, 4] = 2.0  # softmax ~ e^2 / (e^2 + V - 1) ~ 0.11 against ~ 0.997 elsewhere
        logits = torch.zeros(B, S, self.tok.vocab_size)  # (B, S, V)
        logits[:, -self.L :].scatter_(-1, target[..., None], height[..., None])
        return SimpleNamespace(logits=logits)


SOLVABLE = {"prompt": "nums 1 2 3 -> 6", "numbers": [1, 2, 3], "target": 6}  # 1+2+3 = 6, 1+2-3 = 0
UNSOLVABLE = {
    "prompt": "nums 1 2 4 -> 7",
    "numbers": [1, 2, 4],
    "target": 7,
}  # "1+2+3" uses a 3 it lacks


# ----------------------------------------------------------------------------- data
def test_load_shared_files():
    if not DATA.exists():
        pytest.skip(f"{DATA} not found (the shared data folder sits next to the repository)")
    math500 = tasks.load_examples("math500")
    first = json.loads((DATA / "math500_test.jsonl").read_text().splitlines()[0])
    assert len(math500) == 500 and math500[0] == {
        "prompt": first["problem"],
        "answer": first["answer"],
    }
    countdown = tasks.load_examples("countdown", limit=3)
    assert (
        countdown[0]["numbers"] == [30, 100, 93]
        and countdown[0]["target"] == 23
        and len(countdown) == 3
    )
    assert countdown[0]["prompt"] == "Numbers: [30, 100, 93]\nTarget: 23"
    train = tasks.load_examples("math", DATA / "math_overdenoising_llada_epoch1.csv")
    assert len(train) == 2840 and train[0]["answer"] == "7" and train[5]["answer"] == "\\frac{1}{2}"
    # the CSV's problems already end with the instruction; MATH-500's get it after a newline
    assert tasks.prompt_texts("math", train[:1]) == [train[0]["prompt"]]
    assert tasks.prompt_texts("math500", math500[:1]) == [
        first["problem"] + "\n" + tasks.MATH_INSTRUCTION
    ]


def test_prompts_and_toy_examples():
    examples = tasks.load_examples("toy-arith", limit=5, seed=3)
    assert examples == toy.make_task("toy-arith", 5, 3, "test")
    assert tasks.prompt_texts("toy-arith", examples) == [ex["prompt"] for ex in examples]


class RecordingChatTokenizer:
    """A tokenizer with a chat template that records the messages it is given."""

    chat_template, pad_token_id, eos_token_id = "yes", 0, 2

    def __init__(self):
        self.messages = []

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        self.messages.append(messages)
        return "x"

    def encode(self, text, add_special_tokens=False):
        return [5]


def test_authors_protocol_user_turn_only_and_their_countdown_prompt():
    """The authors' evaluation: one user turn (no system turn) holding the instruction; their
    countdown wording."""
    cd = (
        tasks.load_examples("countdown", limit=1)
        if DATA.exists()
        else [tasks._example({"input": "30,100,93", "output": "23"}, "countdown", "x")]
    )
    assert cd[0]["prompt"] == "Numbers: [30, 100, 93]\nTarget: 23"
    text = tasks.prompt_texts("countdown", cd)[0]
    assert text == tasks.COUNTDOWN_INSTRUCTION + "\n\nNumbers: [30, 100, 93]\nTarget: 23"
    assert text.startswith("Using only the provided numbers, create an arithmetic expression")
    tok = RecordingChatTokenizer()
    models.encode_prompts(tok, [text, "What is 1+1?\n" + tasks.MATH_INSTRUCTION])
    assert [[m["role"] for m in ms] for ms in tok.messages] == [["user"], ["user"]]


def test_completion_texts_are_not_cut_at_eos(tok):
    ids = torch.tensor(
        [tok.encode("<answer>1</answer>") + [tok.eos_token_id] + tok.encode("<answer>2</answer>")]
    )
    assert tasks.completion_texts(tok, ids) == ["<answer>1</answer><answer>2</answer>"]
    x_pred = torch.stack([ids, ids])  # (T=2, N=1, L)
    assert tasks.step_texts(tok, x_pred) == [["<answer>1</answer><answer>2</answer>"] * 2]


def test_malformed_jsonl_names_file_line_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    ok = '{"problem": "1+1?", "answer": "2"}'
    cases = [  # (task, lines of the file, expected message)
        (
            "math500",
            [ok, "", '{"problem": "2+2?"}'],
            'bad.jsonl:3: missing "answer"',
        ),  # blank lines count
        ("math500", [ok, '{"problem": '], "bad.jsonl:2: not valid JSON"),
        ("math500", ['["a list"]'], "bad.jsonl:1: expected a JSON object"),
        (
            "countdown",
            ['{"input": "1,x,3", "output": "4"}'],
            'bad.jsonl:1: "input" must be integers',
        ),
        (
            "countdown",
            ['{"input": "1,2,3", "output": "4"}', '{"input": "1,2,3"}'],
            'bad.jsonl:2: missing "output"',
        ),
        (
            "toy-countdown",
            ['{"prompt": "p", "numbers": [1, 2], "target": "six"}'],
            '"target" an integer',
        ),
        ("toy-arith", ['{"prompt": "p", "answer": ""}'], 'bad.jsonl:1: missing "answer"'),
    ]
    for task, lines, message in cases:
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(ValueError, match=message):
            tasks.load_examples(task, path)


def test_malformed_csv_names_the_line_where_the_record_starts(tmp_path):
    path = tmp_path / "bad.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "Problem", "Solution"])  # line 1
        w.writerow([0, "Two lines:\n1+1?", "2"])  # lines 2-3
        w.writerow([1, "Three\nlines\n2+2?", ""])  # lines 4-6, no Solution
    with pytest.raises(ValueError, match='bad.csv:4: missing "Solution"'):
        tasks.load_examples("math", path)
    path.write_text("question,gold\nx,y\n")
    with pytest.raises(ValueError, match="bad.csv:1: needs columns"):
        tasks.load_examples("math", path)
    path.write_text('problem,answer\n"1+1?",2\n')
    assert tasks.load_examples("math", path) == [{"prompt": "1+1?", "answer": "2"}]


def test_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no data file at {tmp_path / 'nope.jsonl'}"):
        tasks.load_examples("math500", tmp_path / "nope.jsonl")


# ------------------------------------------------------------------------ over-denoising statistics
def test_overdenoise_stats_by_hand():
    step_rewards = torch.tensor(
        [
            [0, 1, 1, 0],  # correct at steps 2-3, wrong at the end: over-denoised
            [0, 0, 0, 1],  # correct only at the end
            [1, 0, 1, 0],  # two separate correct spans, wrong at the end
            [0, 0, 0, 0],
        ]
    ).float()
    assert overdenoise.overdenoised(step_rewards).tolist() == [True, False, True, False]
    correct = step_rewards == 1.0
    assert overdenoise.longest_correct_span(correct).tolist() == [2, 1, 1, 0]
    assert overdenoise.n_correct_spans(correct).tolist() == [1, 1, 2, 0]
    # first correct step s (counted from 1) / T: row 0 -> 2/4, row 1 -> 4/4, row 2 -> 1/4; row 3
    # never
    assert overdenoise.first_correct_fraction(correct).tolist() == [0.5, 1.0, 0.25]
    st = overdenoise.overdenoise_stats(step_rewards)
    assert st["n"] == 4 and st["accuracy"] == 0.25  # only row 1 correct at the end
    assert st["any_step_accuracy"] == 0.75  # rows 0, 1, 2
    assert st["overdenoised_rate"] == 0.5  # = 0.75 - 0.25, Table 1's "+ w/ inter. ans"
    assert (
        st["longest_span"] == [2, 1] and st["mean_longest_span"] == 1.5
    )  # over-denoised rows 0 and 2
    assert st["n_spans"] == [1, 2] and st["mean_n_spans"] == 1.5


def test_overdenoise_edges():
    # d1's 0.1 (answer present but wrong) is not correct: only the 1.0 at step 2 counts
    assert overdenoise.overdenoised(torch.tensor([[0.1, 1.0, 0.1]])).tolist() == [True]
    # no row over-denoised
    st = overdenoise.overdenoise_stats(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    assert (
        st["overdenoised_rate"] == 0.0 and st["mean_longest_span"] != st["mean_longest_span"]
    )  # nan
    assert overdenoise.longest_correct_span(torch.ones(1, 5, dtype=torch.bool)).tolist() == [5]
    assert overdenoise.n_correct_spans(torch.zeros(1, 1, dtype=torch.bool)).tolist() == [0]


def test_spans_match_a_plain_loop():
    gen = torch.Generator().manual_seed(0)
    correct = torch.rand(64, 17, generator=gen) < 0.5

    def runs(row):  # lengths of the runs of True
        out, n = [], 0
        for c in row + [False]:
            if c:
                n += 1
            elif n:
                out, n = out + [n], 0
        return out

    expected = [runs(row) for row in correct.tolist()]
    longest = overdenoise.longest_correct_span(correct).tolist()
    assert longest == [max(r, default=0) for r in expected]
    assert overdenoise.n_correct_spans(correct).tolist() == [len(r) for r in expected]


# ----------------------------------------------------------------------------- evaluate()
def test_evaluate_scripted_overdenoising(tok):
    """Pure-Diff, 16 tokens in 8 steps (2 per step): 16, 14, 12, 10 masked -> early phase,
    x_pred = 1+2+3; 8, 6, 4, 2 masked -> late phase, x_pred = 1+2-3, and offset 4 is revealed only
    at the last step.
    """
    model = OverDenoiser(tok, 16)
    rows = ev.evaluate(
        model,
        tok,
        [SOLVABLE, UNSOLVABLE],
        "toy-countdown",
        gen_length=16,
        block_length=16,
        steps=8,
        remasking="lcr",
        mask_id=tok.mask_token_id,
        trajectory=True,
        progress=False,
    )
    assert [r["completion"] for r in rows] == ["<answer>1+2-3</answer>"] * 2
    assert [(r["reward"], r["correct"]) for r in rows] == [
        (0.0, False),
        (0.0, False),
    ]  # binary reward
    assert rows[0]["step_rewards"] == pytest.approx([1.0] * 4 + [0.0] * 4)
    assert rows[1]["step_rewards"] == pytest.approx([0.0] * 8)  # wrong numbers at every step
    assert overdenoise.overdenoised(torch.tensor([r["step_rewards"] for r in rows])).tolist() == [
        True,
        False,
    ]
    rows = ev.evaluate(
        model,
        tok,
        [SOLVABLE],
        "toy-countdown",
        gen_length=16,
        block_length=16,
        steps=8,
        mask_id=tok.mask_token_id,
        trajectory=True,
        progress=False,
        format_score=0.1,
    )  # d1's scheme
    assert rows[0]["reward"] == 0.1 and rows[0]["step_rewards"] == pytest.approx(
        [1.0] * 4 + [0.1] * 4
    )
    # semi-AR (2 blocks of 8): offset 4 is revealed within block 0, still in the early phase ->
    # correct
    rows = ev.evaluate(
        model,
        tok,
        [SOLVABLE],
        "toy-countdown",
        gen_length=16,
        block_length=8,
        steps=8,
        mask_id=tok.mask_token_id,
        progress=False,
    )
    assert rows == [{"completion": "<answer>1+2+3</answer>", "reward": 1.0, "correct": True}]


def test_evaluate_toy_model_rows_in_order(checkpoint):
    model, tok = models.load_model(checkpoint)
    examples = tasks.load_examples("toy-countdown", limit=5)
    kw = dict(
        gen_length=16,
        block_length=8,
        steps=8,
        remasking="rcr",
        mask_id=tok.mask_token_id,
        progress=False,
    )
    seen = []
    rows = ev.evaluate(
        model,
        tok,
        examples,
        "toy-countdown",
        batch_size=2,
        trajectory=True,
        on_batch=lambda start, batch: seen.append((start, len(batch))),
        **kw,
    )
    assert seen == [(0, 2), (2, 2), (4, 1)]
    alone = [ev.evaluate(model, tok, [ex], "toy-countdown", **kw)[0] for ex in examples]
    assert [r["completion"] for r in rows] == [
        r["completion"] for r in alone
    ]  # batching keeps the order
    for row, ex in zip(rows, examples):
        assert row["reward"] == rewards.reward("toy-countdown", row["completion"], ex)
        assert (
            len(row["step_rewards"]) == 8 and row["step_rewards"][-1] == row["reward"]
        )  # last x_pred = output


# ----------------------------------------------------------------------------- command line
def grid(checkpoint, out, *extra):
    return [
        "--model",
        checkpoint,
        "--task",
        "toy-countdown",
        "--limit",
        "8",
        "--gen-length",
        "16",
        "--block-length",
        "8,16",
        "--steps",
        "8,16",
        "--batch-size",
        "4",
        "--out",
        str(out),
        *([] if "--remasking" in extra else ["--remasking", "lcr,rcr"]),
        *extra,
    ]


def count_generated(monkeypatch):
    """Patch sample.generate to count the prompts it is given."""
    counter, real = [0], sample.generate
    monkeypatch.setattr(
        sample,
        "generate",
        lambda m, ids, **kw: counter.__setitem__(0, counter[0] + len(ids)) or real(m, ids, **kw),
    )
    return counter


def read_samples(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_parse_args_defaults():
    grid_of = lambda a: (a.gen_length, a.block_length, a.steps, a.limit)  # noqa: E731
    toy_args = ev.parse_args(["--model", "m", "--task", "toy-arith", "--out", "d"])
    assert grid_of(toy_args) == (40, [10, 40], [8, 16, 32], 200)
    paper = ev.parse_args(["--model", "org/LLaDA-8B-Instruct", "--task", "math500", "--out", "d"])
    assert grid_of(paper) == (512, [128, 512], [64, 128, 256], None)
    assert paper.remasking == ["lcr", "rcr", "rcr-latest"] and paper.name == "LLaDA-8B-Instruct"
    assert (paper.temperature, paper.top_p, paper.schedule, toy_args.top_p) == (
        0.0,
        0.95,
        ["linear"],
        1.0,
    )
    with pytest.raises(SystemExit):  # 4 blocks of 10 cannot share 10 steps
        ev.parse_args(["--model", "m", "--task", "toy-arith", "--out", "d", "--steps", "10"])


def test_cli_table_resume_and_trajectory_stats(checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    generated = count_generated(monkeypatch)
    ev.main(grid(checkpoint, out, "--name", "tiny"))
    rows = read_samples(out)
    assert (
        len(rows) == 8 * 2 * 2 * 2 and generated[0] == 64
    )  # 8 examples x 2 blocks x 2 steps x lcr, rcr
    assert set(rows[0]) == {"index", "prompt", "completion", "reward", "correct", "settings"}
    table = (out / "table.md").read_text()
    assert table in capsys.readouterr().out and "8 problems per cell" in table
    assert (
        "temperature 0.0, top-p 1.0" in table and f"tiny = {checkpoint}" in table
    )  # the caption says what ran
    assert (
        "- rcr: RCR, running max" in table and "rcr-latest" not in table
    )  # only the remaskings that ran
    assert "| tiny / lcr |" in table and "| tiny / rcr |" in table and "B=8 T=16" in table
    acc = (
        100
        * sum(
            r["correct"]
            for r in rows
            if r["settings"]["remasking"] == "rcr"
            and r["settings"]["block_length"] == 16
            and r["settings"]["steps"] == 8
        )
        / 8
    )
    assert table.splitlines()[-1].split(" | ")[3] == f"{acc:.1f}"

    # a crash: half of the rows lost and the last one half-written -> only those are generated again
    lines = (out / "samples.jsonl").read_text().splitlines()
    kept = [line for i, line in enumerate(lines) if i % 2 == 0]
    (out / "samples.jsonl").write_text("\n".join(kept) + "\n" + lines[1][:40])
    generated[0] = 0
    ev.main(grid(checkpoint, out, "--name", "tiny"))
    assert generated[0] == 32
    assert "skipping 4 done rows, scoring 4" in capsys.readouterr().out
    key = lambda r: (json.dumps(r["settings"], sort_keys=True), r["index"])  # noqa: E731
    assert {key(r): r for r in read_samples(out)} == {
        key(r): r for r in rows
    }  # same rows, one of each
    assert len(read_samples(out)) == 64 and (out / "table.md").read_text() == table

    # rows without step rewards are scored again; then Table 1 / Fig. 3 from the step rewards
    generated[0] = 0
    ev.main(grid(checkpoint, out, "--name", "tiny", "--trajectory-stats"))
    assert generated[0] == 64
    rows = read_samples(out)
    assert len(rows) == 64 and all(len(r["step_rewards"]) == r["settings"]["steps"] for r in rows)
    report = (out / "overdenoising.md").read_text()
    assert report.count("| tiny /") == 8 and report in capsys.readouterr().out
    assert (out / "first_correct.png").read_bytes()[:4] == b"\x89PNG"
    pick = [
        r
        for r in rows
        if r["settings"]["remasking"] == "lcr"
        and r["settings"]["block_length"] == 8
        and r["settings"]["steps"] == 16
    ]
    st = overdenoise.overdenoise_stats(
        torch.tensor([r["step_rewards"] for r in sorted(pick, key=lambda r: r["index"])])
    )
    assert (
        f'| tiny / lcr / B=8 T=16 | 8 | {100 * st["accuracy"]:.1f} | '
        f'+{100 * st["overdenoised_rate"]:.1f} |' in report
    )


def test_reward_failures_are_counted_in_the_table(checkpoint, tmp_path, monkeypatch):
    real = rewards.reward

    def failing(
        task, completion, example, format_score=0.0
    ):  # as a timed-out math-verify call: counted, scored 0
        rewards.calls["timeout"] += 1
        return real(task, completion, example, format_score)

    monkeypatch.setattr(rewards, "reward", failing)
    ev.main(
        grid(
            checkpoint,
            tmp_path / "run",
            "--remasking",
            "lcr",
            "--steps",
            "8",
            "--block-length",
            "16",
        )
    )
    assert (
        "Reward failures this run (timeouts, worker crashes; scored 0): 8."
        in (tmp_path / "run" / "table.md").read_text()
    )


def test_cli_write_overdenoised_round_trip(tmp_path, monkeypatch, tok):
    data = tmp_path / "problems.jsonl"
    data.write_text(json.dumps(SOLVABLE) + "\n" + json.dumps(UNSOLVABLE) + "\n")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: (OverDenoiser(tok, 16), tok))
    picked = tmp_path / "overdenoised.jsonl"
    ev.main(
        [
            "--model",
            "scripted",
            "--task",
            "toy-countdown",
            "--data",
            str(data),
            "--gen-length",
            "16",
            "--block-length",
            "8,16",
            "--steps",
            "8",
            "--out",
            str(tmp_path / "run"),
            "--write-overdenoised",
            str(picked),
        ]
    )
    # over-denoised under pure-Diff (see test_evaluate_scripted_overdenoising), so picked once
    assert tasks.load_examples("toy-countdown", picked) == [SOLVABLE]
    assert not (tmp_path / "run" / "overdenoising.md").exists()  # that needs --trajectory-stats


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(checkpoint, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    ev.main(grid(checkpoint, one, "--remasking", "lcr", "--split", "train"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(random.randint(20000, 40000)),
        str(ROOT / "eval.py"),
        *grid(checkpoint, two, "--remasking", "lcr", "--split", "train"),
    ]
    out = run_bounded(cmd, 120, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    key = lambda r: (json.dumps(r["settings"], sort_keys=True), r["index"])  # noqa: E731
    rows = read_samples(two)
    assert {key(r): r for r in rows} == {key(r): r for r in read_samples(one)}
    train = toy.make_task("toy-countdown", 8, 0, "train")
    assert len(rows) == 32 and all(r["prompt"] == train[r["index"]]["prompt"] for r in rows)
    assert (
        not list(two.glob("samples.rank*"))
        and (two / "table.md").read_text() == (one / "table.md").read_text()
    )
