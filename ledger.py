"""The compute ledger: what each update of train.py costs, logged beside its statistics, so that the
algorithms can be compared at equal rollouts and equal model forwards as well as at equal optimiser
steps (the paper's unit; tools/report.py reads all three).

Each update's entries in OUT/log.jsonl, summed over ranks:
  rollouts                               completions sampled (IGPO: with its hinted retries)
  sample_forwards, sample_tokens         the policy's forwards without a graph: the rollouts' steps,
                                         the fixed log-probs when mu > 1, IGPO's entropy pass
  train_forwards, train_tokens           the policy's forwards with a graph (each has its backward)
  reference_forwards, reference_tokens   the frozen reference's forwards
  seconds                                the update's wall time (train.run_update)
A forward's tokens are its input's rows x length: what it costs, up to the output layer (which the
sampler runs on the rows it needs only). Evaluation is not an update's cost and is not counted.
"""
import json
from pathlib import Path

import torch

import distributed

FORWARDS = ("sample_forwards", "sample_tokens", "train_forwards", "train_tokens",
            "reference_forwards", "reference_tokens")
KEYS = ("rollouts",) + FORWARDS + ("seconds",)


def count_forwards(model, counts, reference=False):
    """Count every forward of `model` into `counts` (a dict of this rank's totals): the reference's
    under reference_*, the policy's under train_* when it builds a graph, sample_* otherwise."""
    def hook(module, args, kwargs):
        ids = args[0] if args else kwargs["input_ids"]  # (B, S)
        kind = "reference" if reference else ("train" if torch.is_grad_enabled() else "sample")
        counts[f"{kind}_forwards"] = counts.get(f"{kind}_forwards", 0) + 1
        counts[f"{kind}_tokens"] = counts.get(f"{kind}_tokens", 0) + ids.numel()
    model.register_forward_pre_hook(hook, with_kwargs=True)


def update_costs(cfg, stats, before, counts, device):
    """One update's ledger entries, summed over ranks: the forwards counted since `before` (a copy
    of counts taken before the update) and the rollouts it drew, G per prompt of the update plus,
    for IGPO, G per all-wrong group it retried with hints."""
    spent = distributed.all_sum([counts.get(k, 0) - before.get(k, 0) for k in FORWARDS], device)
    out = {k: int(v) for k, v in zip(FORWARDS, spent)}
    if cfg.algo != "sft":
        retried = stats.get("all_wrong_before_hints", 0.0) * cfg.prompts_per_update
        out["rollouts"] = round((cfg.prompts_per_update + retried) * cfg.group_size)
    return out


def totals(log_path):
    """The whole run's ledger (every session of it) from its log: {key: sum over updates}."""
    lines = Path(log_path).read_text().splitlines()[1:]
    rows = [json.loads(line) for line in lines if line.strip()]
    updates = [r for r in rows if r.get("step", 0) > 0]
    return {"updates": len(updates), **{k: sum(r.get(k, 0) for r in updates) for k in KEYS}}


def summary(log_path):
    """The run's ledger as one line, as train.py prints it at the end."""
    t = totals(log_path)
    forwards = t["sample_forwards"] + t["train_forwards"] + t["reference_forwards"]
    tokens = t["sample_tokens"] + t["train_tokens"] + t["reference_tokens"]
    return (f"compute: {t['updates']} updates, {t['rollouts']:,} rollouts, {forwards:,} model "
            f"forwards (sampling {t['sample_forwards']:,}, training {t['train_forwards']:,}, "
            f"reference {t['reference_forwards']:,}), {tokens:,} tokens through the "
            f"model, {t['seconds']:.0f} s in updates")
