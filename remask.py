"""Remasking for masked diffusion LMs: schedules, masking scores and the remask step
(Section 2.4).

Paper -> code
  Eq. 13 (schedules phi)            -> `phi`, `tokens_per_step` (+ `official_linear_counts`)
  Eq. 7  (remask step gamma)        -> `remask` (mask the highest scores),
                                       `unmask` (keep the lowest)
  Eq. 8  (random remasking, RR)     -> `random_scores`
  Eq. 9  (low-confidence, LCR)      -> `low_confidence_scores`
  Eq. 10 (running confidence, RCR)  -> `running_confidence_scores` (+ `update_running_max`)
  EOSER (EOS Early Rejection)       -> `eoser_gamma`, `eos_early_rejection`
  ASS (Ascending Step-Size)         -> `ascending_step_sizes`, `ass_steps`
  (EOSER and ASS: Yang et al. 2025, arXiv 2509.23924; code: yjyddq/EOSER-ASS-RL)

Time: the paper's t counts down from T (all masked) to 0 (all revealed). In code a rollout has steps
s = 0..T-1 in rollout order (noisy -> clean); step s is the paper's step t = T - s and produces
x_{t-1}. Where this differs from the paper, LLaDA and the authors' code: DEVIATIONS.md, "remask.py"
(two forms of Eq. 7 for exact ties, phi as the revealed share, RCR's running max vs the authors'
latest confidence, scores as -p instead of 1 - p).
"""

import math

import torch

# Eq. 13 as a function of r = t / T in [0, 1]; each gives 1 at r = 0 and 0 at r = 1
SCHEDULES = {
    "linear": lambda r: 1 - r,
    "cosine": lambda r: (1 + math.cos(math.pi * r)) / 2,
    "square": lambda r: 1 - r ** 2,
    "cubic": lambda r: 1 - r ** 3,
    "exp": lambda r: (math.e - math.exp(r)) / (math.e - 1),
    "sqrt": lambda r: 1 - math.sqrt(r),
    "log": lambda r: 1 - math.log(1 + r) / math.log(2),
}
COUNTS = tuple(SCHEDULES) + ("linear-official", "ass")  # what tokens_per_step accepts


def phi(name, t, T):
    """Eq. 13: fraction of the L tokens revealed at (paper) time t, counting down from T to 0.

    name: one of SCHEDULES; t: int in [0, T]; T: number of denoising steps. phi(T) = 0, phi(0) = 1.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {sorted(SCHEDULES)}")
    if not 0 <= t <= T:
        raise ValueError(f"t={t} outside [0, T={T}]")
    return SCHEDULES[name](t / T)


def official_linear_counts(L, T):
    """Eq. 13 (linear) as the official code counts it: tokens revealed by each of T steps.
    Returns (T,) long, sum L.

    From autonomousvision/mdpo, src/llada/generate.py,
    get_num_transfer_tokens_maskgit(mode="linear"), which the official sampler
    (src/mdlm_generation_utils.py, diffusion_generate) uses for RCR: after step s the still-masked
    count is floor(L * max(1 - (s + 1) / T, 1e-6)) in float64. When T does not divide L the extra
    tokens fall where the floors jump (L = 32, T = 10: 4,3,3,3,3,4,3,3,3,3; LLaDA gives the first
    steps one each: 4,4,3,...), and float rounding moves tokens even when T divides L (L = T = 5:
    1,1,1,2,0).
    """
    still_masked = [math.floor(L * max(1 - (s + 1) / T, 1e-6)) for s in range(T)]  # after step s
    revealed = torch.tensor([L - n for n in still_masked])  # (T,)
    return torch.diff(revealed, prepend=torch.zeros(1, dtype=torch.long))  # (T,)


def tokens_per_step(L, T, schedule="linear"):
    """Eq. 13 -> how many tokens each of the T steps reveals, in rollout order.
    Returns (T,) long, sum L.

    linear: LLaDA's rule, L // T per step with the remainder L % T given one each to the first
    steps. linear-official: the official MDPO code's rule, `official_linear_counts`. ass: Ascending
    Step-Size decoding, `ascending_step_sizes`. others: differences of the cumulative revealed
    counts floor(phi(t, T) * L); the last step reveals the rest.
    """
    if T < 1 or L < 0:
        raise ValueError(f"need T >= 1 and L >= 0, got L={L}, T={T}")
    if schedule == "linear":
        counts = torch.full((T,), L // T, dtype=torch.long)  # (T,)
        counts[: L % T] += 1
        return counts
    if schedule == "linear-official":
        return official_linear_counts(L, T)
    if schedule == "ass":
        return ascending_step_sizes(L, T)
    revealed = [math.floor(phi(schedule, T - s - 1, T) * L) for s in range(T)]  # after step s
    revealed[-1] = L
    # monotone despite float rounding
    revealed = torch.tensor(revealed).cummax(0).values.clamp(max=L)  # (T,)
    return torch.diff(revealed, prepend=torch.zeros(1, dtype=torch.long))  # (T,)


def ascending_step_sizes(L, T):
    """ASS (Ascending Step-Size; EOSER-ASS-RL eval/generate.py, get_num_transfer_tokens_ass): step s
    reveals 2^s tokens and the last step the rest, few while the model is unsure, many once the
    canvas has structure.

    The reference runs T = floor(log2 L) steps (sample.py checks it): L = 256 -> 1, 2, 4, ..., 64,
    129. We also cap a step at what is left, so fewer free tokens (hints placed in the canvas) still
    sum to L. Returns (T,) long, sum L. (The reference's docstrings say 2^s - 1 per block "+ last
    eos token"; its code does what we do.)"""
    counts, left = [], L
    for s in range(T - 1):
        counts.append(min(2 ** s, left))
        left -= counts[-1]
    return torch.tensor(counts + [left])  # (T,)


def ass_steps(L):
    """The number of steps ASS takes for L tokens: floor(log2 L) (the reference asserts it)."""
    return max(L.bit_length() - 1, 1)


def eoser_gamma(s, T, gamma_min, ramp="linear"):
    """EOS Early Rejection's factor gamma_s at step s of T (EOSER-ASS-RL eval/generate.py,
    `sampling` and `ass_sampling`): the confidence of a position whose predicted token is EOS is
    multiplied by gamma_s.

    linear: gamma_min -> 1 evenly over the steps, gamma_min + (1 - gamma_min) s / (T - 1)
      (T = 128, gamma_min = 0.01: 0.01, 0.26, 0.51, 0.76, 1.0 at s = 0, 32, 64, 96, 127).
    ass: the share of the canvas decoded once step s is done,
      gamma_min + (1 - gamma_min) (2^{s+1} - 1) / 2^T  (T = 8: 0.014, 0.022, ..., 0.501, 0.996).
    s counts over the whole generation, also in semi-AR decoding."""
    if T == 1:  # a single step decodes everything (the reference: gamma_max)
        share = 1.0
    elif ramp == "ass":
        share = (2 ** (s + 1) - 1) / 2 ** T
    else:
        share = s / (T - 1)
    return gamma_min + (1 - gamma_min) * share


# the reference's defaults: uniform steps, and under ASS
EOSER_GAMMA_MIN = {"linear": 0.4, "ass": 0.01}


def eos_early_rejection(conf, x_pred, eos_id, gamma):
    """EOSER: the ranking confidence (B, L) of positions predicting EOS times gamma; the tokens and
    the logits are unchanged. A low gamma ranks an early EOS below the other candidates, so it stays
    masked and is predicted again later instead of filling the canvas with EOS from the right.
    Returns (B, L)."""
    return torch.where(x_pred == eos_id, gamma * conf, conf)


def random_scores(conf, generator=None):
    """Eq. 8 (RR): m ~ U(0, 1) for every position. conf (B, L) only gives the shape.
    -> (B, L) float64."""
    return torch.rand(conf.shape, generator=generator, dtype=torch.float64, device=conf.device)


def low_confidence_scores(conf):
    """Eq. 9 (LCR): m = 1 - p_theta(x_{t-1}^i | x_bar_t), returned as -p (DEVIATIONS.md, remask 4).

    conf (B, L) the probability p of the predicted token -> (B, L), same dtype."""
    return -conf


def update_running_max(running, conf, predicted):
    """Eq. 10's running maximum max_{t' >= t} p(x_{t'-1}^i | x_bar_t'),
    updated at the predicted positions.

    running (B, L) so far (0 where never predicted); conf (B, L) this step; predicted (B, L) bool.
    A position that was not re-predicted at this step keeps its running maximum.
    """
    return torch.where(predicted, torch.maximum(running, conf), running)  # (B, L)


def update_latest(running, conf, predicted):
    """The official code's variant of Eq. 10: a re-predicted position takes its latest
    confidence."""
    return torch.where(predicted, conf, running)  # (B, L)


def running_confidence_scores(running):
    """Eq. 10 (RCR): m = 1 - the running maximum confidence, returned as -running (DEVIATIONS.md,
    remask.py 4).
    (B, L) -> (B, L)."""
    return -running


def remask(x_bar, x_pred, m, candidates, n_mask, mask_id):
    """Eq. 7 (gamma) as written: among the candidate positions the n_mask with the highest masking
    score m get [MASK], the other candidates take x_pred, and non-candidates keep x_bar.

    x_bar (B, L) state fed to the model; x_pred (B, L) its full prediction; m (B, L) masking scores;
    candidates (B, L) bool, at least n_mask per row; n_mask int, or (B,) long when rows differ.
    Returns x_bar_{t-1} (B, L).
    """
    masked_back = top_n(torch.where(candidates, m, -math.inf), n_mask)  # (B, L)
    out = torch.where(candidates, x_pred, x_bar)  # (B, L)
    return out.masked_fill(masked_back, mask_id)


def unmask(x_bar, x_pred, m, candidates, n_keep, mask_id):
    """Eq. 7 seen from the kept side, as LLaDA selects: among the candidate positions the n_keep
    with the lowest masking score m take x_pred, the other candidates get [MASK], and non-candidates
    keep x_bar.

    The same as remask(..., n_mask = candidates per row - n_keep) except when scores tie at the
    boundary. x_bar, x_pred, m, candidates (B, L) as in `remask`, at least n_keep candidates per row
    (n_keep an int or (B,) long). Returns (B, L).
    """
    keep = top_n(torch.where(candidates, -m, -math.inf), n_keep)  # (B, L) the n_keep lowest m
    masked_back = torch.full_like(x_bar, mask_id)  # (B, L)
    return torch.where(keep, x_pred, torch.where(candidates, masked_back, x_bar))  # (B, L)


def top_n(score, n):
    """(B, L) bool, True at the n highest scores of each row, chosen by torch.topk as LLaDA does (so
    that exact ties break the same way). n: an int, or a (B,) tensor when rows differ (then one row
    at a time, LLaDA's own loop)."""
    chosen = torch.zeros_like(score, dtype=torch.bool)  # (B, L)
    if torch.is_tensor(n):
        for b, n_b in enumerate(n.tolist()):
            if n_b > 0:
                chosen[b, torch.topk(score[b], n_b).indices] = True
    elif n > 0:
        chosen.scatter_(1, torch.topk(score, n, dim=1).indices, True)
    return chosen
