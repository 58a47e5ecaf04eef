"""tools/gpu_check.py on the CPU (--tiny): every part runs and reports; its stand-in model has
LLaDA's parameter count by memory.py's formula, and its FLOP count is checked by hand."""
import json

import torch

import memory
from tools import gpu_check


def test_tiny_runs_every_part_and_writes_the_report(tmp_path):
    results = gpu_check.main(["--tiny", "--out", str(tmp_path)])
    assert all(part["status"] == "ok" and part["rows"] for part in results.values())
    sampler = results["a. sampler"]["rows"]
    assert {r["sampler"] for r in sampler} == {"sample.generate", "LLaDA reference"}
    assert all(r["s_per_step"] > 0 and r["attention"] != "none seen" for r in sampler)
    assert {r["checkpointing"] for r in results["b. memory, one MDPO micro-batch"]["rows"]} == {
        False, True}
    text = (tmp_path / "gpu.md").read_text()
    assert all(f"## {name}" in text for name in gpu_check.PARTS)
    assert json.loads((tmp_path / "gpu.json").read_text())["parts"].keys() == gpu_check.PARTS.keys()


def test_the_stand_in_has_llada_s_parameters_and_flops_by_hand():
    s = gpu_check.TINY  # d 64, 2 layers, MLP 128, vocabulary 1024
    model = gpu_check.build(s, "cpu", torch.float32)
    assert sum(p.numel() for p in model.parameters()) == memory.n_params(gpu_check.memory_shape(s))
    # one block per token: 2 x (4 x 64^2 + 3 x 64 x 128) = 2 x 40,960 = 81,920, plus attention
    # 4 x S x d = 4 x 10 x 64 = 2,560; 2 layers x 10 tokens x 84,480 = 1,689,600; the output layer
    # on 3 rows: 2 x 64 x 1024 x 3 = 393,216
    assert gpu_check.forward_flops(s, tokens=10, S=10, head_rows=3) == 1_689_600 + 393_216
