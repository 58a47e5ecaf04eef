"""Small real masked diffusion LMs, offline: a tiny randomly initialised ModernBERT used as a chat
MDLM, and a model with shifted logits (Dream-style), each through load_model, generate with every
remasking, MDPO updates and a checkpoint round trip.  pytest -q tests/test_models.py"""

import json
from types import SimpleNamespace

import pytest
import tokenizers
import torch
import transformers

import mdpo
import models
import rewards
import sample
import train
import optimise

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<user>", "<assistant>"] + (
    "what is one two three four five plus minus the answer boxed { } \\ = ? .".split()
)
CHAT = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def tiny_modernbert(path, shifted=False):
    """A ModernBertForMaskedLM built from a config (hidden 32, 2 layers) with a word-level tokenizer
    that has a [MASK] token and a chat template, saved like a hub model."""
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        eos_token="[SEP]",
        cls_token="[CLS]",
    )
    fast.chat_template = CHAT
    config = transformers.ModernBertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        cls_token_id=2,
        sep_token_id=3,
        eos_token_id=3,
        bos_token_id=2,
        global_attn_every_n_layers=1,
    )
    if shifted:
        config.shifted_logits = True
    torch.manual_seed(0)
    transformers.ModernBertForMaskedLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def modernbert(tmp_path_factory):
    return tiny_modernbert(tmp_path_factory.mktemp("modernbert") / "model")


@pytest.mark.parametrize("remasking", ["lcr", "rcr", "rcr-latest", "random"])
def test_modernbert_chat_mdlm_loads_and_generates(modernbert, remasking):
    model, tok = models.load_model(str(modernbert))
    assert isinstance(model, transformers.ModernBertForMaskedLM) and not models.uses_shifted_logits(
        model
    )
    mask_id = models.resolve_mask_id(tok, model)
    assert mask_id == WORDS.index("[MASK]")
    ids, attn = models.encode_prompts(tok, ["what is one plus two ?", "three ?"])
    assert ids[0, -1] == WORDS.index("<assistant>") and ids[0, 0] == WORDS.index(
        "<user>"
    )  # the chat template
    assert attn[1].tolist()[:2] == [0, 0]  # the shorter prompt is left-padded
    x = sample.generate(
        model,
        ids,
        attention_mask=attn,
        gen_length=8,
        block_length=4,
        steps=4,
        remasking=remasking,
        mask_id=mask_id,
        temperature=0.7,
        generator=torch.Generator().manual_seed(0),
        eoser_gamma_min=0.4,
        eos_id=tok.eos_token_id,
    )
    assert x.shape == (2, ids.shape[1] + 8) and (x[:, ids.shape[1] :] != mask_id).all()


def answer_everything(monkeypatch):
    """Rewards that do not depend on what the random model writes, so that the updates have
    advantages: step s of rollout n scores (n + s) % 2."""

    def scores(texts, task, examples, format_score=0.0):
        N, T = len(texts), len(texts[0])
        return ((torch.arange(N)[:, None] + torch.arange(T)[None, :]) % 2).float()  # (N, T)

    monkeypatch.setattr(rewards, "score_trajectory", scores)
    monkeypatch.setattr(rewards, "reward", lambda task, text, ex, fs=0.0: float(len(text) % 2))


def run_mdpo(model_dir, out, algo="mdpo", extra=()):
    data = out.parent / "math.jsonl"
    data.write_text(
        "".join(
            json.dumps({"problem": p, "answer": "two"}) + "\n"
            for p in ["what is one plus one ?", "what is four minus two ?"]
        )
    )
    train.main(
        [
            "--model",
            str(model_dir),
            "--task",
            "math",
            "--train-file",
            str(data),
            "--preset",
            "toy",
            "--eval-every",
            "0",
            "--algo",
            algo,
            "--prompts-per-update",
            "2",
            "--group-size",
            "2",
            "--gen-length",
            "8",
            "--block-lengths",
            "8",
            "--steps",
            "4",
            "--beta",
            "0.05",
            "--lr",
            "1e-2",
            "--out",
            str(out),
            *extra,
        ]
    )
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()[1:]]


@pytest.mark.parametrize("algo", ["mdpo", "diffu-grpo"])
def test_modernbert_trains_and_its_checkpoint_round_trips(modernbert, tmp_path, monkeypatch, algo):
    answer_everything(monkeypatch)
    rows = run_mdpo(
        modernbert, tmp_path / "run", algo, ["--max-updates", "2", "--inner-steps", "1"]
    )
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["tokens"] > 0 and rows[0]["kl"] == 0.0
    assert rows[1]["kl"] > 0  # the first update moved the policy away from the reference
    trained, tok = models.load_model(str(tmp_path / "run" / "last"))
    start, _ = models.load_model(str(modernbert))
    assert isinstance(trained, transformers.ModernBertForMaskedLM) and tok.chat_template == CHAT
    assert not all(
        torch.equal(a, b)
        for a, b in zip(trained.state_dict().values(), start.state_dict().values())
    )
    rows = run_mdpo(
        modernbert, tmp_path / "run", algo, ["--max-updates", "3", "--inner-steps", "2", "--resume"]
    )
    assert [r["step"] for r in rows] == [1, 2, 3]  # resumed from the checkpoint, not started over


def test_shifted_logits_are_read_one_position_to_the_right(tmp_path):
    path = tiny_modernbert(tmp_path / "m")
    plain, _ = models.load_model(str(path))
    shifted, _ = models.load_model(str(path), shifted_logits=True)
    assert models.uses_shifted_logits(shifted) and not models.uses_shifted_logits(plain)
    x = torch.randint(5, len(WORDS), (2, 7))
    raw = plain(x).logits  # (2, 7, V)
    got = models.logits(shifted, x)
    # position i takes the raw logits of i - 1; position 0 keeps its own
    assert torch.equal(got[:, 1:], raw[:, :-1]) and torch.equal(got[:, 0], raw[:, 0])
    assert models.uses_shifted_logits(SimpleNamespace(config=SimpleNamespace(model_type="Dream")))


class ShiftedByHand(torch.nn.Module):
    """The plain model with its logits shifted explicitly: what a shifted model must look like to
    the code."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, SimpleNamespace(model_type="wrapper")

    def forward(self, input_ids, attention_mask=None):
        out = self.model(input_ids, attention_mask=attention_mask).logits
        return SimpleNamespace(logits=torch.cat([out[:, :1], out[:, :-1]], 1))


def test_the_sampler_the_log_probs_and_sft_honour_shifted_logits(tmp_path):
    path = tiny_modernbert(tmp_path / "m")
    plain, tok = models.load_model(str(path))
    shifted, _ = models.load_model(str(path), shifted_logits=True)
    by_hand, M = ShiftedByHand(plain), WORDS.index("[MASK]")
    ids = torch.randint(5, len(WORDS), (2, 4))
    kw = dict(
        gen_length=8,
        block_length=8,
        steps=4,
        remasking="lcr",
        mask_id=M,
        temperature=0.8,
        record=True,
    )
    x_s, tr_s = sample.generate(shifted, ids, generator=torch.Generator().manual_seed(1), **kw)
    x_h, tr_h = sample.generate(by_hand, ids, generator=torch.Generator().manual_seed(1), **kw)
    x_p = sample.generate(plain, ids, generator=torch.Generator().manual_seed(1), **kw)[0]
    assert torch.equal(x_s, x_h) and torch.equal(tr_s.logp, tr_h.logp) and not torch.equal(x_s, x_p)
    # the RL log-probs (updates.policy_logp) and the SFT loss read the same shifted logits
    batch = optimise.MicroBatch(
        [x_s],
        torch.ones_like(x_s),
        x_s[:, 4:],
        torch.ones(2, 8, dtype=torch.bool),
        torch.ones(2, 1),
        prompt_len=4,
    )
    assert torch.equal(
        optimise.policy_logp(shifted, batch, 0, 1.0), optimise.policy_logp(by_hand, batch, 0, 1.0)
    )
    x_tau, masked, p_mask = mdpo.sft_noise(
        x_s, batch.attention_mask.bool(), M, torch.Generator().manual_seed(0)
    )
    sft = [
        mdpo.masked_diffusion_loss(
            models.logits(m, x_tau), x_s, masked, p_mask, batch.attention_mask.bool()
        )
        for m in (shifted, by_hand)
    ]
    assert torch.equal(sft[0], sft[1])
    # a checkpoint of a shifted model remembers it
    shifted.save_pretrained(tmp_path / "saved")
    assert models.uses_shifted_logits(models.load_model(str(path))[0]) is False
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["shifted_logits"] is True


def test_a_shifted_logit_model_trains_with_mdpo_and_its_checkpoint_stays_shifted(
    modernbert, tmp_path, monkeypatch
):
    answer_everything(monkeypatch)
    extra = ["--max-updates", "2", "--inner-steps", "1", "--shifted-logits"]
    rows = run_mdpo(modernbert, tmp_path / "run", "mdpo", extra)
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["tokens"] > 0 and rows[1]["kl"] > 0
    trained, _ = models.load_model(str(tmp_path / "run" / "last"))  # no flag: the config says so
    assert models.uses_shifted_logits(trained)
    ids = torch.randint(5, len(WORDS), (1, 4))
    x = sample.generate(trained, ids, gen_length=8, block_length=8, steps=4,
                        mask_id=WORDS.index("[MASK]"))
    assert x.shape == (1, 12)
