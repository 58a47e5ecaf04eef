"""One update per algorithm, each a function that reads in paper order:
sample the group (with its trajectory) -> rewards -> advantages -> select -> loss -> backward -> step.

    sft_update          Eq. 1 on reference completions (LLaDA's SFT; the toy base)
    mdpo_update         Section 2.3 + App. A: intermediate rewards, Eq. 11 -> Eq. 6 -> top-c -> Eq. 4/5/12
    diffu_grpo_update   d1's baseline (grpo.py): final rewards, one-step log-probs, mu inner steps

Every update takes plain values: the policy (as wrapped for DDP/FSDP, or plain), the frozen reference
(or None when beta = 0), the optimizer, this rank's examples and a config.Config (the fields it reads
are the flags of the same names), and returns a dict of statistics averaged over ranks. What they share
is below them: sampling a group (`sample_group`), the micro-batches (`MicroBatch`), and the
accumulate-then-step machinery (`policy_steps`, `backward`, `apply_gradients`).
"""
import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import distributed
import grpo
import mdpo
import models
import rewards
import sample
import tasks


# ----------------------------------------------------------------------------- the updates
def sft_update(policy, optimizer, examples, cfg, *, tokenizer, mask_id, generator):
    """Eq. 1: prompt + reference completion (+ EOS padding), a random share of the completion masked, the
    masked tokens predicted. Each micro-batch's loss is a mean over its rows: we average the micro-batches.
    """
    device = next(policy.parameters()).device
    x, attn, maskable = (v.to(device) for v in tasks.sft_batch(tokenizer, examples, cfg.task, cfg.gen_length))
    chunks = torch.arange(len(x), device=device).split(cfg.micro_batch)

    def loss_of(c):
        x_tau, masked, p_mask = mdpo.sft_noise(x[c], maskable[c], mask_id, generator)  # (b, S), (b, S), (b, 1)
        logits = models.logits(policy, x_tau, attn[c])  # (b, S, V)
        loss = mdpo.masked_diffusion_loss(logits, x[c], masked, p_mask, maskable[c]) / len(chunks)
        return loss, 0.0, 0.0, masked.sum().item()
    totals = backward(policy, list(chunks), loss_of, cfg)
    return {"loss": totals["loss"], "tokens": totals["tokens"],
            **apply_gradients(policy, optimizer, cfg, totals["loss"])}


def mdpo_update(policy, reference, optimizer, examples, cfg, *, tokenizer, mask_id, generator, update=0):
    """One MDPO update (Section 2.3, App. A) on this rank's examples; returns its statistics."""
    t0 = time.time()
    # 1. G rollouts per prompt, with every state x̄_t and full prediction x_{t-1} (Eq. 3)
    group = sample_group(policy, tokenizer, examples, cfg, mask_id, generator, update, record=True)
    t1 = time.time()
    # 2. intermediate rewards: r(x_{t-1}) for every step of every rollout
    texts = tasks.step_texts(tokenizer, group.x_pred)  # N lists of T strings
    R = rewards.score_trajectory(texts, cfg.task, group.examples, cfg.format_score)  # (N, T)
    t2 = time.time()
    # 3. Eq. 11 step scores -> Eq. 6 group-relative advantages
    adv = mdpo.group_advantages(mdpo.step_scores(R), cfg.group_size).to(group.prompt_ids.device)  # (N, T)
    # 4. App. A: the c steps of largest non-zero |A| of each rollout
    sel, valid = mdpo.select_steps(adv, cfg.top_c)  # (N, c) each
    rows = torch.arange(len(sel), device=sel.device).repeat_interleave(sel.shape[1])[valid.flatten()]  # (n,)
    steps = sel[valid]  # (n,) the step of each trained (rollout, step) pair
    # 5. micro-batches of (x̄_t, x_{t-1}, A_t): the policy reads x̄_t, is scored on x_{t-1} where x̄_t is masked
    batches = [trajectory_batch(group, r, s, adv, mask_id)
               for r, s in zip(rows.split(cfg.micro_batch), steps.split(cfg.micro_batch))]
    # 6. Eq. 4 (with Eq. 5 and 12), normalised over the whole update on every rank (mdpo.loss_denominators)
    if not batches:  # nothing to train here; other ranks may have rows, so we still take part in the step
        first = torch.zeros(1, dtype=torch.long, device=adv.device)  # rollout 0, step 0, as a shape
        batches = [blank_batch(trajectory_batch(group, first, first, adv, mask_id))]
    counts = per_rank_share([len(rows), sum(b.loss_mask.sum().item() for b in batches), len(R)], adv.device)
    loss_fn = mdpo_objective(cfg, *counts)
    stats = policy_steps(policy, reference, optimizer, batches, loss_fn, cfg, cfg.temperature, counts[0] > 0)
    final = R[:, -1]  # (N,) the reward of the finished completion
    return {**stats, **rank_means(adv.device, reward=final.mean().item(), accuracy=(final == 1).float().mean().item(),
                                  trained_steps=valid.float().mean().item(),
                                  adv_abs=adv[rows, steps].abs().mean().item() if len(rows) else 0.0),
            "rollout_s": t1 - t0, "reward_s": t2 - t1, "train_s": time.time() - t2}


def diffu_grpo_update(policy, reference, optimizer, examples, cfg, *, tokenizer, mask_id, generator, update=0):
    """One diffu-GRPO update (d1, grpo.py) on this rank's examples: mu optimiser steps on one batch of
    rollouts, each step on its own view of them (prompt re-masked at random, completion all [MASK])."""
    t0 = time.time()
    # 1. G completions per prompt (no trajectory: d1 scores the finished completion only)
    group = sample_group(policy, tokenizer, examples, cfg, mask_id, generator, update, record=False)
    t1 = time.time()
    # 2. the final reward of each completion
    texts = tasks.completion_texts(tokenizer, group.completions)
    R = torch.tensor([rewards.reward(cfg.task, t, ex, cfg.format_score)
                      for t, ex in zip(texts, group.examples)])  # (N,)
    t2 = time.time()
    # 3. advantage r - group mean (d1 does not divide by the std)
    adv = grpo.group_advantages(R, cfg.group_size).to(group.prompt_ids.device)  # (N,)
    # 4. every completion token up to its first EOS is trained; one perturbed input per inner step
    loss_mask = grpo.completion_mask(group.completions, tokenizer.eos_token_id)  # (N, L)
    P = group.prompt_ids.shape[1]
    batches = []
    for c in torch.arange(len(R), device=adv.device).split(cfg.micro_batch):
        inputs = [grpo.perturbed_input(group.prompt_ids[c], group.completions[c], group.attention_mask[c, :P],
                                       mask_id, cfg.p_mask, generator) for _ in range(cfg.inner_steps)]
        batches.append(MicroBatch(inputs, group.attention_mask[c], group.completions[c], loss_mask[c],
                                  adv[c, None], P))
    # 5. d1's loss (Eq. 5's clipped surrogate, k3 KL), a mean over every trained token of the update
    loss_fn = grpo_objective(cfg, per_rank_share([loss_mask.sum().item()], adv.device)[0])
    # as d1, a batch whose advantages are all 0 is still trained on (its KL term)
    stats = policy_steps(policy, reference, optimizer, batches, loss_fn, cfg, 1.0, True)
    return {**stats, **rank_means(adv.device, reward=R.mean().item(), accuracy=(R == 1).float().mean().item(),
                                  adv_abs=adv.abs().mean().item()),
            "rollout_s": t1 - t0, "reward_s": t2 - t1, "train_s": time.time() - t2}


UPDATES = {"mdpo": mdpo_update, "diffu-grpo": diffu_grpo_update}


def mdpo_objective(cfg, n_steps, n_tokens, n_rollouts):
    """Eq. 4 (with Eq. 5 and 12) of one micro-batch, normalised by `mdpo.loss_denominators` over the whole
    update: its trained (rollout, step) rows, their masked tokens and its rollouts (per rank share).
    Returns loss_fn(batch, logp, old_logp, ref_logp) -> (loss, the KL estimator), as `policy_steps` takes."""
    def loss_fn(b, logp, old_logp, ref_logp):
        denom = mdpo.loss_denominators(b.loss_mask, cfg.loss_norm, n_steps, n_tokens, n_rollouts)  # (b, 1)
        return mdpo.mdpo_loss(logp, old_logp, ref_logp, b.adv, b.loss_mask, cfg.eps, cfg.beta, denom), mdpo.kl_k2
    return loss_fn


def grpo_objective(cfg, n_tokens):
    """d1's loss of one micro-batch, a mean over all n_tokens trained tokens of the update (per rank share)."""
    def loss_fn(b, logp, old_logp, ref_logp):
        return grpo.grpo_loss(logp, old_logp, ref_logp, b.adv, b.loss_mask, cfg.eps, cfg.beta, n_tokens), grpo.kl_k3
    return loss_fn


# ----------------------------------------------------------------------------- rollouts
@dataclass
class Group:
    """G rollouts of each prompt, the G of a prompt in contiguous rows (N = prompts * G).

    prompt_ids (N, P) left-padded; attention_mask (N, P + L); completions (N, L); x_bar, x_pred (T, N, L)
    the recorded trajectory (None without record); examples: the N examples, one per row."""
    prompt_ids: torch.Tensor
    attention_mask: torch.Tensor
    completions: torch.Tensor
    x_bar: torch.Tensor | None
    x_pred: torch.Tensor | None
    examples: list


def sample_group(policy, tokenizer, examples, cfg, mask_id, generator, update, record):
    """G rollouts of each example at cfg.temperature with the authors' "sampling" confidence. Block sizes
    alternate over groups (Section 3.4's mixture of semi-AR and pure-Diff), shifted by the update index."""
    model = policy.module if isinstance(policy, DDP) else policy
    G, device = cfg.group_size, next(model.parameters()).device
    ids, attn = models.encode_prompts(tokenizer, tasks.prompt_texts(cfg.task, examples))  # (n, P) each
    ids, attn = ids.repeat_interleave(G, 0).to(device), attn.repeat_interleave(G, 0).to(device)  # (N, P)
    N, P, L = len(ids), ids.shape[1], cfg.gen_length
    sizes = cfg.block_lengths
    block_of_row = torch.tensor([sizes[(update + n // G) % len(sizes)] for n in range(N)])  # (N,)
    x = torch.empty(N, P + L, dtype=torch.long, device=device)  # (N, P+L)
    x_bar = torch.empty(cfg.steps, N, L, dtype=torch.long, device=device) if record else None  # (T, N, L)
    x_pred = torch.empty_like(x_bar) if record else None  # (T, N, L)
    for block in sizes:  # every rank runs the same sizes in the same order: FSDP's gathers are collectives
        rows = (block_of_row == block).nonzero()[:, 0].to(device)
        if not len(rows):
            continue
        with distributed.autocast(cfg.precision, device):
            out = sample.generate(model, ids[rows], attention_mask=attn[rows], gen_length=L, block_length=block,
                                  steps=cfg.steps, remasking=cfg.remasking, temperature=cfg.temperature,
                                  confidence="sampling", mask_id=mask_id, record=record, generator=generator,
                                  eoser_gamma_min=sample.eoser_gamma_min(cfg.eoser, None, "linear"),
                                  eos_id=tokenizer.eos_token_id)
        if record:
            x[rows], (x_bar[:, rows], x_pred[:, rows]) = out[0], (out[1].x_bar, out[1].x_pred)
        else:
            x[rows] = out
    full_attn = torch.cat([attn, attn.new_ones(N, L)], 1)  # (N, P+L)
    expanded = [ex for ex in examples for _ in range(G)]
    return Group(ids, full_attn, x[:, P:], x_bar, x_pred, expanded)


# ----------------------------------------------------------------------------- micro-batches
@dataclass
class MicroBatch:
    """What one forward/backward trains on: b rows, each a model input and the tokens it is scored on.

    inputs: the model input (b, P + L) of each inner step, indexed by step % len(inputs) (MDPO: x̄_t for
    every step; diffu-GRPO: one perturbed input per step). attention_mask (b, P + L); targets (b, L) the
    tokens scored; loss_mask (b, L) bool, the tokens in the loss; adv (b, 1); prompt_len P. old_logp and
    ref_logp: filled by `policy_steps`, one (b, L) tensor per input."""
    inputs: list
    attention_mask: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    adv: torch.Tensor
    prompt_len: int
    old_logp: list | None = None
    ref_logp: list | None = None


def trajectory_batch(group, rows, steps, adv, mask_id):
    """MDPO's rows (rollout n, step s): input [prompt; x̄_t], target x_{t-1}, masked where x̄_t is [MASK]."""
    x_bar = group.x_bar[steps, rows]  # (b, L)
    x = torch.cat([group.prompt_ids[rows], x_bar], 1)  # (b, P+L)
    return MicroBatch([x], group.attention_mask[rows], group.x_pred[steps, rows], x_bar == mask_id,
                      adv[rows, steps][:, None], group.prompt_ids.shape[1])


def blank_batch(batch):
    """A copy of batch with nothing in its loss: it runs the same forward and backward (DDP and FSDP need
    every rank to) and adds nothing to the gradient."""
    return dataclasses.replace(batch, loss_mask=torch.zeros_like(batch.loss_mask))


def policy_logp(model, batch, i, temperature):
    """log p_theta of the targets given the i-th input: one forward -> (b, L)."""
    x = batch.inputs[i]  # (b, P+L)
    logits = models.logits(model, x, batch.attention_mask)[:, batch.prompt_len:]  # (b, L, V)
    return mdpo.token_logp(logits, batch.targets, temperature)  # (b, L)


# ----------------------------------------------------------------------------- accumulate, then step
def policy_steps(policy, reference, optimizer, batches, loss_fn, cfg, temperature, has_signal):
    """cfg.inner_steps optimiser steps over the same micro-batches, PPO-style.

    loss_fn(batch, logp, old_logp, ref_logp) -> (loss divided by the update's normaliser, KL estimator).
    old_logp: at mu = 1 the ratio of Eq. 5 is 1 and old_logp = logp.detach() (the paper's code); at mu > 1
    it is computed once, before the first step, with the training forward itself, so the first ratio is
    exactly 1. temperature: the one the log-probs are scored at (MDPO: the rollout's, so that the ratio is
    1 at the first update; d1: 1). has_signal: False when no advantage anywhere on any rank is non-zero:
    then nothing is trained (returns {"no_signal": True}).
    """
    device = next(policy.parameters()).device
    if not any_rank(has_signal, device):
        return {"no_signal": True}
    batches = distributed.pad_micro_batches(batches, blank_batch)
    fix_log_probs(policy, reference, batches, cfg, temperature)
    stats = {}
    for k in range(cfg.inner_steps):
        totals = backward(policy, batches, lambda b: batch_loss(policy, b, k, loss_fn, cfg, temperature), cfg)
        tokens = max(totals["tokens"], 1)
        stats = {"loss": totals["loss"], "kl": totals["kl"] / tokens, "clip_frac": totals["clipped"] / tokens,
                 "tokens": totals["tokens"], **apply_gradients(policy, optimizer, cfg, totals["loss"])}
    return stats


def batch_loss(policy, b, k, loss_fn, cfg, temperature):
    """The loss of micro-batch b at inner step k -> (loss, KL sum, clipped tokens, tokens in the loss)."""
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
    """Before the first inner step, under no grad: the rollout policy's log-probs (mu > 1 only) and the
    frozen reference's (when there is one), for every input of every micro-batch."""
    device = next(policy.parameters()).device
    with torch.no_grad(), distributed.autocast(cfg.precision, device):
        for b in batches:
            if cfg.inner_steps > 1:
                b.old_logp = [policy_logp(policy, b, k, temperature) for k in range(len(b.inputs))]
            if reference is not None:
                b.ref_logp = [policy_logp(reference, b, k, temperature) for k in range(len(b.inputs))]


def backward(policy, batches, loss_of, cfg):
    """Forward and backward every micro-batch; gradients add up. loss_of(batch) -> (loss, KL sum, clipped
    tokens, tokens). Returns those summed over micro-batches and ranks (the loss averaged over ranks).

    DDP all-reduces the gradients on the last micro-batch only (no_sync before it). FSDP reduce-scatters
    after every micro-batch, so a rank holds its gradient shard, never the full model's gradients.
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
    """Clip the gradient norm, step (unless the loss or the norm is not finite: then the step is skipped,
    and train.py logs it), zero the gradients. Returns {"grad_norm", "lr"} (+ "skipped": True)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)  # FSDP
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
    """Counts summed over ranks, divided by the world size W: the normaliser each rank divides its loss by,
    since DDP and FSDP average the ranks' gradients (sum over ranks of loss_r / (total / W), over W)."""
    return [c / world_size() for c in distributed.all_sum(counts, device)]


def rank_means(device, **values):
    """Each value averaged over ranks."""
    return dict(zip(values, per_rank_share(list(values.values()), device)))


def any_rank(flag, device):
    return per_rank_share([float(flag)], device)[0] > 0
