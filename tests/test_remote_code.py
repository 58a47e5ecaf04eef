"""A model that ships its own code (auto_map + modelling file, as LLaDA and Dream do) trained
under 2-process FSDP2, its checkpoint reloaded in a fresh process: FSDP2 renames the model's class,
and the export must still name and carry the model's own code. The model is tests/hf_models.py's,
written by this project."""
import json
import sys

import pytest

import train
from conftest import ROOT, run_bounded
from hf_models import remote_code_model


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_an_fsdp_checkpoint_of_a_remote_code_model_reloads_in_a_fresh_process(tmp_path, capsys):
    """Also: each rank wrote its own shard of the resumable state, and one plain process resumes
    the run from the two shards."""
    model = remote_code_model(tmp_path / "model")
    out = tmp_path / "run"
    flags = [ROOT / "train.py", "--model", model, "--trust-remote-code", "--task", "toy-digits",
             "--prompts-per-update", "2", "--group-size", "2", "--eval-every", "0", "--out", out]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
              "2", *flags, "--fsdp", "--max-updates", "2"]
    done = run_bounded(launch, 120)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = sorted(p.name for p in (out / "last" / "dcp").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own part
    config = json.loads((out / "last" / "config.json").read_text())
    # the model's own class and code, not FSDP2's wrapper class (FSDPTinyRemoteModel) and its file
    assert config["auto_map"]["AutoModel"] == "modeling_tiny_remote.TinyRemoteModel"
    assert config["architectures"] == ["TinyRemoteModel"]
    assert (out / "last" / "modeling_tiny_remote.py").exists()
    assert not list((out / "last").glob("_fsdp*.py"))
    sample = [sys.executable, ROOT / "sample.py", "--model", out / "last", "--trust-remote-code",
              "--task", "toy-digits", "--prompt", "3+5+7+2=?"]
    fresh = run_bounded(sample, 60)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "toy-digits reward" in fresh.stdout
    # one plain process (this one) reads the two ranks' shards and goes on
    train.main([str(f) for f in flags[1:]] + ["--max-updates", "3", "--resume"])
    assert "written by 2 processes, this run has 1" in capsys.readouterr().out
    logged = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()[1:]]
    assert logged == [1, 2, 3] and (out / "last" / "model.safetensors").exists()
