"""Remasking for masked diffusion LMs: schedules, masking scores and the remask step (Section 2.4).

Paper -> code
  Eq. 13 (schedules phi)            -> `phi`, `tokens_per_step` (+ `official_linear_counts`)
  Eq. 7  (remask step gamma)        -> `remask` (mask the highest scores), `unmask` (keep the lowest)
  Eq. 8  (random remasking, RR)     -> `random_scores`
  Eq. 9  (low-confidence, LCR)      -> `low_confidence_scores`
  Eq. 10 (running confidence, RCR)  -> `running_confidence_scores` (+ `update_running_max`)

Time: the paper's t counts down from T (all masked) to 0 (all revealed). In code a rollout has steps
s = 0..T-1 in rollout order (noisy -> clean); step s is the paper's step t = T - s and produces x_{t-1}.
Where this differs from the paper, LLaDA and the authors' code: DEVIATIONS.md, "remask.py" (two forms of
Eq. 7 for exact ties, phi as the revealed share, RCR's running max vs the authors' latest confidence,
scores as -p instead of 1 - p).
"""

import math

import torch

SCHEDULES = {  # Eq. 13 as a function of r = t / T in [0, 1]; each gives 1 at r = 0 and 0 at r = 1
    "linear": lambda r: 1 - r,
    "cosine": lambda r: (1 + math.cos(math.pi * r)) / 2,
    "square": lambda r: 1 - r ** 2,
    "cubic": lambda r: 1 - r ** 3,
    "exp": lambda r: (math.e - math.exp(r)) / (math.e - 1),
    "sqrt": lambda r: 1 - math.sqrt(r),
    "log": lambda r: 1 - math.log(1 + r) / math.log(2),
}
COUNTS = tuple(SCHEDULES) + ("linear-official",)  # what tokens_per_step accepts


def phi(name, t, T):
    """Eq. 13: fraction of the L tokens that are revealed at (paper) time t, counting down from T to 0.

    name: one of SCHEDULES; t: int in [0, T]; T: number of denoising steps. phi(T) = 0, phi(0) = 1.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {sorted(SCHEDULES)}")
    if not 0 <= t <= T:
        raise ValueError(f"t={t} outside [0, T={T}]")
    return SCHEDULES[name](t / T)


def official_linear_counts(L, T):
    """Eq. 13 (linear) as the official code counts it: tokens revealed by each of T steps. Returns (T,) long, sum L.

    From autonomousvision/mdpo, src/llada/generate.py, get_num_transfer_tokens_maskgit(mode="linear"),
    which the official sampler (src/mdlm_generation_utils.py, diffusion_generate) uses for RCR: after step s
    the still-masked count is floor(L * max(1 - (s + 1) / T, 1e-6)) in float64. When T does not divide L the
    extra tokens fall where the floors jump (L = 32, T = 10: 4,3,3,3,3,4,3,3,3,3; LLaDA gives the first
    steps one each: 4,4,3,...), and float rounding moves tokens even when T divides L (L = T = 5: 1,1,1,2,0).
    """
    still_masked = [math.floor(L * max(1 - (s + 1) / T, 1e-6)) for s in range(T)]  # after step s
    revealed = torch.tensor([L - n for n in still_masked])  # (T,)
    return torch.diff(revealed, prepend=torch.zeros(1, dtype=torch.long))  # (T,)


def tokens_per_step(L, T, schedule="linear"):
    """Eq. 13 -> how many tokens each of the T steps reveals, in rollout order. Returns (T,) long, sum L.

    linear: LLaDA's rule, L // T per step with the remainder L % T given one each to the first steps.
    linear-official: the official MDPO code's rule, `official_linear_counts`.
    others: differences of the cumulative revealed counts floor(phi(t, T) * L); the last step reveals the rest.
    """
    if T < 1 or L < 0:
        raise ValueError(f"need T >= 1 and L >= 0, got L={L}, T={T}")
    if schedule == "linear":
        counts = torch.full((T,), L // T, dtype=torch.long)  # (T,)
        counts[: L % T] += 1
        return counts
    if schedule == "linear-official":
        return official_linear_counts(L, T)
    revealed = [math.floor(phi(schedule, T - s - 1, T) * L) for s in range(T)]  # after step s
    revealed[-1] = L
    revealed = torch.tensor(revealed).cummax(0).values.clamp(max=L)  # (T,) monotone despite float rounding
    return torch.diff(revealed, prepend=torch.zeros(1, dtype=torch.long))  # (T,)


def random_scores(conf, generator=None):
    """Eq. 8 (RR): m ~ U(0, 1) for every position. conf (B, L) only gives the shape. -> (B, L) float64."""
    return torch.rand(conf.shape, generator=generator, dtype=torch.float64, device=conf.device)


def low_confidence_scores(conf):
    """Eq. 9 (LCR): m = 1 - p_theta(x_{t-1}^i | x_bar_t), returned as -p (item 4 above).

    conf (B, L) the probability p of the predicted token -> (B, L), same dtype."""
    return -conf


def update_running_max(running, conf, predicted):
    """Eq. 10's running maximum max_{t' >= t} p(x_{t'-1}^i | x_bar_t'), updated at the predicted positions.

    running (B, L) so far (0 where never predicted); conf (B, L) this step; predicted (B, L) bool.
    A position that was not re-predicted at this step keeps its running maximum.
    """
    return torch.where(predicted, torch.maximum(running, conf), running)  # (B, L)


def update_latest(running, conf, predicted):
    """The official code's variant of Eq. 10: a re-predicted position takes its latest confidence."""
    return torch.where(predicted, conf, running)  # (B, L)


def running_confidence_scores(running):
    """Eq. 10 (RCR): m = 1 - running maximum confidence, returned as -running (item 4 above). (B, L) -> (B, L)."""
    return -running


def remask(x_bar, x_pred, m, candidates, n_mask, mask_id):
    """Eq. 7 (gamma) as written: among the candidate positions the n_mask with the highest masking score m
    get [MASK], the other candidates take x_pred, and non-candidates keep x_bar.

    x_bar (B, L) state fed to the model; x_pred (B, L) its full prediction; m (B, L) masking scores;
    candidates (B, L) bool, at least n_mask per row; n_mask int. Returns x_bar_{t-1} (B, L).
    """
    mask_score = torch.where(candidates, m, -math.inf)  # (B, L)
    masked_back = torch.zeros_like(candidates)  # (B, L)
    if n_mask > 0:
        masked_back.scatter_(1, torch.topk(mask_score, n_mask, dim=1).indices, True)
    out = torch.where(candidates, x_pred, x_bar)  # (B, L)
    return out.masked_fill(masked_back, mask_id)


def unmask(x_bar, x_pred, m, candidates, n_keep, mask_id):
    """Eq. 7 seen from the kept side, as LLaDA selects: among the candidate positions the n_keep with the
    lowest masking score m take x_pred, the other candidates get [MASK], and non-candidates keep x_bar.

    The same as remask(..., n_mask = candidates per row - n_keep) except when scores tie at the boundary.
    x_bar, x_pred, m, candidates (B, L) as in `remask`, at least n_keep candidates per row. Returns (B, L).
    """
    keep_score = torch.where(candidates, -m, -math.inf)  # (B, L) the kept set is the top-n_keep of -m
    keep = torch.zeros_like(candidates)  # (B, L)
    if n_keep > 0:
        keep.scatter_(1, torch.topk(keep_score, n_keep, dim=1).indices, True)
    masked_back = torch.full_like(x_bar, mask_id)  # (B, L)
    return torch.where(keep, x_pred, torch.where(candidates, masked_back, x_bar))  # (B, L)
