"""Every figure of the project, drawn from the files the runs write (log.jsonl, eval.py's
statistics).

python plots.py out/run   # out/run/log.jsonl -> out/run/plot.png (train.py draws it too)
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)

CURVES = [  # (log key, panel title, y label)
    ("reward", "rollout reward", "mean final reward of the rollouts"),
    ("eval_accuracy", "held-out accuracy", "greedy val accuracy"),
    ("kl", "KL to the reference", "mean per token"),
    ("loss", "loss", "loss of the update"),
    ("clip_frac", "clipped share (Eq. 5)", "share of tokens"),
]


def training_curves(log_path, png):
    """A run's log.jsonl -> one panel per logged quantity against the update (raw, and a running
    mean over 10 updates), titled with the run's algorithm and task. Quantities that never vary
    (the clipped share at mu = 1) are left out. The held-out accuracy starts at update 0, the
    starting model, and its label names the decoding (train.py's VAL_REMASKING). Returns png.
    """
    lines = Path(log_path).read_text().splitlines()
    cfg, rows = json.loads(lines[0])["config"], [json.loads(line) for line in lines[1:]]
    decoding = f"greedy, LCR, B={cfg['block_lengths'][0]}, T={cfg['steps']}"
    panels = []
    for key, title, ylabel in CURVES:
        if key == "eval_accuracy":
            ylabel = f"val accuracy ({decoding})"
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points and len({v for _, v in points}) > 1:
            panels.append((key, title, ylabel, points))
    cols = min(len(panels), 3) or 1
    n_rows = -(-len(panels) // cols) or 1
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 3.2 * n_rows), squeeze=False)
    for ax, (key, title, ylabel, points) in zip(axes.flat, panels):
        steps, values = zip(*points)
        ax.plot(steps, values, color="C0", alpha=0.35 if len(steps) > 20 else 1.0, marker=".")
        if len(steps) > 20:
            smooth = [
                sum(values[max(0, i - 9) : i + 1]) / len(values[max(0, i - 9) : i + 1])
                for i in range(len(values))
            ]
            ax.plot(steps, smooth, color="C0", label="running mean of 10")
            ax.legend(fontsize=7)
        ax.set(title=title, xlabel="update", ylabel=ylabel)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{cfg['algo']} on {cfg['task']} ({Path(log_path).parent})", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def first_correct_histograms(groups, png):
    """Fig. 3 (right): one histogram per decoding setting of when (as a share of T) a trajectory is
    first correct, over the trajectories that are ever correct. groups: {setting name:
    overdenoise.overdenoise_stats}.
    """
    cols = min(len(groups), 4)
    n_rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(
        n_rows, cols, figsize=(3.2 * cols, 2.4 * n_rows), sharex=True, squeeze=False
    )
    for ax, (name, st) in zip(axes.flat, groups.items()):
        ax.hist(st["first_correct_fraction"], bins=10, range=(0, 1), color="C0")
        ax.set_title(name, fontsize=8)
        ax.set_ylabel("trajectories", fontsize=7)
    for ax in axes.flat[len(groups) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("first correct step / T", fontsize=8)
    fig.suptitle("When is the answer first correct? (trajectories ever correct)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def curves_over_seeds(series, title, xlabel, ylabel, png, log_x=False):
    """Learning curves, one colour per name, the mean over seeds as a line and min..max as a band.

    series: {name: [[(x, y), ...] one list per seed]}; seeds may stop at different x (only the x
    every seed has are drawn). Seeds whose x differ (IGPO's rollouts, which depend on its retries)
    are matched point by point instead, at the mean of their x."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (name, runs) in enumerate(series.items()):
        xs = sorted(set.intersection(*[{x for x, _ in run} for run in runs]))
        if len(xs) < min(len(run) for run in runs):  # x differ between seeds: match by position
            n = min(len(run) for run in runs)
            xs = [sum(run[j][0] for run in runs) / len(runs) for j in range(n)]
            ys = [[run[j][1] for run in runs] for j in range(n)]
        else:
            ys = [[dict(run)[x] for run in runs] for x in xs]
        if not xs:
            continue
        mean = [sum(v) / len(v) for v in ys]
        ax.plot(xs, mean, color=f"C{i}", marker=".", label=f"{name} ({len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(
                xs, [min(v) for v in ys], [max(v) for v in ys], color=f"C{i}", alpha=0.2
            )
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xscale="log" if log_x else "linear")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "log.jsonl").exists():
        sys.exit("usage: python plots.py RUN_DIR   (a directory holding log.jsonl)")
    print(training_curves(Path(sys.argv[1]) / "log.jsonl", Path(sys.argv[1]) / "plot.png"))
