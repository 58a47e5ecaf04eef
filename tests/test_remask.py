"""Eq. 7-10 and 13 against hand-worked numbers, and LCR vs RCR on a scripted model.
pytest -q tests/test_remask.py"""

import math
from types import SimpleNamespace

import pytest
import torch

from remask import (
    SCHEDULES,
    low_confidence_scores,
    official_linear_counts,
    phi,
    random_scores,
    remask,
    running_confidence_scores,
    tokens_per_step,
    unmask,
    update_latest,
    update_running_max,
)
from sample import generate


@pytest.mark.parametrize(
    "name, expected",
    [
        ("linear", 0.5),  # 1 - 1/2
        ("cosine", 0.5),  # (1 + cos(pi/2)) / 2 = (1 + 0) / 2
        ("square", 0.75),  # 1 - 0.5^2
        ("cubic", 0.875),  # 1 - 0.5^3
        ("exp", 0.6224593312),  # (2.718281828 - 1.648721271) / 1.718281828
        ("sqrt", 0.2928932188),  # 1 - 0.7071067812
        ("log", 0.4150374993),  # 1 - ln(1.5) / ln(2) = 1 - 0.5849625007
    ],
)
def test_phi_midpoint_by_hand(name, expected):
    assert phi(name, 2, 4) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_phi_ends_and_monotone(name):
    T = 50
    values = [phi(name, t, T) for t in range(T, -1, -1)]  # t counts down: T (all masked) -> 0
    assert values[0] == pytest.approx(0, abs=1e-12) and values[-1] == pytest.approx(1, abs=1e-12)
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_phi_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown schedule"):
        phi("quartic", 1, 2)
    with pytest.raises(ValueError, match="outside"):
        phi("linear", 3, 2)


def test_tokens_per_step_linear_is_lladas_rule():
    assert tokens_per_step(10, 4).tolist() == [
        3,
        3,
        2,
        2,
    ]  # 10 // 4 = 2, remainder 2 to the first two steps
    assert tokens_per_step(8, 4).tolist() == [2, 2, 2, 2]
    assert tokens_per_step(3, 5).tolist() == [1, 1, 1, 0, 0]  # more steps than tokens


def test_tokens_per_step_other_schedules_by_hand():
    # cosine, L = 10, T = 4: revealed after step s = floor(phi(T - s - 1) * 10)
    #   t=3: (1 + cos(3pi/4)) / 2 = 0.146 -> 1;  t=2: 0.5 -> 5;  t=1: 0.854 -> 8;  t=0: 10
    assert tokens_per_step(10, 4, "cosine").tolist() == [1, 4, 3, 2]
    # square: t=3: 1 - 0.5625 = 0.4375 -> 4;  t=2: 0.75 -> 7;  t=1: 0.9375 -> 9;  t=0: 10
    assert tokens_per_step(10, 4, "square").tolist() == [4, 3, 2, 1]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("L, T", [(128, 64), (40, 12), (7, 7), (5, 9), (512, 256)])
def test_tokens_per_step_sums_to_L(name, L, T):
    counts = tokens_per_step(L, T, name)
    assert counts.shape == (T,) and counts.sum().item() == L and (counts >= 0).all()


def test_tokens_per_step_official_by_hand():
    # L = 32, T = 10: still masked after step s = floor(32 * (1 - (s + 1) / 10)), in float64
    # 0.9 -> 28.8 -> 28 (4 revealed); 0.8 -> 25.6 -> 25 (+3); 0.7 -> 22.4 -> 22 (+3); 0.6 -> 19.2 ->
    # 19 (+3) 0.5 -> 16 (+3); 0.4 -> 12.8 -> 12 (+4); 0.3 -> 9.6 -> 9 (+3); 0.2 -> 6.4 -> 6 (+3);
    # 0.1 -> 3.2 -> 3 (+3) last: max(0, 1e-6) * 32 -> 0 (+3)
    assert official_linear_counts(32, 10).tolist() == [4, 3, 3, 3, 3, 4, 3, 3, 3, 3]
    assert tokens_per_step(32, 10, "linear").tolist() == [
        4,
        4,
        3,
        3,
        3,
        3,
        3,
        3,
        3,
        3,
    ]  # LLaDA: remainder first
    # L = T = 5: 1 - 0.2 = 0.8 -> 4.0 -> 4 (1);  1 - 0.4 = 0.59999999999999998 -> 5 * that rounds to
    # 3.0 (+1) 1 - 0.6 = 0.40000000000000002 -> 2.0000000000000001 -> 2 (+1) 1 - 0.8 =
    # 0.19999999999999996 -> 0.9999999999999998 -> 0 (+2);  last: 1e-6 * 5 -> 0 (+0)
    assert tokens_per_step(5, 5, "linear-official").tolist() == [1, 1, 1, 2, 0]
    assert tokens_per_step(8, 4, "linear-official").tolist() == [
        2,
        2,
        2,
        2,
    ]  # 6, 4, 2, 0 still masked
    for L, T in [(128, 64), (40, 12), (7, 9), (512, 256)]:
        counts = official_linear_counts(L, T)
        assert counts.sum().item() == L and (counts >= 0).all()


def test_scores_by_hand():
    conf = torch.tensor([[0.9, 0.25, 0.5]])
    # Eq. 9 without its constant 1: m = -p, so that p's float32 values (and ties) are kept exactly
    assert torch.equal(low_confidence_scores(conf), torch.tensor([[-0.9, -0.25, -0.5]]))
    near_one = torch.tensor([[1 - 2**-24, 1.0]])  # distinct in float32 ...
    assert (1 - near_one).double().unique().numel() == 2 and low_confidence_scores(
        near_one
    ).unique().numel() == 2
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    r = random_scores(conf, g1)
    assert (
        r.shape == (1, 3) and ((r >= 0) & (r < 1)).all() and torch.equal(r, random_scores(conf, g2))
    )
    running = torch.tensor([[0.8, 0.0, 0.3]])
    predicted = torch.tensor([[True, True, False]])
    # running max: max(0.8, 0.9) = 0.9; max(0, 0.25) = 0.25; not predicted -> keeps 0.3
    new = update_running_max(running, conf, predicted)
    assert torch.equal(new, torch.tensor([[0.9, 0.25, 0.3]]))
    assert torch.equal(running_confidence_scores(new), torch.tensor([[-0.9, -0.25, -0.3]]))
    # official variant: a drop in confidence overwrites the running value (0.8 -> 0.2)
    drop = torch.tensor([[0.2, 0.25, 0.5]])
    assert torch.equal(update_latest(running, drop, predicted), torch.tensor([[0.2, 0.25, 0.3]]))
    assert torch.equal(
        update_running_max(running, drop, predicted), torch.tensor([[0.8, 0.25, 0.3]])
    )


def test_remask_and_unmask_by_hand():
    M = 9
    x_bar = torch.tensor([[M, M, 4, M, M, M]])
    x_pred = torch.tensor([[1, 2, 4, 3, 5, 6]])
    m = torch.tensor([[0.1, 0.5, 0.0, 0.3, 0.9, 0.2]])
    cand = torch.tensor(
        [[True, True, False, True, True, False]]
    )  # pos 2 revealed, pos 5 in a later block
    # keep the 2 lowest scores among candidates {0: 0.1, 1: 0.5, 3: 0.3, 4: 0.9} -> positions 0 and
    # 3
    assert unmask(x_bar, x_pred, m, cand, 2, M).tolist() == [[1, M, 4, 3, M, M]]
    assert unmask(x_bar, x_pred, m, cand, 0, M).tolist() == [[M, M, 4, M, M, M]]
    # Eq. 7 as written: mask the 2 highest (0.9 at 4, 0.5 at 1) -> the same state
    assert remask(x_bar, x_pred, m, cand, 2, M).tolist() == [[1, M, 4, 3, M, M]]
    assert remask(x_bar, x_pred, m, cand, 0, M).tolist() == [
        [1, 2, 4, 3, 5, M]
    ]  # every candidate revealed
    # a non-candidate is never masked, even with the highest score (pos 5 keeps x_bar = M, pos 2
    # keeps 4)
    high = torch.tensor([[0.1, 0.5, 5.0, 0.3, 0.9, 7.0]])
    assert remask(torch.tensor([[M, M, 4, M, M, 8]]), x_pred, high, cand, 1, M).tolist() == [
        [1, 2, 4, 3, M, 8]
    ]


def test_remask_and_unmask_break_ties_like_their_references():
    # Five candidates tie at m = -1 (confidence 1.0); the prompt (first 5 positions) is never a
    # candidate. LLaDA keeps topk(confidence, k) over the full row. The official RCR masks
    # topk(largest=False) of its running confidence over the full row; it gives non-candidates 1.0,
    # which would tie here (remask.py, item 3), so we compare with +inf there, which is what it
    # amounts to for any confidence below 1.0.
    M, P = 9, 5
    conf = torch.tensor([[0.0] * P + [1.0, 1.0, 1.0, 0.5, 1.0, 1.0]])
    cand = torch.tensor([[False] * P + [True] * 6])
    x_bar, x_pred = torch.full((1, P + 6), M), torch.arange(P + 6)[None]
    llada_keep = torch.topk(torch.where(cand, conf, -torch.inf)[0], 3).indices
    expect = torch.full((1, P + 6), M)
    expect[0, llada_keep] = x_pred[0, llada_keep]
    assert torch.equal(unmask(x_bar, x_pred, -conf, cand, 3, M), expect)
    official_mask = torch.topk(torch.where(cand, conf, torch.inf)[0], 3, largest=False).indices
    expect = torch.where(cand, x_pred, x_bar)
    expect[0, official_mask] = M
    assert torch.equal(remask(x_bar, x_pred, -conf, cand, 3, M), expect)
    # the ties are real: on the generation-only row topk picks other positions
    assert not torch.equal(
        torch.topk(conf[0, P:], 3).indices.sort().values + P, llada_keep.sort().values
    )
    gen_only = torch.topk(conf[0, P:], 3, largest=False).indices.sort().values + P
    assert not torch.equal(gen_only, official_mask.sort().values)


def scripted_model(mask_id, V=8):
    """Fake MDLM over tokens 0..6 (7 = [MASK]) for 4 generated positions and no prompt.

    Step 0 (all masked): position 0 predicts token 0 with p = 0.3, the others token 2 with p = 0.2.
    Later steps: a masked position 0 predicts token 1 with p = 0.95, the others token 2 with p =
    0.9.
    """
    calls = []

    def probs_to_logits(token, p):
        row = torch.full((V,), (1 - p) / (V - 2))
        row[token], row[mask_id] = p, 1e-12
        return row.log()

    def forward(x, attention_mask=None):
        first = len(calls) == 0
        calls.append(x.clone())
        logits = torch.stack(
            [probs_to_logits(0, 0.3) if first else probs_to_logits(1, 0.95)]
            + [probs_to_logits(2, 0.2 if first else 0.9)] * 3
        )  # (L, V)
        return SimpleNamespace(logits=logits.expand(x.shape[0], -1, -1))

    return forward


def test_rcr_revises_an_early_low_confidence_token_that_lcr_freezes():
    M = 7
    kw = dict(gen_length=4, block_length=4, steps=4, mask_id=M, record=True)
    prompt = torch.zeros(1, 0, dtype=torch.long)
    x_lcr, t_lcr = generate(scripted_model(M), prompt, remasking="lcr", **kw)
    x_rcr, t_rcr = generate(scripted_model(M), prompt, remasking="rcr", **kw)
    # step 0 reveals position 0 under both (0.3 beats 0.2)
    assert t_lcr.x_bar[1, 0, 0] == 0 and t_rcr.x_bar[1, 0, 0] == 0
    # LCR never looks at position 0 again: the wrong early token 0 survives
    assert x_lcr[0, 0] == 0
    # RCR at step 1: running max [0.3, 0.9, 0.9, 0.9], keep 2 -> position 0 is remasked ...
    assert t_rcr.x_bar[2, 0, 0] == M
    # ... re-predicted as token 1 with p = 0.95 at step 2 and kept to the end
    assert x_rcr[0, 0] == 1 and (x_rcr[0, 1:] == 2).all()


@pytest.mark.parametrize("remasking", ["lcr", "rcr", "rcr-latest", "random"])
def test_semi_ar_never_reveals_a_later_block_early(peaked_model, tok, remasking):
    prompt = torch.tensor([tok.encode("nums 1 2 3 -> 6")] * 2)
    L, block, steps = 40, 10, 20  # 4 blocks of 5 steps
    _, traj = generate(
        peaked_model,
        prompt,
        gen_length=L,
        block_length=block,
        steps=steps,
        remasking=remasking,
        temperature=1.0,
        mask_id=tok.mask_token_id,
        record=True,
        generator=torch.Generator().manual_seed(0),
    )
    M = tok.mask_token_id
    for s in range(1, steps):
        b = (s - 1) // 5  # block of the step that produced x_bar[s]
        assert (traj.x_bar[s, :, (b + 1) * block :] == M).all(), f"step {s} revealed a later block"
        if remasking in ("lcr", "random"):  # blocks before the current one are finished and frozen
            assert (traj.x_bar[s, :, : b * block] != M).all()


def test_generate_rejects_bad_settings(peaked_model, tok):
    p = torch.tensor([tok.encode("1")])
    with pytest.raises(ValueError, match="must divide"):
        generate(peaked_model, p, gen_length=40, block_length=12, steps=20, mask_id=1)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        generate(peaked_model, p, gen_length=40, block_length=10, steps=10, mask_id=1)
    with pytest.raises(ValueError, match="remasking"):
        generate(
            peaked_model, p, gen_length=40, block_length=40, steps=20, remasking="low", mask_id=1
        )
    assert math.isfinite(phi("log", 0, 1))
