"""The denoising loop: parity with LLaDA's and the official MDPO sampler (exact ties included), the
output layer on needed rows only, exact sampling, top-p, tempered confidence, trajectories, HF
loading. pytest -q tests/test_sample.py"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

import sample
import speedups
import toy
from conftest import NoMaskPrediction, large_weights_toy
from test_models import tiny_modernbert
from models import decode_until_eos, encode_prompts, load_model, resolve_mask_id
from sample import generate


def llada_reference(model, prompt, steps, gen_length, block_length, mask_id):
    """LLaDA's generate() (greedy, low-confidence remasking, no CFG): the plain transcription in
    tools/llada_reference.py, independent of sample.py."""
    from tools.llada_reference import llada_generate

    return llada_generate(
        model,
        prompt,
        steps=steps,
        gen_length=gen_length,
        block_length=block_length,
        temperature=0.0,
        mask_id=mask_id,
    )


@pytest.mark.parametrize(
    "kind", ["peaked", "toy", "bigram"]
)  # saturated: many exact ties at 1.0 (see `saturated`)
@pytest.mark.parametrize(
    "gen_length, block_length, steps",
    [
        (40, 40, 20),  # pure-Diff
        (40, 40, 12),  # pure-Diff, 40 % 12 = 4
        (40, 10, 20),  # semi-AR, 4 blocks of 5 steps
        (40, 10, 12),  # semi-AR, 10 % 3 = 1
        (30, 10, 30),  # one token per step
    ],
)
def test_greedy_lcr_matches_llada_reference(
    peaked_model, tok, kind, gen_length, block_length, steps
):
    model = peaked_model if kind == "peaked" else saturated(kind, tok)
    prompt = torch.tensor(
        [tok.encode(p) for p in ["nums 1 2 3 -> 6", "nums 9 8 7 -> 5", "a=1+2;b=a*3;b-1"]]
    )
    if kind != "peaked":
        first = F.softmax(
            model(torch.cat([prompt, torch.full((3, gen_length), tok.mask_token_id)], 1)).logits, -1
        )
        assert (first.max(-1).values == 1.0).float().mean() > 0.3  # many exact ties at 1.0
    ours = generate(
        model,
        prompt,
        gen_length=gen_length,
        block_length=block_length,
        steps=steps,
        remasking="lcr",
        mask_id=tok.mask_token_id,
    )
    ref = llada_reference(model, prompt, steps, gen_length, block_length, tok.mask_token_id)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("remasking", ["lcr", "rcr", "rcr-latest"])
@pytest.mark.parametrize("block_length", [40, 10])
def test_batched_equals_unbatched(peaked_model, tok, remasking, block_length):
    texts = ["nums 1 2 3 -> 6", "a=1+2;b=a*3;b-1=?", "7"]
    ids, attn = encode_prompts(tok, texts)
    assert attn.tolist()[2] == [0] * (ids.shape[1] - 1) + [1]  # left-padded
    kw = dict(
        gen_length=40,
        block_length=block_length,
        steps=20,
        remasking=remasking,
        mask_id=tok.mask_token_id,
    )
    batched = generate(peaked_model, ids, attention_mask=attn, **kw)[:, ids.shape[1] :]
    for i, text in enumerate(texts):
        one = torch.tensor([tok.encode(text)])
        alone = generate(peaked_model, one, attention_mask=torch.ones_like(one), **kw)[
            :, one.shape[1] :
        ]
        assert torch.equal(batched[i], alone[0]), f"row {i} differs when batched"


@pytest.mark.parametrize("remasking, top_p", [("lcr", 1.0), ("rcr", 1.0), ("lcr", 0.8)])
def test_trajectory_is_consistent(peaked_model, tok, remasking, top_p):
    M, tau = tok.mask_token_id, 0.7
    prompt = torch.tensor([tok.encode("nums 4 5 6 -> 26")] * 3)
    x, tr = generate(
        peaked_model,
        prompt,
        gen_length=40,
        block_length=20,
        steps=10,
        remasking=remasking,
        temperature=tau,
        top_p=top_p,
        mask_id=M,
        record=True,
        generator=torch.Generator().manual_seed(1),
    )
    T = 10
    assert tr.x_bar.shape == tr.x_pred.shape == tr.conf.shape == tr.logp.shape == (T, 3, 40)
    assert (tr.x_bar[0] == M).all() and (tr.x_pred != M).all()
    assert torch.equal(tr.x_pred[-1], x[:, prompt.shape[1] :])
    for s in range(T):
        revealed = tr.x_bar[s] != M
        assert torch.equal(
            tr.x_pred[s][revealed], tr.x_bar[s][revealed]
        )  # prediction keeps what was given
        if s + 1 < T:
            nxt = tr.x_bar[s + 1]
            # x_bar[s+1] is x_pred[s] with the remasked positions set to [MASK]
            assert torch.equal(nxt, torch.where(nxt == M, M, tr.x_pred[s]))
        # conf and logp agree with an independent forward on the recorded state
        logits = (
            peaked_model(torch.cat([prompt, tr.x_bar[s]], 1)).logits[:, prompt.shape[1] :].float()
        )
        logits[..., M] = -torch.inf
        masked = tr.x_bar[s] == M
        # logp under the distribution sampled from: the nucleus of softmax(logits / tau),
        # renormalised, in float64
        p, order = F.softmax(logits.double() / tau, -1).sort(-1, descending=True)  # (3, 40, V) each
        before = p.cumsum(-1) - p  # probability of the tokens sorted before each one
        q = torch.zeros_like(p).scatter(
            -1, order, torch.where((before <= top_p) | (before == 0), p, 0.0)
        )
        logp = (
            (q / q.sum(-1, keepdim=True)).log().gather(-1, tr.x_pred[s][..., None])[..., 0].float()
        )
        conf = F.softmax(logits, -1).gather(-1, tr.x_pred[s][..., None])[..., 0]
        torch.testing.assert_close(tr.logp[s][masked], logp[masked], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tr.conf[s][masked], conf[masked], rtol=1e-5, atol=1e-5)
        assert (tr.logp[s][~masked] == 0).all()
    # LCR reveals exactly 10 // 5 * ... tokens per step: 20 tokens in 5 steps per block = 4 per step
    if remasking == "lcr":
        assert [(tr.x_bar[s] != M).sum().item() // 3 for s in range(T)] == [4 * s for s in range(T)]


def test_sampling_is_seeded_and_temperature_changes_output(peaked_model, tok):
    prompt = torch.tensor([tok.encode("nums 4 5 6 -> 26")] * 4)
    kw = dict(gen_length=40, block_length=40, steps=20, mask_id=tok.mask_token_id, temperature=1.0)
    a = generate(peaked_model, prompt, generator=torch.Generator().manual_seed(5), **kw)
    b = generate(peaked_model, prompt, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b)
    assert len({tuple(r) for r in a.tolist()}) > 1  # identical prompts, different samples


def test_cfg_runs_and_matches_formula_at_scale_zero(peaked_model, tok):
    prompt = torch.tensor([tok.encode("nums 4 5 6 -> 26")])
    kw = dict(gen_length=20, block_length=20, steps=10, mask_id=tok.mask_token_id)
    assert torch.equal(
        generate(peaked_model, prompt, cfg_scale=0.0, **kw), generate(peaked_model, prompt, **kw)
    )
    out = generate(peaked_model, prompt, cfg_scale=1.5, **kw)
    assert (out != tok.mask_token_id).all()


def tiny_bert(tmp_path):
    """A BertForMaskedLM built from a config, with a word-level vocabulary, saved like a hub
    model."""
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ] + "the a one two three four plus is ? .".split()
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizer(vocab_file=str(tmp_path / "vocab.txt"))
    config = transformers.BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


@pytest.mark.parametrize("remasking", ["lcr", "rcr", "rcr-latest", "random"])
def test_tiny_hf_model_loads_and_generates(tmp_path, remasking):
    model, tokenizer = load_model(str(tiny_bert(tmp_path)))
    assert isinstance(model, transformers.BertForMaskedLM) and not model.training
    mask_id = resolve_mask_id(tokenizer, model)
    assert mask_id == tokenizer.convert_tokens_to_ids("[MASK]")
    ids, attn = encode_prompts(tokenizer, ["one plus two is ?", "two ?"])
    x = generate(
        model,
        ids,
        attention_mask=attn,
        gen_length=8,
        block_length=4,
        steps=4,
        remasking=remasking,
        mask_id=mask_id,
        temperature=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert x.shape == (2, ids.shape[1] + 8) and (x[:, ids.shape[1] :] != mask_id).all()
    assert all(isinstance(t, str) for t in decode_until_eos(tokenizer, x[:, ids.shape[1] :]))


def test_unknown_mask_id_is_a_clear_error(tmp_path):
    class NoMask:
        mask_token_id = None

    model = toy.ToyMDLM(toy.ToyConfig(mask_token_id=None))
    with pytest.raises(ValueError, match="--mask-id"):
        resolve_mask_id(NoMask(), model)
    assert resolve_mask_id(NoMask(), model, 126336) == 126336


def test_toy_checkpoint_round_trip_and_cli_show(tmp_path, tok, capsys):
    torch.manual_seed(0)
    model = toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32))
    model.save_pretrained(tmp_path / "ck")
    tok.save_pretrained(tmp_path / "ck")
    loaded, tok2 = load_model(str(tmp_path / "ck"))
    x = torch.tensor([tok.encode("nums 1 2 3 -> 6")])
    torch.testing.assert_close(loaded(x).logits, model.eval()(x).logits)
    assert tok2.encode("<answer>1</answer>") == [3, tok.ids["1"], 4]
    sample.main(["--model", str(tmp_path / "ck"), "--prompt", "nums 1 2 3 -> 6", "--gen-length",
                 "8", "--block-length", "8", "--steps", "4", "--remasking", "rcr", "--top-p",
                 "0.95", "--show"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("legend: _ = [MASK], · = [EOS], ⏎ = '\\n'")
    assert (
        lines[1].startswith("step   1/4 | ") and lines[1].count("_") == 6
    )  # 2 of 8 revealed after step 1
    assert lines[4].startswith("step   4/4 | ") and "_" not in lines[4][13:]
    assert len(lines[4]) == len("step   4/4 | ") + 8  # one character per token


# -------------------------------------------------------------- exact ties, official RCR, fast path
@pytest.fixture(autouse=True)
def bigram_splits_its_output_layer(monkeypatch):
    types = (*speedups.ROW_HEAD_MODEL_TYPES, "bigram")
    monkeypatch.setattr(speedups, "ROW_HEAD_MODEL_TYPES", types)


class Bigram(torch.nn.Module):
    """logits at position j = head(emb(x_{j-1})): positions with the same left neighbour tie
    exactly. Its logits are its Linear output layer on emb(x_{j-1}) and it can swap that layer, so
    generate runs the layer on the rows it needs (speedups.head_on_rows; model type "bigram" is
    added to speedups.ROW_HEAD_MODEL_TYPES above).
    """

    config = SimpleNamespace(model_type="bigram")

    def __init__(self, V, mask_id, scale, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb, self.head = torch.nn.Embedding(V, 8), torch.nn.Linear(8, V)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(V, 8, generator=g))
            self.head.weight.copy_(scale * torch.randn(V, 8, generator=g))
            self.head.bias.zero_()
            self.head.bias[mask_id] = -1e9  # never predicts [MASK], as a trained model
        self.mask_id = mask_id

    def get_output_embeddings(self):
        return self.head

    def set_output_embeddings(self, head):
        self.head = head

    def forward(self, input_ids, attention_mask=None):
        prev = torch.cat([input_ids[:, :1], input_ids[:, :-1]], 1)  # (B, S)
        return SimpleNamespace(logits=self.head(self.emb(prev)))  # (B, S, V)


class Wrapped(torch.nn.Module):
    """model with its logits times `scale` and no output layer exposed: generate takes the full
    forward."""

    def __init__(self, model, scale=1.0):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(
            logits=self.model(input_ids, attention_mask=attention_mask).logits * self.scale
        )


def saturated(kind, tok):
    """Models whose float32 confidences are often exactly 1.0: the toy scaled (full forward) or a
    Bigram."""
    if kind == "bigram":
        return Bigram(tok.vocab_size, tok.mask_token_id, scale=12.0)
    model = large_weights_toy()
    with torch.no_grad():
        model.head.bias[tok.mask_token_id] = -1e9
    return Wrapped(model, scale=30.0)


def official_counts(n, steps):
    """get_num_transfer_tokens_maskgit(mode="linear") of the official code, transcribed with
    numpy."""
    ratios = np.clip(1 - (np.arange(steps) + 1) / steps, 1e-6, 1)
    still_masked = n - (n - np.floor(n * ratios))  # masked after each step
    return np.diff(np.concatenate([[0], n - still_masked])).astype(int).tolist()


def official_rcr(model, prompt, steps, gen_length, block_length, mask_id, top_p=None):
    """A plain transcription of the official diffusion_generate(rcr=True) at temperature 0, one row.
    Returns (x, prompt_touched): whether some prompt token was ever remasked."""
    P = prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id)], 1)
    overtime = torch.zeros(x.shape)
    touched, n_blocks = False, gen_length // block_length
    for nb in range(n_blocks):
        end = P + (nb + 1) * block_length
        counts = official_counts(
            int((x[:, end - block_length : end] == mask_id).sum()), steps // n_blocks
        )
        for i in range(steps // n_blocks):
            mask_index = x == mask_id
            logits = model(x).logits.float()
            if top_p is not None:
                sorted_logits, order = torch.sort(logits, descending=True)
                remove = torch.cumsum(F.softmax(sorted_logits, -1), -1) > top_p
                remove[..., 1:] = remove[..., :-1].clone()
                remove[..., 0] = False
                logits = logits.masked_fill(
                    torch.zeros_like(remove).scatter(-1, order, remove),
                    torch.finfo(logits.dtype).min,
                )
            confidence, x0 = F.softmax(logits, -1).max(-1)
            confidence[:, end:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, confidence, torch.tensor(-np.inf))
            sel = torch.topk(confidence[0], k=sum(counts[i:])).indices
            x[0, sel] = x0[0, sel]
            overtime[0, sel] = confidence[0, sel]
            if i != steps // n_blocks - 1:
                low = torch.topk(
                    torch.where(overtime == 0.0, 1.0, overtime)[0],
                    k=sum(counts[i + 1 :]),
                    largest=False,
                ).indices
                x[0, low] = mask_id
                touched |= bool((low < P).any())
    return x, touched


@pytest.mark.parametrize("kind", ["toy", "bigram"])
@pytest.mark.parametrize(
    "gen_length, block_length, steps, top_p",
    [
        (32, 32, 10, None),  # official counts 4,3,3,3,3,4,3,3,3,3
        (40, 10, 20, None),  # semi-AR: earlier blocks stay candidates
        (30, 30, 12, 0.95),  # top-p at temperature 0 renormalises the confidences
        (5, 5, 5, None),  # official counts 1,1,1,2,0
    ],
)
def test_rcr_latest_matches_official_code(
    peaked_model, tok, kind, gen_length, block_length, steps, top_p
):
    # confidences below 1.0 (see remask.py, item 3); the bigram has many exact ties below 1.0
    model = (
        Bigram(tok.vocab_size, tok.mask_token_id, scale=0.7) if kind == "bigram" else peaked_model
    )
    prompt = torch.tensor([tok.encode(p) for p in ["nums 1 2 3 -> 6", "nums 9 8 7 -> 5"]])
    ours = generate(
        model,
        prompt,
        gen_length=gen_length,
        block_length=block_length,
        steps=steps,
        remasking="rcr-latest",
        top_p=1.0 if top_p is None else top_p,
        mask_id=tok.mask_token_id,
    )
    for row in range(2):
        ref, touched = official_rcr(
            model, prompt[row : row + 1], steps, gen_length, block_length, tok.mask_token_id, top_p
        )
        assert torch.equal(ours[row], ref[0]) and not touched


def test_official_rcr_rewrites_the_prompt_at_confidence_one_but_ours_never(tok):
    model, M = saturated("bigram", tok), tok.mask_token_id
    prompt = torch.tensor([tok.encode("nums 1 2 3 -> 6")])
    _, touched = official_rcr(model, prompt, 20, 40, 40, M)
    assert touched  # the documented bug of the official code (sample.py, item 7)
    _, tr = generate(
        model,
        prompt,
        gen_length=40,
        block_length=40,
        steps=20,
        remasking="rcr-latest",
        mask_id=M,
        record=True,
    )
    assert [(tr.x_bar[s] != M).sum().item() for s in range(1, 20)] == np.cumsum(
        official_counts(40, 20)
    )[:-1].tolist()
    assert (
        tr.x_bar[16] != M
    ).sum() == 33  # 1 - 16/20 rounds below 0.2: floor(40 * that) = 7 still masked


def toy_without_mask(tok):
    """The large-weights toy, which declares its output layer, never predicting [MASK]."""
    model = large_weights_toy()
    with torch.no_grad():
        model.head.bias[tok.mask_token_id] = -1e9
    return model


@pytest.mark.parametrize(
    "remasking, temperature, top_p, cfg, block",
    [
        ("lcr", 0.0, 1.0, 0.0, 24),
        ("lcr", 0.8, 1.0, 0.0, 8),
        ("rcr", 0.0, 0.9, 1.5, 8),
        ("rcr-latest", 0.7, 0.9, 0.0, 24),
        ("random", 1.0, 1.0, 0.0, 8),
    ],
)
def test_output_layer_on_needed_rows_equals_full_forward(
    tok, remasking, temperature, top_p, cfg, block
):
    model, M = toy_without_mask(tok), tok.mask_token_id
    ids, attn = torch.randint(5, tok.vocab_size, (3, 6)), torch.ones(3, 6, dtype=torch.long)
    attn[0, :2] = 0  # left-padded row
    runs = []
    for m in (model, Wrapped(model)):  # Wrapped: no output layer declared -> full logits
        for record in (True, False):
            runs.append(
                generate(
                    m,
                    ids,
                    attention_mask=attn,
                    gen_length=24,
                    block_length=block,
                    steps=12,
                    remasking=remasking,
                    temperature=temperature,
                    top_p=top_p,
                    cfg_scale=cfg,
                    mask_id=M,
                    record=record,
                    generator=torch.Generator().manual_seed(3),
                )
            )
    (x_fast, tr_fast), x_fast_norec, (x_full, tr_full), x_full_norec = runs
    assert torch.equal(x_fast, x_full) and torch.equal(x_fast_norec, x_full_norec)
    for field in ("x_bar", "x_pred", "conf", "logp"):
        assert torch.equal(getattr(tr_fast, field), getattr(tr_full, field)), field
    if temperature == 0:  # recording predicts more positions, which changes nothing else
        assert torch.equal(x_fast, x_fast_norec)


def test_record_false_predicts_only_up_to_the_block_end(tok):
    model, M = toy_without_mask(tok), tok.mask_token_id
    rows = []
    model.get_output_embeddings().register_forward_hook(
        lambda mod, args, out: rows.append(args[0].shape[0])
    )
    ids = torch.randint(5, tok.vocab_size, (4, 5))
    for record in (False, True):
        rows.clear()
        generate(model, ids, gen_length=40, block_length=10, steps=8, mask_id=M, record=record)
        # masked rows per step (4 rows): record=False 40, 20 in each block; record=True 160, 140,
        # ..., 20
        assert sum(rows) == (
            4 * (40 + 20) if not record else 160 + 140 + 120 + 100 + 80 + 60 + 40 + 20
        )


def test_the_output_layer_is_split_off_where_the_logits_are_that_layer_alone(tmp_path, tok):
    """The toy's and ModernBERT's logits are their Linear output layer applied to its input: with
    the layer swapped for the identity the forward returns that input, and the layer on it gives
    the logits bit for bit. A wrapper that changes the logits, BERT (its head has a transform
    before the layer it exposes: not listed) and a shifted-logit model run in full."""
    model = large_weights_toy()
    head = speedups.split_output_layer(model)
    assert head is model.head
    x = torch.randint(5, tok.vocab_size, (2, 9))
    attn = torch.ones(2, 9, dtype=torch.long)
    attn[1, :3] = 0
    with speedups.output_layer_removed(model, head):
        hidden = model(x, attention_mask=attn).logits  # (2, 9, D)
    assert hidden.shape == (2, 9, model.config.d_model) and model.head is head
    assert torch.equal(head(hidden), model(x, attention_mask=attn).logits)
    assert speedups.split_output_layer(Wrapped(model)) is None
    assert speedups.split_output_layer(NoMaskPrediction(model, tok.mask_token_id)) is None
    bert, _ = load_model(str(tiny_bert(tmp_path)))
    assert speedups.split_output_layer(bert) is None
    modernbert, _ = load_model(str(tiny_modernbert(tmp_path / "modernbert")))
    head = speedups.split_output_layer(modernbert)
    with speedups.output_layer_removed(modernbert, head):
        hidden = modernbert(x.clamp(max=14), attention_mask=attn).logits
    assert torch.equal(head(hidden), modernbert(x.clamp(max=14), attention_mask=attn).logits)
    shifted, _ = load_model(str(tmp_path / "modernbert"), shifted_logits=True)
    assert speedups.split_output_layer(shifted) is None


# ------------------------------------------------------------- sampling, top-p, tempered confidence
def chi2(counts, probs):
    """Pearson's statistic over the cells of nonzero probability; a cell of probability 0 must stay
    empty."""
    assert all(c == 0 for c, p in zip(counts, probs) if p == 0)
    return sum(
        (c - sum(counts) * p) ** 2 / (sum(counts) * p) for c, p in zip(counts, probs) if p > 0
    )


def chi2_bound(df):
    return df + 6 * math.sqrt(2 * df)  # the mean plus 6 standard deviations of the statistic


def test_top_p_by_hand():
    M = 4
    logits = torch.tensor(
        [[0.5, 0.25, 0.125, 0.125, 0.0]]
    ).log()  # probabilities; [MASK] at 4 has p = 0
    # sorted cumulative 0.5, 0.75, 0.875, 1: over 0.7 from the 2nd on; shifted right -> drop the 3rd
    # and 4th
    kept = sample.nucleus(logits, 0.7)
    assert torch.isfinite(kept[0, :2]).all() and (kept[0, 2:] == -torch.inf).all()
    assert torch.isfinite(sample.nucleus(logits, 0.1)[0]).tolist() == [
        True,
        False,
        False,
        False,
        False,
    ]
    # temperature 0 with top-p (official evaluation): argmax unchanged, confidence renormalised over
    # the nucleus
    tokens, conf, logp = sample.predict(logits.clone(), 0.0, M, top_p=0.7, confidence="sampling")
    assert (
        tokens.item() == 0
        and conf.item() == pytest.approx(2 / 3)
        and logp.item() == pytest.approx(math.log(2 / 3))
    )
    tokens, conf, logp = sample.predict(logits.clone(), 0.0, M, top_p=0.7, confidence="model")
    assert conf.item() == pytest.approx(0.5) and logp.item() == pytest.approx(
        math.log(2 / 3)
    )  # 0.5 / 0.75


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9), (2.0, 0.6)])
def test_predict_draws_the_exact_distribution(temperature, top_p):
    M, n = 5, 60000
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -3.0, 0.0])  # [MASK] at 5
    # q = softmax(logits / temperature) over tokens 0-4, then the nucleus, worked out in float64 by
    # hand
    w = [math.exp(v / temperature) for v in logits[:M].tolist()]
    p = [v / sum(w) for v in w]
    cum = [sum(p[: i + 1]) for i in range(M)]  # already sorted descending
    keep = [i == 0 or cum[i - 1] <= top_p for i in range(M)]
    q = [pi if k else 0.0 for pi, k in zip(p, keep)]
    q = [v / sum(q) for v in q] + [0.0]  # [MASK] is never drawn
    tokens, conf, logp = sample.predict(
        logits.expand(n, -1).clone(),
        temperature,
        M,
        torch.Generator().manual_seed(0),
        top_p=top_p,
        confidence="sampling",
    )
    assert chi2(torch.bincount(tokens, minlength=M + 1).tolist(), q) < chi2_bound(sum(keep) - 1)
    torch.testing.assert_close(logp, torch.tensor(q).log()[tokens].float())  # log-prob under q
    torch.testing.assert_close(conf, torch.tensor(q)[tokens].float())
    # the two levels of speedups.categorical: blocks of 4 tokens (the last one short), then a
    # token in the block
    tokens = speedups.categorical(
        torch.tensor(q).float().expand(n, -1), torch.Generator().manual_seed(1), block=4
    )
    assert chi2(torch.bincount(tokens, minlength=M + 1).tolist(), q) < chi2_bound(sum(keep) - 1)


class TwoPositions(torch.nn.Module):
    """The same logits at every step for two generated positions (no prompt): tokens 0-2,
    [MASK] = 3."""

    LOGITS = [
        [0.1, 0.0, 2.7],
        [0.9, -1.3, -2.4],
    ]  # tempering at tau = 2 changes which position wins

    def forward(self, input_ids, attention_mask=None):
        logits = torch.tensor([row + [-1e9] for row in self.LOGITS])  # (2, 4)
        return SimpleNamespace(logits=logits.expand(input_ids.shape[0], -1, -1))


@pytest.mark.parametrize(
    "remasking, confidence, expected",
    [
        ("rcr-latest", None, "sampling"),
        ("lcr", None, "model"),
        ("lcr", "sampling", "sampling"),
        ("rcr", "sampling", "sampling"),
    ],
)
def test_first_step_reveals_by_the_chosen_confidence(remasking, confidence, expected):
    # One step reveals one of two positions: the one whose drawn token has the higher confidence.
    # P(position i revealed with token a) = sum over b of q_i(a) q_j(b) [c_i(a) > c_j(b)], with
    # q = softmax(logits / tau), c = q ("sampling", official code) or softmax(logits) ("model",
    # LLaDA).
    tau, n, M = 2.0, 6000, 3

    def softmax(row, t):
        w = [math.exp(v / t) for v in row]
        return [v / sum(w) for v in w]

    q = [softmax(row, tau) for row in TwoPositions.LOGITS]
    c = {"sampling": q, "model": [softmax(row, 1.0) for row in TwoPositions.LOGITS]}

    def cells(kind):  # outcome (position i, token a) -> probability
        cc = c[kind]
        assert all(
            cc[0][a] != cc[1][b] for a in range(3) for b in range(3)
        )  # no ties across positions
        return [
            sum(q[i][a] * q[1 - i][b] for b in range(3) if cc[i][a] > cc[1 - i][b])
            for i in range(2)
            for a in range(3)
        ]

    _, tr = generate(
        TwoPositions(),
        torch.zeros(n, 0, dtype=torch.long),
        gen_length=2,
        block_length=2,
        steps=2,
        remasking=remasking,
        temperature=tau,
        confidence=confidence,
        mask_id=M,
        record=True,
        generator=torch.Generator().manual_seed(0),
    )
    state = tr.x_bar[1]  # (n, 2) after the first step: one position revealed
    assert ((state != M).sum(1) == 1).all()
    pos = (state[:, 1] != M).long()  # (n,)
    counts = torch.bincount(pos * 3 + state.gather(1, pos[:, None])[:, 0], minlength=6).tolist()
    other = "model" if expected == "sampling" else "sampling"
    assert chi2(counts, cells(expected)) < chi2_bound(5)
    assert (
        sum((a - b) ** 2 for a, b in zip(cells(expected), cells(other))) > 0.01
    )  # the two rules differ
    assert chi2(counts, [max(p, 1e-12) for p in cells(other)]) > 10 * chi2_bound(5)
