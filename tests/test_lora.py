"""LoRA (lora.py, peft) on the toy: what trains and what stays, the reference as the base, the
checkpoint and its reload, exact resume, the memory model's count.  pytest -q tests/test_lora.py"""
import json

import pytest
import torch
import torch.distributed.checkpoint as dcp

import config
import lora
import memory
import models
import mdpo
import optimise
import toy
import train
import updates
from test_models import answer_everything

SMALL = ["--task", "toy-digits", "--prompts-per-update", "2", "--group-size", "4", "--gen-length",
         "40", "--block-lengths", "40", "--steps", "8", "--eval-every", "0", "--n-train", "16",
         "--lr", "1e-2", "--beta", "0.05"]


def test_adapters_on_the_block_linears_only():
    model = toy.ToyMDLM(toy.ToyConfig(n_layers=2, d_model=32))
    names = lora.target_modules(model)
    assert names == [f"blocks.{i}.{n}" for i in range(2) for n in ("qkv", "proj", "mlp.0",
                                                                      "mlp.2")]
    assert lora.target_modules(model, ["qkv"]) == ["blocks.0.qkv", "blocks.1.qkv"]
    with pytest.raises(ValueError, match="--lora-targets head: no linear layer"):
        lora.target_modules(model, ["head"])  # the output layer is never adapted
    wrapped = lora.add_adapter(model, 4, 2.0, 0.0)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    # memory.py's count by hand: r (in + out) per adapted layer, d = 32, f = 128, r = 4:
    # qkv 4 (32 + 96) + proj 4 (32 + 32) + fc1 4 (32 + 128) + fc2 4 (128 + 32) = 2,048 per block
    shape = memory.toy_shape(model.config)
    assert trainable == memory.lora_params(shape, 4) == 2 * 2048


def test_the_reference_is_the_base_and_an_update_changes_the_adapters_only(tok, monkeypatch):
    answer_everything(monkeypatch)
    torch.manual_seed(0)
    base = toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32))
    start = {k: v.clone() for k, v in base.state_dict().items()}
    policy = lora.add_adapter(base, 4, 8.0, 0.0)
    reference = lora.AdapterOff(policy)
    assert list(reference.parameters()) == []  # no second copy of the model
    x = torch.randint(5, 40, (2, 12))
    plain = toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32))
    plain.load_state_dict(start)
    cfg = config.Config(task="toy-digits", group_size=4, gen_length=8, block_lengths=(8,),
                        steps=4, beta=0.05, lora_rank=4)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    stats = updates.mdpo_update(policy, reference, optimizer, toy.make_task("toy-digits", 2),
                                cfg, tokenizer=tok, mask_id=tok.mask_token_id,
                                generator=torch.Generator().manual_seed(0))
    assert stats["kl"] == 0.0 and stats["grad_norm"] > 0  # the policy was the base at the start
    with torch.no_grad():  # after the step: the reference still computes the base, bit for bit
        assert torch.equal(reference(x).logits, plain(x).logits)
        assert not torch.equal(policy(x).logits, plain(x).logits)
    for name, p in policy.base_model.model.named_parameters():
        if "lora_" in name:  # B starts at 0: it moved
            assert "lora_A" in name or p.abs().sum() > 0, name
        else:  # the base's weights did not move
            assert torch.equal(p, start[name.replace(".base_layer", "")]), name


def test_checkpoint_reloads_merged_and_resumes_exactly(tiny, tmp_path, monkeypatch):
    """OUT/last holds the adapter (and its base's path); models.load_model gives the base with it
    merged, the logits of the trained policy; `lora.py` writes that as a plain model; 2 updates +
    2 resumed equal 4 in a row, bit for bit, the adapters' dropout included."""
    answer_everything(monkeypatch)  # advantages whatever the random model writes
    flags = ["--model", str(tiny), *SMALL, "--lora-rank", "4", "--lora-dropout", "0.1"]
    train.main([*flags, "--max-updates", "4", "--out", str(tmp_path / "straight")])
    train.main([*flags, "--max-updates", "2", "--out", str(tmp_path / "resumed")])
    train.main([*flags, "--max-updates", "4", "--out", str(tmp_path / "resumed"), "--resume"])
    last = tmp_path / "resumed" / "last"
    assert (last / "adapter_model.safetensors").exists() and not (last / "config.json").exists()
    assert lora.base_of(last) == str(tiny.resolve())
    saved = dcp.FileSystemReader(last / "dcp").read_metadata().state_dict_metadata
    weights = [k for k in saved if k.startswith("model.")]
    assert weights and all("lora_" in k for k in weights)  # the adapters; the base is --model's
    a, _ = models.load_model(str(tmp_path / "straight" / "last"))
    b, _ = models.load_model(str(last))
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    base, _ = models.load_model(str(tiny))
    x = torch.randint(5, 40, (2, 12))
    assert not torch.equal(b(x).logits, base(x).logits)  # the adapter is in
    lora.main([str(last), str(tmp_path / "merged")])
    merged, tok = models.load_model(str(tmp_path / "merged"))
    assert isinstance(merged, toy.ToyMDLM) and torch.equal(merged(x).logits, b(x).logits)
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text()
            .splitlines()[1:]]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_lora_with_fsdp_stops_with_one_line():
    with pytest.raises(SystemExit):
        config.from_args(["--lora-rank", "4", "--fsdp"])
    assert "not supported" in config.check(config.Config(lora_rank=4, fsdp=True))


def test_one_gpu_plan_of_the_readme_fits_in_60_gib():
    """The README's one-GPU MDPO command on LLaDA-8B: LoRA rank 128, the paper preset (micro-batch
    4, activation checkpointing, 16 prompts x G = 8 rollouts), bf16, prompts of 550 tokens."""
    cfg = config.from_args(["--task", "math500", "--train-file", "x.csv", "--model", "m",
                            "--lora-rank", "128", "--precision", "bf16"])
    run = memory.run_of(cfg, 1, 550)
    assert (run.rollouts_per_rank, run.rollout_batch, run.lora_rank) == (128, 64, 128)
    # rank 128 on q, k, v, attn_out (4096 -> 4096), ff_proj, up_proj (4096 -> 12288), ff_out
    # (12288 -> 4096): 128 x (4 x 8,192 + 3 x 16,384) = 10,485,760 per block, 335,544,320 in all
    assert memory.lora_params(memory.LLADA_8B, 128) == 335_544_320
    assert memory.peak_bytes(memory.LLADA_8B, run)["total"] <= 60 * memory.GiB
    full = memory.run_of(config.from_args(["--task", "math500", "--train-file", "x.csv",
                                           "--model", "m", "--precision", "bf16"]), 1, 550)
    assert memory.peak_bytes(memory.LLADA_8B, full)["total"] > 100 * memory.GiB


def test_the_base_is_frozen_in_the_compute_dtype_and_the_adapters_are_fp32(tiny, tmp_path):
    cfg = config.Config(model=str(tiny), out=str(tmp_path), lora_rank=4, precision="bf16",
                        beta=0.05)
    policy, wrapped, reference, _, _ = train.build(cfg, 0, 1, torch.device("cpu"))
    dtypes = {(p.requires_grad, p.dtype) for p in policy.parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}
    assert isinstance(reference, lora.AdapterOff) and wrapped is policy
    b = optimise.MicroBatch([torch.randint(5, 40, (2, 12))], torch.ones(2, 12, dtype=torch.long),
                            torch.randint(5, 40, (2, 6)), torch.ones(2, 6, dtype=torch.bool),
                            torch.ones(2, 1), 6)
    with torch.no_grad():
        assert torch.equal(optimise.policy_logp(policy, b, 0, 1.0),
                           optimise.policy_logp(reference, b, 0, 1.0))  # B = 0 at the start
    assert mdpo.kl_k2(torch.zeros(1), torch.zeros(1)) == 0
