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
import optimise
from optimise import MicroBatch, blank_batch, per_rank_share, policy_logp, rank_means


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
    sums = optimise.new_sums()
    for i, c in enumerate(chunks):
        with optimise.micro_step(policy, i, len(chunks), cfg):
            x_tau, masked, p_mask = mdpo.sft_noise(x[c], maskable[c], mask_id,
                                                   generator)  # (b, S), (b, S), (b, 1)
            logits = models.logits(policy, x_tau, attn[c])  # (b, S, V)
            loss = mdpo.masked_diffusion_loss(logits, x[c], masked, p_mask,
                                              maskable[c]) / len(chunks)
        loss.backward()
        sums["loss"] += loss.item()
        sums["tokens"] += masked.sum().item()
    stats = optimise.step(policy, optimizer, cfg, sums)
    return {k: v for k, v in stats.items() if k not in ("kl", "clip_frac")}


def mdpo_update(policy, reference, optimizer, examples, cfg, *, tokenizer, mask_id, generator,
                update=0):
    """One MDPO update (Section 2.3, App. A) on this rank's examples; returns its statistics."""
    t0 = time.time()
    # 1. G rollouts per prompt, with every state x̄_t and full prediction x_{t-1} (Eq. 3)
    group = rollouts.sample_group(policy, tokenizer, examples, cfg, mask_id, generator, update,
                                  record=True)
    t1 = time.time()
    # 2. intermediate rewards: r(x_{t-1}) for every step of every rollout, in rollout order
    texts = tasks.step_texts(tokenizer, group.x_pred)  # N lists of T strings
    R = rewards.score_trajectory(texts, cfg.task, group.examples, cfg.format_score)  # (N, T)
    t2 = time.time()
    # 3. Eq. 11 step scores -> Eq. 6 group-relative advantages
    adv = mdpo.group_advantages(mdpo.step_scores(R), cfg.group_size)  # (N, T)
    adv = adv.to(group.prompt_ids.device)
    # 4. App. A: the c steps of largest non-zero |A| of each rollout
    sel, valid = mdpo.select_steps(adv, cfg.top_c)  # (N, c) each
    rows = (torch.arange(len(sel), device=sel.device)
            .repeat_interleave(sel.shape[1])[valid.flatten()])  # (n,) the rollout of each row
    steps = sel[valid]  # (n,) the step of each trained (rollout, step) pair
    # 5. micro-batches of (x̄_t, x_{t-1}, A_t): the policy reads x̄_t, is scored on x_{t-1} where
    # x̄_t is masked. A rank with nothing to train still takes part in every backward (blank rows).
    batches = [trajectory_batch(group, r, s, adv, mask_id)
               for r, s in zip(rows.split(cfg.micro_batch), steps.split(cfg.micro_batch))]
    if not batches:
        first = torch.zeros(1, dtype=torch.long, device=adv.device)  # rollout 0, step 0, as a shape
        batches = [blank_batch(trajectory_batch(group, first, first, adv, mask_id))]
    # Eq. 4's normaliser is the whole update's (mdpo.loss_denominators): its trained rows, their
    # masked tokens, its rollouts, each a per-rank share
    n_rows, n_tokens, n_rollouts = per_rank_share(
        [len(rows), sum(b.loss_mask.sum().item() for b in batches), len(R)], adv.device)
    batches = optimise.prepare(policy, reference, batches, cfg, cfg.temperature, n_rows > 0)
    final = R[:, -1]  # (N,) the reward of the finished completion
    stats = rank_means(adv.device, reward=final.mean().item(),
                       accuracy=(final == 1).float().mean().item(),
                       trained_steps=valid.float().mean().item(),
                       adv_abs=adv[rows, steps].abs().mean().item() if len(rows) else 0.0)
    if batches is None:
        stats["no_signal"] = True
    # 6. Eq. 4 (with Eq. 5 and 12) on every micro-batch, gradients accumulated, one optimiser step
    # (mu = cfg.inner_steps steps on the same rollouts; the paper's is 1). No advantage on any rank
    # (batches None): nothing to train.
    for k in range(cfg.inner_steps if batches is not None else 0):
        sums = optimise.new_sums()
        for i, b in enumerate(batches):
            with optimise.micro_step(policy, i, len(batches), cfg):
                logp = policy_logp(policy, b, k, cfg.temperature)  # (b, L) log p(x_{t-1} | x̄_t)
                old, ref = optimise.fixed_logps(b, k, logp)  # (b, L) each (ref: None if beta 0)
                denom = mdpo.loss_denominators(b.loss_mask, cfg.loss_norm, n_rows, n_tokens,
                                               n_rollouts)  # (b, 1)
                loss = mdpo.mdpo_loss(logp, old, ref, b.adv, b.loss_mask, cfg.eps, cfg.beta,
                                      denom)
            loss.backward()
            optimise.tally(sums, loss, logp, old, ref, b, mdpo.kl_k2, cfg.eps)
        stats.update(optimise.step(policy, optimizer, cfg, sums))
    return {**stats, "rollout_s": t1 - t0, "reward_s": t2 - t1, "train_s": time.time() - t2}


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
    adv = grpo.reward_minus_group_mean(R, cfg.group_size).to(group.prompt_ids.device)  # (N,)
    # 4. every completion token up to its first EOS is trained; one perturbed input per inner step
    loss_mask = grpo.completion_mask(group.completions, tokenizer.eos_token_id)  # (N, L)
    batches = one_step_batches(group, adv, loss_mask, cfg, mask_id, generator)
    # 5. d1's loss (Eq. 5's clipped surrogate, k3 KL), a mean over every trained token of the
    # update (per-rank share); as d1, a batch whose advantages are all 0 still trains (its KL)
    n_tokens = per_rank_share([loss_mask.sum().item()], adv.device)[0]
    batches = optimise.prepare(policy, reference, batches, cfg, 1.0, True)
    stats = final_reward_stats(R, adv, cfg)
    for k in range(cfg.inner_steps):  # mu steps, each on its own perturbed input
        sums = optimise.new_sums()
        for i, b in enumerate(batches):
            with optimise.micro_step(policy, i, len(batches), cfg):
                logp = policy_logp(policy, b, k, 1.0)  # (b, L) one-step log-probs
                old, ref = optimise.fixed_logps(b, k, logp)  # (b, L) each
                loss = grpo.grpo_loss(logp, old, ref, b.adv, b.loss_mask, cfg.eps, cfg.beta,
                                      n_tokens)
            loss.backward()
            optimise.tally(sums, loss, logp, old, ref, b, grpo.kl_k3, cfg.eps)
        stats.update(optimise.step(policy, optimizer, cfg, sums))
    return {**stats, "rollout_s": t1 - t0, "reward_s": t2 - t1, "train_s": time.time() - t2}


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
    adv = grpo.reward_minus_group_mean(R, cfg.group_size).to(group.prompt_ids.device)  # (N,)
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
    batches = optimise.prepare(policy, reference, batches, cfg, cfg.temperature, True)
    stats = final_reward_stats(R, adv, cfg)
    for k in range(cfg.inner_steps):
        sums = optimise.new_sums()
        for i, b in enumerate(batches):
            with optimise.micro_step(policy, i, len(batches), cfg):
                logp = policy_logp(policy, b, k, cfg.temperature)  # (b, L) log p(x_s | x_{s-1})
                old, ref = optimise.fixed_logps(b, k, logp)  # (b, L) each
                loss = grpo.cj_grpo_loss(logp, old, ref, b.adv, b.loss_mask, b.denom, cfg.eps,
                                         cfg.beta)
            loss.backward()
            optimise.tally(sums, loss, logp, old, ref, b, grpo.kl_k3, cfg.eps)
        stats.update(optimise.step(policy, optimizer, cfg, sums))
    return {**stats, "rollout_s": t1 - t0, "reward_s": t2 - t1, "train_s": time.time() - t2}


def igpo_update(policy, reference, optimizer, examples, cfg, *, tokenizer, mask_id, generator,
                update=0):
    """One IGPO update (Zhao et al. 2025; code: facebookresearch/igpo): diffu-GRPO's, except that a
    group whose rollouts are all wrong is generated once more with hint chunks of the reference
    solution written into the canvas, and up to 4 verified-correct hinted rollouts replace its first
    ones: the group gets a non-zero advantage instead of none. Hint tokens are trained like
    generated ones, except that the entropy filter keeps only the --igpo-entropy-keep share of them
    with the highest entropy. The ratio is GSPO's, one per sequence (--igpo-ratio)."""
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
    adv = grpo.reward_minus_group_mean(R, cfg.group_size).to(group.prompt_ids.device)  # (N,)
    # 5. one-step inputs as diffu-GRPO's; the loss counts every completion token (no EOS cut, as
    # IGPO's code), hint tokens filtered by the old policy's entropy
    everything = torch.ones_like(hint)  # (N, L)
    batches = one_step_batches(group, adv, everything, cfg, mask_id, generator)
    entropy_filtered(policy, batches, hint, cfg)
    n_tokens = per_rank_share([sum(b.loss_mask.sum().item() for b in batches)], adv.device)[0]
    batches = optimise.prepare(policy, reference, batches, cfg, 1.0, True)
    stats = {**final_reward_stats(R, adv, cfg), **rank_means(
        adv.device, all_wrong_before_hints=all_wrong.float().mean().item(),
        replaced=float(hint.any(1).sum().item()))}
    for k in range(cfg.inner_steps):
        sums = optimise.new_sums()
        for i, b in enumerate(batches):
            with optimise.micro_step(policy, i, len(batches), cfg):
                logp = policy_logp(policy, b, k, 1.0)  # (b, L) one-step log-probs
                old, ref = optimise.fixed_logps(b, k, logp)  # (b, L) each
                rho = igpo_ratio(logp, old, b, cfg)  # (b, L)
                loss = grpo.igpo_loss(logp, rho, ref, b.adv, b.loss_mask, n_tokens, cfg.eps,
                                      cfg.beta)
            loss.backward()
            optimise.tally(sums, loss, logp, old, ref, b, grpo.kl_k3, cfg.eps)
        stats.update(optimise.step(policy, optimizer, cfg, sums))
    return {**stats, "rollout_s": t1 - t0, "train_s": time.time() - t1}


UPDATES = {"mdpo": mdpo_update, "diffu-grpo": diffu_grpo_update, "cj-grpo": cj_grpo_update,
           "igpo": igpo_update}


def igpo_ratio(logp, old, b, cfg):
    """IGPO's importance ratio (b, L): GSPO's, one per sequence over every completion position (the
    positions its estimator input masks; --igpo-ratio sequence, the reference's run scripts), or one
    per token (--igpo-ratio token)."""
    if cfg.igpo_ratio == "sequence":
        return grpo.sequence_ratio(logp, old, torch.ones_like(b.loss_mask))
    return mdpo.ratio(logp, old)


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
    # the trace's own tokens: a tokenizer that adds BOS or EOS would put them in the hint
    reference = tokenizer.encode(example.get("solution") or example["completion"],
                                 add_special_tokens=False)
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
