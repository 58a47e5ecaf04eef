"""What the updates share around their losses: the micro-batches (`MicroBatch`, `policy_logp`),
accumulating gradients over them (`prepare`, `micro_step`, `fixed_logps`, `tally`) and the optimiser
step (`step`), plus the few sums over ranks the normalisers need. Each update function (updates.py)
runs the loop itself, nanoGPT's way: for every micro-batch, the log-probs, its algorithm's loss,
loss.backward(); then one `step`.
"""
import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import distributed
import mdpo
import models


@dataclass
class MicroBatch:
    """What one forward/backward trains on: b rows, each a model input and its scored tokens.

    inputs: the model input (b, P + L) of each inner step, indexed by step % len(inputs) (MDPO:
    x̄_t for every step; diffu-GRPO: one perturbed input per step). attention_mask (b, P + L);
    targets (b, L) the tokens scored; loss_mask (b, L) bool, the tokens in the loss; adv (b, 1);
    prompt_len P. old_logp and ref_logp: filled by `policy_steps`, one (b, L) tensor per input.
    denom (b, 1): what each row's token sum is divided by, when the algorithm fixes it per row
    (CJ-GRPO: its step's normaliser)."""
    inputs: list
    attention_mask: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    adv: torch.Tensor
    prompt_len: int
    old_logp: list | None = None
    ref_logp: list | None = None
    denom: torch.Tensor | None = None


def blank_batch(batch):
    """A copy of batch with nothing in its loss: it runs the same forward and backward (DDP and FSDP
    need every rank to) and adds nothing to the gradient."""
    return dataclasses.replace(batch, loss_mask=torch.zeros_like(batch.loss_mask))


def policy_logp(model, batch, k, temperature):
    """log p_theta of the targets given the input of inner step k: one forward -> (b, L)."""
    x = batch.inputs[k % len(batch.inputs)]  # (b, P+L)
    logits = models.logits(model, x, batch.attention_mask)[:, batch.prompt_len:]  # (b, L, V)
    return mdpo.token_logp(logits, batch.targets, temperature)  # (b, L)


# ---------------------------------------------------------------------------- accumulate, then step
def prepare(policy, reference, batches, cfg, temperature, has_signal):
    """Before an update's optimiser steps: None when no advantage on any rank is non-zero (nothing
    to train: every rank skips); else the micro-batches, padded with blank ones to the most any
    rank has (DDP and FSDP need every rank in every backward), with their fixed log-probs
    (`fix_log_probs`)."""
    device = next(policy.parameters()).device
    if not any_rank(has_signal, device):
        return None
    batches = distributed.pad_micro_batches(batches, blank_batch)
    fix_log_probs(policy, reference, batches, cfg, temperature)
    return batches


@contextlib.contextmanager
def micro_step(policy, i, n, cfg):
    """Around the forward and backward of micro-batch i of n: bf16 autocast (--precision), and under
    DDP no gradient all-reduce before the last one (no_sync), so the gradients add up locally and
    are reduced once. FSDP reduce-scatters after every micro-batch: a rank holds its gradient
    shard, never the full model's gradients."""
    device = next(policy.parameters()).device
    sync = isinstance(policy, DDP) and i < n - 1
    with policy.no_sync() if sync else contextlib.nullcontext(), \
            distributed.autocast(cfg.precision, device):
        yield


def fixed_logps(b, k, logp):
    """The rollout policy's and the reference's log-probs (b, L) of micro-batch b at inner step k:
    at mu = 1 the ratio of Eq. 5 is 1, old = logp.detach() (the paper's code); the reference's is
    None when there is no reference (beta = 0)."""
    i = k % len(b.inputs)
    old = b.old_logp[i] if b.old_logp else logp.detach()
    return old, (b.ref_logp[i] if b.ref_logp else None)


def tally(sums, loss, logp, old, ref, b, kl, eps):
    """Add one micro-batch to the update's sums: {"loss", "kl", "clipped", "tokens"} (the KL
    estimator `kl` summed over the loss's tokens, the tokens whose Eq. 5 minimum is clipped)."""
    tokens = b.loss_mask.sum().item()
    sums["loss"] += loss.item()
    sums["kl"] += kl(logp, ref)[b.loss_mask].sum().item() if ref is not None else 0.0
    sums["clipped"] += mdpo.clip_fraction(logp, old, b.adv, b.loss_mask, eps).item() * tokens
    sums["tokens"] += tokens


def new_sums():
    return {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "tokens": 0.0}


def step(policy, optimizer, cfg, sums):
    """The optimiser step after the update's backwards: the sums added over ranks, the gradient norm
    clipped, AdamW stepped (unless the loss or the norm is not finite: then the step is skipped and
    train.py logs it), the gradients zeroed. Returns the update's statistics: loss (mean over
    ranks), kl and clip_frac (per token), tokens, grad_norm, lr (+ skipped)."""
    device = next(policy.parameters()).device
    loss, kl, clipped, tokens = distributed.all_sum(list(sums.values()), device)
    loss /= world_size()
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
    # under FSDP the norm is a DTensor
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    stats = {"loss": loss, "kl": kl / max(tokens, 1), "clip_frac": clipped / max(tokens, 1),
             "tokens": tokens, "grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"]}
    if math.isfinite(loss) and math.isfinite(grad_norm):
        optimizer.step()
    else:
        stats["skipped"] = True
    optimizer.zero_grad(set_to_none=True)
    return stats


def fix_log_probs(policy, reference, batches, cfg, temperature):
    """Before the first inner step, under no grad: the rollout policy's log-probs (mu > 1 only: the
    training forward of the first step would give them too late) and the frozen reference's (when
    there is one), for every input of every micro-batch. temperature: the one the log-probs are
    scored at (MDPO, CJ-GRPO: the rollout's, so that the ratio is 1 at the first update; d1: 1)."""
    device = next(policy.parameters()).device
    with torch.no_grad(), distributed.autocast(cfg.precision, device):
        for b in batches:
            if cfg.inner_steps > 1:
                b.old_logp = [policy_logp(policy, b, k, temperature) for k in range(len(b.inputs))]
            if reference is not None:
                b.ref_logp = [policy_logp(reference, b, k, temperature)
                              for k in range(len(b.inputs))]


# ----------------------------------------------------------------------------- across ranks
def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def per_rank_share(counts, device):
    """Counts summed over ranks, divided by the world size W: the normaliser each rank divides its
    loss by, since DDP and FSDP average the ranks' gradients
    (sum over ranks of loss_r / (total / W), over W)."""
    return [c / world_size() for c in distributed.all_sum(counts, device)]


def rank_means(device, **values):
    """Each value averaged over ranks."""
    return dict(zip(values, per_rank_share(list(values.values()), device)))


def any_rank(flag, device):
    return per_rank_share([float(flag)], device)[0] > 0
