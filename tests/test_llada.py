"""LLaDA-8B-Instruct's own model code through the whole real-model path, on a tiny random
LLaDA (opt-in: the code is the model's, never part of this project).

    huggingface-cli download GSAI-ML/LLaDA-8B-Instruct configuration_llada.py modeling_llada.py \\
        config.json --local-dir llada-code
    MDPO_LLADA_CODE=llada-code pytest -q tests/test_llada.py

MDPO_LLADA_CODE names a directory with the model card's configuration_llada.py, modeling_llada.py
and config.json. tests/hf_models.tiny_llada builds a model from that code with the 8B config shrunk
(d_model 64, 2 layers; vocabulary and special ids kept) and a character tokenizer with LLaDA's
special ids and chat format, and the tests check: loading, left padding, generation with every
remasking, the output layer on the needed rows, one update of each algorithm, a 2-process FSDP
run whose checkpoint a fresh process samples and evaluates, and its resume.

Run here (no download possible) on a public copy of the model card's code: modeling_llada.py of
github.com/charleschen-ml/pa-dllm at 34c6e39 with the two additions of that project taken out (its
optional "scheduler head" and its absolute import of the configuration), configuration_llada.py as
in chunsanHong/UPO and zhaoyMa/Saber (identical), and config.json from the model card's values.
"""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

import models
import sample
import speedups
import train
from conftest import ROOT, run_bounded
from hf_models import LLADA_SPECIALS, tiny_llada
from test_models import answer_everything

CODE = os.environ.get("MDPO_LLADA_CODE")
pytestmark = pytest.mark.skipif(
    not CODE, reason="opt-in: set MDPO_LLADA_CODE to a directory holding LLaDA-8B-Instruct's "
    "configuration_llada.py, modeling_llada.py and config.json (see this file's docstring)")
MASK, EOS = LLADA_SPECIALS["<|mdm_mask|>"], LLADA_SPECIALS["<|endoftext|>"]
PROMPTS = ["3+5+7+2=?", "1+1+1+1=?", "9+8+7+6=?", "0+0+0+0=?"]
SMALL = ["--prompts-per-update", "2", "--group-size", "2", "--gen-length", "8", "--block-lengths",
         "8", "--steps", "4", "--micro-batch", "4", "--eval-every", "0", "--n-train", "8"]


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
    return tiny_llada(CODE, tmp_path_factory.mktemp("llada") / "model")


def test_loads_with_its_own_code_and_tokenizer(llada):
    model, tok = models.load_model(str(llada), trust_remote_code=True)
    assert type(model).__name__ == "LLaDAModelLM" and not model.training
    assert models.resolve_mask_id(tok, model) == MASK and tok.eos_token_id == EOS
    assert torch.backends.cuda.mem_efficient_sdp_enabled()  # switched back on after LLaDA's code
    ids, attn = models.encode_prompts(tok, PROMPTS[:1])
    text = tok.decode(ids[0])
    assert text.startswith("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n3+5")
    assert text.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_a_left_padded_row_gives_what_it_gives_alone(llada):
    model, tok = models.load_model(str(llada), trust_remote_code=True)
    ids, attn = models.encode_prompts(tok, ["3+5+7+2=? and more", "1+1=?"])
    assert attn[1, 0] == 0  # the shorter prompt is left-padded
    x = torch.cat([ids, torch.full((2, 6), MASK)], 1)  # (2, P + 6)
    full_attn = torch.cat([attn, torch.ones(2, 6, dtype=attn.dtype)], 1)
    batch = model(x, attention_mask=full_attn).logits  # (2, P + 6, V)
    real = full_attn[1].bool()
    alone = model(x[1:, real]).logits[0]  # (n, V)
    # LLaDA's rotary positions count from the pad: only the relative positions match, so the
    # logits agree to float rounding, not bit for bit
    torch.testing.assert_close(batch[1, real], alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("remasking", sample.REMASKING)
def test_generates_with_every_remasking(llada, remasking):
    model, tok = models.load_model(str(llada), trust_remote_code=True)
    ids, attn = models.encode_prompts(tok, PROMPTS[:2])
    x = sample.generate(model, ids, attention_mask=attn, gen_length=8, block_length=4, steps=4,
                        remasking=remasking, mask_id=MASK, temperature=0.7, eos_id=EOS,
                        eoser_gamma_min=0.4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, ids.shape[1] + 8) and (x[:, ids.shape[1]:] != MASK).all()


def test_the_output_layer_runs_on_the_needed_rows_with_the_same_tokens(llada):
    """LLaDA's logits are its ff_out Linear on the final norm's output, nothing after: the sampler
    runs that layer on the rows a step needs, with the tokens of the full forward."""
    model, tok = models.load_model(str(llada), trust_remote_code=True)
    head = speedups.split_output_layer(model)
    assert head is model.model.transformer.ff_out
    ids, attn = models.encode_prompts(tok, PROMPTS[:2])
    with speedups.output_layer_removed(model, head):
        hidden = model(ids, attention_mask=attn).logits
    assert hidden.shape[-1] == 64 and model.get_output_embeddings() is head
    assert torch.equal(head(hidden), model(ids, attention_mask=attn).logits)
    kw = dict(attention_mask=attn, gen_length=8, block_length=8, steps=8, mask_id=MASK)
    fast = sample.generate(model, ids, **kw)
    model.config.model_type = "llada-run-in-full"  # not in speedups.ROW_HEAD_MODEL_TYPES
    try:
        assert speedups.split_output_layer(model) is None
        assert torch.equal(sample.generate(model, ids, **kw), fast)
    finally:
        model.config.model_type = "llada"


def train_llada(llada, out, *flags, processes=1, timeout=120):
    """train.py on the tiny LLaDA (toy-digits prompts through LLaDA's chat format), in its own
    process or processes."""
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(processes)] if processes > 1 else [sys.executable])
    cmd = [*launch, ROOT / "train.py", "--model", llada, "--trust-remote-code", "--task",
           "toy-digits", *SMALL, "--out", out, *flags]
    done = run_bounded(cmd, timeout, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["sft", "mdpo", "diffu-grpo", "cj-grpo", "igpo"])
def test_one_update_of_each_algorithm(llada, tmp_path, monkeypatch, algo):
    """In this process, with rewards that do not depend on what the random model writes (so that
    every update has advantages to train on)."""
    answer_everything(monkeypatch)
    extra = ["--inner-steps", "2"] if algo != "mdpo" else []
    train.main(["--model", str(llada), "--trust-remote-code", "--task", "toy-digits", "--algo",
                algo, "--max-updates", "1", *SMALL, "--out", str(tmp_path), *extra])
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()[1:]]
    assert [r["step"] for r in rows] == [1] and rows[0]["tokens"] > 0 and rows[0]["grad_norm"] > 0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fsdp_checkpoint_loads_in_a_fresh_process_and_resumes(llada, tmp_path):
    out = tmp_path / "run"
    rows = train_llada(llada, out, "--fsdp", "--max-updates", "2", processes=2, timeout=180)
    assert [r["step"] for r in rows] == [1, 2]
    config = json.loads((out / "last" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_llada.LLaDAModelLM"
    assert (out / "last" / "modeling_llada.py").exists()
    sampled = run_bounded([sys.executable, ROOT / "sample.py", "--model", out / "last",
                           "--trust-remote-code", "--task", "toy-digits", "--prompt", PROMPTS[0],
                           "--gen-length", "8", "--block-length", "8", "--steps", "4"], 60)
    assert sampled.returncode == 0 and "toy-digits reward" in sampled.stdout, sampled.stderr[-2000:]
    evaluated = run_bounded([sys.executable, ROOT / "eval.py", "--model", out / "last",
                             "--trust-remote-code", "--task", "toy-digits", "--limit", "4",
                             "--gen-length", "8", "--block-length", "8", "--steps", "4",
                             "--remasking", "lcr", "--out", tmp_path / "eval"], 90)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert (tmp_path / "eval" / "table.md").exists()
    rows = train_llada(llada, out, "--fsdp", "--max-updates", "3", "--resume", processes=2,
                       timeout=180)
    assert [r["step"] for r in rows] == [1, 2, 3]  # continued from update 2, not started over
