"""Reproduce the paper's claims at toy scale, from one command: RESULTS.md and its figures.

    python reproduce.py                          # both toy tasks, 3 training seeds (the report in the README)
    python reproduce.py --quick                  # toy-countdown, 2 seeds, fewer updates: a preview in minutes
    python reproduce.py --task toy-arith --seeds 5

The claims (Table 2, Fig. 1 / 4, Table 1, Fig. 3 of the paper) and what checks each here:
1. MDPO matches diffu-GRPO with 60x fewer gradient updates and beats it at equal updates: Table 2's rows and
   the sample-efficiency curves (held-out accuracy against optimiser steps, diffu-GRPO run 10x longer).
2. RCR, training-free, improves over LCR, and MDPO + RCR is best: Table 2's RCR rows, the paper's running
   maximum (`rcr`) and the authors' code (`rcr-latest`) side by side.
3. Over-denoising is common (Table 1, Fig. 3), and training on the over-denoised prompts (Section 3.3) beats
   training on random prompts at equal updates: the over-denoising table and the pre-filter ablation.

Protocol: each algorithm's learning rate is chosen by the same sweep on the val split (toy.make_task's third
split), never on test; Table 2 is greedy accuracy on a fixed test set, mean ± std over the training seeds.
"Gradient update" means optimiser step: diffu-GRPO takes mu of them per batch of rollouts (d1's inner
iterations), MDPO one. Every run is cached under --out (train.py resumes, eval.py skips scored rows), so a
rerun or an interrupted run picks up where it stopped.
"""
import argparse
import concurrent.futures
import contextlib
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import checkpoint
import eval as evaluation
import train

FULL = dict(n_train=5000, seeds=3, updates=96, n_test=1000, n_val=300, sweep=(1e-5, 3e-5, 1e-4), sweep_updates=48, eval_every=8,
            longer=10, sft_updates=1500)
QUICK = dict(n_train=5000, seeds=2, updates=24, n_test=300, n_val=150, sweep=(3e-5,), sweep_updates=24, eval_every=8, longer=4,
             sft_updates=600)
COLUMNS = [(10, 16), (10, 8), (40, 16), (40, 8)]  # (block size, steps): semi-AR and pure-Diff at T and T/2
MINUTES = {"sft": 6.0, "rl_update": 0.04, "grpo_batch": 0.03, "grpo_step": 0.01, "eval": 0.5, "overdenoise": 1.5,
           "prefilter": 2.0}
ALGOS = ("mdpo", "diffu-grpo")


def mu(task):
    """diffu-GRPO's inner iterations (d1: 12 for math, 8 for countdown): its optimiser steps per rollout batch."""
    return train.resolve(train.p.parse_args(["--algo", "diffu-grpo", "--task", task])).inner_steps


def quietly(fn, argv, log):
    """fn(argv) with its console output appended to `log` (each run keeps its own)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        fn([str(a) for a in argv])


def train_run(run, argv, updates):
    """train.py with argv into `run` up to `updates` (skipped when already there). Returns the final checkpoint."""
    last = checkpoint.latest(run)
    if last is None or torch.load(last / "trainer_state.pt", weights_only=False)["step"] < updates:
        quietly(train.main, [*argv, "--max-updates", updates, "--out", run], run / "console.log")
    return run / "last"


def rl_run(run, base, task, algo, lr, seed, cfg, grad_updates, extra=()):
    """One RL run with `grad_updates` optimiser steps (diffu-GRPO: grad_updates / mu rollout batches), scored
    on the val split every cfg["eval_every"] optimiser steps."""
    per = mu(task) if algo == "diffu-grpo" else 1
    argv = ["--model", base, "--task", task, "--algo", algo, "--lr", lr, "--seed", seed, "--n-train", cfg["n_train"],
            "--eval-every", max(1, cfg["eval_every"] // per), "--n-eval", cfg["n_val"], *extra]
    return train_run(run, argv, grad_updates // per)


def curve(run, task, algo):
    """(optimiser steps, val accuracy %) of a run, from its log."""
    per = mu(task) if algo == "diffu-grpo" else 1
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()[1:]]
    return [(r["step"] * per, 100 * r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]


def test_accuracy(model, task, out, name, cfg, remaskings):
    """Greedy accuracy (%) on the fixed test set under every Table 2 column: {(remasking, B, T): accuracy}."""
    quietly(evaluation.main, ["--model", model, "--task", task, "--name", name, "--limit", cfg["n_test"],
                              "--block-length", "10,40", "--steps", "16,8", "--remasking", ",".join(remaskings),
                              "--batch-size", 64, "--out", out], out / "console.log")
    cells = {}
    for row in evaluation.read_rows(out).values():
        s = row["settings"]
        if (s["block_length"], s["steps"]) in COLUMNS and s["remasking"] in remaskings:
            cells.setdefault((s["remasking"], s["block_length"], s["steps"]), []).append(row["correct"])
    return {k: 100 * sum(v) / len(v) for k, v in cells.items()}


def work(job):
    """One job, in a pool process with one torch thread (tiny models run fastest so, two at a time on 2 cores)."""
    torch.set_num_threads(1)
    kind, *a = job
    try:
        return {"train": train_run, "test": test_accuracy, "rl": rl_run, "eval": lambda argv, log: quietly(
            evaluation.main, argv, log)}[kind](*a)
    except ValueError as e:  # the pre-filter kept no prompt: that run does not exist, the report says so
        if "pre-filter kept none" not in str(e):
            raise
        return None


def stage(pool, bar, jobs):
    """Run {key: (estimated minutes, job)} on the pool, advancing the bar as each ends -> {key: result}."""
    futures = {pool.submit(work, job): (key, minutes) for key, (minutes, job) in jobs.items()}
    results = {}
    for future in concurrent.futures.as_completed(futures):
        key, minutes = futures[future]
        results[key] = future.result()
        bar.set_description(" ".join(map(str, key)))
        bar.update(minutes)
    return results


def run_all(tasks, cfg, out, pool, bar):
    """Every run of the report, in four stages (each waits for the one before): bases; learning-rate sweeps;
    training runs and the base's evaluations; the trained models' evaluations. Returns what the report needs."""
    res = {t: {"sweep": {}, "rows": {}, "curves": {}} for t in tasks}
    base = {t: out / t / "base" / "last" for t in tasks}
    rcr, sweep = ("lcr", "rcr", "rcr-latest"), [(t, a, lr) for t in tasks for a in ALGOS for lr in cfg["sweep"]]
    stage(pool, bar, {("SFT base", t): (MINUTES["sft"], ("train", out / t / "base", ["--algo", "sft", "--task", t],
                                                          cfg["sft_updates"])) for t in tasks})
    stage(pool, bar, {("sweep", t, a, lr): (rl_minutes(t, a, cfg["sweep_updates"]), (
        "rl", out / t / "sweep" / f"{a}-lr{lr:g}", base[t], t, a, lr, 0, cfg, cfg["sweep_updates"])) for t, a, lr in sweep})
    for t, a, lr in sweep:  # each algorithm's learning rate: the best final val accuracy (mean of the last 2 scores)
        res[t]["sweep"][a, lr] = statistics.mean(y for _, y in curve(out / t / "sweep" / f"{a}-lr{lr:g}", t, a)[-2:])
    for t in tasks:
        res[t]["lr"] = {a: max(cfg["sweep"], key=lambda lr: res[t]["sweep"][a, lr]) for a in ALGOS}
    runs = {(t, a, s): out / t / a / f"seed{s}" for t in tasks for a in ALGOS for s in range(cfg["seeds"])}
    runs.update({(t, "mdpo-prefilter", s): out / t / "mdpo-prefilter" / f"seed{s}" for t in tasks
                 if t == "toy-countdown" for s in range(cfg["seeds"])})
    jobs = {("train", *k): (rl_minutes(k[0], k[1].split("-pre")[0], cfg["updates"]) + MINUTES["prefilter"] * ("pre" in k[1]), (
        "rl", run, base[k[0]], k[0], k[1].split("-pre")[0], res[k[0]]["lr"][k[1].split("-pre")[0]], k[2], cfg,
        cfg["updates"], ["--prefilter", "overdenoise"] if "pre" in k[1] else [])) for k, run in runs.items()}
    for t in tasks:
        jobs["base on test", t] = (3 * MINUTES["eval"], ("test", base[t], t, out / t / "eval" / "base", "base", cfg, rcr))
        jobs["over-denoising", t] = (MINUTES["overdenoise"], ("eval", [
            "--model", base[t], "--task", t, "--name", "base", "--limit", cfg["n_test"], "--remasking", ",".join(rcr),
            "--batch-size", 64, "--trajectory-stats", "--out", out / t / "overdenoise"], out / t / "overdenoise" / "log"))
        if t == "toy-countdown":  # the sample-efficiency curve: diffu-GRPO with `longer` times the updates
            longer = cfg["updates"] * cfg["longer"]
            jobs["diffu-grpo longer", t] = (rl_minutes(t, "diffu-grpo", longer), (
                "rl", out / t / "diffu-grpo-longer", base[t], t, "diffu-grpo", res[t]["lr"]["diffu-grpo"], 0, cfg, longer))
    done = stage(pool, bar, jobs)
    runs = {k: run for k, run in runs.items() if done["train", *k] is not None}
    for t in tasks:
        res[t]["rows"]["base"] = [done["base on test", t]]
        if ("diffu-grpo longer", t) in done:
            res[t]["curves"]["longer"] = curve(out / t / "diffu-grpo-longer", t, "diffu-grpo")
    tests = stage(pool, bar, {("test", *k): ((3 if k[1] == "mdpo" else 1) * MINUTES["eval"], (
        "test", run / "last", k[0], run / "eval", k[1], cfg, rcr if k[1] == "mdpo" else ("lcr",)))
        for k, run in runs.items()})
    for (t, a, s), run in runs.items():
        res[t]["rows"].setdefault(a.replace("mdpo-prefilter", "prefilter"), []).append(tests["test", t, a, s])
        res[t]["curves"][a, s] = curve(run, t, a.split("-pre")[0])
    for t in tasks:
        if t == "toy-countdown":
            kept = out / t / "mdpo-prefilter" / "seed0" / "prefilter.jsonl"
            res[t]["kept"] = len(kept.read_text().splitlines()) if kept.exists() else 0
    return res


def estimate(tasks, cfg):
    """Work-minutes of the whole plan (the progress bar's total; two workers take about half of it in wall time)."""
    per_task = lambda t: (MINUTES["sft"] + 3 * MINUTES["eval"] + MINUTES["overdenoise"]  # noqa: E731
                          + sum(rl_minutes(t, a, cfg["sweep_updates"]) for a in ALGOS for _ in cfg["sweep"])
                          + cfg["seeds"] * (rl_minutes(t, "diffu-grpo", cfg["updates"]) + MINUTES["eval"]
                                            + rl_minutes(t, "mdpo", cfg["updates"]) + 3 * MINUTES["eval"]))
    countdown = ("toy-countdown" in tasks) * (rl_minutes("toy-countdown", "diffu-grpo", cfg["updates"] * cfg["longer"])
                                              + cfg["seeds"] * (rl_minutes("toy-countdown", "mdpo", cfg["updates"])
                                                                + MINUTES["prefilter"] + MINUTES["eval"]))
    return sum(per_task(t) for t in tasks) + countdown


def rl_minutes(task, algo, grad_updates):
    """Rough wall minutes of a run on a 2-core CPU running two at a time, for the progress bar's ETA."""
    if algo == "diffu-grpo":
        return grad_updates / mu(task) * MINUTES["grpo_batch"] + grad_updates * MINUTES["grpo_step"]
    return grad_updates * MINUTES["rl_update"]


# ----------------------------------------------------------------------------- the report
def mean_std(values):
    """'m ± s' over seeds (sample std); a single value alone."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def cell(runs, rem, column):
    return [r[(rem, *column)] for r in runs]


def table2(res):
    """Table 2 at toy scale: rows as the paper's, columns semi-AR / pure-Diff at T and T/2."""
    head = "| | " + " | ".join(f"{'semi-AR' if b < 40 else 'pure-Diff'} B={b} T={t}" for b, t in COLUMNS) + " |"
    rows = [("toy base (SFT, Eq. 1), LCR", res["rows"]["base"], "lcr"),
            ("+ RCR, running max (paper's text; training-free)", res["rows"]["base"], "rcr"),
            ("+ RCR, latest (authors' code; training-free)", res["rows"]["base"], "rcr-latest"),
            ("+ diffu-GRPO (d1), LCR", res["rows"]["diffu-grpo"], "lcr"),
            ("+ MDPO, LCR", res["rows"]["mdpo"], "lcr"),
            ("+ MDPO + RCR, running max", res["rows"]["mdpo"], "rcr"),
            ("+ MDPO + RCR, latest", res["rows"]["mdpo"], "rcr-latest")]
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for name, runs, rem in rows:
        lines.append(f"| {name} | " + " | ".join(mean_std(cell(runs, rem, c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def difference(a, b):
    """Mean of a minus mean of b, with a rough standard error (seeds' spread, or the binomial one of a single
    test accuracy on n problems when there is one run)."""
    se = lambda v: statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else None  # noqa: E731
    return statistics.mean(a) - statistics.mean(b), se(a), se(b)


# Written while the first full report was running (its sweeps were in, its comparison tables were not): what could
# make each claim fail at toy scale, and the experiment that would tell. The report prints a claim's note when the claim is not clearly met (not > 2 SE in most columns).
IF_NOT_MET = {
    "MDPO > diffu-GRPO": "Both start from the same weak base and take few updates, so both may stay within noise of "
    "it. At equal optimiser steps diffu-GRPO sees mu times fewer rollouts (mu inner iterations per batch), which is "
    "the paper's comparison; MDPO's intermediate rewards only help when intermediate answers carry information "
    "(see the over-denoising table). Would tell: both run 4-10x longer, and MDPO with --top-c 1 / 16.",
    "RCR > LCR": "RCR pays off when early low-confidence commits are wrong and later context fixes them. With 40 "
    "tokens in 16 steps (2-3 reveals a step) a tiny model has little to remask, and its confidences may be poorly "
    "calibrated. Would tell: eval.py --steps 4,8 (more tokens per step) and the count of remasked tokens per step.",
    "MDPO > base": "96 updates x 64 rollouts move a 0.4M-parameter model little: a gain below ~2 points is within the "
    "seeds' spread, and larger learning rates lowered val accuracy (lr 3e-4 in our semi-AR probes). Would tell: "
    "more updates at the chosen rate, more seeds, the curve of val accuracy (is it still rising at the end?).",
    "over-denoised prompts": "The filter keeps the prompts the base already answers correctly at some step, a few "
    "hundred of the pool: training cycles over them many times and may overfit them. Would tell: a pool 10x larger "
    "(more kept prompts than updates x prompts per update), and accuracy on the kept prompts vs the rest.",
}


def verdict_line(name, a_runs, a_rem, b_runs, b_rem, n_test):
    """One claim checked column by column: the differences in points and how many are > 0."""
    diffs = []
    for c in COLUMNS:
        a, b = cell(a_runs, a_rem, c), cell(b_runs, b_rem, c)
        d, sa, sb = difference(a, b)
        binom = lambda v: math.sqrt(max(statistics.mean(v), 1) * (100 - statistics.mean(v)) / n_test)  # noqa: E731
        se = math.sqrt((sa if sa is not None else binom(a)) ** 2 + (sb if sb is not None else binom(b)) ** 2)
        diffs.append((d, se))
    up = sum(d > 0 for d, _ in diffs)
    clear = sum(d > 2 * se for d, se in diffs)
    text = ", ".join(f"{d:+.1f} (±{se:.1f})" for d, se in diffs)
    return f"| {name} | {text} | {up}/4 higher, {clear}/4 by more than 2 SE |", clear > len(diffs) // 2


def efficiency(res, task, cfg):
    """'Updates diffu-GRPO needs to first reach MDPO's val accuracy at k updates', from the curves."""
    seeds = [res["curves"]["mdpo", s] for s in range(cfg["seeds"])]
    longer = res["curves"]["longer"]
    lines = ["| MDPO updates k | MDPO val acc. at k (mean of seeds) | diffu-GRPO updates to reach it | ratio |",
             "|---|---|---|---|"]
    for k in sorted({x for x, _ in seeds[0]}):
        target = statistics.mean(dict(c)[k] for c in seeds)
        reached = next((x for x, a in longer if a >= target), None)
        ratio = f"{reached / k:.1f}x" if reached else f"not reached within {longer[-1][0]}" if longer else "-"
        lines.append(f"| {k} | {target:.1f} | {reached if reached else '-'} | {ratio} |")
    return "\n".join(lines)


def plot_curves(res, task, cfg, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for algo, color in (("mdpo", "C0"), ("diffu-grpo", "C1")):
        for s in range(cfg["seeds"]):
            x, y = zip(*res["curves"][algo, s])
            ax.plot(x, y, color=color, alpha=0.5, marker=".", label=f"{algo} ({cfg['seeds']} seeds)" if s == 0 else None)
    x, y = zip(*res["curves"]["longer"])
    ax.plot(x, y, color="C1", linestyle="--", label=f"diffu-grpo, {cfg['longer']}x longer (seed 0)")
    ax.set(xscale="log", xlabel="gradient updates (optimiser steps)", ylabel="val accuracy (%), greedy LCR",
           title=f"{task}: sample efficiency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def add_wall_time(out, seconds):
    """Append this invocation's wall time to OUT/wall.json (runs are cached: an interrupted report is finished by
    later invocations, and its time is their sum). Returns (total minutes, number of invocations)."""
    path = Path(out) / "wall.json"
    minutes = (json.loads(path.read_text()) if path.exists() else []) + [round(seconds / 60, 1)]
    path.write_text(json.dumps(minutes))
    return sum(minutes), len(minutes)


def write_report(results, cfg, args, wall, path):
    quick = " (--quick: fewer seeds, updates and problems than the full report)" if args.quick else ""
    n = cfg["n_test"]
    out = [f"# Results at toy scale{quick}", "",
           f"Command: `python reproduce.py {' '.join(sys.argv[1:])}`. Machine: {machine()}. Wall time: {wall[0]:.0f} min"
           + (f" (over {wall[1]} invocations: an interrupted run resumes from its cached runs)." if wall[1] > 1 else "."),
           "", f"Greedy accuracy (%) on {n} fixed test problems per task (one accuracy's standard error: "
           f"{100 * math.sqrt(0.2 * 0.8 / n):.1f} points at 20%, {100 * math.sqrt(0.5 * 0.5 / n):.1f} at 50%); "
           f"trained rows are mean ± std over {cfg['seeds']} training seeds from one SFT base. Every run: "
           f"{cfg['updates']} gradient updates (optimiser steps), 8 prompts x G = 8 rollouts per rollout batch, "
           "T = 16 steps over 40 tokens, rollouts alternating semi-AR (B = 10) and pure-Diff (B = 40). Learning "
           "rates chosen on the val split (below).", ""]
    for task, res in results.items():
        out += [f"## {task}", "", "### Table 2 at toy scale", "", table2(res), ""]
        out += ["Claims, column by column (semi-AR T, T/2, pure-Diff T, T/2): difference in points (± its standard "
                "error)", "", "| claim | differences | verdict |", "|---|---|---|"]
        rows, base, mdpo = res["rows"], res["rows"]["base"], res["rows"]["mdpo"]
        claims = [("MDPO > diffu-GRPO", "MDPO > diffu-GRPO at equal updates (LCR)", mdpo, "lcr", rows["diffu-grpo"], "lcr"),
                  ("RCR > LCR", "RCR (running max) > LCR, base", base, "rcr", base, "lcr"),
                  ("RCR > LCR", "RCR (latest) > LCR, base", base, "rcr-latest", base, "lcr"),
                  ("MDPO > base", "MDPO > base (LCR)", mdpo, "lcr", base, "lcr"),
                  ("RCR > LCR", "MDPO + RCR (running max) > MDPO", mdpo, "rcr", mdpo, "lcr"),
                  ("RCR > LCR", "MDPO + RCR (latest) > MDPO", mdpo, "rcr-latest", mdpo, "lcr")]
        if "prefilter" in rows:
            claims.append(("over-denoised prompts", "over-denoised prompts > random prompts (MDPO, LCR)",
                           rows["prefilter"], "lcr", mdpo, "lcr"))
        verdicts = [(key, *verdict_line(*c, n)) for key, *c in claims]
        out += [line for _, line, _ in verdicts]
        notes = {key: IF_NOT_MET[key] for key, _, met in verdicts if not met}
        if notes:
            out += ["", "Claims not clearly met here (a difference > 2 SE in at most half the columns), with the "
                    "reason we think likely (written before this report's comparison tables were in) and the experiment that would tell:", ""]
            out += [f"- **{key}.** {why}" for key, why in notes.items()]
        out.append("")
        if "longer" in res["curves"]:
            png = Path(path).parent / f"{task}-efficiency.png"
            plot_curves(res, task, cfg, png)
            out += ["### Sample efficiency", "", f"![{task} sample efficiency]({png.name})", "",
                    efficiency(res, task, cfg), ""]
        od = Path(args.out) / task / "overdenoise"
        fig = Path(path).parent / f"{task}-first-correct.png"
        fig.write_bytes((od / "first_correct.png").read_bytes())
        out += ["### Over-denoising of the base (Table 1, Fig. 3)", "", (od / "overdenoising.md").read_text().strip(), "",
                f"![{task} first correct step]({fig.name})", ""]
        if "kept" in res and "prefilter" not in res["rows"]:
            out += ["### Pre-filter ablation (Section 3.3)", "", "The filter kept no training prompt: nothing to train.", ""]
        if "prefilter" in res["rows"]:
            out += ["### Pre-filter ablation (Section 3.3)", "", f"The filter kept {res['kept']} of "
                    f"{cfg['n_train']} training prompts (over-denoised under greedy LCR with B = 10 or 40).", "",
                    "| MDPO trained on | " + " | ".join(f"B={b} T={t}" for b, t in COLUMNS) + " |",
                    "|---" * (len(COLUMNS) + 1) + "|",
                    "| random prompts | " + " | ".join(mean_std(cell(res["rows"]["mdpo"], "lcr", c)) for c in COLUMNS) + " |",
                    "| over-denoised prompts | " + " | ".join(mean_std(cell(res["rows"]["prefilter"], "lcr", c))
                                                           for c in COLUMNS) + " |", ""]
        se_val = 100 * math.sqrt(0.2 * 0.8 / cfg["n_val"])
        out += ["### Learning-rate sweep (val split, seed 0)", "", f"Val accuracy (%) after {cfg['sweep_updates']} "
                f"gradient updates, the mean of the last two scores on {cfg['n_val']} val problems (one score's standard "
                f"error: {se_val:.1f} points at 20%: differences smaller than that do not rank the rates).", "",
                "| algorithm | " + " | ".join(
            f"lr {lr:g}" for lr in cfg["sweep"]) + " | chosen |", "|---" * (len(cfg["sweep"]) + 2) + "|"]
        out += [f"| {a} | " + " | ".join(f"{res['sweep'][a, lr]:.1f}" for lr in cfg["sweep"]) + f" | {res['lr'][a]:g} |"
                for a in ("mdpo", "diffu-grpo")] + [""]
    Path(path).write_text("\n".join(out) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="all", choices=["toy-countdown", "toy-arith", "all"], help="which toy task(s)")
    p.add_argument("--seeds", type=int, default=None, help="training seeds per row (default 3; --quick 2)")
    p.add_argument("--quick", action="store_true", help="a preview: toy-countdown only, fewer updates and problems")
    p.add_argument("--out", default=None, help="run cache (default out/reproduce, --quick out/reproduce-quick)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each (default 2: the cores)")
    p.add_argument("--report", default=None, help="the report (default results/RESULTS.md, --quick "
                   "results/RESULTS-quick.md); its figures go next to it")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    cfg["seeds"] = args.seeds or cfg["seeds"]
    if cfg["seeds"] < 1:
        p.error(f"--seeds {cfg['seeds']}: must be >= 1")
    tasks = ["toy-countdown"] if args.quick and args.task == "all" else (
        ["toy-countdown", "toy-arith"] if args.task == "all" else [args.task])
    args.out = Path(args.out or ("out/reproduce-quick" if args.quick else "out/reproduce"))
    report = Path(args.report or ("results/RESULTS-quick.md" if args.quick else "results/RESULTS.md"))
    report.parent.mkdir(parents=True, exist_ok=True)
    t0, ctx = time.time(), multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool, tqdm(
            total=round(estimate(tasks, cfg)), bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} "
            "work-min [{elapsed}<{remaining}]") as bar:
        results = run_all(tasks, cfg, args.out, pool, bar)
    write_report(results, cfg, args, add_wall_time(args.out, time.time() - t0), report)
    print(f"wrote {report} (runs cached in {args.out})")


if __name__ == "__main__":
    main()
