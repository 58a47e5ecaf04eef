"""diffu-GRPO (d1, Zhao et al. 2025, arXiv 2504.12216), CJ-GRPO and IGPO as small pure functions.

d1's equations are written in its code (github.com/dllm-reasoning/d1,
diffu-grpo/diffu_grpo_trainer.py, "trainer.py" below), and each docstring names the function it
follows:
    advantage r_i - mean_G(r) (`_generate_and_score_completions`)    -> `reward_minus_group_mean`
    tokens in the loss, up to the first EOS (same function)          -> `completion_mask`
    one-step log-prob input: prompt masked w.p. p, completion all    -> `perturbed_input`
      masked (`forward_process`)
    k3 estimate of the KL (`compute_loss`)                            -> `kl_k3`
    clipped surrogate and loss (`compute_loss`)                       -> `grpo_loss` (on
                                                                         `mdpo.clipped_surrogate`)

The update (updates.diffu_grpo_update): G completions per prompt, A = r - group mean; mu perturbed
inputs drawn up front, one per inner iteration; under each, old_logp (mu > 1) and ref_logp with no
grad; then mu optimiser steps on the same rollouts. d1 uses mu = 12 for GSM8K and MATH, 8 for
Countdown and Sudoku, G = 6, p = 0.15, eps = 0.5, beta = 0.04. Where this differs from d1:
DEVIATIONS.md, "grpo.py".

Two methods built on it follow, each under its own header; docstrings give our reading of quirks.
CJ-GRPO ("EAR": yjyddq/EOSER-ASS-RL, cj-grpo/cj_grpo_trainer_*.py), every step taken is scored:
    pos_s, the tokens step s reveals (`reversed_process`)         -> `revealed_per_step`
    L = (1/S) sum_s (sum pos_s l) / (sum pos_s) (`compute_loss`)  -> `cj_grpo_denominators`,
                                                                     `cj_grpo_loss`
IGPO (facebookresearch/igpo, trainer_igpo.py, utils/generate.py), hints when a group is all wrong:
    the trigger (`_evaluate_completions`)                         -> `all_wrong_groups`
    chunks, selection, stretched placement of the hints           -> `hint_chunks`,
      (`create_spacing_scaled_inpainting_sequence`)                  `revealed_chunks`,
                                                                     `hint_spans`, `hint_canvas`
    correct inpainted rollouts replace the first originals        -> `replace_with_inpainted`
      (`_generate_and_score_completions`)
    entropy filter; GSPO ratio; loss (`compute_loss`)             -> `entropy_filter`;
                                                                     `sequence_ratio`; `igpo_loss`
"""

import torch

import mdpo


def reward_minus_group_mean(rewards, group_size):
    """d1 advantage (`_generate_and_score_completions`, trainer.py:533-539):
    A_i = r_i - mean_G(r), no std.

    Not MDPO's Eq. 6 (`mdpo.group_advantages`): one advantage per completion from its final reward,
    (N,), where Eq. 6 gives one per denoising step, (N, T), and divides by the group's std.

    rewards: (N,) final reward of each completion, N = prompts * G with the G completions of a
    prompt in contiguous rows (as d1's view(-1, G)). group_size: G (>= 2). d1 computes the group std
    only to log the share of zero-std groups; it does not divide by it. A group of equal rewards
    gets A = 0 exactly. Returns (N,).
    """
    N = rewards.shape[0]
    if group_size < 2 or N % group_size != 0:
        raise ValueError(f"grpo.reward_minus_group_mean: group_size={group_size} must be >= 2 "
                         f"and divide N={N}")
    r = rewards.view(N // group_size, group_size)  # (N/G, G)
    adv = r - r.mean(dim=1, keepdim=True)  # (N/G, G)
    # exact test: the float mean of equal values can be one ulp off, and such a group must carry no
    # signal
    all_equal = (r == r[:, :1]).all(dim=1, keepdim=True)  # (N/G, 1)
    return torch.where(all_equal, torch.zeros_like(adv), adv).view(N)  # (N,)


def completion_mask(completion_ids, eos_id):
    """d1 completion mask (`_generate_and_score_completions`, trainer.py:440-445):
    the tokens the loss counts.

    completion_ids: (B, L) long; eos_id: tokenizer.eos_token_id. A token counts if no EOS comes
    before it: everything up to and including the first EOS, every token of a row without EOS.
    Returns (B, L) bool.
    """
    is_eos = (completion_ids == eos_id).long()  # (B, L)
    eos_before = is_eos.cumsum(dim=1) - is_eos  # (B, L) number of EOS strictly before each position
    return eos_before == 0  # (B, L)


def perturbed_input(prompt_ids, completion_ids, prompt_attention, mask_id, p_mask=0.15,
                    generator=None):
    """d1 one-step log-prob input (`forward_process`, trainer.py:241-267):
    prompt masked w.p. p, completion all.

    One forward pass on this input gives a log-prob for every completion token at once (the
    mean-field estimate); re-masking the prompt at every inner iteration makes each of the mu
    updates see another view of the same rollout. prompt_ids: (B, P) long, left-padded;
    completion_ids: (B, L) long; prompt_attention: (B, P), 1 on real tokens, 0 on padding (None: no
    padding); padding is never masked. mask_id: tokenizer.mask_token_id. p_mask: 0.15 in d1's runs.
    generator: draws u (B, P) on its own device (so a CPU generator gives the same masks on CPU and
    CUDA); a real token is masked if u < p_mask. Returns (B, P + L) long.
    """
    if not 0.0 <= p_mask <= 1.0:
        raise ValueError(f"grpo.perturbed_input: p_mask={p_mask} must be in [0, 1]")
    B, P = prompt_ids.shape
    device = generator.device if generator is not None else prompt_ids.device
    u = torch.rand(B, P, generator=generator, device=device).to(prompt_ids.device)  # (B, P)
    real = (torch.ones_like(prompt_ids, dtype=torch.bool) if prompt_attention is None
            else prompt_attention.bool())
    masked = real & (u < p_mask)  # (B, P)
    x_prompt = torch.where(masked, torch.full_like(prompt_ids, mask_id), prompt_ids)  # (B, P)
    return torch.cat([x_prompt, torch.full_like(completion_ids, mask_id)], dim=1)  # (B, P + L)


def kl_k3(logp, ref_logp):
    """d1 KL (`compute_loss`, trainer.py:103-105):
    k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, per token.

    logp, ref_logp: (B, L) under the current policy and the reference. Returns (B, L).
    """
    d = ref_logp - logp  # (B, L)
    return torch.exp(d) - d - 1  # (B, L)


def grpo_loss(logp, old_logp, ref_logp, adv, mask, eps=0.5, beta=0.04, n_tokens=None):
    """d1 diffu-GRPO loss (`compute_loss`, trainer.py:114-121):
    -(sum of Z - beta k3 over the mask) / n_tokens.

    Z = min(rho * A, clip(rho, 1 - eps, 1 + eps) * A) with rho = p_theta / p_theta_old, as
    `mdpo.clipped_surrogate` (the same min and clamp as d1's coef_1 / coef_2). logp: (B, L) with
    grad; old_logp: (B, L) under the rollout policy at the same mask (logp.detach() at mu = 1);
    ref_logp: (B, L) under the reference, None allowed when beta == 0; adv: (B,) one advantage per
    completion, or (B, 1); mask: (B, L) bool from `completion_mask`. eps = 0.5, beta = 0.04 as in
    d1's runs. n_tokens: the normaliser, default mask.sum() (d1's); a caller accumulating
    micro-batches passes the count of the whole update (divided by W under DDP, which averages
    gradients over W ranks), or one normaliser per row (B, 1) (`cj_grpo_loss`). An empty mask gives
    0 (with a graph). Returns a scalar.
    """
    if beta != 0 and ref_logp is None:
        raise ValueError("grpo.grpo_loss: ref_logp is None but beta != 0")
    if adv.dim() == 1:
        adv = adv.unsqueeze(1)  # (B, 1)
    per_token = mdpo.clipped_surrogate(logp, old_logp, adv, eps)  # (B, L)
    if beta != 0:
        per_token = per_token - beta * kl_k3(logp, ref_logp)  # (B, L)
    return masked_loss(per_token, mask, mask.sum() if n_tokens is None else n_tokens)


def masked_loss(per_token, mask, n_tokens):
    """-(sum over the masked positions of per_token / n_tokens), shared by every loss here.

    per_token, mask: (B, L); n_tokens: a scalar or one per row (B, 1), positive, or 0 when nothing
    is masked (1 is used then: an empty mask gives 0, not 0 / 0). Returns a scalar.
    """
    n = torch.as_tensor(n_tokens, dtype=per_token.dtype, device=per_token.device)
    n = torch.where(n > 0, n, torch.ones_like(n))  # only 0 is replaced: a DDP share may be below 1
    # torch.where, not a product with the mask: a non-finite value outside it cannot leak in
    return -(torch.where(mask, per_token, torch.zeros_like(per_token)) / n).sum()


# ----------------------------------------------------------------------------- CJ-GRPO
def revealed_per_step(x_bar, final, mask_id):
    """CJ-GRPO's pos_s (EAR `reversed_process`): the completion positions step s reveals.

    x_bar: (T, N, L) the state fed to the model at step s = 0..T-1 (sample.Trajectory.x_bar);
    final: (N, L) the finished completion, the state after the last step; mask_id: [MASK]'s id.
    pos_s = (x_bar[s] == [MASK]) & (next state != [MASK]), the next state being x_bar[s + 1], or
    final after step T - 1. EAR's sampler never remasks; our RCR can, so pos_s is exactly this state
    difference: a token remasked at step s is not in pos_s, and counts again at the step that
    reveals it anew. The token revealed is the next state's (x_pred[s] there), the target of
    log p(x_s^i | x_{s-1}). Returns (T, N, L) bool.
    """
    after = torch.cat([x_bar[1:], final.unsqueeze(0)], dim=0)  # (T, N, L) the state after step s
    return (x_bar == mask_id) & (after != mask_id)  # (T, N, L)


def cj_grpo_denominators(step_tokens):
    """CJ-GRPO's normaliser (EAR `compute_loss`): what each step's token sum is divided by, so that
    L = (1/S) sum_s [sum_{n,i} pos_s l] / [sum_{n,i} pos_s], S = T the number of steps.

    step_tokens: (T,) n_s = sum_{n,i} pos_s, the tokens step s reveals over every rollout of the
    update on this rank, all its micro-batches (`revealed_per_step(...).sum((1, 2))`). Under DDP,
    which averages gradients over W ranks, the caller passes its share instead, the sum over ranks
    divided by W (`per_rank_share`), as for the other losses; EAR normalises each device's
    micro-batch on its own. Returns (T,) float, S * n_s: row (rollout n, step s) divides its token
    sum by denom[s], so the loss of a micro-batch of rows is its share of L. A step that reveals
    nothing gets 1 and adds 0 (EAR divides 0 by 0 there).
    """
    n = step_tokens.float()  # (T,)
    return len(n) * torch.where(n > 0, n, torch.ones_like(n))  # (T,)


def cj_grpo_loss(logp, old_logp, ref_logp, adv, revealed, denom, eps=0.5, beta=0.04):
    """CJ-GRPO's loss (EAR `compute_loss`): d1's clipped surrogate with k3 KL (`grpo_loss`) on the
    tokens each (rollout, step) row reveals, each row divided by its step's denominator.

    logp, old_logp, ref_logp: (B, L) log p(x_s^i | x_{s-1}) of B rows (rollout n, step s) under the
    policy (with grad), the rollout policy (logp.detach() at mu = 1) and the reference (None when
    beta = 0). adv: (B,) or (B, 1), the rollout's A = r - group mean (`reward_minus_group_mean`;
    EAR's code does not divide by the group std while its paper's algorithm box does: we follow the
    code).
    revealed: (B, L) bool, the row's pos_s. denom: (B, 1), `cj_grpo_denominators(...)[s]` per row.
    eps = 0.5, beta = 0.04 as EAR's runs. EAR computes the EOS cut (`completion_mask`) but never
    applies it; we follow the code: every revealed token counts, EOS and the padding after it too.
    Returns a scalar.
    """
    return grpo_loss(logp, old_logp, ref_logp, adv, revealed, eps, beta, denom)


# ----------------------------------------------------------------------------- IGPO
def all_wrong_groups(correct, group_size):
    """IGPO's trigger (`_evaluate_completions`): the groups in which no rollout is correct.

    correct: (N,) bool from the correctness reward alone (format rewards are ignored),
    N = prompts * G with a group in contiguous rows. IGPO's runs judge one device's batch, which
    is one group. Returns (N/G,) bool.
    """
    N = correct.shape[0]
    if N % group_size != 0:
        raise ValueError(f"grpo.all_wrong_groups: group_size={group_size} must divide N={N}")
    return ~correct.view(N // group_size, group_size).any(dim=1)  # (N/G,)


def hint_chunks(n_tokens, rng, min_chunk=5, max_chunk=10):
    """IGPO's chunking (`create_spacing_scaled_inpainting_sequence`): consecutive trace spans.

    From position 0, spans of rng.randint(min_chunk, max_chunk) tokens, each cut to what is left; we
    stop when what is left is shorter than min_chunk (the code draws for that check too, and so do
    we), so a tail under min_chunk tokens is never a hint. n_tokens: the reference's length, already
    cut to the effective area E. rng: a random.Random. Returns [(start, end), ...].
    """
    chunks, start = [], 0
    while start < n_tokens:
        size = min(rng.randint(min_chunk, max_chunk), n_tokens - start)
        if size < min_chunk:
            break
        chunks.append((start, start + size))
        start += size
    return chunks


def revealed_chunks(chunks, eta, rng):
    """IGPO's selection: which chunks become hints at hint ratio eta > 0.

    n_mask = floor(n_chunks * (1 - eta)) chunks, drawn without replacement (rng.sample), stay masked
    and the others are revealed; the last chunk is always revealed (the helper's default
    `inpaint_last_chunk_end=True`: `generate_inpainting` never passes the config's False; we follow
    the code). eta >= 1 reveals every chunk. Returns the revealed chunks, in order.
    """
    n_mask = int(len(chunks) * (1 - eta))  # the code's int(): floor, float rounding included
    masked = set(rng.sample(chunks, n_mask)) if n_mask > 0 else set()
    return [c for c in chunks if c not in masked or c == chunks[-1]]


def hint_spans(chunks, f, max_spacing=100):
    """IGPO's stretched placement (`scale_chunk_positions`): where each revealed chunk goes.

    chunks: the revealed [(start, end), ...] in trace positions; f = clamp(E / A, 1, 1.5), E the
    effective area, A the trace's full length. The first chunk starts at floor(start * f), each next
    one at the previous placed end + min(floor(gap * f), max_spacing), gap being its distance from
    the previous revealed chunk in the trace; chunks keep their length. The code cuts a chunk that
    crosses E, but none can: by induction a placed end is at most end * f <= E (f <= E / A, or
    f = 1 with the trace cut to E), so we need no cut. Returns [(canvas_start, canvas_end), ...].
    """
    spans = []
    for i, (start, end) in enumerate(chunks):
        if i == 0:
            at = int(start * f)
        else:
            at = spans[-1][1] + min(int((start - chunks[i - 1][1]) * f), max_spacing)
        spans.append((at, at + end - start))
    return spans


def hint_canvas(reference_ids, gen_length, eta, rng, mask_id, min_chunk=5, max_chunk=10,
                free_tail=30, max_spacing=100):
    """IGPO's hint canvas (`create_spacing_scaled_inpainting_sequence`), completion part only: the
    prompt is never touched. Defaults are run_igpo.sh's (chunks of 5-10 tokens, spacing <= 100).

    reference_ids: (A,) the reference trace's ids, tokenised without special tokens, list or tensor.
    gen_length: L. eta: this rollout's hint ratio; eta <= 0 gives no hint (the sampler's check).
    rng: a random.Random the caller owns: seeded, the canvas is reproducible, and its draws are the
    code's under random.seed. mask_id: [MASK]'s id. free_tail: the last 30 positions stay free (the
    code's comment says 50), so E = L - free_tail. The trace is cut to min(A, E) tokens, chunked
    (`hint_chunks`), selected (`revealed_chunks`) and placed (`hint_spans`, f = clamp(E/A, 1, 1.5)).
    Returns canvas (L,) long, hint tokens and mask_id elsewhere, and fixed (L,) bool, the hints.
    """
    ref = torch.as_tensor(reference_ids, dtype=torch.long).flatten()  # (A,)
    canvas = torch.full((gen_length,), mask_id, dtype=torch.long)  # (L,)
    E, A = max(0, gen_length - free_tail), len(ref)
    if eta > 0 and E > 0 and A > 0:
        f = min(max(E / A, 1.0), 1.5)
        chunks = revealed_chunks(hint_chunks(min(A, E), rng, min_chunk, max_chunk), eta, rng)
        for (start, end), (at, to) in zip(chunks, hint_spans(chunks, f, max_spacing)):
            canvas[at:to] = ref[start:end]
    return canvas, canvas != mask_id  # (L,), (L,)


def replace_with_inpainted(inpainted_correct, rng, max_replacements=4):
    """IGPO's replacement (`_generate_and_score_completions`): in an all-wrong group, verified
    correct inpainted rollouts replace the first k originals; the rest stay, as does the group size.

    inpainted_correct: (G,) bool, the correctness of the group's G inpainted rollouts.
    k = min(number correct, max_replacements), 4 in run_igpo.sh. When more are correct, k of them
    are drawn at random, in the drawn order (rng.sample, a random.Random the caller owns; the code
    draws a torch.randperm). None correct: nothing changes. Returns (G,) long, the rows of
    torch.cat([originals, inpainted]) forming the new group (original j is j, inpainted i is G + i),
    to index the rollouts, their hint masks and their rewards alike.
    """
    G, device = inpainted_correct.shape[0], inpainted_correct.device
    correct = inpainted_correct.nonzero()[:, 0].tolist()  # the inpainted rows verified correct
    k = min(len(correct), max_replacements)
    chosen = rng.sample(correct, k) if len(correct) > k else correct
    rows = torch.arange(G, device=device)  # (G,)
    rows[:k] = G + torch.tensor(chosen, dtype=torch.long, device=device)
    return rows  # (G,)


def entropy_filter(entropy, hint, loss_mask, keep=0.2):
    """IGPO's entropy filter (`_generate_and_score_completions`; paper Fig. 5a: keep = 0.2 is best).

    entropy: (B, L) the old policy's predictive entropy -sum_v p log p, from the input the loss
    scores; hint: (B, L) bool, the hint positions (`hint_canvas`'s fixed); loss_mask: (B, L) bool,
    the positions in the loss. Per row, of the n positions both hint and in loss_mask, the
    max(1, floor(keep * n)) of highest entropy stay (ties to the earlier position; the code's topk
    leaves ties unspecified) and the other hint positions leave the mask; every non-hint position is
    unchanged. Returns (B, L) bool, the token mask.
    """
    B, L = entropy.shape
    candidate = hint & loss_mask  # (B, L)
    k = (candidate.sum(1, keepdim=True).double() * keep).floor().long().clamp(min=1)  # (B, 1)
    score = torch.where(candidate, entropy, torch.full_like(entropy, -float("inf")))  # (B, L)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices  # (B, L)
    place = torch.arange(L, device=order.device).expand(B, L)  # (B, L)
    rank = torch.empty_like(order).scatter_(1, order, place)  # (B, L) 0 = highest entropy
    return loss_mask & (~hint | (candidate & (rank < k)))  # (B, L)


def sequence_ratio(logp, old_logp, mask):
    """GSPO's sequence-level ratio (IGPO `compute_loss`, use_gspo): s = exp(mean(logp - old_logp)).

    logp, old_logp: (B, L) per-token log-probs under the policy and the rollout policy; mask: (B, L)
    bool, the positions the mean runs over. IGPO's code takes all L completion positions (padding
    after the EOS and filtered hints too): the positions its estimator input masks. So do we, the
    caller passing that input's masked positions: s is the ratio of the sequence's likelihood, and
    the entropy filter weights the loss, not the likelihood. Returns (B, L), each row's s broadcast.
    """
    d = torch.where(mask, logp - old_logp, torch.zeros_like(logp))  # (B, L)
    mean = d.sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    return torch.exp(mean).expand_as(logp)  # (B, L)


def igpo_loss(logp, rho, ref_logp, adv, token_mask, n_tokens=None, eps=0.2, beta=0.01):
    """IGPO's loss (`compute_loss`): -(sum over token_mask of Z - beta * k3) / n_tokens, with
    Z = min(rho A, clip(rho, 1 - eps, 1 + eps) A) and k3 = `kl_k3`.

    logp: (B, L) with grad, for the KL. rho: (B, L), with grad, the importance ratio: per token,
    `mdpo.ratio(logp, old_logp)` (our default: under GSPO a row's tokens share one ratio, and the
    entropy filter then reweights only the KL), or `sequence_ratio` (IGPO's run scripts).
    ref_logp: (B, L) under the reference (None when beta = 0); adv: (B,) or (B, 1), r - group mean;
    token_mask: (B, L) bool from `entropy_filter`, no EOS cut (as the code). eps = 0.2 (eps_low =
    eps_high), beta = 0.01 as run_igpo.sh. n_tokens: as `grpo_loss`, default token_mask.sum().
    Returns a scalar.
    """
    if beta != 0 and ref_logp is None:
        raise ValueError("grpo.igpo_loss: ref_logp is None but beta != 0")
    if adv.dim() == 1:
        adv = adv.unsqueeze(1)  # (B, 1)
    per_token = torch.minimum(rho * adv, rho.clamp(1 - eps, 1 + eps) * adv)  # (B, L)
    if beta != 0:
        per_token = per_token - beta * kl_k3(logp, ref_logp)  # (B, L)
    n = token_mask.sum() if n_tokens is None else n_tokens
    return masked_loss(per_token, token_mask, n)
