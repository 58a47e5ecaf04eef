"""Reading tools/reproduce.py's runs: their logs' rows, val curves and logged series, and the few
statistics the report takes of them."""
import json
import math
import statistics
from pathlib import Path

NAMES = {"mdpo": "MDPO", "diffu-grpo": "diffu-GRPO (d1)", "cj-grpo": "CJ-GRPO", "igpo": "IGPO"}


def rows(log):
    return [json.loads(line) for line in Path(log).read_text().splitlines()[1:]]


def curve(log, mu):
    """(optimiser steps, val accuracy %) of a run after its start, from its log (the start, update
    0, is its base's: the report takes it from the base's own measurement)."""
    return [(r["step"] * mu, 100 * r["eval_accuracy"]) for r in rows(log)
            if "eval_accuracy" in r and r["step"] > 0]


def series(log, key, mu):
    """(optimiser steps at the end of the update, value) of a logged quantity."""
    return [(r["step"] * mu, r[key]) for r in rows(log) if key in r and r["step"] > 0]


def final(points):
    """A run's final val accuracy: the mean of its last two scores (one score is noisier)."""
    return statistics.mean(y for _, y in points[-2:])


def mean_std(values):
    """'m ± s' over seeds (sample std); a single value alone."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def binomial_se(p, n):
    """Standard error (points) of an accuracy p (%) on n problems."""
    return math.sqrt(max(p, 0.5) * (100 - min(p, 99.5)) / n)


def difference(a, b, n):
    """Mean of a minus mean of b (points), with its standard error: the seeds' spread when there are
    several, the binomial one of a single accuracy on n problems otherwise."""

    def se(v):
        return statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else binomial_se(v[0], n)

    return statistics.mean(a) - statistics.mean(b), math.sqrt(se(a) ** 2 + se(b) ** 2)


