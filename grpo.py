"""The diffu-GRPO baseline (d1, Zhao et al. 2025, arXiv 2504.12216) as small pure functions.

d1's equations are written in its code (github.com/dllm-reasoning/d1, diffu-grpo/diffu_grpo_trainer.py,
"trainer.py" below), and each docstring names the function it follows:
    advantage r_i - mean_G(r) (`_generate_and_score_completions`)    -> `group_advantages`
    tokens in the loss, up to the first EOS (same function)          -> `completion_mask`
    one-step log-prob input: prompt masked w.p. p, completion all    -> `perturbed_input`
      masked (`forward_process`)
    k3 estimate of the KL (`compute_loss`)                            -> `kl_k3`
    clipped surrogate and loss (`compute_loss`)                       -> `grpo_loss` (on `mdpo.clipped_surrogate`)

The update (updates.diffu_grpo_update): G completions per prompt, A = r - group mean; mu perturbed inputs
drawn up front, one per inner iteration; under each, old_logp (mu > 1) and ref_logp with no grad; then mu
optimiser steps on the same rollouts. d1 uses mu = 12 for GSM8K and MATH, 8 for Countdown and Sudoku,
G = 6, p = 0.15, eps = 0.5, beta = 0.04. Where this differs from d1: DEVIATIONS.md, "grpo.py".
"""

import torch

import mdpo


def group_advantages(rewards, group_size):
    """d1 advantage (`_generate_and_score_completions`, trainer.py:533-539): A_i = r_i - mean_G(r), no std.

    rewards: (N,) final reward of each completion, N = prompts * G with the G completions of a prompt in
    contiguous rows (as d1's view(-1, G)). group_size: G (>= 2). d1 computes the group std only to log the
    share of zero-std groups; it does not divide by it. A group of equal rewards gets A = 0 exactly.
    Returns (N,).
    """
    N = rewards.shape[0]
    if group_size < 2 or N % group_size != 0:
        raise ValueError(f"grpo.group_advantages: group_size={group_size} must be >= 2 and divide N={N}")
    r = rewards.view(N // group_size, group_size)  # (N/G, G)
    adv = r - r.mean(dim=1, keepdim=True)  # (N/G, G)
    # exact test: the float mean of equal values can be one ulp off, and such a group must carry no signal
    all_equal = (r == r[:, :1]).all(dim=1, keepdim=True)  # (N/G, 1)
    return torch.where(all_equal, torch.zeros_like(adv), adv).view(N)  # (N,)


def completion_mask(completion_ids, eos_id):
    """d1 completion mask (`_generate_and_score_completions`, trainer.py:440-445): the tokens the loss counts.

    completion_ids: (B, L) long; eos_id: tokenizer.eos_token_id. A token counts if no EOS comes before it:
    everything up to and including the first EOS, every token of a row without EOS. Returns (B, L) bool.
    """
    is_eos = (completion_ids == eos_id).long()  # (B, L)
    eos_before = is_eos.cumsum(dim=1) - is_eos  # (B, L) number of EOS strictly before each position
    return eos_before == 0  # (B, L)


def perturbed_input(prompt_ids, completion_ids, prompt_attention, mask_id, p_mask=0.15, generator=None):
    """d1 one-step log-prob input (`forward_process`, trainer.py:241-267): prompt masked w.p. p, completion all.

    One forward pass on this input gives a log-prob for every completion token at once (the mean-field
    estimate); re-masking the prompt at every inner iteration makes each of the mu updates see another view
    of the same rollout. prompt_ids: (B, P) long, left-padded; completion_ids: (B, L) long;
    prompt_attention: (B, P), 1 on real tokens, 0 on padding (None: no padding); padding is never masked.
    mask_id: tokenizer.mask_token_id. p_mask: 0.15 in d1's runs. generator: draws u (B, P) on its own device
    (so a CPU generator gives the same masks on CPU and CUDA); a real token is masked if u < p_mask.
    Returns (B, P + L) long.
    """
    if not 0.0 <= p_mask <= 1.0:
        raise ValueError(f"grpo.perturbed_input: p_mask={p_mask} must be in [0, 1]")
    B, P = prompt_ids.shape
    device = generator.device if generator is not None else prompt_ids.device
    u = torch.rand(B, P, generator=generator, device=device).to(prompt_ids.device)  # (B, P)
    real = torch.ones_like(prompt_ids, dtype=torch.bool) if prompt_attention is None else prompt_attention.bool()
    masked = real & (u < p_mask)  # (B, P)
    x_prompt = torch.where(masked, torch.full_like(prompt_ids, mask_id), prompt_ids)  # (B, P)
    return torch.cat([x_prompt, torch.full_like(completion_ids, mask_id)], dim=1)  # (B, P + L)


def kl_k3(logp, ref_logp):
    """d1 KL (`compute_loss`, trainer.py:103-105): k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, per token.

    logp, ref_logp: (B, L) under the current policy and the reference. Returns (B, L).
    """
    d = ref_logp - logp  # (B, L)
    return torch.exp(d) - d - 1  # (B, L)


def grpo_loss(logp, old_logp, ref_logp, adv, mask, eps=0.5, beta=0.04, n_tokens=None):
    """d1 diffu-GRPO loss (`compute_loss`, trainer.py:114-121): -(sum of Z - beta k3 over the mask) / n_tokens.

    Z = min(rho * A, clip(rho, 1 - eps, 1 + eps) * A) with rho = p_theta / p_theta_old, as `mdpo.clipped_surrogate`
    (the same min and clamp as d1's coef_1 / coef_2). logp: (B, L) with grad; old_logp: (B, L) under the
    rollout policy at the same mask (logp.detach() at mu = 1); ref_logp: (B, L) under the reference, None
    allowed when beta == 0; adv: (B,) one advantage per completion, or (B, 1); mask: (B, L) bool from
    `completion_mask`. eps = 0.5, beta = 0.04 as in d1's runs. n_tokens: the normaliser, default mask.sum()
    (d1's); a caller accumulating micro-batches passes the count of the whole update (divided by W under
    DDP, which averages gradients over W ranks). An empty mask gives 0 (with a graph). Returns a scalar.
    """
    if beta != 0 and ref_logp is None:
        raise ValueError("grpo.grpo_loss: ref_logp is None but beta != 0")
    if adv.dim() == 1:
        adv = adv.unsqueeze(1)  # (B, 1)
    per_token = mdpo.clipped_surrogate(logp, old_logp, adv, eps)  # (B, L)
    if beta != 0:
        per_token = per_token - beta * kl_k3(logp, ref_logp)  # (B, L)
    if n_tokens is None:
        n_tokens = mask.sum()
    n_tokens = torch.as_tensor(n_tokens, dtype=per_token.dtype, device=per_token.device).clamp(min=1)
    # torch.where, not a product with the mask: a non-finite value past the EOS cannot leak in.
    return -torch.where(mask, per_token, torch.zeros_like(per_token)).sum() / n_tokens
