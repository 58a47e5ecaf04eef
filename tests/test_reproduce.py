"""tools/reproduce.py end to end at a tiny size (the real report takes over an hour): every section
of RESULTS.md is written from the runs' own files, and a rerun trains nothing again; the report's
arithmetic by hand.  pytest -q tests/test_reproduce.py"""

import pytest

from conftest import ROOT, snapshot
from tools import report, reproduce

TINY = dict(
    seeds=1,
    steps=4,
    eval_every=4,
    n_val=4,
    n_test=4,
    sweep=(1e-4,),
    sweep_steps=4,
    longer=2,
    sft_updates=2,
    train_flags=(
        "--n-train",
        "16",
        "--prompts-per-update",
        "2",
        "--group-size",
        "2",
        "--micro-batch",
        "16",
        "--eval-batch-size",
        "8",
    ),
)


def test_mean_std_difference_and_final_by_hand():
    assert (
        report.mean_std([10.0, 20.0, 30.0]) == "20.0 ± 10.0"
    )  # sample std: sqrt((100 + 0 + 100) / 2) = 10
    assert report.mean_std([12.5]) == "12.5"
    d, se = report.difference([10.0, 20.0, 30.0], [5.0], 100)
    # d = 20 - 5; SE = sqrt((10 / sqrt(3))^2 + 5 * 95 / 100) = sqrt(33.333 + 4.75) = 6.171
    assert d == 15.0 and round(se, 3) == 6.171
    assert (
        report.final([(8, 40.0), (16, 50.0), (24, 60.0)]) == 55.0
    )  # the mean of the last two scores


def test_the_criterion_needs_ten_points_and_three_standard_errors_in_every_seed(tmp_path):
    def log(path, accuracies):
        path.write_text(
            '{"config": {}}\n'
            + "".join(
                f'{{"step": {i + 1}, "eval_accuracy": {a}}}\n' for i, a in enumerate(accuracies)
            )
        )
        return path

    res = {
        "cfg": {"n_val": 300, "seeds": 2},
        "mu": {"mdpo": 1, "diffu-grpo": 8},
        "base_val": [{"greedy_B10": 40.0}, {"greedy_B10": 45.0}],
        "logs": {
            ("mdpo", 0): log(tmp_path / "a", [0.5, 0.56, 0.58]),  # after 57.0: +17.0
            ("mdpo", 1): log(tmp_path / "b", [0.5, 0.6, 0.6]),  # after 60.0: +15.0
            ("diffu-grpo", 0): log(tmp_path / "c", [0.5, 0.56]),  # after 53.0: +13.0
            ("diffu-grpo", 1): log(tmp_path / "d", [0.5, 0.56]),
        },
    }  # after 53.0: +8.0 < 10
    met, lines = report.criterion(res)
    # seed 0 MDPO: SE = sqrt(40 * 60 / 300 + 57 * 43 / 300) = sqrt(8 + 8.17) = 4.02; 17 > 12.06
    assert "| MDPO | 0 | 40.0 | 57.0 | +17.0 | 4.0 | yes |" in lines
    assert "| diffu-GRPO (d1) | 1 | 45.0 | 53.0 | +8.0 | 4.1 | no |" in lines and not met
    res["logs"]["diffu-grpo", 1] = log(
        tmp_path / "d", [0.5, 0.66]
    )  # after 58.0: +13.0 > 3 x 4.05 = 12.2
    assert report.criterion(res)[0]


@pytest.mark.slow
def test_tiny_report(tmp_path, monkeypatch):
    """--quick at a tiny size: its report and figures go with its runs, never over results/, and
    open with what a preview can and cannot show."""
    monkeypatch.setattr(reproduce, "QUICK", TINY)
    before = snapshot(ROOT / "results")
    reproduce.main(["--quick", "--out", str(tmp_path / "runs"), "--jobs", "2"])
    assert snapshot(ROOT / "results") == before
    path = tmp_path / "runs" / "RESULTS-quick.md"
    text = path.read_text()
    assert "**This is a preview: it checks that the whole pipeline runs" in text.split("##")[0]
    for section in (
        "## Pre-registered criterion",
        "**Result: ",
        "## Table 2 at toy scale",
        "+ MDPO + RCR, latest",
        "+ diffu-GRPO (d1), LCR",
        "+ CJ-GRPO, LCR",
        "+ IGPO, LCR",
        "## Sample efficiency on three axes",
        "reaches diffu-GRPO (d1)'s final",
        "At equal rollouts:",
        "## Learning curves",
        "## IGPO: groups with no correct rollout",
        "## Over-denoising of the base",
        "## Pre-filter ablation",
        "## EOSER and ASS",
        "ASS + EOSER",
        "## Learning-rate sweep",
        "MDPO > diffu-GRPO at equal optimiser steps",
    ):
        assert section in text, section
    for png in (
        "curves-eval-accuracy.png",
        "curves-eval-accuracy-rollouts.png",
        "curves-reward.png",
        "curves-kl.png",
        "all-wrong-groups.png",
        "first-correct.png",
    ):
        assert (path.parent / png).read_bytes()[:4] == b"\x89PNG", png
    assert "Wall time" in text and (tmp_path / "runs" / "wall.json").exists()


@pytest.mark.slow
def test_a_finished_run_is_not_trained_again(tmp_path, monkeypatch):
    run = tmp_path / "run"
    reproduce.train_run(
        run, ["--algo", "sft", "--task", "toy-arith", "--n-train", "8", "--micro-batch", "4"], 2
    )
    monkeypatch.setattr(
        reproduce.train, "main", lambda argv: (_ for _ in ()).throw(AssertionError("trained again"))
    )
    assert reproduce.train_run(run, [], 2) == run / "last"  # cached: train.main is not called
    with pytest.raises(AssertionError, match="trained again"):
        reproduce.train_run(run, [], 3)  # one more update is asked for: it resumes
