"""MDPO's training objective and LLaDA's SFT objective as small pure functions
(Sections 2.1, 2.3, App. A).

Paper -> code
    Eq. 1  (masked diffusion / SFT loss)          -> `sft_noise` (the random masking),
                                                     `masked_diffusion_loss`
    Eq. 11 (s_{t,k} of Eq. 6, the step score)     -> `step_scores`
    Eq. 6  (group-relative advantage)             -> `group_advantages`
    App. A (train on the c steps of largest |A|)  -> `select_steps`
    Eq. 5  (clipped, weighted advantage Z)        -> `ratio`, `clipped_surrogate`
                                                     (+ `clip_fraction`, logging)
    Eq. 12 (k2 estimate of the KL)                -> `kl_k2`
    Eq. 4  (the MDPO objective, negated)          -> `mdpo_loss`, normalised by `loss_denominators`;
                                                     its log-probs from `token_logp`

Indexing (every file): a rollout has T steps in rollout order s = 0..T-1, noisy -> clean;
rewards[:, s] is r(prediction of step s), and the all-mask input before step 0 has reward 0. The
paper's t counts down: rollout step s is paper step t = T - s, which reads x̄_t and produces
x_{t-1}. Where this differs from the paper or the authors' code: DEVIATIONS.md, "mdpo.py".
"""
import torch
import torch.nn.functional as F


def step_scores(rewards_noisy_to_clean):
    """Eq. 11 (the s_{t,k} of Eq. 6): score of each denoising step from the rewards of its rollout.

    rewards_noisy_to_clean: (N, T) float, column s = r(prediction of step s) in ROLLOUT order: s = 0
    is the first, noisiest step (the paper's t = T), s = T-1 the last (t = 1). Passing the paper's
    order (t = T..1 reversed) gives wrong scores without an error.
    score_s = R_s - R_{s-1} + mean(R_{s+1}, ..., R_{T-1}) with R_{-1} = 0 (the all-mask input). The
    first part rewards improving on the previous, noisier prediction; the second, steering toward
    clean states that score well. For s = T-1 the mean is empty and we use R_{T-1}, as the authors'
    code does. Returns (N, T).

    Worked example, T = 4, a rollout right at step 1, wrong at step 2 (over-denoised), right at the
    end: R = [0, 1, 0, 1]
      s = 0: 0 - 0 + mean(1, 0, 1) = 2/3     s = 2: 0 - 1 + mean(1)   = 0
      s = 1: 1 - 0 + mean(0, 1)    = 3/2     s = 3: 1 - 0 + R_3 (= 1) = 2
    step_scores([[0., 1., 0., 1.]]) -> [[0.6667, 1.5, 0.0, 2.0]]
    """
    rewards = rewards_noisy_to_clean
    N, T = rewards.shape
    prev = torch.cat([torch.zeros_like(rewards[:, :1]), rewards[:, :-1]], dim=1)  # (N, T) R_{s-1}
    suffix = rewards.flip(1).cumsum(1).flip(1)  # (N, T) sum of R_s..R_{T-1}
    # sum of R_{s+1..T-1}
    later_sum = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], dim=1)  # (N, T)
    n_later = torch.arange(T - 1, -1, -1, device=rewards.device)  # (T,) T-1-s
    later_mean = torch.where(n_later > 0, later_sum / n_later.clamp(min=1), rewards)  # (N, T)
    return rewards - prev + later_mean  # (N, T)


def group_advantages(scores, group_size, eps=1e-4):
    """Eq. 6: A_{t,k} = (s_{t,k} - mean_k s_{t,k}) / (std_k s_{t,k} + eps),
    per step, within each group.

    One advantage per denoising step, (N, T), divided by the group's std: not d1's
    `grpo.reward_minus_group_mean` (one per completion, no std).
    scores: (N, T) step scores, N = prompts * G with the G rollouts of a prompt in CONTIGUOUS rows
    (rows 0..G-1 the first prompt's, G..2G-1 the second's, ...: rollouts.sample_group's order); any
    other layout compares rollouts of different prompts without an error. group_size: G (>= 2).
    std is unbiased (torch's default), as in the official code; eps = 1e-4 as there. A group whose
    scores at a step are all equal gets A = 0 at that step (nothing to compare). Returns (N, T).
    """
    N, T = scores.shape
    if group_size < 2 or N % group_size != 0:
        raise ValueError(f"mdpo.group_advantages: group_size={group_size} must be >= 2 "
                         f"and divide N={N}")
    s = scores.view(N // group_size, group_size, T)  # (N/G, G, T)
    centred = s - s.mean(dim=1, keepdim=True)  # (N/G, G, T)
    adv = centred / (s.std(dim=1, keepdim=True) + eps)  # (N/G, G, T)
    # We test equality exactly: the float mean of equal values can be off by one ulp, which would
    # otherwise turn into a small non-zero advantage after dividing by eps.
    all_equal = (s == s[:, :1]).all(dim=1, keepdim=True)  # (N/G, 1, T)
    return torch.where(all_equal, torch.zeros_like(adv), adv).view(N, T)  # (N, T)


def select_steps(adv, c=8):
    """App. A: the c steps with the largest |A| per trajectory
    (both good and bad steps are trained on).

    adv: (N, T) advantages; c: steps kept per trajectory (8 in the paper), clamped to T.
    Returns (sel, valid): sel LongTensor (N, c) of step indices by decreasing |A|, ties to the
    earlier step (stable sort); valid (N, c) bool, False where that step's A is 0: fewer than c
    steps of the trajectory carry an advantage, and the caller trains on the valid ones only.
    """
    if c < 1:
        raise ValueError(f"mdpo.select_steps: c={c} must be >= 1")
    order = torch.sort(adv.abs(), dim=1, descending=True, stable=True).indices  # (N, T)
    sel = order[:, : min(c, adv.shape[1])]  # (N, c)
    return sel, adv.gather(1, sel) != 0


def token_logp(logits, targets, temperature=1.0):
    """Log-prob of each target token, log p_theta(x_{t-1}^i | x̄_t),
    under softmax(logits / temperature).

    logits: (B, L, V); targets: (B, L) long. Computed in float32 for stability. Temperature 0
    (greedy) is scored at temperature 1: greedy decoding's sampling distribution is a point mass, so
    we score the untempered model instead. Use the rollout's temperature so the ratio of Eq. 5 is 1
    at the first update. Returns (B, L) float32.
    """
    if temperature < 0:
        raise ValueError(f"mdpo.token_logp: temperature={temperature} must be >= 0")
    logp_all = F.log_softmax(logits.float() / (temperature or 1.0), dim=-1)  # (B, L, V)
    return logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L)


def ratio(logp, old_logp):
    """Eq. 5's importance ratio p_theta / p_theta_old per token. (B, L), (B, L) -> (B, L)."""
    return torch.exp(logp - old_logp)


def clipped_surrogate(logp, old_logp, adv, eps=0.2):
    """Eq. 5: Z = min(rho * A, clip(rho, 1 - eps, 1 + eps) * A), rho = p_theta / p_theta_old,
    per token.

    logp, old_logp: (B, L) log-probs of the rollout's tokens under the current and the rollout
    policy. adv: advantage A of the step, (B, 1) or (B, L). eps: clip range (0.2 in the paper).
    Returns (B, L).
    """
    if adv.dim() != 2 or adv.shape[0] != logp.shape[0] or adv.shape[1] not in (1, logp.shape[1]):
        # a (B,) advantage would broadcast along L (and silently so when B == L)
        raise ValueError(f"mdpo.clipped_surrogate: adv of shape {tuple(adv.shape)} must be (B, 1) "
                         f"or (B, L) for log-probs {tuple(logp.shape)}")
    rho = ratio(logp, old_logp)  # (B, L)
    return torch.minimum(rho * adv, rho.clamp(1 - eps, 1 + eps) * adv)  # (B, L)


def kl_k2(logp, ref_logp):
    """Eq. 12, k2 = (log d)^2 / 2 with d = p_ref / p_theta, per token. (B, L), (B, L) -> (B, L)."""
    return 0.5 * (ref_logp - logp) ** 2


def clip_fraction(logp, old_logp, adv, mask, eps=0.2):
    """Fraction of the masked tokens whose Eq. 5 minimum is the clipped branch (for logging).

    The clipped branch is active where clip(rho) * A < rho * A: its gradient is zero there.
    logp, old_logp: (B, L); adv: (B, 1) or (B, L); mask: (B, L) bool. Returns a float scalar (0 if
    mask is empty).
    """
    rho = ratio(logp, old_logp).detach()  # (B, L)
    clipped = (rho.clamp(1 - eps, 1 + eps) * adv < rho * adv) & mask  # (B, L)
    return clipped.sum().float() / mask.sum().clamp(min=1)


LOSS_NORMS = ("step", "token", "paper")


def loss_denominators(mask, norm, n_steps, n_tokens, n_rollouts):
    """Eq. 4's normalisation, as the number each trained row's token sum is divided by.
    Returns (B, 1) float.

    mask (B, L): the masked positions of B trained (rollout, step) rows. n_steps, n_tokens,
    n_rollouts: the update's trained rows, their masked tokens and its rollouts, over all
    micro-batches (under DDP, which averages gradients over W ranks: the global counts divided by
    W). norm:
      "step"  mean over each step's masked tokens, then over the trained steps (the official
              code; default)
      "token" mean over every masked token of the update
      "paper" Eq. 4 as written: 1/G sum over steps and tokens, i.e. the sum divided by the number
              of rollouts
    """
    B = mask.shape[0]
    if norm == "step":
        return mask.sum(1, keepdim=True).clamp(min=1).float() * n_steps  # (B, 1)
    if norm in ("token", "paper"):
        return torch.full((B, 1), float(n_tokens if norm == "token" else n_rollouts),
                          device=mask.device)
    raise ValueError(f"mdpo.loss_denominators: norm={norm!r}, choose from {LOSS_NORMS}")


def mdpo_loss(logp, old_logp, ref_logp, adv, mask, eps=0.2, beta=0.08, denom=None):
    """Eq. 4 negated: -sum over masked positions of (Z - beta * k2) / denom, for B trained
    (rollout, step) rows.

    logp: (B, L) log p_theta(x_{t-1}^i | x̄_t) with grad; old_logp: (B, L) the same under the
    rollout policy; ref_logp: (B, L) under the frozen reference (None allowed when beta == 0);
    adv: (B, 1) or (B, L); mask: (B, L) bool, True where x̄_t was masked (the indicator of Eq. 4).
    eps = 0.2, beta = 0.08 as in the paper. denom: one number per row (B, 1) or a scalar, see
    `loss_denominators`; the default is its "step" normalisation over these B rows alone: the mean
    over each row's masked tokens, then over rows. A caller accumulating micro-batches passes the
    whole update's. An empty mask gives 0. Returns a scalar.
    """
    if beta != 0 and ref_logp is None:
        raise ValueError("mdpo.mdpo_loss: ref_logp is None but beta != 0")
    per_token = clipped_surrogate(logp, old_logp, adv, eps)  # (B, L)
    if beta != 0:
        per_token = per_token - beta * kl_k2(logp, ref_logp)  # (B, L)
    if denom is None:
        denom = loss_denominators(mask, "step", mask.shape[0], None, None)  # (B, 1)
    denom = torch.as_tensor(denom, dtype=per_token.dtype, device=per_token.device).clamp(min=1)
    # torch.where, not a product with the mask, so a non-finite value at an unmasked position cannot
    # leak in.
    return -(torch.where(mask, per_token, torch.zeros_like(per_token)) / denom).sum()


def sft_noise(x0, maskable, mask_id, generator=None, eps=1e-3):
    """Eq. 1's masking function gamma~(x0, tau): draw tau ~ U(0, 1) per row, then mask every
    maskable token independently with probability p_mask = (1 - eps) * tau + eps (eps keeps
    1 / p_mask finite, as LLaDA).

    x0: (B, L) long, clean sequences; maskable: (B, L) bool, True on the answer (never the prompt;
    LLaDA counts the EOS padding of the answer as answer). generator draws tau (B,), then u (B, L).
    Returns x_tau (B, L) with [MASK] at the masked positions, masked (B, L) bool, p_mask (B, 1).
    """
    B, L = x0.shape
    tau = torch.rand(B, generator=generator, device=x0.device)  # (B,)
    p_mask = ((1 - eps) * tau + eps).unsqueeze(1)  # (B, 1)
    u = torch.rand(B, L, generator=generator, device=x0.device)  # (B, L)
    masked = maskable & (u < p_mask)  # (B, L)
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked, p_mask


def masked_diffusion_loss(logits, x0, masked, p_mask, maskable):
    """Eq. 1, LLaDA's SFT objective: the cross-entropy of the masked tokens weighted by 1 / tau.

    logits: (B, L, V), the model on x_tau from `sft_noise`; x0: (B, L) the clean tokens;
    masked: (B, L) bool; p_mask: (B, 1) the masking probability tau of each row;
    maskable: (B, L) bool. Per row: the sum over masked tokens of CE / p_mask, divided by the row's
    number of maskable tokens (LLaDA's SFT normalises by the answer length); then the mean over
    rows. Returns a scalar.
    """
    ce = -token_logp(logits, x0)  # (B, L)
    weighted = torch.where(masked, ce / p_mask, torch.zeros_like(ce))  # (B, L)
    return (weighted.sum(1) / maskable.sum(1).clamp(min=1)).mean()
