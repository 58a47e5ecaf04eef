"""What every RL update shares once its rollouts are scored: the micro-batches (`MicroBatch`) and
the accumulate-then-step machinery, PPO-style over mu inner steps (`policy_steps`: `fix_log_probs`,
`backward`, `apply_gradients`), plus the few sums over ranks the normalisers need.
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


def policy_logp(model, batch, i, temperature):
    """log p_theta of the targets given the i-th input: one forward -> (b, L)."""
    x = batch.inputs[i]  # (b, P+L)
    logits = models.logits(model, x, batch.attention_mask)[:, batch.prompt_len:]  # (b, L, V)
    return mdpo.token_logp(logits, batch.targets, temperature)  # (b, L)


# ---------------------------------------------------------------------------- accumulate, then step
def policy_steps(policy, reference, optimizer, batches, loss_fn, cfg, temperature, has_signal):
    """cfg.inner_steps optimiser steps over the same micro-batches, PPO-style.

    loss_fn(batch, logp, old_logp, ref_logp) -> (loss divided by the update's normaliser, KL
    estimator). old_logp: at mu = 1 the ratio of Eq. 5 is 1 and old_logp = logp.detach() (the
    paper's code); at mu > 1 it is computed once, before the first step, with the training forward
    itself, so the first ratio is exactly 1. temperature: the one the log-probs are scored at (MDPO:
    the rollout's, so that the ratio is 1 at the first update; d1: 1). has_signal: False when no
    advantage anywhere on any rank is non-zero: then nothing is trained
    (returns {"no_signal": True}).
    """
    device = next(policy.parameters()).device
    if not any_rank(has_signal, device):
        return {"no_signal": True}
    batches = distributed.pad_micro_batches(batches, blank_batch)
    fix_log_probs(policy, reference, batches, cfg, temperature)
    stats = {}
    for k in range(cfg.inner_steps):
        totals = backward(policy, batches,
                          lambda b: batch_loss(policy, b, k, loss_fn, cfg, temperature), cfg)
        tokens = max(totals["tokens"], 1)
        stats = {"loss": totals["loss"], "kl": totals["kl"] / tokens,
                 "clip_frac": totals["clipped"] / tokens, "tokens": totals["tokens"],
                 **apply_gradients(policy, optimizer, cfg, totals["loss"])}
    return stats


def batch_loss(policy, b, k, loss_fn, cfg, temperature):
    """The loss of micro-batch b at inner step k -> (loss, KL sum, clipped tokens, tokens in the
    loss)."""
    i = k % len(b.inputs)  # the input of this step, and its fixed log-probs
    logp = policy_logp(policy, b, i, temperature)  # (b, L)
    old = b.old_logp[i] if b.old_logp else logp.detach()  # mu = 1: the ratio of Eq. 5 is 1
    ref = b.ref_logp[i] if b.ref_logp else None
    loss, kl = loss_fn(b, logp, old, ref)
    tokens = b.loss_mask.sum().item()
    kl_sum = kl(logp, ref)[b.loss_mask].sum().item() if ref is not None else 0.0
    clipped = mdpo.clip_fraction(logp, old, b.adv, b.loss_mask, cfg.eps).item() * tokens
    return loss, kl_sum, clipped, tokens


def fix_log_probs(policy, reference, batches, cfg, temperature):
    """Before the first inner step, under no grad: the rollout policy's log-probs (mu > 1 only) and
    the frozen reference's (when there is one), for every input of every micro-batch."""
    device = next(policy.parameters()).device
    with torch.no_grad(), distributed.autocast(cfg.precision, device):
        for b in batches:
            if cfg.inner_steps > 1:
                b.old_logp = [policy_logp(policy, b, k, temperature) for k in range(len(b.inputs))]
            if reference is not None:
                b.ref_logp = [policy_logp(reference, b, k, temperature)
                              for k in range(len(b.inputs))]


def backward(policy, batches, loss_of, cfg):
    """Forward and backward every micro-batch; gradients add up. loss_of(batch) -> (loss, KL sum,
    clipped tokens, tokens). Returns those summed over micro-batches and ranks (the loss averaged
    over ranks).

    DDP all-reduces the gradients on the last micro-batch only (no_sync before it). FSDP
    reduce-scatters after every micro-batch, so a rank holds its gradient shard, never the full
    model's gradients.
    """
    ddp = isinstance(policy, DDP)
    device = next(policy.parameters()).device
    sums = [0.0, 0.0, 0.0, 0.0]
    for i, b in enumerate(batches):
        last = i == len(batches) - 1
        with policy.no_sync() if ddp and not last else contextlib.nullcontext(), \
                distributed.autocast(cfg.precision, device):
            loss, kl, clipped, tokens = loss_of(b)
        loss.backward()
        sums = [s + v for s, v in zip(sums, [loss.item(), kl, clipped, tokens])]
    loss, kl, clipped, tokens = distributed.all_sum(sums, device)
    return {"loss": loss / world_size(), "kl": kl, "clipped": clipped, "tokens": tokens}


def apply_gradients(policy, optimizer, cfg, loss):
    """Clip the gradient norm, step (unless the loss or the norm is not finite: then the step is
    skipped, and train.py logs it), zero the gradients. Returns {"grad_norm", "lr"}
    (+ "skipped": True)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
    # under FSDP the norm is a DTensor
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    stats = {"grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"]}
    if math.isfinite(loss) and math.isfinite(grad_norm):
        optimizer.step()
    else:
        stats["skipped"] = True
    optimizer.zero_grad(set_to_none=True)
    return stats


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
