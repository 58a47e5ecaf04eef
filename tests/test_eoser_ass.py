"""EOS Early Rejection and Ascending Step-Size decoding (remask.py, sample.py): the reference's
numbers by hand, a scripted model on which EOSER delays EOS, and greedy decoding equal to a slow
transcription of the reference loop (yjyddq/EOSER-ASS-RL eval/generate.py).
pytest -q tests/test_eoser_ass.py"""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import config
import remask
import sample
import train
from sample import generate


def test_ass_token_counts_by_hand():
    # step s reveals 2^s, the last step the rest: L = 128, T = 7 -> 1 2 4 8 16 32 and 128 - 63 = 65
    assert remask.tokens_per_step(128, 7, "ass").tolist() == [1, 2, 4, 8, 16, 32, 65]
    assert remask.tokens_per_step(256, 8, "ass").tolist() == [1, 2, 4, 8, 16, 32, 64, 129]
    # the toy's L = 40: floor(log2 40) = 5 steps, 1 2 4 8 and 40 - 15 = 25
    assert remask.ass_steps(40) == 5 and remask.tokens_per_step(40, 5, "ass").tolist() == [
        1,
        2,
        4,
        8,
        25,
    ]
    assert remask.ass_steps(128) == 7 and remask.ass_steps(256) == 8 and remask.ass_steps(255) == 7
    # fewer free tokens than the ramp (a canvas with hints): capped, still summing to what is free
    assert remask.tokens_per_step(5, 5, "ass").tolist() == [1, 2, 2, 0, 0]


def test_eoser_gammas_match_the_reference_tables():
    # linear, T = 128, gamma_min = 0.01: 0.01 + 0.99 * s / 127 -> s = 32: 0.01 + 0.99 * 0.25197 =
    # 0.25945
    linear = [remask.eoser_gamma(s, 128, 0.01) for s in (0, 32, 64, 96, 127)]
    assert linear == pytest.approx([0.01, 0.25945, 0.50890, 0.75835, 1.0], abs=1e-5)
    # ASS, L = 256, T = 8: 0.01 + 0.99 * (2^{s+1} - 1) / 256 -> s = 0: 0.01 + 0.99 / 256 = 0.013867
    ass = [remask.eoser_gamma(s, 8, 0.01, "ass") for s in range(8)]
    assert [round(g, 3) for g in ass] == [0.014, 0.022, 0.037, 0.068, 0.130, 0.254, 0.501, 0.996]
    # ASS, L = 128, T = 7 (the spec's table): (2^{s+1} - 1) / 128
    ass = [remask.eoser_gamma(s, 7, 0.01, "ass") for s in range(7)]
    assert [round(g, 3) for g in ass] == [0.018, 0.033, 0.064, 0.126, 0.250, 0.497, 0.992]


def test_eos_early_rejection_scales_only_eos():
    conf = torch.tensor([[0.9, 0.5, 0.8]])
    x_pred = torch.tensor([[7, 3, 7]])  # EOS = 7 at positions 0 and 2
    # 0.9 * 0.4 = 0.36, 0.5 unchanged, 0.8 * 0.4 = 0.32
    got = remask.eos_early_rejection(conf, x_pred, 7, 0.4)
    assert torch.allclose(got, torch.tensor([[0.36, 0.5, 0.32]]))


class EosAtTheEnd(torch.nn.Module):
    """Scripted: every position predicts token 5 with probability ~0.6, except the last, which
    predicts EOS (3) with ~0.95; [MASK] (4) never. LCR's first step reveals the most confident
    position."""

    V, EOS, MASK, TOKEN = 8, 3, 4, 5

    def forward(self, input_ids, attention_mask=None):
        B, S = input_ids.shape
        logits = torch.full((B, S, self.V), -3.0)
        logits[..., self.MASK] = -1e9
        logits[..., self.TOKEN] = 0.5  # p = e^0.5 / (e^0.5 + 6 e^-3) = 1.6487 / 1.9474 = 0.847
        logits[:, -1, self.EOS] = (
            4.0  # last position: p(EOS) = 54.598 / (54.598 + 1.6487 + 5 e^-3) = 0.966
        )
        return SimpleNamespace(logits=logits)


def test_eoser_delays_eos_on_a_scripted_model():
    model, M = EosAtTheEnd(), EosAtTheEnd.MASK
    p = F.softmax(model(torch.zeros(1, 4, dtype=torch.long)).logits[0], -1)
    token_conf, eos_conf = p[0, 5].item(), p[-1, 3].item()
    assert (
        eos_conf > token_conf > 0.4 * eos_conf
    )  # 0.966 > 0.847 > 0.386: with gamma_0 = 0.4 EOS loses
    assert token_conf == pytest.approx(0.847, abs=1e-3) and eos_conf == pytest.approx(
        0.966, abs=1e-3
    )
    prompt = torch.tensor([[0]])
    kw = dict(gen_length=8, block_length=8, steps=8, mask_id=M, record=True)
    _, plain = generate(model, prompt, **kw)
    _, eoser = generate(model, prompt, eoser_gamma_min=0.4, eos_id=3, **kw)
    first_plain = (plain.x_bar[1, 0] != M).nonzero()[:, 0].tolist()
    first_eoser = (eoser.x_bar[1, 0] != M).nonzero()[:, 0].tolist()
    assert first_plain == [7] and plain.x_bar[1, 0, 7] == 3  # without EOSER: EOS at the end, first
    assert first_eoser != [7] and eoser.x_bar[1, 0, first_eoser[0]] == 5  # with it: a non-EOS token
    # the last step has gamma = 1: EOS is still written in the end
    assert eoser.x_pred[-1, 0, 7] == 3


def reference_loop(model, prompt, gen_length, steps, mask_id, counts, eos_id=None, gammas=None):
    """A plain transcription of the reference's one-block decoding at temperature 0 (LLaDA's loop
    with EOSER's confidence scaling and the given per-step counts), one row at a time."""
    x = torch.cat([prompt, torch.full((prompt.shape[0], gen_length), mask_id)], 1)
    for s in range(steps):
        mask_index = x == mask_id
        logits = model(x).logits
        x0 = logits.argmax(-1)
        conf = F.softmax(logits.float(), -1).gather(-1, x0[..., None])[..., 0]
        if gammas is not None:
            conf = torch.where(x0 == eos_id, conf * gammas[s], conf)
        x0 = torch.where(mask_index, x0, x)
        conf = torch.where(mask_index, conf, torch.tensor(-float("inf")))
        for j in range(x.shape[0]):
            idx = torch.topk(conf[j], k=counts[s]).indices
            x[j, idx] = x0[j, idx]
    return x


class EosHeavy(torch.nn.Module):
    """The large-weights toy with EOS made likely on the right half of the canvas, so that EOSER
    matters."""

    def __init__(self, model, eos_id, mask_id):
        super().__init__()
        self.model, self.eos_id, self.mask_id = model, eos_id, mask_id

    def forward(self, input_ids, attention_mask=None):
        logits = self.model(input_ids).logits.clone()
        logits[..., self.mask_id] = -1e9
        logits[:, input_ids.shape[1] // 2 :, self.eos_id] += 6.0
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize(
    "schedule, steps, gamma_min",
    [("ass", 5, None), ("ass", 5, 0.01), ("linear", 8, 0.4), ("linear", 40, 0.4)],
)
def test_greedy_ass_and_eoser_equal_the_reference_loop(
    peaked_model, tok, schedule, steps, gamma_min
):
    model = EosHeavy(peaked_model.model, tok.eos_token_id, tok.mask_token_id)
    prompt = torch.tensor(
        [tok.encode(p) for p in ["nums 1 2 3 -> 6", "nums 9 8 7 -> 5", "a=1+2;b=a*3;b-1"]]
    )
    counts = remask.tokens_per_step(40, steps, schedule).tolist()
    ramp = "ass" if schedule == "ass" else "linear"
    gammas = (
        None
        if gamma_min is None
        else [remask.eoser_gamma(s, steps, gamma_min, ramp) for s in range(steps)]
    )
    ref = reference_loop(
        model, prompt, 40, steps, tok.mask_token_id, counts, tok.eos_token_id, gammas
    )
    ours = generate(
        model,
        prompt,
        gen_length=40,
        block_length=40,
        steps=steps,
        schedule=schedule,
        eoser_gamma_min=gamma_min,
        eos_id=tok.eos_token_id,
        mask_id=tok.mask_token_id,
    )
    assert torch.equal(ours, ref)
    if gamma_min is not None:  # EOSER changed something here, or the test would not tell
        plain = reference_loop(model, prompt, 40, steps, tok.mask_token_id, counts)
        assert not torch.equal(plain, ref)


def test_ass_and_eoser_settings_are_checked(tok):
    prompt = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"floor\(log2 40\) = 5 steps, not 8"):
        generate(None, prompt, gen_length=40, block_length=40, steps=8, schedule="ass", mask_id=1)
    with pytest.raises(ValueError, match="multi-block ASS"):
        generate(None, prompt, gen_length=40, block_length=10, steps=8, schedule="ass", mask_id=1)
    with pytest.raises(ValueError, match="EOSER needs the EOS id"):
        generate(
            None, prompt, gen_length=40, block_length=40, steps=8, eoser_gamma_min=0.4, mask_id=1
        )


def test_semi_ar_eoser_ramps_over_the_whole_generation(peaked_model, tok):
    """In semi-AR decoding gamma_s counts the steps of the whole generation: the reference restarts
    the step index in every block against the global count, so there gamma never nears 1. The
    recorded confidence of a masked position predicting EOS is gamma_s times its softmax
    probability, s the global step."""
    model, M = EosHeavy(peaked_model.model, tok.eos_token_id, tok.mask_token_id), tok.mask_token_id
    prompt = torch.tensor([tok.encode("nums 1 2 3 -> 6")] * 4)
    _, tr = generate(
        model,
        prompt,
        gen_length=40,
        block_length=10,
        steps=8,
        eoser_gamma_min=0.4,
        eos_id=tok.eos_token_id,
        mask_id=M,
        record=True,
    )
    checked = []
    for s in range(8):
        logits = model(torch.cat([prompt, tr.x_bar[s]], 1)).logits[:, prompt.shape[1] :]
        p = F.softmax(logits.float(), -1).gather(-1, tr.x_pred[s][..., None])[..., 0]  # (4, 40)
        eos = (tr.x_pred[s] == tok.eos_token_id) & (tr.x_bar[s] == M)
        if eos.any():
            # s = 7 is the second step of the last block: gamma = 0.4 + 0.6 * 7 / 7 = 1 (reference:
            # 0.486)
            assert torch.allclose(
                tr.conf[s][eos] / p[eos], torch.tensor(remask.eoser_gamma(s, 8, 0.4))
            )
            checked.append(s)
    assert 0 in checked and 7 in checked


def test_a_single_step_has_gamma_one():
    # T = 1 decodes everything in its one step: the reference's gamma is its maximum, 1
    assert remask.eoser_gamma(0, 1, 0.01, "ass") == remask.eoser_gamma(0, 1, 0.4, "linear") == 1.0


def test_training_flags_for_the_eoser_ass_setting():
    """The EOSER-ASS paper's setting in train.py's flags: IGPO's GSPO ratio by default, EOSER's
    training gamma_min 0.01, --schedule with ass (one block of L in floor(log2 L) steps)."""
    assert config.from_args(["--algo", "igpo"]).igpo_ratio == "sequence"
    help_text = " ".join(config.parser().format_help().split())
    assert "--eoser-gamma-min EOSER_GAMMA_MIN" in help_text and "[default: 0.01]" in help_text
    assert "linear-official,ass}" in help_text
    cfg = config.from_args(["--algo", "cj-grpo", "--eoser", "--schedule", "ass",
                            "--block-lengths", "40", "--steps", "5"])
    assert (cfg.schedule, cfg.eoser_gamma_min, cfg.steps) == ("ass", 0.01, 5)
    with pytest.raises(SystemExit):
        config.from_args(["--schedule", "ass", "--steps", "5"])  # two block sizes: not one block


def test_cj_grpo_trains_on_eoser_ass_rollouts(tiny, tmp_path, monkeypatch):
    """--algo cj-grpo --eoser --schedule ass on the toy: rollouts of one block of 40 tokens in
    floor(log2 40) = 5 steps revealing 1, 2, 4, 8, 25, EOS ranked down from gamma 0.01; CJ-GRPO
    trains on every one of those steps."""
    seen, real = [], sample.generate
    monkeypatch.setattr(sample, "generate", lambda *a, **k: seen.append(k) or real(*a, **k))
    out = tmp_path / "run"
    train.main(["--model", str(tiny), "--task", "toy-digits", "--algo", "cj-grpo", "--eoser",
                "--schedule", "ass", "--block-lengths", "40", "--steps", "5", "--max-updates", "1",
                "--prompts-per-update", "2", "--group-size", "2", "--inner-steps", "2",
                "--eval-every", "0", "--n-train", "8", "--out", str(out)])
    rollout = seen[0]
    assert (rollout["schedule"], rollout["steps"], rollout["eoser_gamma_min"]) == ("ass", 5, 0.01)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()[1:]]
    # every one of the 4 rollouts' 40 tokens revealed once, at one of its 5 steps
    assert [r["step"] for r in rows] == [1] and rows[0]["tokens"] == 4 * 40
