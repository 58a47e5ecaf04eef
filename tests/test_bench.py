"""tools/bench.py smoke test: --quick writes the tables, and greedy outputs equal LLaDA's loop.
pytest -q tests/test_bench.py"""

import re
import sys

import pytest
import torch

from conftest import ROOT, snapshot
from tools import bench


def test_quick_bench_writes_the_table_under_out_not_results(monkeypatch):
    out, before = ROOT / "out" / "bench-quick.md", snapshot(ROOT / "results")
    monkeypatch.setattr(sys, "argv", ["bench.py", "--quick"])
    threads = torch.get_num_threads()
    try:
        bench.main()
    finally:
        torch.set_num_threads(
            threads
        )  # bench.py sets its own; the rest of the suite keeps the default
    text = out.read_text()
    rows = [
        line.split("|")[1:-1]
        for line in text.splitlines()
        if line.startswith(("| greedy,", "| t=0.7,"))
    ]
    assert len(rows) == 20  # (greedy, sampled) x (pure-Diff, semi-AR) x 5 samplers
    for (
        setting,
        sampler,
        tokens_wall,
        tokens_clock,
        speed_up,
        peak,
        ratio,
        share,
        identical,
    ) in rows:
        assert float(tokens_wall) > 0 and float(tokens_clock) > 0 and float(peak) >= 0
        assert re.fullmatch(r"-?\d+\.\d% \(-?\d+\.\d ms\)", share.strip()), share
        expected = (
            "-"
            if "reference" in sampler
            else (
                "n/a (sampled)"
                if "greedy" not in setting
                else "n/a (RCR)" if "rcr" in sampler else "yes"
            )
        )
        assert identical.strip() == expected, (setting, sampler)
    assert "| mdpo |" in text and "| diffu-grpo |" in text  # the phases of one update of each
    assert (
        "| greedy outputs identical to the reference | 6/6 | met |" in text
    )  # ours (lcr), record, full
    assert "| math |" in text and "| countdown |" in text
    assert snapshot(ROOT / "results") == before  # a preview never writes over the results


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message shown when there is no GPU"
)
def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench.py", "--device", "cuda"])
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench.main()
