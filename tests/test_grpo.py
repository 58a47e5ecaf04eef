"""Tests for grpo.py (the diffu-GRPO baseline): every function against numbers worked by hand, and the loss
against a transcription of d1's compute_loss written here.

Run: python -m pytest -q tests/test_grpo.py   (CPU, about a second)
"""
import math
import os
import sys

from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import grpo  # noqa: E402
import updates  # noqa: E402

LN2 = math.log(2.0)
MASK_ID, EOS_ID = 99, 7


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=0)


# advantages ---------------------------------------------------------------------------------------

def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0,    # group 1: mean 0.5
                            2.0, 2.0, 2.0, 2.0,    # group 2: all equal
                            0.0, 0.5, 2.5, 1.0])   # group 3: mean 4 / 4 = 1
    expected = [0.5, -0.5, -0.5, 0.5,              # r - 0.5
                0.0, 0.0, 0.0, 0.0,                # nothing to compare
                -1.0, -0.5, 1.5, 0.0]              # r - 1
    assert close(grpo.group_advantages(rewards, 4), expected)


def test_group_advantages_not_divided_by_std():
    # mean 1.5 -> (-1.5, +1.5); dividing by the unbiased std sqrt(4.5) = 2.1213 would give -+0.7071
    assert close(grpo.group_advantages(torch.tensor([0.0, 3.0]), 2), [-1.5, 1.5])


def test_group_advantages_equal_rewards_exactly_zero():
    # groups of 0.9: the float32 mean of G = 3 or 8 of them can be one ulp off; A must still be exactly 0
    for G in (3, 8):
        assert torch.equal(grpo.group_advantages(torch.full((2 * G,), 0.9), G), torch.zeros(2 * G))


def test_group_advantages_rejects_bad_group_size():
    with pytest.raises(ValueError, match="divide N=5"):
        grpo.group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match=">= 2"):
        grpo.group_advantages(torch.zeros(4), 1)


# completion mask ----------------------------------------------------------------------------------

def test_completion_mask_rows_by_hand():
    ids = torch.tensor([[3, 7, 5, 7],    # EOS at 1: tokens 0..1 count, the second EOS does not
                        [3, 4, 5, 6],    # no EOS: all count
                        [7, 7, 1, 2],    # EOS first: only the EOS itself counts
                        [1, 2, 3, 7]])   # EOS last: all count
    expected = [[True, True, False, False],
                [True, True, True, True],
                [True, False, False, False],
                [True, True, True, True]]
    assert grpo.completion_mask(ids, EOS_ID).tolist() == expected


# perturbed input ----------------------------------------------------------------------------------

def prompts(B=4, P=10, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, MASK_ID, (B, P), generator=g)  # (B, P) never MASK_ID itself
    attn = torch.ones(B, P, dtype=torch.long)
    for b in range(B):
        pads = 2 * (b % 4)  # rows have 0, 2, 4, 6 pads on the left, in turn
        attn[b, :pads] = 0
        ids[b, :pads] = EOS_ID  # d1 pads with EOS
    comp = torch.randint(0, MASK_ID, (B, L), generator=g)
    return ids, comp, attn


def draw(ids, comp, attn, p, seed):
    return grpo.perturbed_input(ids, comp, attn, MASK_ID, p, torch.Generator().manual_seed(seed))


def test_perturbed_input_completion_masked_padding_kept():
    ids, comp, attn = prompts()
    P = ids.shape[1]
    for seed in range(20):
        x = draw(ids, comp, attn, 0.15, seed)
        assert x.shape == (4, P + 6) and x.dtype == torch.long
        assert (x[:, P:] == MASK_ID).all()                         # completion always fully masked
        pad = attn == 0
        assert torch.equal(x[:, :P][pad], ids[pad])               # padding never masked
        kept = x[:, :P] != MASK_ID
        assert torch.equal(x[:, :P][kept], ids[kept])             # unmasked prompt tokens unchanged


def test_perturbed_input_p_one_and_zero():
    ids, comp, attn = prompts()
    P = ids.shape[1]
    x = draw(ids, comp, attn, 1.0, 0)   # u < 1 always: every real prompt token masked, pads kept
    assert torch.equal(x[:, :P] == MASK_ID, attn == 1)
    x = draw(ids, comp, attn, 0.0, 0)   # u < 0 never: the prompt is untouched
    assert torch.equal(x[:, :P], ids)
    x = grpo.perturbed_input(ids, comp, None, MASK_ID, 1.0)  # no attention: pads count as prompt (d1)
    assert (x == MASK_ID).all()


def test_perturbed_input_rate_is_p():
    ids, comp, attn = prompts(B=200, P=50, L=2)
    n = int(attn.sum()) * 10  # real tokens over 10 draws: 200 * (50 - 3) * 10 = 94,000
    assert n == 94_000
    masked = sum(int((draw(ids, comp, attn, 0.15, s)[:, :50] == MASK_ID).sum()) for s in range(10))
    # binomial: mean n p = 14,100, sd sqrt(n p (1 - p)) = sqrt(11,985) = 109.5, so 5 sd = 547
    mean, sd = n * 0.15, math.sqrt(n * 0.15 * 0.85)
    assert abs(masked - mean) < 5 * sd
    # the bound catches a wrong p: 0.12 or 0.18 is 0.03 n = 2,820 away, more than 5 sd
    assert 0.03 * n > 5 * sd


def test_perturbed_input_seeded_and_fresh():
    ids, comp, attn = prompts(B=8, P=40)
    a, b, c = draw(ids, comp, attn, 0.15, 1), draw(ids, comp, attn, 0.15, 1), draw(ids, comp, attn, 0.15, 2)
    assert torch.equal(a, b)          # same seed, same mask (d1 reuses it for old, ref and current logp)
    assert not torch.equal(a, c)      # a fresh draw for the next inner iteration differs


def test_perturbed_input_rejects_bad_p():
    ids, comp, attn = prompts()
    with pytest.raises(ValueError, match="p_mask"):
        grpo.perturbed_input(ids, comp, attn, MASK_ID, 1.5)


# log-probs ----------------------------------------------------------------------------------------

def test_policy_logp_reads_the_completion_positions():
    """updates.policy_logp, the log-prob of every update (d1's `_get_per_token_logps`): positions after the
    prompt only, raw logits (temperature 1), float32."""
    logits = torch.zeros(1, 3, 3)
    logits[0, 0] = torch.tensor([50.0, -50.0, 0.0])   # a prompt position: must be ignored
    logits[0, 1] = torch.tensor([1.0, 2.0, 3.0])
    logits[0, 2] = torch.tensor([0.0, 0.0, 0.0])

    def model(x, attention_mask=None):
        return SimpleNamespace(logits=logits)
    batch = updates.MicroBatch([torch.zeros(1, 3, dtype=torch.long)], torch.ones(1, 3), torch.tensor([[2, 1]]),
                               torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 1), prompt_len=1)
    got = updates.policy_logp(model, batch, 0, 1.0)
    # position 1, target 2: -log(1 + e^-1 + e^-2) = -log(1.5032147) = -0.4076060 (raw logits, temperature 1)
    # position 2, target 1: uniform over 3 -> -log 3 = -1.0986123
    assert got.dtype == torch.float32 and close(got, [[-0.4076060, -1.0986123]])


# k3 -----------------------------------------------------------------------------------------------

def test_kl_k3_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.3]]))
    ref_logp = torch.log(torch.tensor([[0.25, 1.0, 0.3]]))
    expected = [
        0.5 + LN2 - 1,   # d = ln 0.5: e^d - d - 1 = 0.5 + 0.6931472 - 1 = 0.1931472
        2 - LN2 - 1,     # d = ln 2:   2 - 0.6931472 - 1 = 0.3068528
        0.0,             # equal probabilities
    ]
    assert close(grpo.kl_k3(logp, ref_logp), [expected])


# loss ---------------------------------------------------------------------------------------------

def loss_case():
    # Two completions, A = (+1, -1); ratios chosen inside and outside [1 - 0.5, 1 + 0.5] = [0.5, 1.5].
    rho = torch.tensor([[1.0, 2.0, 0.25],
                        [2.0, 0.25, 1.0]])
    old_logp = torch.full((2, 3), -1.0)
    logp = old_logp + rho.log()
    ref_logp = logp + LN2                   # d = ln 2 everywhere -> k3 = 0.3068528 per token
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, True, True],
                         [True, True, False]])  # row 1 ended with EOS at position 1
    return logp, old_logp, ref_logp, adv, mask


def test_grpo_loss_by_hand():
    logp, old_logp, ref_logp, adv, mask = loss_case()
    # Z row 0 (A = +1): r 1 -> 1;  r 2 -> min(2, 1.5) = 1.5 (clipped);  r 0.25 -> min(0.25, 0.5) = 0.25
    # Z row 1 (A = -1): r 2 -> min(-2, -1.5) = -2;  r 0.25 -> min(-0.25, -0.5) = -0.5 (clipped);  third unmasked
    # sum = 1 + 1.5 + 0.25 - 2 - 0.5 = 0.25 over 5 tokens -> loss = -0.25 / 5 = -0.05
    assert close(grpo.grpo_loss(logp, old_logp, None, adv, mask, beta=0.0), -0.05)
    # with k3: 0.25 - 0.04 * 5 * 0.3068528 = 0.25 - 0.0613706 = 0.1886294 -> / 5 = 0.0377259
    assert close(grpo.grpo_loss(logp, old_logp, ref_logp, adv, mask), -0.0377259)
    # n_tokens = 10 (the count of the whole update): -0.1886294 / 10; adv as (B, 1) gives the same
    assert close(grpo.grpo_loss(logp, old_logp, ref_logp, adv[:, None], mask, n_tokens=10), -0.0188629)


def test_grpo_loss_matches_d1_formula():
    # d1's compute_loss transcribed: -min(c1 A, clamp(c1) A) + beta k3, then (l * mask).sum() / mask.sum()
    g = torch.Generator().manual_seed(0)
    logp, old_logp, ref_logp = (torch.randn(6, 9, generator=g, dtype=torch.float64) * 0.7 for _ in range(3))
    adv = torch.randn(6, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 9, generator=g) < 0.7
    eps, beta = 0.5, 0.04
    c1 = torch.exp(logp - old_logp)
    c2 = torch.clamp(c1, 1 - eps, 1 + eps)
    kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
    per_token = -torch.min(c1 * adv[:, None], c2 * adv[:, None]) + beta * kl
    d1 = (per_token * mask).sum() / mask.sum()
    assert (c1 > 1 + eps).any() and (c1 < 1 - eps).any()  # both clip edges are exercised
    assert torch.allclose(grpo.grpo_loss(logp, old_logp, ref_logp, adv, mask, eps, beta), d1, atol=1e-12)


def test_grpo_loss_gradient_at_ratio_one():
    # mu = 1: old_logp = logp.detach(), rho = 1, so dZ/dlogp = A and dk3/dlogp = 1 - e^(ref - logp);
    # dloss/dlogp = -(A - beta * (1 - e^(ref - logp))) / n_tokens on counted tokens, 0 elsewhere
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5]])).requires_grad_(True)
    ref_logp = torch.log(torch.tensor([[0.25, 0.75, 0.9]]))  # e^(ref - logp) = (0.5, 1.5, 1.8)
    mask = torch.tensor([[True, True, False]])
    for adv, n, expected in [
        (torch.tensor([1.0]), None, [[-0.49, -0.51, 0.0]]),   # n = 2: (-1 + 0.04 * 0.5) / 2 = -0.49;
                                                              #        (-1 + 0.04 * -0.5) / 2 = -0.51
        (torch.tensor([-2.0]), 4, [[0.505, 0.495, 0.0]]),     # n = 4: (2 + 0.02) / 4 = 0.505;
                                                              #        (2 - 0.02) / 4 = 0.495
    ]:
        logp.grad = None
        grpo.grpo_loss(logp, logp.detach(), ref_logp, adv, mask, n_tokens=n).backward()
        assert close(logp.grad, expected)


def test_grpo_loss_empty_mask_and_nan_past_eos():
    logp, old_logp, ref_logp, adv, mask = loss_case()
    logp.requires_grad_(True)
    loss = grpo.grpo_loss(logp, old_logp, ref_logp, adv, torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad       # 0, not d1's 0 / 0
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(2, 3))
    bad = old_logp.clone()
    bad[1, 2] = float("nan")                                 # an uncounted position
    assert close(grpo.grpo_loss(logp.detach(), bad, ref_logp, adv, mask), -0.0377259)


def test_grpo_loss_needs_ref_when_beta():
    logp, old_logp, _, adv, mask = loss_case()
    with pytest.raises(ValueError, match="ref_logp"):
        grpo.grpo_loss(logp, old_logp, None, adv, mask, beta=0.04)
