"""The report's accounting (tools/report.py): what an algorithm's progress costs on three axes, and
differences between algorithms taken seed by seed.

Axes (each update's ledger in log.jsonl, ledger.py):
  optimiser steps   the paper's unit: MDPO takes 1 per batch of rollouts, diffu-GRPO and CJ-GRPO
                    mu (12 on toy-digits), IGPO 4, so at equal steps they have drawn fewer rollouts
  rollouts          completions sampled (IGPO's hinted retries included)
  tokens            rows x length through the model in every forward: rollouts, training,
                    reference (the cost of an update on this hardware, up to the output layer)
  seconds           wall time of the updates on one machine
Paired differences: seed s's runs of every algorithm start from the same SFT base s, and the bases
differ (val accuracy spreads ~5 points): a difference taken within a seed cancels its base, while an
unpaired standard error would count the spread of the bases twice.
"""
import math
import statistics

import ledger
from tools import runlogs

AXES = {"optimiser steps": None, "rollouts": ("rollouts",),
        "tokens": tuple(k for k in ledger.FORWARDS if k.endswith("_tokens")),
        "seconds": ("seconds",)}


def cost_curve(log, mu, axis):
    """(cumulative cost on `axis`, val accuracy %) at every evaluation of a run after the start."""
    total, out = 0.0, []
    for r in runlogs.rows(log):
        if r["step"] == 0:
            continue
        total += mu if AXES[axis] is None else sum(r.get(k, 0) for k in AXES[axis])
        if "eval_accuracy" in r:
            out.append((total, 100 * r["eval_accuracy"]))
    return out


def reach(curve, target):
    """The cost at which a run's val accuracy first reaches target, or None."""
    return next((x for x, y in curve if y >= target), None)


def efficiency(res, algos):
    """For each ordered pair (A, B): the cost at which each seed of A first reaches B's final val
    accuracy (mean over B's seeds), on every axis: mean ± std over the seeds that reach it."""
    seeds = range(res["cfg"]["seeds"])
    runs = {a: [res["logs"][a, s] for s in seeds if (a, s) in res["logs"]] for a in algos}
    finals = {a: statistics.mean(runlogs.final(runlogs.curve(log, res["mu"][a]))
                                 for log in logs) for a, logs in runs.items() if logs}
    head = ["| reaches | target (val %) | seeds | " + " | ".join(AXES) + " |",
            "|---" * (3 + len(AXES)) + "|"]
    lines = []
    for a in finals:
        for b in finals:
            if a == b:
                continue
            costs = {axis: [reach(cost_curve(log, res["mu"][a], axis), finals[b])
                            for log in runs[a]] for axis in AXES}
            got = [c for c in costs["optimiser steps"] if c is not None]
            cells = [spread([c for c in costs[axis] if c is not None], axis) for axis in AXES]
            lines.append(f"| {runlogs.NAMES[a]} reaches {runlogs.NAMES[b]}'s final | "
                         f"{finals[b]:.1f} | {len(got)}/{len(runs[a])} | " + " | ".join(cells)
                         + " |")
    return head + lines


def longer_run(res):
    """diffu-GRPO's seed 0 trained --longer times as many optimiser steps: where it reaches MDPO's
    final val accuracy on each axis, if it does. A line of text, or [] without that run."""
    if ("diffu-grpo-longer", 0) not in res["logs"] or not any(k[0] == "mdpo" for k in res["logs"]):
        return []
    mdpo = [log for (a, s), log in res["logs"].items() if a == "mdpo"]
    target = statistics.mean(runlogs.final(runlogs.curve(log, res["mu"]["mdpo"])) for log in mdpo)
    log, mu = res["logs"]["diffu-grpo-longer", 0], res["mu"]["diffu-grpo"]
    costs = {axis: reach(cost_curve(log, mu, axis), target) for axis in AXES}
    horizon = res["cfg"]["steps"] * res["cfg"]["longer"]
    if costs["optimiser steps"] is None:
        return [f"diffu-GRPO, seed 0, trained {horizon} optimiser steps: does not reach MDPO's "
                f"final {target:.1f}% within them."]
    at = ", ".join(f"{spread([c], axis)} {axis}" for axis, c in costs.items())
    return [f"diffu-GRPO, seed 0, trained {horizon} optimiser steps: reaches MDPO's final "
            f"{target:.1f}% at {at}."]


def spread(values, axis):
    """'m ± s' of the costs at which seeds reached a target ('-' when none did); tokens in
    millions."""
    if not values:
        return "-"
    scale, unit = (1e6, "M") if axis == "tokens" else (1, "")
    values = [v / scale for v in values]
    digits = 1 if axis in ("tokens", "seconds") else 0
    if len(values) == 1:
        return f"{values[0]:.{digits}f}{unit}"
    return (f"{statistics.mean(values):.{digits}f}{unit} ± "
            f"{statistics.stdev(values):.{digits}f}{unit}")


def at_equal_rollouts(res, algos):
    """Val accuracy of each algorithm (mean ± std over seeds) once it has drawn as many rollouts as
    the algorithm that draws the fewest in its budget of optimiser steps: each seed's last
    evaluation at or under that many rollouts."""
    seeds = range(res["cfg"]["seeds"])
    runs = {a: [res["logs"][a, s] for s in seeds if (a, s) in res["logs"]] for a in algos}
    runs = {a: logs for a, logs in runs.items() if logs}

    def points(a, log):  # (rollouts, optimiser steps, val %) at every evaluation
        by_rollouts = cost_curve(log, res["mu"][a], "rollouts")
        by_steps = cost_curve(log, res["mu"][a], "optimiser steps")
        return [(r, s, y) for (r, y), (s, _) in zip(by_rollouts, by_steps)]

    budget = min(points(a, log)[-1][0] for a, logs in runs.items() for log in logs)
    lines = [f"At equal rollouts: {budget:,.0f}, what the algorithm that draws the fewest draws in "
             f"{res['cfg']['steps']} optimiser steps (val, each seed's last evaluation within "
             "that many rollouts):", "",
             "| algorithm | optimiser steps there | val accuracy (%) |", "|---|---|---|"]
    for a, logs in runs.items():
        last = [max((p for p in points(a, log) if p[0] <= budget), default=None) for log in logs]
        last = [p for p in last if p is not None]
        steps = ", ".join(sorted({f"{p[1]:.0f}" for p in last})) or "-"
        accuracy = runlogs.mean_std([p[2] for p in last]) if last else "no evaluation yet"
        lines.append(f"| {runlogs.NAMES[a]} | {steps} | {accuracy} |")
    return lines


def paired_difference(a, b, n):
    """Mean over seeds of a_s - b_s (points), the same seed's base under both, with its standard
    error: the per-seed differences' spread / sqrt(seeds); with one seed, the binomial SE of the
    two accuracies on n problems."""
    d = [x - y for x, y in zip(a, b)]
    if len(d) > 1:
        return statistics.mean(d), statistics.stdev(d) / math.sqrt(len(d))
    return d[0], math.hypot(runlogs.binomial_se(a[0], n), runlogs.binomial_se(b[0], n))
