"""Tests for mdpo.py: every equation against numbers worked by hand or a slow loop written here.

Run: python -m pytest -q tests/test_mdpo.py   (CPU, about a second)
"""

import math
import os
import sys
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mdpo  # noqa: E402

LN2 = math.log(2.0)


def close(a, b, tol=1e-6):
    return torch.allclose(
        torch.as_tensor(a, dtype=torch.float64),
        torch.as_tensor(b, dtype=torch.float64),
        atol=tol,
        rtol=0,
    )


# Eq. 11 -------------------------------------------------------------------------------------------


def test_step_scores_by_hand():
    rewards = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    expected = [
        2 / 3,  # s=0: R0 - 0  + mean(R1, R2, R3) = 0 + (1 + 1 + 0) / 3
        1.5,  # s=1: R1 - R0 + mean(R2, R3)     = 1 + (1 + 0) / 2
        0.0,  # s=2: R2 - R1 + mean(R3)         = 0 + 0
        -1.0,  # s=3 (last): R3 - R2 + R3        = -1 + 0
    ]
    assert close(mdpo.step_scores(rewards), [expected])


def test_step_scores_last_step_rule():
    # last step uses R_{T-1} in place of the empty mean: R2 - R1 + R2 = 1 - 0 + 1 = 2
    assert close(mdpo.step_scores(torch.tensor([[0.0, 0.0, 1.0]]))[0, 2], 2.0)
    # T = 1: R0 - R_{-1} + R0 = 1 - 0 + 1 = 2
    assert close(mdpo.step_scores(torch.tensor([[1.0]])), [[2.0]])


def test_step_scores_matches_double_loop():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(5, 9, generator=g, dtype=torch.float64)
    N, T = rewards.shape
    slow = torch.zeros(N, T, dtype=torch.float64)
    for n in range(N):
        for s in range(T):
            prev = rewards[n, s - 1].item() if s > 0 else 0.0
            later = [rewards[n, j].item() for j in range(s + 1, T)]
            mean_later = sum(later) / len(later) if later else rewards[n, T - 1].item()
            slow[n, s] = rewards[n, s].item() - prev + mean_later
    assert torch.allclose(mdpo.step_scores(rewards), slow, atol=1e-12)


# Eq. 6 --------------------------------------------------------------------------------------------


def test_group_advantages_two_groups_by_hand():
    scores = torch.tensor([[1.0, 5.0], [3.0, 5.0], [0.0, 2.0], [0.0, -2.0]])  # group 1  # group 2
    a = 1 / (
        math.sqrt(2) + 1e-4
    )  # group 1, step 0: mean 2, std = sqrt((1 + 1) / 1) = sqrt 2, A = -+1 / (sqrt 2 + 1e-4)
    b = 2 / (
        math.sqrt(8) + 1e-4
    )  # group 2, step 1: mean 0, std = sqrt((4 + 4) / 1) = sqrt 8, A = +-2 / (sqrt 8 + 1e-4)
    expected = [
        [-a, 0.0],  # group 1, step 1: 5 and 5 are equal -> 0
        [a, 0.0],
        [0.0, b],  # group 2, step 0: 0 and 0 are equal -> 0
        [0.0, -b],
    ]
    assert close(mdpo.group_advantages(scores, 2), expected)


def test_group_advantages_group_of_three_unbiased_std():
    # mean 1, deviations (-1, -1, 2), unbiased var = (1 + 1 + 4) / 2 = 3, std = sqrt 3 = 1.7320508
    d = math.sqrt(3) + 1e-4
    assert close(
        mdpo.group_advantages(torch.tensor([[0.0], [0.0], [3.0]]), 3), [[-1 / d], [-1 / d], [2 / d]]
    )


def test_group_advantages_zero_std_gives_zero_not_nan():
    # equal scores of 0.9: the float32 mean of them can be off by one ulp (6e-8 for G = 8, T = 1 and
    # for G = 3 on CPU), and 6e-8 / (0 + 1e-4) would give A = 6e-4; all equal must give A = 0
    # exactly
    for G, T in [(8, 1), (3, 3), (4, 2)]:
        adv = mdpo.group_advantages(torch.full((G, T), 0.9), G)
        assert torch.equal(adv, torch.zeros(G, T))


def test_group_advantages_rejects_bad_group_size():
    with pytest.raises(ValueError, match="divide N=5"):
        mdpo.group_advantages(torch.zeros(5, 2), 2)


# Appendix A: top-c steps by |A| -----------------------------------------------------------------


def select(adv, c):
    return mdpo.select_steps(adv, c)[0].tolist()


def test_select_steps_abs_and_ties():
    adv = torch.tensor([[0.5, -2.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    # row 0: |A| = (0.5, 2, 1, 2); steps 1 and 3 tie at 2 -> earlier (1) first, then 3
    # row 1: all tie -> steps in order 0, 1
    assert select(adv, 2) == [[1, 3], [0, 1]]
    assert select(adv, 3) == [[1, 3, 2], [0, 1, 2]]  # then |A| = 1 at step 2


def test_select_steps_many_ties_keep_step_order():
    # T = 200 (unstable sorts and topk scramble ties at this size): |A| = 1 at every third step,
    # else 0
    adv = torch.zeros(2, 200)
    adv[0, ::3] = 1.0
    adv[1, ::3] = -1.0
    tied_ones = list(range(0, 200, 3))  # 67 steps, in step order
    rest = [s for s in range(200) if s % 3 != 0]  # then the zeros, in step order
    assert select(adv, 200) == [tied_ones + rest] * 2


def test_select_steps_c_larger_than_T():
    adv = torch.tensor([[0.5, -2.0, 1.0, 2.0]])
    out, valid = mdpo.select_steps(adv, 10)  # clamped to T = 4: full order by |A|
    assert valid.all()
    assert out.dtype == torch.long and out.tolist() == [[1, 3, 2, 0]]


# log-probs ----------------------------------------------------------------------------------------


def test_token_logp_temperature_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 3.0]]])
    target = torch.tensor([[2]])
    # tau = 0.5: logits / tau = (2, 4, 6); logp = 6 - log(e^2 + e^4 + e^6) = -log(1 + e^-2 + e^-4)
    #   = -log(1.1536509) = -0.1429316
    assert close(mdpo.token_logp(logits, target, 0.5), [[-0.1429316]])
    # tau = 0 (greedy) is scored at tau = 1: -log(1 + e^-1 + e^-2) = -log(1.5032147) = -0.4076060
    assert close(mdpo.token_logp(logits, target, 0.0), [[-0.4076060]])
    assert close(mdpo.token_logp(logits, target, 1.0), [[-0.4076060]])


def test_token_logp_matches_manual_softmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=g)
    targets = torch.randint(0, 5, (2, 3), generator=g)
    tau = 0.7
    got = mdpo.token_logp(logits.half(), targets, tau)
    assert got.dtype == torch.float32
    for b in range(2):
        for i in range(3):
            z = [v / tau for v in logits[b, i].half().float().tolist()]
            manual = z[targets[b, i]] - math.log(sum(math.exp(v) for v in z))
            assert abs(got[b, i].item() - manual) < 1e-5


# Eq. 5 --------------------------------------------------------------------------------------------


def surrogate_case():
    # mu > 1: the policy has moved, logp != old_logp. Columns: (ratio, A).
    rho = torch.tensor([[1.1, 1.5, 1.5, 0.5, 0.5]])
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0, -1.0]])
    old_logp = torch.full((1, 5), -1.0)
    return old_logp + rho.log(), old_logp, adv


def test_ratio():
    logp, old_logp, _ = surrogate_case()
    assert close(mdpo.ratio(logp, old_logp), [[1.1, 1.5, 1.5, 0.5, 0.5]])


def test_clipped_surrogate_by_hand():
    logp, old_logp, adv = surrogate_case()
    logp.requires_grad_(True)
    z = mdpo.clipped_surrogate(logp, old_logp, adv, eps=0.2)
    expected = [
        1.1,  # ratio 1.1 inside the range, A = +1 -> min(1.1 * 1, 1.1 * 1) = 1.1
        1.2,  # ratio 1.5, A = +1 -> min(1.5 * 1, 1.2 * 1) = 1.2   (clipped)
        -1.5,  # ratio 1.5, A = -1 -> min(-1.5, -1.2) = -1.5        (unclipped)
        0.5,  # ratio 0.5, A = +1 -> min(0.5, 0.8) = 0.5           (unclipped)
        -0.8,  # ratio 0.5, A = -1 -> min(-0.5, 0.8 * -1) = -0.8    (clipped)
    ]
    assert close(z, [expected])
    z.sum().backward()
    # dZ/dlogp = ratio * A on the unclipped branch, 0 on the clipped one
    assert close(logp.grad, [[1.1, 0.0, -1.5, 0.5, 0.0]])


def test_clip_fraction():
    logp, old_logp, adv = surrogate_case()
    all_tokens = torch.ones(1, 5, dtype=torch.bool)
    # clipped branch active at columns 1 and 4 -> 2 / 5
    assert close(mdpo.clip_fraction(logp, old_logp, adv, all_tokens), 0.4)
    # drop column 1 from the mask -> 1 clipped of 4
    assert close(
        mdpo.clip_fraction(logp, old_logp, adv, torch.tensor([[True, False, True, True, True]])),
        0.25,
    )
    assert close(mdpo.clip_fraction(logp, old_logp, adv, torch.zeros(1, 5, dtype=torch.bool)), 0.0)


# Eq. 12 -------------------------------------------------------------------------------------------


def test_kl_k2_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.3]]))
    ref_logp = torch.log(torch.tensor([[0.25, 0.3]]))
    # d = 0.25 / 0.5 = 0.5, (log 0.5)^2 / 2 = 0.6931472^2 / 2 = 0.2402265; equal probabilities -> 0
    assert close(mdpo.kl_k2(logp, ref_logp), [[0.2402265, 0.0]])


# Eq. 4 --------------------------------------------------------------------------------------------


def loss_case():
    logp = torch.log(torch.tensor([[0.6, 0.5, 0.2]]))
    old_logp = torch.log(torch.tensor([[0.4, 0.5, 0.2]]))  # ratios (1.5, 1, 1)
    ref_logp = torch.log(torch.tensor([[0.3, 0.9, 0.1]]))  # d = (0.5, 1.8, 0.5)
    adv = torch.tensor([[1.0, 5.0, -1.0]])
    mask = torch.tensor([[True, False, True]])
    return logp, old_logp, ref_logp, adv, mask


def test_mdpo_loss_by_hand():
    logp, old_logp, ref_logp, adv, mask = loss_case()
    # Z = (min(1.5, 1.2) = 1.2, unmasked, 1 * -1 = -1); sum = 0.2 over 2 masked tokens -> -0.2 / 2 =
    # -0.1
    assert close(mdpo.mdpo_loss(logp, old_logp, None, adv, mask, beta=0.0), -0.1)
    # k2 = (ln 0.5)^2 / 2 = 0.2402265 at both masked tokens; 0.2 - 0.08 * 0.480453 = 0.1615638 -> /
    # 2
    assert close(mdpo.mdpo_loss(logp, old_logp, ref_logp, adv, mask, beta=0.08), -0.0807819)
    # same sum over denom = 4 (tokens of the whole update): -0.1615638 / 4
    assert close(
        mdpo.mdpo_loss(logp, old_logp, ref_logp, adv, mask, beta=0.08, denom=4), -0.0403909
    )


def test_mdpo_loss_adv_per_row_broadcasts():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    mask = torch.tensor([[True, False, True]])
    # mu = 1: ratio 1, Z = A = 2 at both masked tokens -> -(2 + 2) / 2 = -2
    assert close(mdpo.mdpo_loss(logp, logp, None, torch.tensor([[2.0]]), mask, beta=0.0), -2.0)


def test_mdpo_loss_gradient_direction():
    logp = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0]])
    loss = mdpo.mdpo_loss(
        logp, logp.detach(), None, adv, torch.ones(1, 2, dtype=torch.bool), beta=0.0
    )
    loss.backward()
    # ratio 1: dloss/dlogp = -A / 2 -> (-0.5, +0.5): raising the A > 0 token's logp lowers the loss
    assert close(logp.grad, [[-0.5, 0.5]])


def test_mdpo_loss_empty_mask():
    logp, old_logp, ref_logp, adv, _ = loss_case()
    logp.requires_grad_(True)
    loss = mdpo.mdpo_loss(logp, old_logp, ref_logp, adv, torch.zeros(1, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(1, 3))


def test_mdpo_loss_needs_ref_when_beta():
    logp, old_logp, _, adv, mask = loss_case()
    with pytest.raises(ValueError, match="ref_logp"):
        mdpo.mdpo_loss(logp, old_logp, None, adv, mask, beta=0.08)


# Eq. 1 --------------------------------------------------------------------------------------------

V, MASK_ID = 10, 9


def tiny_model():
    torch.manual_seed(0)
    emb, head = torch.nn.Embedding(V, 8), torch.nn.Linear(8, V)
    seen = []

    def model(x, attention_mask=None):
        seen.append(x.clone())
        return SimpleNamespace(logits=head(emb(x)))

    return model, seen


def sft_batch():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, MASK_ID, (3, 7), generator=g)
    maskable = torch.zeros(3, 7, dtype=torch.bool)
    maskable[0, 2:] = True  # prompt of 2, answer of 5
    maskable[1, 4:] = True  # prompt of 4, answer of 3
    maskable[2, 1:] = True  # prompt of 1, answer of 6
    return x0, maskable


def test_masked_diffusion_loss_matches_slow_loop():
    model, _ = tiny_model()
    x0, maskable = sft_batch()
    B, L = x0.shape
    eps = 1e-3
    for seed in range(5):
        x_tau, masked, p_mask = mdpo.sft_noise(
            x0, maskable, MASK_ID, torch.Generator().manual_seed(seed), eps
        )
        fast = mdpo.masked_diffusion_loss(model(x_tau).logits, x0, masked, p_mask, maskable)
        g = torch.Generator().manual_seed(seed)
        tau = torch.rand(B, generator=g)  # same draws, same order: tau first, then u
        u = torch.rand(B, L, generator=g)
        x_noisy = x0.clone()
        for b in range(B):
            for i in range(L):
                if maskable[b, i] and u[b, i] < (1 - eps) * tau[b] + eps:
                    x_noisy[b, i] = MASK_ID
        logits = model(x_noisy).logits
        total = 0.0
        for b in range(B):
            p = (1 - eps) * tau[b].item() + eps
            row = 0.0
            for i in range(L):
                if x_noisy[b, i] == MASK_ID:
                    z = logits[b, i].tolist()
                    row += (math.log(sum(math.exp(v) for v in z)) - z[x0[b, i]]) / p
            total += row / int(maskable[b].sum())
        assert abs(fast.item() - total / B) < 1e-5


def test_masked_diffusion_loss_never_masks_prompt():
    model, seen = tiny_model()
    x0, maskable = sft_batch()
    n_masked = 0
    for seed in range(20):
        x_noisy, masked, p_mask = mdpo.sft_noise(
            x0, maskable, MASK_ID, torch.Generator().manual_seed(seed)
        )
        loss = mdpo.masked_diffusion_loss(model(x_noisy).logits, x0, masked, p_mask, maskable)
        assert torch.equal(x_noisy[~maskable], x0[~maskable]) and torch.equal(
            masked, x_noisy == MASK_ID
        )
        n_masked += int((x_noisy == MASK_ID).sum())
        assert torch.isfinite(loss) and loss.requires_grad
    assert n_masked > 0  # the answer does get masked, so the check above is not vacuous


def test_loss_denominators_by_hand():
    mask = torch.tensor(
        [
            [True, True, False, False],  # 2 masked tokens
            [True, True, True, True],  # 4
            [False, False, False, False],
        ]
    )  # an empty (padding) row
    # "step": mean over each step's tokens, then over the 5 trained steps of the update -> 2 * 5, 4
    # * 5, (clamped 1) * 5
    assert mdpo.loss_denominators(mask, "step", 5, 30, 16).squeeze(1).tolist() == [10.0, 20.0, 5.0]
    # "token": every masked token of the update (30) weighs the same; "paper": Eq. 4's 1/G sum ->
    # the 16 rollouts
    assert mdpo.loss_denominators(mask, "token", 5, 30, 16).squeeze(1).tolist() == [30.0] * 3
    assert mdpo.loss_denominators(mask, "paper", 5, 30, 16).squeeze(1).tolist() == [16.0] * 3
    with pytest.raises(ValueError, match="norm='mean'"):
        mdpo.loss_denominators(mask, "mean", 5, 30, 16)


def test_step_normalisation_weighs_every_step_alike():
    """Two steps, one with 1 masked token, one with 3, all with Z = A = 1 (ratio 1): under "step"
    each step's mean is 1, the loss -(1 + 1) / 2 = -1 and each token of the small step gets 3x the
    gradient of a token of the big one.
    """
    logp = torch.log(torch.full((2, 3), 0.5)).requires_grad_(True)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    denom = mdpo.loss_denominators(mask, "step", 2, 4, 2)  # (2 * 1, 2 * 3)
    loss = mdpo.mdpo_loss(logp, logp.detach(), None, torch.ones(2, 1), mask, beta=0.0, denom=denom)
    loss.backward()
    assert close(loss, -1.0) and close(logp.grad, [[-0.5, 0, 0], [-1 / 6, -1 / 6, -1 / 6]])
    # mdpo_loss's default normaliser is this one, over the rows it is given
    assert close(mdpo.mdpo_loss(logp, logp.detach(), None, torch.ones(2, 1), mask, beta=0.0), -1.0)


def test_select_steps_skips_zero_advantages():
    adv = torch.tensor([[0.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    sel, valid = mdpo.select_steps(adv, 3)
    # row 0: |A| order 1, 3, then the zeros; the third pick (step 0, A = 0) is not trained; row 1:
    # nothing
    assert sel.tolist() == [[1, 3, 0], [0, 1, 2]] and valid.tolist() == [
        [True, True, False],
        [False] * 3,
    ]


def test_step_scores_worked_example_of_the_docstring():
    # R = [0, 1, 0, 1] in rollout order: 0 + mean(1, 0, 1), 1 + mean(0, 1), 0 - 1 + 1, 1 - 0 + 1
    got = mdpo.step_scores(torch.tensor([[0.0, 1.0, 0.0, 1.0]]))
    assert torch.allclose(got, torch.tensor([[2 / 3, 1.5, 0.0, 2.0]]))


def test_clipped_surrogate_refuses_an_advantage_that_would_broadcast_along_the_tokens():
    logp = torch.zeros(3, 3)  # B == L: a (B,) advantage would broadcast silently, one per token
    with pytest.raises(ValueError, match=r"adv of shape \(3,\) must be \(B, 1\) or \(B, L\)"):
        mdpo.clipped_surrogate(logp, logp, torch.ones(3))
    assert mdpo.clipped_surrogate(logp, logp, torch.ones(3, 1)).shape == (3, 3)
