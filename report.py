"""Pictures of runs: a training log as curves (train.py --plot), and the figures of reproduce.py.

    python train.py --out out/run --plot     # a finished run: nothing is trained again, only plot.png is drawn
"""
import json
from pathlib import Path


def plot_log(log_path, png):
    """log.jsonl -> one panel per logged quantity against the update, raw and as a running mean over 10 updates."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines()[1:]]
    keys = [k for k in ("loss", "reward", "accuracy", "eval_accuracy", "kl", "trained_steps", "clip_frac")
            if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, k in zip(axes[0], keys):
        steps, values = zip(*[(r["step"], r[k]) for r in rows if k in r])
        ax.plot(steps, values, alpha=0.4, marker="." if len(steps) < 30 else None)
        smooth = [sum(values[max(0, i - 9):i + 1]) / len(values[max(0, i - 9):i + 1]) for i in range(len(values))]
        ax.plot(steps, smooth, color="C0")
        ax.set_title(k)
        ax.set_xlabel("update")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
