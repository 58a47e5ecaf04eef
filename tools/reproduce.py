"""Every claim of the paper at toy scale, from one command: results/RESULTS.md and its figures.

    python tools/reproduce.py            # 3 seeds, the default toy task (the report in the README)
    python tools/reproduce.py --quick    # 2 seeds, fewer steps and problems: a check of the
                                         # pipeline in minutes, written under out/

Protocol. Seed s is a pair: an SFT base trained with seed s, and the RL runs from it with seed s, so
the spread over seeds covers both. Every algorithm gets the same budget of optimiser steps
(diffu-GRPO and CJ-GRPO take mu of them per batch of rollouts, IGPO 4, MDPO 1) and the same rollouts
(G, T, blocks, temperature). Learning rates are chosen per algorithm by a sweep on the val split
(seed 0), never on test. Before any test table: the pre-registered criterion (each of MDPO and
diffu-GRPO lifts val accuracy by >= 10 points and > 3 standard errors over its base, in every seed).
Test tables are greedy accuracy on a fixed test set; a claim holds only where the difference exceeds
2 standard errors.

Runs are cached under --out (train.py resumes, eval.py skips scored rows): a rerun picks up where it
stopped.
"""

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root: train.py, eval.py, tools/

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import checkpoint  # noqa: E402
import config  # noqa: E402
import distributed  # noqa: E402
import eval as evaluation  # noqa: E402
import models  # noqa: E402
import rewards  # noqa: E402
import sample  # noqa: E402
import tables  # noqa: E402
import tasks  # noqa: E402
import toy  # noqa: E402
import train  # noqa: E402
from tools import report  # noqa: E402

TASK = config.Config.task
ALGOS = ("mdpo", "diffu-grpo", "cj-grpo", "igpo")
FULL = dict(
    seeds=3,
    steps=96,
    eval_every=8,
    n_val=300,
    n_test=500,
    sweep=(1e-5, 3e-5, 1e-4),
    sweep_steps=24,
    longer=3,
    sft_updates=1500,
    train_flags=(),
)
QUICK = dict(
    seeds=2,
    steps=16,
    eval_every=8,
    n_val=100,
    n_test=200,
    sweep=(3e-5,),
    sweep_steps=8,
    longer=2,
    sft_updates=600,
    train_flags=(),
)
COLUMNS = [
    (10, 16),
    (10, 8),
    (40, 16),
    (40, 8),
]  # (block size, steps): semi-AR and pure-Diff at T and T/2
MINUTES = {
    "sft": 5.0,
    "step": 0.08,
    "measure": 1.5,
    "test": 0.6,
    "grid": 2.0,
}  # rough, for the bar's ETA


def mu(algo):
    """Optimiser steps per batch of rollouts (train.py's default inner_steps for the task)."""
    return config.defaults("toy", algo, TASK)["inner_steps"]


# ----------------------------------------------------------------------------- jobs (run in a pool)
def quietly(fn, argv, log):
    """fn(argv) with its console output appended to `log` (each run keeps its own)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        fn([str(a) for a in argv])


def train_run(run, argv, updates):
    """train.py with argv into `run` up to `updates` updates (nothing when already there) ->
    run / "last"."""
    last = checkpoint.latest(run)
    if last is None or checkpoint.saved_step(last) < updates:
        quietly(train.main, [*argv, "--max-updates", updates, "--out", run], run / "console.log")
    return run / "last"


def rl_run(run, base, algo, lr, seed, cfg, steps, extra=()):
    """An RL run of `steps` optimiser steps from `base`, scored on val every cfg["eval_every"]
    steps."""
    argv = [
        "--model",
        base,
        "--task",
        TASK,
        "--algo",
        algo,
        "--lr",
        lr,
        "--seed",
        seed,
        "--eval-every",
        max(1, cfg["eval_every"] // mu(algo)),
        "--n-eval",
        cfg["n_val"],
        *extra,
        *cfg["train_flags"],
    ]
    return train_run(run, argv, max(1, steps // mu(algo)))


def measure_base(base, out, cfg, G=8):
    """A base on val: greedy accuracy at both block sizes (LCR, the rollouts' T), and pass@1, pass@G
    and the share of all-wrong groups at the rollout temperature with the rollouts' confidence.
    Cached in out.
    """
    if out.exists():
        return json.loads(out.read_text())
    torch.manual_seed(0)
    rl = config.from_args(["--task", TASK])  # the rollouts' settings
    model, tok = models.load_model(str(base))
    mask_id = models.resolve_mask_id(tok, model)
    examples = toy.make_task(TASK, cfg["n_val"], 0, "val")
    res, gen = {}, torch.Generator().manual_seed(0)
    for block in rl.block_lengths:
        rows = evaluation.evaluate(
            model,
            tok,
            examples,
            TASK,
            gen_length=rl.gen_length,
            block_length=block,
            steps=rl.steps,
            mask_id=mask_id,
            progress=False,
            batch_size=100,
        )
        res[f"greedy_B{block}"] = 100 * sum(r["correct"] for r in rows) / len(rows)
        correct = []
        for start in range(0, len(examples), 50):
            batch = examples[start : start + 50]
            ids, attn = models.encode_prompts(tok, tasks.prompt_texts(TASK, batch))
            x = sample.generate(
                model,
                ids.repeat_interleave(G, 0),
                attention_mask=attn.repeat_interleave(G, 0),
                gen_length=rl.gen_length,
                block_length=block,
                steps=rl.steps,
                temperature=rl.temperature,
                confidence="sampling",
                mask_id=mask_id,
                generator=gen,
            )
            texts = tasks.completion_texts(tok, x[:, ids.shape[1] :])
            correct += [
                rewards.reward(TASK, t, ex) == 1
                for t, ex in zip(texts, [e for e in batch for _ in range(G)])
            ]
        c = torch.tensor(correct, dtype=torch.float).view(len(examples), G)  # (n, G)
        res[f"pass1_B{block}"] = 100 * c.mean().item()
        res[f"passG_B{block}"] = 100 * c.max(1).values.mean().item()
        res[f"all_wrong_B{block}"] = 100 * (c.sum(1) == 0).float().mean().item()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res))
    return res


def run_eval(model, out, name, cfg, *flags):
    """eval.py on cfg["n_test"] test problems of the toy task, its output in OUT/console.log."""
    argv = ["--model", model, "--task", TASK, "--name", name, "--limit", cfg["n_test"],
            "--batch-size", 100, "--out", out, *flags]
    quietly(evaluation.main, argv, out / "console.log")


def test_accuracy(model, out, name, cfg, remaskings):
    """Greedy test accuracy (%) in every Table 2 column: {(remasking, B, T): accuracy}."""
    run_eval(model, out, name, cfg, "--block-length", "10,40", "--steps", "16,8",
             "--remasking", ",".join(remaskings))
    cells = {}
    for row in tables.read_rows(out).values():
        s = row["settings"]
        if (s["block_length"], s["steps"]) in COLUMNS and s["remasking"] in remaskings:
            key = (s["remasking"], s["block_length"], s["steps"])
            cells.setdefault(key, []).append(row["correct"])
    return {k: 100 * sum(v) / len(v) for k, v in cells.items()}


def decoding_accuracy(model, out, name, cfg):
    """EOSER and ASS on a base, pure-Diff LCR: linear at T = 16, 8, 5 and ASS at its T = 5, each
    with and without EOSER -> {(schedule, eoser, T): accuracy}."""
    run_eval(model, out, name, cfg, "--block-length", "40", "--steps", "16,8,5",
             "--remasking", "lcr", "--schedule", "linear,ass", "--eoser", "both")
    cells = {}
    for row in tables.read_rows(out).values():
        s = row["settings"]
        key = (s["schedule"], s.get("eoser") is not None, s["steps"])
        cells.setdefault(key, []).append(row["correct"])
    return {k: 100 * sum(v) / len(v) for k, v in cells.items()}


def overdenoising(model, out, cfg):
    """Table 1 / Fig. 3 on a base: eval.py's trajectory statistics over the toy grid."""
    run_eval(model, out, "base", cfg, "--remasking", "lcr,rcr,rcr-latest", "--trajectory-stats")
    return (out / "overdenoising.md").read_text(), out / "first_correct.png"


def work(job):
    """One job in a pool process with one torch thread (tiny models run fastest so, one per
    core)."""
    torch.set_num_threads(1)
    kind, *args = job
    try:
        return {
            "train": train_run,
            "rl": rl_run,
            "measure": measure_base,
            "test": test_accuracy,
            "decoding": decoding_accuracy,
            "overdenoising": overdenoising,
        }[kind](*args)
    except ValueError as e:
        # the pre-filter kept no prompt: that run does not exist, the report says so
        if "pre-filter kept none" not in str(e):
            raise
        return None


def stage(pool, bar, jobs):
    """Run {key: (estimated minutes, job)} on the pool, the bar advancing as each ends ->
    {key: result}."""
    futures = {pool.submit(work, job): (key, minutes) for key, (minutes, job) in jobs.items()}
    results = {}
    for future in concurrent.futures.as_completed(futures):
        key, minutes = futures[future]
        results[key] = future.result()
        bar.set_description(key if isinstance(key, str) else " ".join(map(str, key)))
        bar.update(minutes)
    return results


# ----------------------------------------------------------------------------- the plan
def rl_minutes(algo, steps):
    """Rough work-minutes of an RL run: optimiser steps, weighted by what one costs (CJ-GRPO trains
    on every step of every rollout, diffu-GRPO and IGPO on one forward per rollout)."""
    weight = {"mdpo": 1.0, "cj-grpo": 1.0, "diffu-grpo": 0.35, "igpo": 0.6}[algo]
    return steps * MINUTES["step"] * weight


def run_all(cfg, out, pool, bar):
    """Every run of the report in four stages (each waits for the one before) -> what the report
    needs."""
    seeds = range(cfg["seeds"])
    base = {s: out / f"base-seed{s}" / "last" for s in seeds}
    stage(
        pool,
        bar,
        {
            ("SFT base", s): (
                MINUTES["sft"],
                (
                    "train",
                    out / f"base-seed{s}",
                    ["--algo", "sft", "--task", TASK, "--seed", s, *cfg["train_flags"]],
                    cfg["sft_updates"],
                ),
            )
            for s in seeds
        },
    )
    jobs = {
        ("sweep", a, lr): (
            rl_minutes(a, cfg["sweep_steps"]),
            ("rl", out / "sweep" / f"{a}-lr{lr:g}", base[0], a, lr, 0, cfg, cfg["sweep_steps"]),
        )
        for a in ALGOS
        for lr in cfg["sweep"]
    }
    jobs.update(
        {
            ("measure", s): (
                MINUTES["measure"],
                ("measure", base[s], out / f"base-seed{s}" / "val.json", cfg),
            )
            for s in seeds
        }
    )
    done = stage(pool, bar, jobs)
    res = {
        "cfg": cfg,
        "task": TASK,
        "mu": {a: mu(a) for a in ALGOS},
        "base_val": [done["measure", s] for s in seeds],
    }
    res["sweep"] = {
        (a, lr): report.curve(out / "sweep" / f"{a}-lr{lr:g}" / "log.jsonl", mu(a))
        for a in ALGOS
        for lr in cfg["sweep"]
    }
    res["lr"] = {
        a: max(cfg["sweep"], key=lambda lr: report.final(res["sweep"][a, lr])) for a in ALGOS
    }
    runs = {(a, s): out / a / f"seed{s}" for a in ALGOS for s in seeds}
    runs.update({("mdpo-prefilter", s): out / "mdpo-prefilter" / f"seed{s}" for s in seeds})
    runs[("diffu-grpo-longer", 0)] = out / "diffu-grpo-longer" / "seed0"
    jobs = {}
    for (name, s), run in runs.items():
        algo = name.split("-pre")[0].replace("-longer", "")
        steps = cfg["steps"] * (cfg["longer"] if name.endswith("longer") else 1)
        extra = ["--prefilter", "overdenoise"] if name.endswith("prefilter") else []
        jobs["train", name, s] = (
            rl_minutes(algo, steps),
            ("rl", run, base[s], algo, res["lr"][algo], s, cfg, steps, extra),
        )
    done = stage(pool, bar, jobs)
    runs = {k: run for k, run in runs.items() if done["train", *k] is not None}
    res["logs"] = {k: run / "log.jsonl" for k, run in runs.items()}
    res["kept"] = {
        s: len((run / "prefilter.jsonl").read_text().splitlines())
        for (name, s), run in runs.items()
        if name.endswith("prefilter")
    }
    res["criterion_at"] = record_criterion(res, out)  # on val, before any test-set evaluation runs
    jobs = {
        ("test", *k): (
            (3 if k[0] == "mdpo" else 1) * MINUTES["test"],
            (
                "test",
                run / "last",
                run / "test",
                k[0],
                cfg,
                ("lcr", "rcr", "rcr-latest") if k[0] == "mdpo" else ("lcr",),
            ),
        )
        for k, run in runs.items()
        if not k[0].endswith("longer")
    }
    for s in seeds:
        jobs["test", "base", s] = (
            3 * MINUTES["test"],
            (
                "test",
                base[s],
                out / f"base-seed{s}" / "test",
                "base",
                cfg,
                ("lcr", "rcr", "rcr-latest"),
            ),
        )
        jobs["decoding", s] = (
            MINUTES["grid"],
            ("decoding", base[s], out / f"base-seed{s}" / "decoding", "base", cfg),
        )
    jobs["overdenoising"] = (
        MINUTES["grid"],
        ("overdenoising", base[0], out / "base-seed0" / "overdenoising", cfg),
    )
    done = stage(pool, bar, jobs)
    res["test"] = {k[1:]: v for k, v in done.items() if k[0] == "test" and k[1] != "base"}
    res["base_test"] = [done["test", "base", s] for s in seeds]
    res["decoding"] = [done["decoding", s] for s in seeds]
    res["overdenoising"] = done["overdenoising"]
    return res


def record_criterion(res, out):
    """The pre-registered criterion's result, from the val curves alone, written to
    OUT/criterion.md (with the time) and printed before any test-set evaluation starts; a rerun
    keeps the first record."""
    path = Path(out) / "criterion.md"
    if not path.exists():
        met, lines = report.criterion(res)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        path.write_text(
            f"Recorded {stamp}, before any test-set evaluation. Result: "
            f"{'met' if met else 'not met'}.\n\n" + "\n".join(lines) + "\n"
        )
        tqdm.write(path.read_text())
    return path.read_text().split(",")[0].removeprefix("Recorded ")


def estimate(cfg):
    """Work-minutes of the whole plan (the bar's total; two workers take about half of it in wall
    time)."""
    n = cfg["seeds"]
    total = (
        n * (MINUTES["sft"] + MINUTES["measure"] + 3 * MINUTES["test"] + MINUTES["grid"])
        + MINUTES["grid"]
    )
    total += sum(rl_minutes(a, cfg["sweep_steps"]) for a in ALGOS for _ in cfg["sweep"])
    total += n * sum(rl_minutes(a, cfg["steps"]) + MINUTES["test"] for a in ALGOS)
    # the pre-filter runs, MDPO's RCR
    total += n * (rl_minutes("mdpo", cfg["steps"]) + 3 * MINUTES["test"])
    return total + rl_minutes("diffu-grpo", cfg["steps"] * cfg["longer"])


def add_wall_time(out, seconds):
    """Append this invocation's wall time to OUT/wall.json (an interrupted report is finished by
    later invocations, and its time is their sum). Returns (total minutes, number of
    invocations)."""
    path = Path(out) / "wall.json"
    minutes = (json.loads(path.read_text()) if path.exists() else []) + [round(seconds / 60, 1)]
    path.write_text(json.dumps(minutes))
    return sum(minutes), len(minutes)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="a preview: 2 seeds, fewer steps and problems"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds (SFT base + RL) per row (default 3; --quick 2)",
    )
    p.add_argument(
        "--out", default=None, help="run cache (default out/reproduce, --quick out/reproduce-quick)"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs at a time, one torch thread each (default 2: the cores)",
    )
    p.add_argument(
        "--report",
        default=None,
        help="the report (default results/RESULTS.md; --quick: RESULTS-quick.md in --out, never "
        "over results/); its figures go next to it",
    )
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    cfg["seeds"] = args.seeds or cfg["seeds"]
    if cfg["seeds"] < 1:
        p.error(f"--seeds {cfg['seeds']}: must be >= 1")
    out = Path(args.out or ("out/reproduce-quick" if args.quick else "out/reproduce"))
    path = Path(args.report or (out / "RESULTS-quick.md" if args.quick
                                else ROOT / "results" / "RESULTS.md"))
    path.parent.mkdir(parents=True, exist_ok=True)
    t0, ctx = time.time(), multiprocessing.get_context("spawn")
    fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} work-min [{elapsed}<{remaining}]"
    with (
        concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool,
        distributed.progress(total=round(estimate(cfg)), bar_format=fmt) as bar,
    ):
        res = run_all(cfg, out, pool, bar)
    command = "python tools/reproduce.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report.write(res, command.strip(), add_wall_time(out, time.time() - t0), path, args.quick)
    print(f"wrote {path} (runs cached in {out})")


if __name__ == "__main__":
    main()
