"""One update per algorithm, each a function that reads in paper order: sample the group (with
its trajectory) -> rewards -> advantages -> select -> loss -> backward -> step.

    sft_update          Eq. 1 on reference completions (LLaDA's SFT; the toy base)
    mdpo_update         MDPO, Section 2.3 + App. A: intermediate rewards,
                        Eq. 11 -> 6 -> top-c -> Eq. 4/5/12
    diffu_grpo_update   d1's baseline (grpo.py): final rewards, one-step log-probs, mu inner steps
    cj_grpo_update      CJ-GRPO (Yang et al. 2025): final rewards, every step the rollout took
    igpo_update         IGPO (Zhao et al. 2025): diffu-GRPO, all-wrong groups retried with hints

Every update takes plain values: the policy (as wrapped for DDP/FSDP, or plain), the frozen
reference (or None when beta = 0), the optimizer, this rank's examples and a config.Config (the
fields it reads are the flags of the same names), and returns a dict of statistics averaged over
ranks. What they share lives in rollouts.py (sampling a group) and optimise.py (micro-batches,
accumulate, step).
"""
import random
import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import grpo
import mdpo
import models
import rewards
import rollouts
import tasks
from optimise import (MicroBatch, apply_gradients, backward, blank_batch, per_rank_share,
                      policy_steps, rank_means)


# ----------------------------------------------------------------------------- the updates
def sft_update(policy, optimizer, examples, cfg, *, tokenizer, mask_id, generator):
    """Eq. 1: prompt + reference completion (+ EOS padding), a random share of the completion
    masked, the masked tokens predicted. Each micro-batch's loss is a mean over its rows: we average
    the micro-batches.
    """
    device = next(policy.parameters()).device
    x, attn, maskable = (v.to(device)
                         for v in tasks.sft_batch(tokenizer, examples, cfg.task, cfg.gen_length))
    chunks = torch.arange(len(x), device=device).split(cfg.micro_batch)

    def loss_of(c):
        x_tau, masked, p_mask = mdpo.sft_noise(x[c], maskable[c], mask_id,
                                               generator)  # (b, S), (b, S), (b, 1)
        logits = models.logits(policy, x_tau, attn[c])  # (b, S, V)
        loss = mdpo.masked_diffusion_loss(logits, x[c], masked, p_mask, maskable[c]) / len(chunks)
        return loss, 0.0, 0.0, masked.sum().item()
    totals = backward(policy, list(chunks), loss_of, cfg)
    return {"loss": totals["loss"], "tokens": totals["tokens"],
            **apply_gradients(policy, optimizer, cfg, totals["loss"])}


def mdpo_update(policy, reference, optimizer, examples, cfg, *, tokenizer, mask_id, generator,
                update=0):
    """One MDPO update (Section 2.3, App. A) on this rank's examples; returns its statistics."""
    t0 = time.time()
    # 1. G rollouts per prompt, with every state x̄_t and full prediction x_{t-1} (Eq. 3)
    group = rollouts.sample_group(policy, tokenizer, examples, cfg, mask_id, generator, update,
                                  record=True)
    t1 = time.time()
    # 2. intermediate rewards: r(x_{t-1}) for every step of every rollout
    texts = tasks.step_texts(tokenizer, group.x_pred)  # N lists of T strings
    R = rewards.score_trajectory(texts, cfg.task, group.examples, cfg.format_score)  # (N, T)
    t2 = time.time()
    # 3. Eq. 11 step scores -> Eq. 6 group-relative advantages
    adv = mdpo.group_advantages(
        mdpo.step_scores(R), cfg.group_size).to(group.prompt_ids.device)  # (N, T)
    # 4. App. A: the c steps of largest non-zero |A| of each rollout
    sel, valid = mdpo.select_steps(adv, cfg.top_c)  # (N, c) each
    rows = (torch.arange(len(sel), device=sel.device)
            .repeat_interleave(sel.shape[1])[valid.flatten()])  # (n,)
    steps = sel[valid]  # (n,) the step of each trained (rollout, step) pair
    # 5. micro-batches of (x̄_t, x_{t-1}, A_t): the policy reads x̄_t, is scored on x_{t-1} where
    # x̄_t is masked
    batches = [trajectory_batch(group, r, s, adv, mask_id)
               for r, s in zip(rows.split(cfg.micro_batch), steps.split(cfg.micro_batch))]
    # 6. Eq. 4 (with Eq. 5 and 12), normalised over the whole update on every rank
    # (mdpo.loss_denominators)
    # nothing to train here; other ranks may have rows, so we still take part in the step
    if not batches:
        first = torch.zeros(1, dtype=torch.long, device=adv.device)  # rollout 0, step 0, as a shape
        batches = [blank_batch(trajectory_batch(group, first, first, adv, mask_id))]
    counts = per_rank_share([len(rows), sum(b.loss_mask.sum().item() for b in batches), len(R)],
                            adv.device)
    loss_fn = mdpo_objective(cfg, *counts)
    stats = policy_steps(policy, reference, optimizer, batches, loss_fn, cfg, cfg.temperature,
                         counts[0] > 0)
    final = R[:, -1]  # (N,) the reward of the finished completion
    return {**stats, **rank_means(adv.device, reward=final.mean().item(),
                                  accuracy=(final == 1).float().mean().item(),
                                  trained_steps=valid.float().mean().item(),
                                  adv_abs=(adv[rows, steps].abs().mean().item()
                                           if len(rows) else 0.0)),
            "rollout_s": t1 - t0, "reward_s": t2 - t1, "train_s": time.time() - t2}


def diffu_grpo_update(policy, reference, optimizer, examples, cfg, *, tokenizer, mask_id, generator,
                      update=0):
    """One diffu-GRPO update (d1, grpo.py) on this rank's examples: mu optimiser steps on one batch
    of rollouts, each step on its own view of them (prompt re-masked at random, completion all
    [MASK])."""
    t0 = time.time()
    # 1. G completions per prompt (no trajectory: d1 scores the finished completion only)
    group = rollouts.sample_group(policy, tokenizer, examples, cfg, mask_id, generator, update,
                                  record=False)
    t1 = time.time()
    # 2. the final reward of each completion
    R = final_rewards(group, tokenizer, cfg)  # (N,)
    t2 = time.time()
    # 3. advantage r - group mean (d1 does not divide by the std)
    adv = grpo.group_advantages(R, cfg.group_size).to(group.prompt_ids.device)  # (N,)
    # 4. every completion token up to its first EOS is trained; one perturbed input per inner step
    loss_mask = grpo.completion_mask(group.completions, tokenizer.eos_token_id)  # (N, L)
    batches = one_step_batches(group, adv, loss_mask, cfg, mask_id, generator)
    # 5. d1's loss (Eq. 5's clipped surrogate, k3 KL), a mean over every trained token of the update
    loss_fn = grpo_objective(cfg, per_rank_share([loss_mask.sum().item()], adv.device)[0])
    # as d1, a batch whose advantages are all 0 is still trained on (its KL term)
    stats = policy_steps(policy, reference, optimizer, batches, loss_fn, cfg, 1.0, True)
    return {**stats, **final_reward_stats(R, adv, cfg), "rollout_s": t1 - t0, "reward_s": t2 - t1,
            "train_s": time.time() - t2}


def cj_grpo_update(policy, reference, optimizer, examples, cfg, *, tokenizer, mask_id, generator,
                   update=0):
    """One CJ-GRPO update (Yang et al. 2025; code: yjyddq/EOSER-ASS-RL, cj-grpo/): the policy is
    scored on every denoising step the rollout took, on exactly the tokens that step revealed, with
    mu optimiser steps.

    Beside MDPO (both train on the recorded trajectory, x̄_t -> x_{t-1}):
                  CJ-GRPO                                           MDPO
      rewards     the final reward only, one advantage per rollout  every step's (Eq. 11, 6)
      tokens      the tokens revealed at the step                   every masked position
      steps       all T steps, each a mean over its tokens          the top-c steps by |A|
    Memory: T (rollout, step) rows per rollout, micro-batched like MDPO's, so a micro-batch holds
    --micro-batch rows whatever T is (EAR builds all T steps' graphs at once and checkpoints them).
    """
    t0 = time.time()
    # 1. G rollouts per prompt with their trajectories, as MDPO's
    group = rollouts.sample_group(policy, tokenizer, examples, cfg, mask_id, generator, update,
                                  record=True)
    t1 = time.time()
    # 2. the final reward of each rollout: no intermediate rewards
    R = final_rewards(group, tokenizer, cfg)  # (N,)
    t2 = time.time()
    # 3. A = r - group mean (EAR's code; its paper also divides by the std), the same at every step
    adv = grpo.group_advantages(R, cfg.group_size).to(group.prompt_ids.device)  # (N,)
    # 4. every step of every rollout, on the tokens it revealed
    revealed = grpo.revealed_per_step(group.x_bar, group.completions, mask_id)  # (T, N, L)
    steps, rows = revealed.any(-1).nonzero(as_tuple=True)  # (n,) each: the (step, rollout) rows
    # 5. the loss: each step's mean over its revealed tokens, then the mean over steps
    step_tokens = per_rank_share(revealed.sum((1, 2)).tolist(), adv.device)  # (T,) over the update
    denom = grpo.cj_grpo_denominators(torch.tensor(step_tokens, device=adv.device))  # (T,)
    batches = []
    for r, s in zip(rows.split(cfg.micro_batch), steps.split(cfg.micro_batch)):
        b = trajectory_batch(group, r, s, adv[:, None].expand(-1, cfg.steps), mask_id)
        b.loss_mask, b.denom = revealed[s, r], denom[s][:, None]  # (b, L), (b, 1)
        batches.append(b)
    stats = policy_steps(policy, reference, optimizer, batches, cj_grpo_objective(cfg), cfg,
                         cfg.temperature, True)
    return {**stats, **final_reward_stats(R, adv, cfg), "rollout_s": t1 - t0, "reward_s": t2 - t1,
            "train_s": time.time() - t2}


def igpo_update(policy, reference, optimizer, examples, cfg, *, tokenizer, mask_id, generator,
                update=0):
    """One IGPO update (Zhao et al. 2025; code: facebookresearch/igpo): diffu-GRPO's, except that a
    group whose rollouts are all wrong is generated once more with hint chunks of the reference
    solution written into the canvas, and up to 4 verified-correct hinted rollouts replace its first
    ones: the group gets a non-zero advantage instead of none. Hint tokens are trained like
    generated ones, except that the entropy filter keeps only the --igpo-entropy-keep share of them
    with the highest entropy."""
    t0 = time.time()
    # 1. G completions per prompt
    group = rollouts.sample_group(policy, tokenizer, examples, cfg, mask_id, generator, update,
                                  record=False)
    # 2. the final reward of each completion (correctness: reward 1)
    R = final_rewards(group, tokenizer, cfg)  # (N,)
    all_wrong = grpo.all_wrong_groups(R == 1, cfg.group_size)  # (N/G,)
    # 3. all-wrong groups: retry with hints, keep up to 4 verified-correct retries
    rng = random.Random(int(torch.randint(2 ** 31, (1,), generator=generator,
                                          device=generator.device)))
    hint = torch.zeros_like(group.completions, dtype=torch.bool)  # (N, L)
    for g in all_wrong.nonzero()[:, 0].tolist():
        R, hint = retry_with_hints(policy, tokenizer, group, R, hint, g, cfg, mask_id, generator,
                                   rng, update)
    t1 = time.time()
    # 4. advantage r - group mean
    adv = grpo.group_advantages(R, cfg.group_size).to(group.prompt_ids.device)  # (N,)
    # 5. one-step inputs as diffu-GRPO's; the loss counts every completion token (no EOS cut, as
    # IGPO's code), hint tokens filtered by the old policy's entropy
    everything = torch.ones_like(hint)  # (N, L)
    batches = one_step_batches(group, adv, everything, cfg, mask_id, generator)
    entropy_filtered(policy, batches, hint, cfg)
    n_tokens = per_rank_share([sum(b.loss_mask.sum().item() for b in batches)], adv.device)[0]
    stats = policy_steps(policy, reference, optimizer, batches, igpo_objective(cfg, n_tokens), cfg,
                         1.0, True)
    return {**stats, **final_reward_stats(R, adv, cfg), **rank_means(
        adv.device, all_wrong_before_hints=all_wrong.float().mean().item(),
        replaced=float(hint.any(1).sum().item())),
        "rollout_s": t1 - t0, "train_s": time.time() - t1}


UPDATES = {"mdpo": mdpo_update, "diffu-grpo": diffu_grpo_update, "cj-grpo": cj_grpo_update,
           "igpo": igpo_update}


def mdpo_objective(cfg, n_steps, n_tokens, n_rollouts):
    """Eq. 4 (with Eq. 5 and 12) of one micro-batch, normalised by `mdpo.loss_denominators` over the
    whole update: its trained (rollout, step) rows, their masked tokens and its rollouts (per rank
    share). Returns loss_fn(batch, logp, old_logp, ref_logp) -> (loss, the KL estimator), as
    `policy_steps` takes."""
    def loss_fn(b, logp, old_logp, ref_logp):
        denom = mdpo.loss_denominators(b.loss_mask, cfg.loss_norm, n_steps, n_tokens,
                                       n_rollouts)  # (b, 1)
        return (mdpo.mdpo_loss(logp, old_logp, ref_logp, b.adv, b.loss_mask, cfg.eps, cfg.beta,
                               denom), mdpo.kl_k2)
    return loss_fn


def grpo_objective(cfg, n_tokens):
    """d1's loss of one micro-batch, a mean over all n_tokens trained tokens of the update
    (per rank share)."""
    def loss_fn(b, logp, old_logp, ref_logp):
        loss = grpo.grpo_loss(logp, old_logp, ref_logp, b.adv, b.loss_mask, cfg.eps, cfg.beta,
                              n_tokens)
        return loss, grpo.kl_k3
    return loss_fn


def cj_grpo_objective(cfg):
    """CJ-GRPO's loss of one micro-batch of (rollout, step) rows, each row divided by its step's
    share of the update's normaliser (b.denom, from grpo.cj_grpo_denominators)."""
    def loss_fn(b, logp, old_logp, ref_logp):
        loss = grpo.cj_grpo_loss(logp, old_logp, ref_logp, b.adv, b.loss_mask, b.denom, cfg.eps,
                                 cfg.beta)
        return loss, grpo.kl_k3
    return loss_fn


def igpo_objective(cfg, n_tokens):
    """IGPO's loss of one micro-batch: a per-token ratio, or GSPO's per-sequence one (--igpo-ratio),
    over the filtered tokens, a mean over the n_tokens of the update (per rank share)."""
    def loss_fn(b, logp, old_logp, ref_logp):
        if cfg.igpo_ratio == "sequence":  # the mean runs over the positions the input masks: all L
            rho = grpo.sequence_ratio(logp, old_logp, torch.ones_like(b.loss_mask))  # (b, L)
        else:
            rho = mdpo.ratio(logp, old_logp)  # (b, L)
        loss = grpo.igpo_loss(logp, rho, ref_logp, b.adv, b.loss_mask, n_tokens, cfg.eps, cfg.beta)
        return loss, grpo.kl_k3
    return loss_fn


# ---------------------------------------------------------------------------- shared by the updates
def trajectory_batch(group, rows, steps, adv, mask_id):
    """MDPO's rows (rollout n, step s): input [prompt; x̄_t], target x_{t-1}, masked where x̄_t is
    [MASK]."""
    x_bar = group.x_bar[steps, rows]  # (b, L)
    x = torch.cat([group.prompt_ids[rows], x_bar], 1)  # (b, P+L)
    return MicroBatch([x], group.attention_mask[rows], group.x_pred[steps, rows], x_bar == mask_id,
                      adv[rows, steps][:, None], group.prompt_ids.shape[1])


def final_rewards(group, tokenizer, cfg):
    """The reward of each finished completion of the group -> (N,)."""
    texts = tasks.completion_texts(tokenizer, group.completions)
    return torch.tensor([rewards.reward(cfg.task, t, ex, cfg.format_score)
                         for t, ex in zip(texts, group.examples)])


def final_reward_stats(R, adv, cfg):
    """The log's reward, accuracy, mean |A| and share of groups with no correct rollout (zero
    advantage under a correctness reward), averaged over ranks."""
    return rank_means(adv.device, reward=R.mean().item(), accuracy=(R == 1).float().mean().item(),
                      adv_abs=adv.abs().mean().item(),
                      all_wrong=grpo.all_wrong_groups(R == 1, cfg.group_size).float().mean().item())


def one_step_batches(group, adv, loss_mask, cfg, mask_id, generator):
    """d1's micro-batches: the completion scored from one forward on a perturbed input (prompt
    masked with probability p, completion all [MASK]), one such input per inner step, drawn up
    front."""
    P = group.prompt_ids.shape[1]
    batches = []
    for c in torch.arange(len(adv), device=adv.device).split(cfg.micro_batch):
        inputs = [grpo.perturbed_input(group.prompt_ids[c], group.completions[c],
                                       group.attention_mask[c, :P], mask_id, cfg.p_mask, generator)
                  for _ in range(cfg.inner_steps)]
        batches.append(MicroBatch(inputs, group.attention_mask[c], group.completions[c],
                                  loss_mask[c], adv[c, None], P))
    return batches


def retry_with_hints(policy, tokenizer, group, R, hint, g, cfg, mask_id, generator, rng, update):
    """IGPO's second try of all-wrong group g: G rollouts with hint ratios eta ~ U[0.2, 0.6]
    (sorted, as the code), the verified-correct ones replacing the group's first rows
    (grpo.replace_with_inpainted). Updates group.completions in place; returns the rewards (N,) and
    the hint mask (N, L)."""
    G, rows = cfg.group_size, slice(g * cfg.group_size, (g + 1) * cfg.group_size)
    example = group.examples[g * G]
    reference = tokenizer.encode(example.get("solution") or example["completion"])
    etas = sorted(rng.uniform(0.2, 0.6) for _ in range(G))
    # IGPO leaves 30 of its 256 positions free: the same share
    free_tail = cfg.gen_length * 30 // 256
    canvases, fixed = zip(*[grpo.hint_canvas(reference, cfg.gen_length, eta, rng, mask_id,
                                             free_tail=free_tail)
                            for eta in etas])
    retried = rollouts.sample_with_canvas(policy, group, rows, torch.stack(canvases), cfg, mask_id,
                                          generator, update + g)  # (G, L)
    texts = tasks.completion_texts(tokenizer, retried)
    correct = torch.tensor([rewards.reward(cfg.task, t, group.examples[g * G],
                                           cfg.format_score) == 1
                            for t in texts])  # (G,)
    pick = grpo.replace_with_inpainted(correct, rng)  # (G,) rows of [originals; retries]
    both = torch.cat([group.completions[rows], retried])  # (2G, L)
    group.completions[rows] = both[pick]
    R, hint = R.clone(), hint.clone()
    R[rows] = torch.cat([R[rows], correct.float()])[pick]
    hint[rows] = torch.cat([hint[rows], torch.stack(fixed).to(hint.device)])[pick]
    return R, hint


def entropy_filtered(policy, batches, hint, cfg):
    """IGPO's entropy filter: each micro-batch's loss mask keeps the --igpo-entropy-keep share of
    its hint tokens with the highest entropy under the old policy (its first input: with IGPO's
    p = 0 every inner input is the same), and every generated token."""
    if cfg.igpo_entropy_keep >= 1 or not hint.any():
        return
    model, start = policy.module if isinstance(policy, DDP) else policy, 0
    with torch.no_grad():
        for b in batches:
            rows = slice(start, start + len(b.targets))
            logits = models.logits(model, b.inputs[0],
                                   b.attention_mask)[:, b.prompt_len:].float()  # (b, L, V)
            entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)  # (b, L)
            b.loss_mask = grpo.entropy_filter(entropy, hint[rows], b.loss_mask,
                                              cfg.igpo_entropy_keep)
            start += len(b.targets)
