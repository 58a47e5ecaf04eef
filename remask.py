"""Remasking for masked diffusion LMs: schedules, masking scores and the remask step (Section 2.4).

Paper -> code
  Eq. 13 (schedules phi)            -> `phi`, `tokens_per_step`
  Eq. 7  (remask step gamma)        -> `remask`
  Eq. 8  (random remasking, RR)     -> `random_scores`
  Eq. 9  (low-confidence, LCR)      -> `low_confidence_scores`
  Eq. 10 (running confidence, RCR)  -> `running_confidence_scores` (+ `update_running_max`)

Time: the paper's t counts down from T (all masked) to 0 (all revealed). In code a rollout has steps
s = 0..T-1 in rollout order (noisy -> clean); step s is the paper's step t = T - s and produces x_{t-1}.

Where the code differs from the paper or the official code:
1. Eq. 7 says "mask the n_t tokens with the highest score". We implement the same thing from the
   other side: among the candidates, the `n_keep` with the *lowest* score stay revealed and the rest
   get [MASK]. Selecting the kept set with `torch.topk` is what LLaDA's generate.py does, so greedy LCR
   is token-identical to it (tests/test_sample.py checks this).
2. phi(t) is read as the fraction of tokens *revealed* at time t (phi(T) = 0, phi(0) = 1), which is
   what Eq. 13 gives; the text around Eq. 7 calls the same count "masked".
3. RCR (paper-exact, `update_running_max`): the score of a position is 1 - the running maximum of
   the confidences it has had, and *all* generated positions up to the end of the current block are
   candidates, so an early low-confidence token can be remasked later. The official code instead
   overwrites a position's confidence with its latest prediction: `update_latest` (remasking
   "rcr-latest" in sample.py).
4. Scores are float64 so 1 - p keeps the order of p exactly (ties match LLaDA's top-k on p).
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


def phi(name, t, T):
    """Eq. 13: fraction of the L tokens that are revealed at (paper) time t, counting down from T to 0.

    name: one of SCHEDULES; t: int in [0, T]; T: number of denoising steps. phi(T) = 0, phi(0) = 1.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {sorted(SCHEDULES)}")
    if not 0 <= t <= T:
        raise ValueError(f"t={t} outside [0, T={T}]")
    return SCHEDULES[name](t / T)


def tokens_per_step(L, T, schedule="linear"):
    """Eq. 13 -> how many tokens each of the T steps reveals, in rollout order. Returns (T,) long, sum L.

    linear: LLaDA's rule, L // T per step with the remainder L % T given one each to the first steps.
    others: differences of the cumulative revealed counts floor(phi(t, T) * L); the last step reveals the rest.
    """
    if T < 1 or L < 0:
        raise ValueError(f"need T >= 1 and L >= 0, got L={L}, T={T}")
    if schedule == "linear":
        counts = torch.full((T,), L // T, dtype=torch.long)  # (T,)
        counts[: L % T] += 1
        return counts
    revealed = [math.floor(phi(schedule, T - s - 1, T) * L) for s in range(T)]  # after step s
    revealed[-1] = L
    revealed = torch.tensor(revealed).cummax(0).values.clamp(max=L)  # (T,) monotone despite float rounding
    return torch.diff(revealed, prepend=torch.zeros(1, dtype=torch.long))  # (T,)


def random_scores(conf, generator=None):
    """Eq. 8 (RR): m ~ U(0, 1) for every position. conf (B, L) only gives the shape. -> (B, L) float64."""
    return torch.rand(conf.shape, generator=generator, dtype=torch.float64, device=conf.device)


def low_confidence_scores(conf):
    """Eq. 9 (LCR): m = 1 - p_theta(x_{t-1}^i | x_bar_t), conf (B, L) the probability of the predicted token."""
    return 1 - conf.double()  # (B, L)


def update_running_max(running, conf, predicted):
    """Eq. 10's running maximum max_{t' >= t} p(x_{t'-1}^i | x_bar_t'), updated at the predicted positions.

    running (B, L) float64 so far (0 where never predicted); conf (B, L) this step; predicted (B, L) bool.
    A position that was not re-predicted at this step keeps its running maximum.
    """
    return torch.where(predicted, torch.maximum(running, conf.double()), running)  # (B, L)


def update_latest(running, conf, predicted):
    """The official code's variant of Eq. 10: a re-predicted position takes its latest confidence."""
    return torch.where(predicted, conf.double(), running)  # (B, L)


def running_confidence_scores(running):
    """Eq. 10 (RCR): m = 1 - running maximum confidence. running (B, L) -> (B, L) float64."""
    return 1 - running


def remask(x_bar, x_pred, m, candidates, n_keep, mask_id):
    """Eq. 7 (gamma): among the candidate positions keep the n_keep with the lowest masking score m
    revealed (taking x_pred there) and put [MASK] back on the others; non-candidates keep x_bar.

    x_bar (B, L) state fed to the model; x_pred (B, L) its full prediction; m (B, L) masking scores;
    candidates (B, L) bool, at least n_keep per row; n_keep int. Returns x_bar_{t-1} (B, L).
    """
    keep_score = torch.where(candidates, -m, -math.inf)  # (B, L) the kept set is the top-n_keep of -m
    keep = torch.zeros_like(candidates)  # (B, L)
    if n_keep > 0:
        keep.scatter_(1, torch.topk(keep_score, n_keep, dim=1).indices, True)
    masked_back = torch.full_like(x_bar, mask_id)  # (B, L)
    return torch.where(keep, x_pred, torch.where(candidates, masked_back, x_bar))  # (B, L)
