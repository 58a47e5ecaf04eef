"""Tests for grpo.py (diffu-GRPO, CJ-GRPO, IGPO): every function against numbers worked by hand,
d1's loss against a transcription of its compute_loss, and IGPO's hint canvas against a
transcription of its create_spacing_scaled_inpainting_sequence, both written here.

Run: python -m pytest -q tests/test_grpo.py   (CPU, about a second)
"""

import math
import os
import random
import sys

from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import grpo  # noqa: E402
import optimise  # noqa: E402

LN2 = math.log(2.0)
MASK_ID, EOS_ID = 99, 7


def close(a, b, tol=1e-6):
    return torch.allclose(
        torch.as_tensor(a, dtype=torch.float64),
        torch.as_tensor(b, dtype=torch.float64),
        atol=tol,
        rtol=0,
    )


# advantages ---------------------------------------------------------------------------------------


def test_reward_minus_group_mean_by_hand():
    rewards = torch.tensor(
        [
            1.0,
            0.0,
            0.0,
            1.0,  # group 1: mean 0.5
            2.0,
            2.0,
            2.0,
            2.0,  # group 2: all equal
            0.0,
            0.5,
            2.5,
            1.0,
        ]
    )  # group 3: mean 4 / 4 = 1
    expected = [
        0.5,
        -0.5,
        -0.5,
        0.5,  # r - 0.5
        0.0,
        0.0,
        0.0,
        0.0,  # nothing to compare
        -1.0,
        -0.5,
        1.5,
        0.0,
    ]  # r - 1
    assert close(grpo.reward_minus_group_mean(rewards, 4), expected)


def test_reward_minus_group_mean_not_divided_by_std():
    # mean 1.5 -> (-1.5, +1.5); dividing by the unbiased std sqrt(4.5) = 2.1213 would give -+0.7071
    assert close(grpo.reward_minus_group_mean(torch.tensor([0.0, 3.0]), 2), [-1.5, 1.5])


def test_reward_minus_group_mean_equal_rewards_exactly_zero():
    # groups of 0.9: the float32 mean of G = 3 or 8 of them can be one ulp off; A must still be
    # exactly 0
    for G in (3, 8):
        adv = grpo.reward_minus_group_mean(torch.full((2 * G,), 0.9), G)
        assert torch.equal(adv, torch.zeros(2 * G))


def test_reward_minus_group_mean_rejects_bad_group_size():
    with pytest.raises(ValueError, match="divide N=5"):
        grpo.reward_minus_group_mean(torch.zeros(5), 2)
    with pytest.raises(ValueError, match=">= 2"):
        grpo.reward_minus_group_mean(torch.zeros(4), 1)


# completion mask ----------------------------------------------------------------------------------


def test_completion_mask_rows_by_hand():
    ids = torch.tensor(
        [
            [3, 7, 5, 7],  # EOS at 1: tokens 0..1 count, the second EOS does not
            [3, 4, 5, 6],  # no EOS: all count
            [7, 7, 1, 2],  # EOS first: only the EOS itself counts
            [1, 2, 3, 7],
        ]
    )  # EOS last: all count
    expected = [
        [True, True, False, False],
        [True, True, True, True],
        [True, False, False, False],
        [True, True, True, True],
    ]
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
        assert (x[:, P:] == MASK_ID).all()  # completion always fully masked
        pad = attn == 0
        assert torch.equal(x[:, :P][pad], ids[pad])  # padding never masked
        kept = x[:, :P] != MASK_ID
        assert torch.equal(x[:, :P][kept], ids[kept])  # unmasked prompt tokens unchanged


def test_perturbed_input_p_one_and_zero():
    ids, comp, attn = prompts()
    P = ids.shape[1]
    x = draw(ids, comp, attn, 1.0, 0)  # u < 1 always: every real prompt token masked, pads kept
    assert torch.equal(x[:, :P] == MASK_ID, attn == 1)
    x = draw(ids, comp, attn, 0.0, 0)  # u < 0 never: the prompt is untouched
    assert torch.equal(x[:, :P], ids)
    x = grpo.perturbed_input(
        ids, comp, None, MASK_ID, 1.0
    )  # no attention: pads count as prompt (d1)
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
    a, b, c = (
        draw(ids, comp, attn, 0.15, 1),
        draw(ids, comp, attn, 0.15, 1),
        draw(ids, comp, attn, 0.15, 2),
    )
    assert torch.equal(a, b)  # same seed, same mask (d1 reuses it for old, ref and current logp)
    assert not torch.equal(a, c)  # a fresh draw for the next inner iteration differs


def test_perturbed_input_rejects_bad_p():
    ids, comp, attn = prompts()
    with pytest.raises(ValueError, match="p_mask"):
        grpo.perturbed_input(ids, comp, attn, MASK_ID, 1.5)


# log-probs ----------------------------------------------------------------------------------------


def test_policy_logp_reads_the_completion_positions():
    """optimise.policy_logp, the log-prob of every update (d1's `_get_per_token_logps`): positions
    after the prompt only, raw logits (temperature 1), float32."""
    logits = torch.zeros(1, 3, 3)
    logits[0, 0] = torch.tensor([50.0, -50.0, 0.0])  # a prompt position: must be ignored
    logits[0, 1] = torch.tensor([1.0, 2.0, 3.0])
    logits[0, 2] = torch.tensor([0.0, 0.0, 0.0])

    def model(x, attention_mask=None):
        return SimpleNamespace(logits=logits)

    model.config = SimpleNamespace(model_type="toy")  # models.logits reads it (shifted logits?)
    batch = optimise.MicroBatch(
        [torch.zeros(1, 3, dtype=torch.long)],
        torch.ones(1, 3),
        torch.tensor([[2, 1]]),
        torch.ones(1, 2, dtype=torch.bool),
        torch.ones(1, 1),
        prompt_len=1,
    )
    got = optimise.policy_logp(model, batch, 0, 1.0)
    # position 1, target 2: -log(1 + e^-1 + e^-2) = -log(1.5032147) = -0.4076060 (raw logits,
    # temperature 1) position 2, target 1: uniform over 3 -> -log 3 = -1.0986123
    assert got.dtype == torch.float32 and close(got, [[-0.4076060, -1.0986123]])


# k3 -----------------------------------------------------------------------------------------------


def test_kl_k3_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.3]]))
    ref_logp = torch.log(torch.tensor([[0.25, 1.0, 0.3]]))
    expected = [
        0.5 + LN2 - 1,  # d = ln 0.5: e^d - d - 1 = 0.5 + 0.6931472 - 1 = 0.1931472
        2 - LN2 - 1,  # d = ln 2:   2 - 0.6931472 - 1 = 0.3068528
        0.0,  # equal probabilities
    ]
    assert close(grpo.kl_k3(logp, ref_logp), [expected])


# loss ---------------------------------------------------------------------------------------------


def loss_case():
    # Two completions, A = (+1, -1); ratios chosen inside and outside [1 - 0.5, 1 + 0.5] = [0.5,
    # 1.5].
    rho = torch.tensor([[1.0, 2.0, 0.25], [2.0, 0.25, 1.0]])
    old_logp = torch.full((2, 3), -1.0)
    logp = old_logp + rho.log()
    ref_logp = logp + LN2  # d = ln 2 everywhere -> k3 = 0.3068528 per token
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor(
        [[True, True, True], [True, True, False]]
    )  # row 1 ended with EOS at position 1
    return logp, old_logp, ref_logp, adv, mask


def test_grpo_loss_by_hand():
    logp, old_logp, ref_logp, adv, mask = loss_case()
    # Z row 0 (A = +1): r 1 -> 1;  r 2 -> min(2, 1.5) = 1.5 (clipped);  r 0.25 -> min(0.25, 0.5) =
    # 0.25 Z row 1 (A = -1): r 2 -> min(-2, -1.5) = -2;  r 0.25 -> min(-0.25, -0.5) = -0.5
    # (clipped);  third unmasked sum = 1 + 1.5 + 0.25 - 2 - 0.5 = 0.25 over 5 tokens -> loss = -0.25
    # / 5 = -0.05
    assert close(grpo.grpo_loss(logp, old_logp, None, adv, mask, beta=0.0), -0.05)
    # with k3: 0.25 - 0.04 * 5 * 0.3068528 = 0.25 - 0.0613706 = 0.1886294 -> / 5 = 0.0377259
    assert close(grpo.grpo_loss(logp, old_logp, ref_logp, adv, mask), -0.0377259)
    # n_tokens = 10 (the count of the whole update): -0.1886294 / 10; adv as (B, 1) gives the same
    assert close(
        grpo.grpo_loss(logp, old_logp, ref_logp, adv[:, None], mask, n_tokens=10), -0.0188629
    )


def test_grpo_loss_matches_d1_formula():
    # d1's compute_loss transcribed: -min(c1 A, clamp(c1) A) + beta k3, then (l * mask).sum() /
    # mask.sum()
    g = torch.Generator().manual_seed(0)
    logp, old_logp, ref_logp = (
        torch.randn(6, 9, generator=g, dtype=torch.float64) * 0.7 for _ in range(3)
    )
    adv = torch.randn(6, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 9, generator=g) < 0.7
    eps, beta = 0.5, 0.04
    c1 = torch.exp(logp - old_logp)
    c2 = torch.clamp(c1, 1 - eps, 1 + eps)
    kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
    per_token = -torch.min(c1 * adv[:, None], c2 * adv[:, None]) + beta * kl
    d1 = (per_token * mask).sum() / mask.sum()
    assert (c1 > 1 + eps).any() and (c1 < 1 - eps).any()  # both clip edges are exercised
    assert torch.allclose(
        grpo.grpo_loss(logp, old_logp, ref_logp, adv, mask, eps, beta), d1, atol=1e-12
    )


def test_grpo_loss_gradient_at_ratio_one():
    # mu = 1: old_logp = logp.detach(), rho = 1, so dZ/dlogp = A and dk3/dlogp = 1 - e^(ref - logp);
    # dloss/dlogp = -(A - beta * (1 - e^(ref - logp))) / n_tokens on counted tokens, 0 elsewhere
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5]])).requires_grad_(True)
    ref_logp = torch.log(torch.tensor([[0.25, 0.75, 0.9]]))  # e^(ref - logp) = (0.5, 1.5, 1.8)
    mask = torch.tensor([[True, True, False]])
    for adv, n, expected in [
        (torch.tensor([1.0]), None, [[-0.49, -0.51, 0.0]]),  # n = 2: (-1 + 0.04 * 0.5) / 2 = -0.49;
        #        (-1 + 0.04 * -0.5) / 2 = -0.51
        (torch.tensor([-2.0]), 4, [[0.505, 0.495, 0.0]]),  # n = 4: (2 + 0.02) / 4 = 0.505;
        #        (2 - 0.02) / 4 = 0.495
    ]:
        logp.grad = None
        grpo.grpo_loss(logp, logp.detach(), ref_logp, adv, mask, n_tokens=n).backward()
        assert close(logp.grad, expected)


def test_grpo_loss_empty_mask_and_nan_past_eos():
    logp, old_logp, ref_logp, adv, mask = loss_case()
    logp.requires_grad_(True)
    loss = grpo.grpo_loss(logp, old_logp, ref_logp, adv, torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad  # 0, not d1's 0 / 0
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(2, 3))
    bad = old_logp.clone()
    bad[1, 2] = float("nan")  # an uncounted position
    assert close(grpo.grpo_loss(logp.detach(), bad, ref_logp, adv, mask), -0.0377259)


def test_grpo_loss_needs_ref_when_beta():
    logp, old_logp, _, adv, mask = loss_case()
    with pytest.raises(ValueError, match="ref_logp"):
        grpo.grpo_loss(logp, old_logp, None, adv, mask, beta=0.04)


# CJ-GRPO ------------------------------------------------------------------------------------------

M = MASK_ID


def cj_case():
    # T = 2 steps, N = 2 rollouts (one group), L = 3 tokens
    x_bar = torch.tensor(
        [[[M, M, M], [M, M, M]], [[5, M, M], [M, M, M]]]  # step 0: both rollouts all [MASK]
    )  # step 1: rollout 0 revealed its first token
    final = torch.tensor([[5, 6, 7], [4, 8, 9]])
    return x_bar, final


def test_revealed_per_step_by_hand():
    x_bar, final = cj_case()
    expected = [
        [[True, False, False], [False, False, False]],  # step 0: -> [5,M,M]; nothing
        [[False, True, True], [True, True, True]],
    ]  # step 1: -> [5,6,7]; [4,8,9]
    assert grpo.revealed_per_step(x_bar, final, MASK_ID).tolist() == expected


def test_revealed_per_step_is_the_state_difference_under_remasking():
    # RCR: step 1 reveals 6 and remasks the 5 of step 0; step 2 reveals position 0 anew (as 4)
    x_bar = torch.tensor([[[M, M, M]], [[5, M, M]], [[M, 6, M]]])  # (T=3, N=1, L=3)
    final = torch.tensor([[4, 6, 7]])
    got = grpo.revealed_per_step(x_bar, final, MASK_ID)[:, 0].tolist()
    assert got == [
        [True, False, False],  # M -> 5
        [False, True, False],  # 5 not [MASK] in step 1's input: not revealed
        [True, False, True],
    ]  # M -> 4 and M -> 7


def cj_rows_loss(logp, x_bar, final, adv, chunks):
    """The CJ-GRPO loss of rows (rollout n, step s) in micro-batches: the sum of micro-losses."""
    revealed = grpo.revealed_per_step(x_bar, final, MASK_ID)  # (T, N, L)
    denom = grpo.cj_grpo_denominators(revealed.sum((1, 2)))  # (T,)
    total = 0.0
    for n, s in chunks:
        n, s = torch.tensor(n), torch.tensor(s)
        lp = logp[s, n]  # (b, L)
        # first update: old = logp.detach() (ratio 1), ref = logp (KL 0)
        total = total + grpo.cj_grpo_loss(
            lp, lp.detach(), lp.detach(), adv[n], revealed[s, n], denom[s][:, None]
        )
    return total, denom


def test_cj_grpo_first_update_by_hand():
    x_bar, final = cj_case()
    adv = grpo.reward_minus_group_mean(torch.tensor([1.0, 0.0]), 2)  # (0.5, -0.5)
    logp = torch.log(torch.tensor([0.3, 0.6, 0.9])).expand(2, 2, 3).clone().requires_grad_(True)
    # rows (n, s) in two micro-batches: {(0,0), (1,0), (0,1)} and {(1,1)}
    loss, denom = cj_rows_loss(logp, x_bar, final, adv, [([0, 1, 0], [0, 0, 1]), ([1], [1])])
    # step tokens: n_0 = 1, n_1 = 2 + 3 = 5; S = 2 -> denominators 2 * (1, 5) = (2, 10)
    assert close(denom, [2.0, 10.0])
    # step 0: mean A over its revealed tokens = 0.5 (rollout 0's one token)
    # step 1: (0.5 + 0.5 - 0.5 - 0.5 - 0.5) / 5 = -0.5 / 5 = -0.1
    # L = (1/2)(0.5 - 0.1) = 0.2, negated -> -0.2. (A mean over all 6 tokens would give
    # (3 * 0.5 - 3 * 0.5) / 6 = 0: each step weighs the same, whatever its token count.)
    assert close(loss, -0.2)
    loss.backward()
    # ratio 1 and ref = logp: dloss/dlogp = -A / denom[s] on revealed tokens, 0 elsewhere
    expected = [
        [[-0.25, 0.0, 0.0], [0.0, 0.0, 0.0]],  # -0.5 / 2
        [[0.0, -0.05, -0.05], [0.05, 0.05, 0.05]],
    ]  # -0.5 / 10; +0.5 / 10
    assert close(logp.grad, expected)


def test_cj_grpo_step_without_revealed_token_adds_zero():
    # T = 2, N = 1: step 0 reveals nothing (n_0 = 0), step 1 reveals all 3 tokens
    x_bar = torch.tensor([[[M, M, M]], [[M, M, M]]])
    final = torch.tensor([[5, 6, 7]])
    logp = torch.zeros(2, 1, 3, requires_grad=True)
    loss, denom = cj_rows_loss(logp, x_bar, final, torch.tensor([1.0]), [([0], [0]), ([0], [1])])
    assert close(denom, [2.0, 6.0])  # S * max(n_s, 1) guard for the empty step: 2 * 1; 2 * 3
    # L = (1/2)(0 + 3 * 1 / 3) = 0.5 -> -0.5, finite (EAR's 0 / 0 would be NaN)
    assert torch.isfinite(loss) and close(loss, -0.5)


def test_cj_grpo_denominators_take_a_ddp_share():
    # per-rank shares (sum over ranks / W) can be fractional; only a 0 is replaced, S = 3
    got = grpo.cj_grpo_denominators(torch.tensor([0.0, 0.5, 3.0]))
    assert close(got, [3.0, 1.5, 9.0])  # 3 * 1, 3 * 0.5, 3 * 3


def test_cj_grpo_loss_per_row_denominators_by_hand():
    logp, old_logp, ref_logp, adv, mask = loss_case()
    denom = torch.tensor([[2.0], [4.0]])
    # Z row 0 = 1 + 1.5 + 0.25 = 2.75; Z row 1 = -2 - 0.5 = -2.5 (see test_grpo_loss_by_hand)
    # -(2.75 / 2 - 2.5 / 4) = -(1.375 - 0.625) = -0.75
    assert close(grpo.cj_grpo_loss(logp, old_logp, None, adv, mask, denom, beta=0.0), -0.75)
    # k3 = 0.3068528 per token, beta 0.04 -> 0.0122741 per token
    # row 0: (2.75 - 3 * 0.0122741) / 2 = 1.3565888; row 1: (-2.5 - 2 * 0.0122741) / 4 = -0.6311371
    # -(1.3565888 - 0.6311371) = -0.7254518
    assert close(grpo.cj_grpo_loss(logp, old_logp, ref_logp, adv, mask, denom), -0.7254518)


def test_grpo_loss_fractional_normaliser_not_rounded_up():
    logp, old_logp, _, adv, mask = loss_case()
    # a DDP share of 0.5 tokens: -0.25 / 0.5 = -0.5 (a clamp at 1 would give -0.25)
    assert close(grpo.grpo_loss(logp, old_logp, None, adv, mask, beta=0.0, n_tokens=0.5), -0.5)


# IGPO: trigger ------------------------------------------------------------------------------------


def test_all_wrong_groups_by_hand():
    correct = torch.tensor(
        [
            False,
            False,
            False,  # group 0: none correct -> inpaint
            False,
            True,
            False,  # group 1: one correct
            True,
            True,
            True,
        ]
    )  # group 2: all correct
    assert grpo.all_wrong_groups(correct, 3).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="divide N=9"):
        grpo.all_wrong_groups(correct, 4)


# IGPO: hint canvas --------------------------------------------------------------------------------


class ScriptedRng:
    """Stands in for random.Random: returns the draws the test scripts and checks the arguments."""

    def __init__(self, randints=(), samples=(), bounds=None):
        self.randints, self.samples, self.bounds = list(randints), list(samples), bounds

    def randint(self, a, b):
        assert (a, b) == self.bounds
        return self.randints.pop(0)

    def sample(self, population, k):
        expected_population, expected_k, out = self.samples.pop(0)
        assert list(population) == expected_population and k == expected_k
        return out


REF = list(range(100, 120))  # A = 20 trace tokens; token j of the trace is 100 + j
CHUNKS = [(0, 5), (5, 10), (10, 15), (15, 19)]


def test_hint_chunks_by_hand():
    # draws 5, 5, 5, 4 -> (0,5) (5,10) (10,15) (15,19); 1 token left: draw 3, min(3, 1) < 3 -> stop
    rng = ScriptedRng([5, 5, 5, 4, 3], bounds=(3, 5))
    assert grpo.hint_chunks(20, rng, 3, 5) == CHUNKS
    assert rng.randints == []  # the stopping draw was made, as the code makes it


def canvas_of(hints, L=40):
    out = [M] * L
    for at, tokens in hints:
        out[at : at + len(tokens)] = tokens
    return out


def test_hint_canvas_by_hand_spacing_capped():
    # L = 40, free_tail = 10 -> E = 30; A = 20 -> f = clamp(30 / 20, 1, 1.5) = 1.5
    # eta = 0.5: n_mask = int(4 * 0.5) = 2 chunks masked, drawn: (5,10) and (15,19); the last chunk
    # (15,19) is revealed all the same -> revealed (0,5), (10,15), (15,19)
    rng = ScriptedRng([5, 5, 5, 4, 3], [(CHUNKS, 2, [(5, 10), (15, 19)])], bounds=(3, 5))
    canvas, fixed = grpo.hint_canvas(
        REF, 40, 0.5, rng, MASK_ID, min_chunk=3, max_chunk=5, free_tail=10, max_spacing=6
    )
    # (0,5) at int(0 * 1.5) = 0 -> 0..4
    # (10,15): gap 10 - 5 = 5, int(5 * 1.5) = 7, capped at 6 -> starts 5 + 6 = 11 -> 11..15
    # (15,19): gap 15 - 15 = 0 -> starts 16 -> 16..19; trace token 19 (the tail) is never a hint
    expected = canvas_of([(0, REF[0:5]), (11, REF[10:15]), (16, REF[15:19])])
    assert canvas.tolist() == expected and canvas.dtype == torch.long
    assert torch.equal(fixed, canvas != MASK_ID) and int(fixed.sum()) == 5 + 5 + 4


def test_hint_canvas_by_hand_first_chunk_stretched():
    # the same chunks; masked (0,5) and (10,15) -> revealed (5,10), (15,19); max_spacing 100
    rng = ScriptedRng([5, 5, 5, 4, 3], [(CHUNKS, 2, [(0, 5), (10, 15)])], bounds=(3, 5))
    canvas, fixed = grpo.hint_canvas(
        REF, 40, 0.5, rng, MASK_ID, min_chunk=3, max_chunk=5, free_tail=10
    )
    # (5,10) at int(5 * 1.5) = int(7.5) = 7 -> 7..11
    # (15,19): gap 15 - 10 = 5, int(7.5) = 7 -> starts 12 + 7 = 19 -> 19..22
    assert canvas.tolist() == canvas_of([(7, REF[5:10]), (19, REF[15:19])])
    assert fixed.nonzero()[:, 0].tolist() == [7, 8, 9, 10, 11, 19, 20, 21, 22]


def test_hint_canvas_eta_zero_reveals_nothing_and_draws_nothing():
    canvas, fixed = grpo.hint_canvas(REF, 40, 0.0, ScriptedRng(), MASK_ID)  # any draw would fail
    assert canvas.tolist() == [M] * 40 and not fixed.any()


@pytest.mark.parametrize("A", [20, 60])
def test_hint_canvas_eta_one_reveals_every_chunk(A):
    # eta = 1: n_mask = int(n * 0) = 0, every chunk revealed; gaps are 0, so the hints are the
    # trace's first c tokens in place (the first starts at f * 0 = 0), c = the chunks' end: at
    # most E = 30, at least min(A, E) - (min_chunk - 1), as only a tail under min_chunk is left out
    ref = list(range(100, 100 + A))
    for seed in range(20):
        canvas, fixed = grpo.hint_canvas(
            ref, 40, 1.0, random.Random(seed), MASK_ID, min_chunk=3, max_chunk=5, free_tail=10
        )
        c = int(fixed.sum())
        assert min(A, 30) - 2 <= c <= min(A, 30)
        assert canvas[:c].tolist() == ref[:c] and not fixed[c:].any()


def test_hint_canvas_invariants_and_reproducible():
    for seed in range(300):
        pick = random.Random(10_000 + seed)
        A, L = pick.randint(1, 90), pick.choice([40, 64, 128])
        lo = pick.randint(1, 6)
        args = dict(
            min_chunk=lo, max_chunk=lo + pick.randint(0, 5), free_tail=pick.choice([10, 30])
        )
        eta, E = pick.uniform(0.01, 1.2), max(0, L - args["free_tail"])
        ref = list(range(100, 100 + A))
        canvas, fixed = grpo.hint_canvas(ref, L, eta, random.Random(seed), MASK_ID, **args)
        assert canvas.shape == (L,) and fixed.shape == (L,)
        assert torch.equal(fixed, canvas != MASK_ID)
        assert not fixed[E:].any()  # never in the free tail
        hints = canvas[fixed].tolist()
        assert hints == sorted(set(hints)) and all(h in ref for h in hints)  # in order, no repeat
        again, _ = grpo.hint_canvas(ref, L, eta, random.Random(seed), MASK_ID, **args)
        assert torch.equal(canvas, again)


def transcribed_canvas(ref, L, eta, rng, min_chunk, max_chunk, max_spacing, free_tail):
    """IGPO's create_spacing_scaled_inpainting_sequence with scale_chunk_positions, step by step as
    the code runs them for 0 < eta < 1 (mask_ratio = 1 - eta, hidden tokens marked one by one, the
    cut at E kept), its random.seed replaced by the rng."""
    E = max(0, L - free_tail)
    out = [M] * L
    if eta <= 0 or E == 0 or not ref:
        return out
    scale = min(1.5, max(1, E / len(ref)))
    tokens = ref[: min(len(ref), E)]
    hidden = [False] * len(tokens)
    chunks, i = [], 0
    while i < len(tokens):
        size = min(rng.randint(min_chunk, max_chunk), len(tokens) - i)
        if size < min_chunk:
            break
        chunks.append((i, i + size))
        i += size
    n_hide = max(0, int(len(chunks) * (1 - eta)))
    if n_hide > 0:
        for a, b in rng.sample(chunks, min(n_hide, len(chunks))):
            hidden[a:b] = [True] * (b - a)
    last = len(chunks) - 1
    shown = [(a, b) for k, (a, b) in enumerate(chunks) if not any(hidden[a:b]) or k == last]
    placed = []
    for k, (a, b) in enumerate(shown):
        if k == 0:
            start = int(a * scale)
        else:
            start = placed[-1][1] + min(int((a - shown[k - 1][1]) * scale), max_spacing)
        end = start + (b - a)
        if end > E:
            if E - start <= 0:
                break
            end = E
        placed.append((start, end))
    for (a, b), (s, e) in zip(shown, placed):
        stop = min(e, s + (b - a), E)
        out[s:stop] = tokens[a : a + stop - s]
    return out


def test_hint_canvas_matches_transcription_of_the_code():
    for seed in range(300):
        pick = random.Random(seed)
        A, L = pick.randint(1, 300), pick.choice([64, 128, 256])
        lo = pick.randint(2, 6)
        chunk, spacing = (lo, lo + pick.randint(0, 6)), pick.choice([3, 100])
        eta, ref = pick.uniform(0.01, 0.99), list(range(100, 100 + A))
        got, _ = grpo.hint_canvas(
            ref, L, eta, random.Random(seed), MASK_ID, *chunk, max_spacing=spacing
        )
        want = transcribed_canvas(ref, L, eta, random.Random(seed), *chunk, spacing, 30)
        assert got.tolist() == want, (seed, A, L, chunk, spacing, eta)


# IGPO: replacement --------------------------------------------------------------------------------


def test_replace_with_inpainted_by_hand():
    G = 8
    none = torch.zeros(G, dtype=torch.bool)
    assert grpo.replace_with_inpainted(none, ScriptedRng()).tolist() == list(range(8))  # unchanged
    two = torch.zeros(G, dtype=torch.bool)
    two[[3, 6]] = True
    # 2 correct <= 4: no draw; originals 0 and 1 <- inpainted 3 and 6 (rows 8 + 3, 8 + 6)
    assert grpo.replace_with_inpainted(two, ScriptedRng()).tolist() == [11, 14, 2, 3, 4, 5, 6, 7]
    six = torch.tensor([True, True, True, False, True, True, False, True])
    # 6 correct > 4: 4 drawn (scripted: 7, 0, 4, 2) replace originals 0..3 -> 8 + (7, 0, 4, 2)
    rng = ScriptedRng(samples=[([0, 1, 2, 4, 5, 7], 4, [7, 0, 4, 2])])
    assert grpo.replace_with_inpainted(six, rng).tolist() == [15, 8, 12, 10, 4, 5, 6, 7]
    # max_replacements = 1 (the config's default): 2 correct > 1, one drawn (scripted: 6)
    rng = ScriptedRng(samples=[([3, 6], 1, [6])])
    assert grpo.replace_with_inpainted(two, rng, 1).tolist() == [14, 1, 2, 3, 4, 5, 6, 7]


def test_replace_with_inpainted_seeded_keeps_group():
    six = torch.tensor([True, True, True, False, True, True, False, True])
    originals = torch.arange(8)[:, None].expand(8, 3)  # row j holds j
    inpainted = 100 + torch.arange(8)[:, None].expand(8, 3)  # row i holds 100 + i
    rows = grpo.replace_with_inpainted(six, random.Random(0))
    group = torch.cat([originals, inpainted])[rows]
    assert group.shape == (8, 3)  # the group keeps its size
    picked = group[:4, 0].tolist()
    assert len(set(picked)) == 4 and all(p - 100 in (0, 1, 2, 4, 5, 7) for p in picked)
    assert group[4:, 0].tolist() == [4, 5, 6, 7]  # the other originals stay in place
    assert torch.equal(rows, grpo.replace_with_inpainted(six, random.Random(0)))


# IGPO: entropy filter, sequence ratio, loss -------------------------------------------------------


def test_entropy_filter_by_hand():
    entropy = torch.tensor([[9.0, 0.1, 0.7, 0.3, 0.7, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    T, F = True, False
    hint = torch.tensor([[F, T, T, T, T, T], [F, F, T, F, F, F]])
    loss_mask = torch.tensor([[T, T, T, T, T, F], [T, T, F, T, F, F]])
    # row 0: candidates (hint and in the loss) at 1..4, n = 4; position 5 is a hint outside the loss
    # keep 0.2: max(1, floor(0.8)) = 1 -> highest of (0.1, 0.7, 0.3, 0.7): a tie, the earlier (2)
    # row 1: its one hint is outside the loss: n = 0, nothing to filter, the mask is unchanged
    assert grpo.entropy_filter(entropy, hint, loss_mask).tolist() == [
        [T, F, T, F, F, F],
        [T, T, F, T, F, F],
    ]
    # keep 0.3: floor(4 * 0.3) = floor(1.2) = 1 -> position 2 only (rounding up would keep 2 and 4)
    assert grpo.entropy_filter(entropy, hint, loss_mask, 0.3)[0].tolist() == [T, F, T, F, F, F]
    # keep 0.5: floor(4 * 0.5) = 2 -> positions 2 and 4
    assert grpo.entropy_filter(entropy, hint, loss_mask, 0.5)[0].tolist() == [T, F, T, F, T, F]
    # keep 1: every candidate stays -> the loss mask itself
    assert torch.equal(grpo.entropy_filter(entropy, hint, loss_mask, 1.0), loss_mask)


def test_sequence_ratio_by_hand():
    old = torch.zeros(3, 3)
    old[0, 2] = float("nan")  # outside the mask: must not leak in
    logp = torch.tensor(
        [[math.log(4.0), 0.0, 5.0], [math.log(0.5), 0.0, math.log(2.0)], [1.0, 2.0, 3.0]]
    )
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    # row 0: mean(ln 4, 0) = ln 2 -> 2; row 1: (ln 0.5 + 0 + ln 2) / 3 = 0 -> 1; row 2: empty -> 1
    expected = [[2.0] * 3, [1.0] * 3, [1.0] * 3]
    assert close(grpo.sequence_ratio(logp, old, mask), expected)


def igpo_case():
    old_logp = torch.full((2, 3), -1.0)
    d = torch.tensor([[math.log(1.5)] * 3, [math.log(0.5), 0.0, math.log(2.0)]])
    logp = old_logp + d  # token ratios (1.5, 1.5, 1.5), (0.5, 1, 2)
    token_mask = torch.tensor([[True, True, True], [True, True, False]])
    return logp, old_logp, torch.tensor([1.0, -1.0]), token_mask


def test_igpo_loss_token_and_sequence_ratio_by_hand():
    logp, old_logp, adv, token_mask = igpo_case()
    token = grpo.mdpo.ratio(logp, old_logp)
    seq = grpo.sequence_ratio(logp, old_logp, torch.ones(2, 3, dtype=torch.bool))
    # token ratio, eps 0.2: row 0 (A = +1): min(1.5, 1.2) = 1.2, three times -> 3.6
    #   row 1 (A = -1): 0.5 -> min(-0.5, -0.8) = -0.8; 1 -> -1; (2 is outside the mask) -> -1.8
    #   -(3.6 - 1.8) / 5 tokens = -0.36
    assert close(grpo.igpo_loss(logp, token, None, adv, token_mask, beta=0.0), -0.36)
    # sequence ratio over all 3 positions: row 0 exp(ln 1.5) = 1.5 -> 1.2 * 3 = 3.6
    #   row 1 exp((ln 0.5 + 0 + ln 2) / 3) = 1 -> -1 on its 2 tokens = -2; -(3.6 - 2) / 5 = -0.32
    assert close(grpo.igpo_loss(logp, seq, None, adv, token_mask, beta=0.0), -0.32)
    # k3 with ref = logp + ln 2: 0.3068528 per token, beta 0.01 -> +0.0030685 on the mean
    ref = logp + LN2
    assert close(grpo.igpo_loss(logp, token, ref, adv, token_mask), -0.3569315)  # -0.36 + 0.0030685
    assert close(grpo.igpo_loss(logp, seq, ref, adv, token_mask), -0.3169315)  # -0.32 + 0.0030685
    # n_tokens = 10, the update's count: -1.8 / 10
    assert close(grpo.igpo_loss(logp, token, None, adv, token_mask, 10, beta=0.0), -0.18)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo.igpo_loss(logp, token, None, adv, token_mask)


def test_igpo_sequence_ratio_reaches_filtered_positions():
    # The spec's quirk: under GSPO the token mask does not choose which tokens get policy gradient.
    # At ratio 1 (old = logp.detach()), beta 0, 5 tokens in the mask:
    _, _, adv, token_mask = igpo_case()
    all_positions = torch.ones(2, 3, dtype=torch.bool)
    for ratio_of, expected in [
        # token: dloss/dlogp_i = -A / 5 on the mask -> row 0: -0.2; row 1: +0.2, 0 where filtered
        (lambda lp: grpo.mdpo.ratio(lp, lp.detach()), [[-0.2] * 3, [0.2, 0.2, 0.0]]),
        # sequence: ds/dlogp_j = s / 3 = 1/3 at all 3 positions; row 0: -(3 * 1 * 1/3) / 5 = -0.2;
        # row 1: -(2 tokens * -1 * 1/3) / 5 = 2/15 = 0.1333333, the filtered position included
        (
            lambda lp: grpo.sequence_ratio(lp, lp.detach(), all_positions),
            [[-0.2] * 3, [2 / 15] * 3],
        ),
    ]:
        logp = torch.full((2, 3), -1.0, requires_grad=True)
        grpo.igpo_loss(logp, ratio_of(logp), None, adv, token_mask, beta=0.0).backward()
        assert close(logp.grad, expected)
