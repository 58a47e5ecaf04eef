"""reproduce.py end to end at a tiny size (the real report takes an hour): every section of RESULTS.md is written,
from the runs' own files, and a rerun trains nothing again.  pytest -q tests/test_reproduce.py"""
import pytest

import reproduce
from reproduce import COLUMNS, difference, mean_std, verdict_line

TINY = dict(n_train=16, seeds=1, updates=8, n_test=8, n_val=8, sweep=(1e-4,), sweep_updates=8, eval_every=8, longer=2,
            sft_updates=2)


def test_mean_std_and_difference_by_hand():
    assert mean_std([10.0, 20.0, 30.0]) == "20.0 ± 10.0"  # sample std: sqrt((100 + 0 + 100) / 2) = 10
    assert mean_std([12.5]) == "12.5"
    d, sa, sb = difference([10.0, 20.0, 30.0], [5.0])
    assert (d, round(sa, 4), sb) == (15.0, 5.7735, None)  # 10 / sqrt(3)


def test_a_claim_is_met_only_when_most_columns_clear_two_standard_errors():
    runs = lambda *acc: [{("lcr", *c): a for c in COLUMNS} for a in acc]  # noqa: E731
    line, met = verdict_line("A > B", runs(49.0, 50.0, 51.0), "lcr", runs(20.0), "lcr", 1000)
    # d = 30; SE = sqrt((1 / sqrt(3))^2 + 20 * 80 / 1000) = sqrt(1/3 + 1.6) = 1.39
    assert met and "+30.0 (±1.4)" in line and "4/4 higher, 4/4 by more than 2 SE" in line
    line, met = verdict_line("A > B", runs(21.0, 22.0, 23.0), "lcr", runs(20.0), "lcr", 1000)
    assert not met and "+2.0 (±1.4)" in line and "4/4 higher, 0/4 by more than 2 SE" in line


def test_tiny_report(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "QUICK", TINY)
    report = tmp_path / "r" / "RESULTS.md"
    argv = ["--quick", "--out", str(tmp_path / "runs"), "--report", str(report), "--jobs", "2"]
    reproduce.main(argv)
    text = report.read_text()
    for section in ("## toy-countdown", "### Table 2 at toy scale", "+ MDPO + RCR, latest", "+ diffu-GRPO (d1), LCR",
                    "### Sample efficiency", "### Over-denoising of the base", "### Pre-filter ablation",
                    "### Learning-rate sweep", "MDPO > diffu-GRPO at equal updates"):
        assert section in text, section
    assert "Wall time" in text and (tmp_path / "runs" / "wall.json").exists()
    assert (report.parent / "toy-countdown-efficiency.png").read_bytes()[:4] == b"\x89PNG"
    assert (report.parent / "toy-countdown-first-correct.png").read_bytes()[:4] == b"\x89PNG"
    logs = sorted((tmp_path / "runs").rglob("log.jsonl"))
    assert len(logs) in (6, 7)  # base, sweep 2, 2 algorithms x 1 seed, longer (+ 1 prefilter run if it kept any)


def test_a_finished_run_is_not_trained_again(tmp_path, monkeypatch):
    run = tmp_path / "run"
    reproduce.train_run(run, ["--algo", "sft", "--task", "toy-arith", "--n-train", "8", "--micro-batch", "4"], 2)
    monkeypatch.setattr(reproduce.train, "main", lambda argv: (_ for _ in ()).throw(AssertionError("trained again")))
    assert reproduce.train_run(run, [], 2) == run / "last"  # cached: train.main is not called
    with pytest.raises(AssertionError, match="trained again"):
        reproduce.train_run(run, [], 3)  # one more update is asked for: it resumes
