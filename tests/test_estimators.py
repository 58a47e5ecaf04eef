"""tools/estimators.py: the exact trajectory log-likelihood and the per-step estimators against
numbers worked by hand on a model with fixed logits, the ELBO's mean and variance, each estimator's
shape, gradient and cost, and the report on a tiny model.

Run: python -m pytest -q tests/test_estimators.py   (CPU, seconds)
"""
import math
from types import SimpleNamespace

import pytest
import torch

import rollouts
import toy
from conftest import NoMaskPrediction
from sample import generate
from tools import estimators as est

MASK = 3  # tokens 0, 1, 2 and [MASK] = 3


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, restored after: models this small run fastest so, and two threads slow
    down several times over when other work shares the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class StepLogits(torch.nn.Module):
    """Fixed logits log(p) for L = 2 completion positions after a 1-token prompt, set by how many of
    the two are still masked; [MASK] is never predicted. A scale parameter (1.0) gives a gradient.

    Two masked (first step):  position 0: p = (0.6, 0.3, 0.1), position 1: p = (0.2, 0.2, 0.6).
    One masked (second step): the masked position: p = (0.5, 0.25, 0.25).
    """

    P2 = [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]
    P1 = [0.5, 0.25, 0.25]

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="step-logits")
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, input_ids, attention_mask=None):
        B, S = input_ids.shape
        both = torch.tensor([[1.0, 1.0, 1.0], *self.P2]).log()  # (3, 3) prompt row, then L = 2
        one = torch.tensor([[1.0, 1.0, 1.0], self.P1, self.P1]).log()  # (3, 3)
        two_masked = (input_ids[:, -2:] == MASK).all(1)[:, None, None]  # (B, 1, 1)
        logits = torch.where(two_masked, both, one) * self.scale  # (B, 3, 3)
        never_mask = torch.full((B, S, 1), -1e9)  # (B, 3, 1)
        return SimpleNamespace(logits=torch.cat([logits, never_mask], -1))  # (B, 3, 4)


# at temperature 0.5, q = p^2 / sum p^2:
Q2 = [[0.36 / 0.46, 0.09 / 0.46, 0.01 / 0.46],  # 0.7826, 0.1957, 0.0217
      [0.04 / 0.44, 0.04 / 0.44, 0.36 / 0.44]]  # 0.0909, 0.0909, 0.8182
Q1 = [0.25 / 0.375, 0.0625 / 0.375, 0.0625 / 0.375]  # 2/3, 1/6, 1/6


def step_rollouts(n=16, seed=0):
    """n rollouts of StepLogits at temperature 0.5, LCR on the sampling confidence, T = L = 2: step
    0 reveals the position whose drawn token has the larger q, step 1 the other."""
    model = StepLogits()
    prompt = torch.zeros(n, 1, dtype=torch.long)  # (n, 1)
    x, traj = generate(model, prompt, attention_mask=torch.ones(n, 1, dtype=torch.long),
                       gen_length=2, block_length=2, steps=2, remasking="lcr", temperature=0.5,
                       confidence="sampling", mask_id=MASK, record=True,
                       generator=torch.Generator().manual_seed(seed))
    group = rollouts.Group(prompt, traj.attention_mask, x[:, 1:], traj.x_bar, traj.x_pred,
                           [{}] * n)
    return model, group, traj


def by_hand(group):
    """The exact log-likelihood and MDPO's terms of each rollout, from Q2 and Q1."""
    exact, mdpo_terms = [], []
    for n in range(len(group.completions)):
        first = 0 if group.x_bar[1, n, 0] != MASK else 1  # the position step 0 revealed
        y = group.completions[n].tolist()
        drawn = group.x_pred[0, n].tolist()  # step 0's draws at both positions
        second = math.log(Q1[y[1 - first]])
        exact.append(math.log(Q2[first][y[first]]) + second)
        mdpo_terms.append(math.log(Q2[0][drawn[0]]) + math.log(Q2[1][drawn[1]]) + second)
    return torch.tensor(exact), torch.tensor(mdpo_terms)


def test_exact_log_likelihood_by_hand():
    model, group, traj = step_rollouts()
    firsts = set((group.x_bar[1] != MASK).float().argmax(1).tolist())
    assert firsts == {0, 1}  # the draws cover both orders
    exact, _ = by_hand(group)
    recorded = est.recorded_logp(traj, group.completions, MASK)  # (n,)
    assert torch.allclose(recorded, exact, atol=1e-5)
    # row 1: step 0 reveals position 1 (token 2), step 1 position 0 (token 0):
    #   log(0.36 / 0.44) + log(2 / 3) = -0.2007 - 0.4055 = -0.6061
    # row 5: step 0 reveals position 0 (token 0), step 1 position 1 (token 0):
    #   log(0.36 / 0.46) + log(2 / 3) = -0.2451 - 0.4055 = -0.6506
    assert (group.x_bar[1, [1, 5]] != MASK).tolist() == [[False, True], [True, False]]
    assert group.completions[[1, 5]].tolist() == [[0, 2], [0, 0]]
    assert torch.allclose(recorded[[1, 5]], torch.tensor([-0.6061, -0.6506]), atol=1e-4)
    cj, forwards = est.cj_grpo_terms(model, group, None, mask_id=MASK, temperature=0.5)
    assert forwards == 2 and cj.requires_grad
    assert torch.allclose(cj, exact, atol=1e-5)


def test_mdpo_terms_by_hand_score_the_unrevealed_draw_too():
    model, group, _ = step_rollouts()
    exact, mdpo_terms = by_hand(group)
    got, forwards = est.mdpo_terms(model, group, None, mask_id=MASK, temperature=0.5)
    assert forwards == 2 and torch.allclose(got, mdpo_terms, atol=1e-5)
    # row 5 drew (0, 1) at step 0, revealed position 0 and drew token 0 again at step 1:
    #   log(0.36 / 0.46) + log(0.04 / 0.44) + log(2 / 3) = -0.2451 - 2.3979 - 0.4055 = -3.0485
    assert group.x_pred[0, 5].tolist() == [0, 1]
    assert math.isclose(got[5].item(), -3.0485, abs_tol=1e-4)
    # step 0's draw at the position it did not reveal is scored as well: never above the exact value
    assert (got < exact - 1e-3).all()


def test_temperature_changes_the_score():
    # at temperature 1 the second step's token 0 has q = 0.5, not 2/3
    model, group, _ = step_rollouts()
    cj1, _ = est.cj_grpo_terms(model, group, None, mask_id=MASK, temperature=1.0)
    cj05, _ = est.cj_grpo_terms(model, group, None, mask_id=MASK, temperature=0.5)
    assert not torch.allclose(cj1, cj05, atol=1e-2)


def test_elbo_of_an_input_blind_model_averages_to_the_exact_value():
    # Logits that ignore the input: every order of reveals gives the same likelihood, and
    # E[1(masked) / p_mask] = 1 per token, so the ELBO is unbiased. Every state now gives
    # p = (0.5, 0.25, 0.25) at both positions, q = Q1 at temperature 0.5.
    model, group, _ = step_rollouts(n=4)
    model.P2 = [StepLogits.P1, StepLogits.P1]
    exact = torch.tensor(Q1).log()[group.completions].sum(1)  # (4,)
    cj, _ = est.cj_grpo_terms(model, group, None, mask_id=MASK, temperature=0.5)
    assert torch.allclose(cj, exact, atol=1e-5)
    copies = est.subset(group, torch.arange(4).repeat(1000))  # 4000 rows, each rollout 1000 times
    with torch.no_grad():
        value, forwards = est.elbo(model, copies, torch.Generator().manual_seed(0), k=4,
                                   mask_id=MASK, temperature=0.5)  # (4000,)
    # one draw's std is at most ~6 nats here (tokens of log q = -1.79, E[(1 - p) / p] ~ 6), so
    # the mean of 4000 draws is within ~0.1
    mean = value.view(1000, 4).mean(0)  # (4,)
    assert forwards == 4 and torch.allclose(mean, exact, atol=0.3)


MASK_TOY = toy.ToyTokenizer().mask_token_id


def toy_rollouts(tok, n_prompts=2, G=4):
    """G rollouts of each of n_prompts toy prompts on a random toy model that never predicts
    [MASK], recorded: (model, group, trajectory)."""
    torch.manual_seed(0)
    model = NoMaskPrediction(toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32)), MASK_TOY).eval()
    ids = torch.tensor([tok.encode("1+2+3+4=?"), tok.encode("9+8+7+6=?")])[:n_prompts]
    ids = ids.repeat_interleave(G, 0)  # (N, P)
    x, traj = generate(model, ids, attention_mask=torch.ones_like(ids), gen_length=8,
                       block_length=8, steps=4, remasking="lcr", temperature=0.7,
                       confidence="sampling", mask_id=MASK_TOY, record=True,
                       generator=torch.Generator().manual_seed(0))
    return model, rollouts.Group(ids, traj.attention_mask, x[:, ids.shape[1]:], traj.x_bar,
                                 traj.x_pred, [{}] * len(ids)), traj


class Counting(torch.nn.Module):
    """Counts the forwards of the model it wraps."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        return self.model(input_ids, attention_mask=attention_mask)


def test_each_estimator_gives_one_value_per_rollout_with_a_gradient_at_its_cost(tok):
    model, group, traj = toy_rollouts(tok)
    named = est.estimators(MASK_TOY, tok.eos_token_id)
    assert len(named) == 7
    for name, estimate in named.items():
        counting = Counting(model)
        value, forwards = estimate(counting, group, torch.Generator().manual_seed(0))
        assert value.shape == (8,) and value.requires_grad and torch.isfinite(value).all(), name
        assert counting.calls == forwards, name
        grad = est.policy_gradient(model, value, torch.linspace(-1, 1, 8))
        assert grad.abs().sum() > 0, name
    assert named[est.D1](Counting(model), group, None)[1] == 1  # d1: exactly one forward
    exact, _ = named[est.EXACT](model, group, None)
    assert torch.allclose(exact, est.recorded_logp(traj, group.completions, MASK_TOY), atol=1e-4)


def test_more_elbo_samples_lower_the_variance(tok):
    model, group, _ = toy_rollouts(tok)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        draws = {k: torch.stack([est.elbo(model, group, g, k=k, mask_id=MASK_TOY,
                                          temperature=0.7)[0] for _ in range(40)])
                 for k in (1, 16)}  # (40, N) each
    var1, var16 = draws[1].var(0).mean(), draws[16].var(0).mean()
    assert var16 < var1 / 4  # 1/16 in expectation


def test_policy_gradient_and_compare_by_hand():
    w, unused = torch.nn.Parameter(torch.tensor(1.0)), torch.nn.Parameter(torch.zeros(2))
    model = torch.nn.Module()
    model.w, model.unused = w, unused
    # est = (2w, 3w), A = (1, -1): d/dw (2w - 3w) = -1; the unused parameter contributes zeros
    grad = est.policy_gradient(model, torch.stack([2 * w, 3 * w]), torch.tensor([1.0, -1.0]))
    assert grad.tolist() == [-1.0, 0.0, 0.0]
    s = est.compare(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0]),
                    torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
    # diff (0, 0, -1): mean -1/3, std sqrt((1/9 + 1/9 + 4/9) / 2) = sqrt(1/3) = 0.5774;
    # r = 3 / sqrt(2 * 42/9) = 0.9820; cos((1, 0), (1, 1)) = 0.7071
    assert math.isclose(s["bias"], -1 / 3, abs_tol=1e-6)
    assert math.isclose(s["spread"], math.sqrt(1 / 3), abs_tol=1e-6)
    assert math.isclose(s["r"], 3 / math.sqrt(2 * 42 / 9), abs_tol=1e-6)
    assert math.isclose(s["cos"], 1 / math.sqrt(2), abs_tol=1e-6)


def test_quick_report_on_a_tiny_model(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(est, "ROOT", tmp_path)
    est.main(["--quick", "--base", str(tiny), "--prompts", "1"])
    text = (tmp_path / "out" / "estimators" / "estimators.md").read_text()
    assert (tmp_path / "out" / "estimators" / "estimators.png").stat().st_size > 0
    assert not (tmp_path / "results").exists()  # --quick never writes over results/
    rows = [line for line in text.splitlines() if line.startswith("| ") and "nats" not in line]
    assert len(rows) == 7 and "## What the numbers show" in text
