"""Paper-scale code paths checked on CPU: FSDP2 gradients stay sharded across micro-batches, bf16
compute where configured, a reference model whose KL is exactly 0 at the start, sharded checkpoints
that reshard on resume. pytest -q tests/test_scale.py"""

import dataclasses
import json
import os

import pytest
import torch
import torch.distributed as dist

import checkpoint
import config
import distributed
import rollouts
import sample
import toy
import train
import optimise
from conftest import spawn_bounded
from test_train import fake_batches, mdpo_backward

CFG = config.Config(
    algo="mdpo", temperature=0.7, inner_steps=1, eps=0.2, beta=0.05, loss_norm="token", fsdp=True
)


def fsdp_worker(rank, world, init_file, out_dir):
    """Both precisions in these 2 processes: each rank's results in OUT/fsdp{rank}.json."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {p: fsdp_run(rank, world, out_dir, p) for p in ("fp32", "bf16")}
    with open(os.path.join(out_dir, f"fsdp{rank}.json"), "w") as f:
        json.dump(results, f)
    distributed.cleanup_distributed()


def fsdp_run(rank, world, out_dir, precision):
    """train.build under FSDP2, mdpo_update's micro-batch loop on 3 micro-batches, an AdamW step, a
    sharded checkpoint and its reload into a fresh model."""
    cfg = dataclasses.replace(CFG, precision=precision, model=str(os.path.join(out_dir, "model")),
                              out=os.path.join(out_dir, precision))
    model, wrapped, ref, tok, mask_id = train.build(cfg, rank, world, torch.device("cpu"))
    batches = fake_batches(3, seed=rank)
    optimise.fix_log_probs(wrapped, ref, batches, cfg, cfg.temperature)
    held = []

    def record(b):  # before each micro-batch: which parameters hold a gradient, and of what size
        held.append([(p.grad is not None, p.grad.to_local().numel() if p.grad is not None else 0,
                      p.numel()) for p in model.parameters()])

    totals = mdpo_backward(wrapped, batches, cfg, before_each=record)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    optimizer.step()
    ck = os.path.join(cfg.out, "ck")
    checkpoint.save(ck, model, tok, optimizer, {"gen": [], "step": 1}, rank, full_weights=False)
    saved = {k: v.full_tensor().clone() for k, v in model.state_dict().items()}
    fresh, fresh_wrapped, _, _, _ = train.build(
        dataclasses.replace(cfg, beta=0.0), rank, world, torch.device("cpu")
    )
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    state = checkpoint.load(ck, fresh, fresh_opt)
    same = all(torch.equal(v.full_tensor(), saved[k]) for k, v in fresh.state_dict().items())
    files = sorted(os.listdir(ck)) + sorted(os.listdir(os.path.join(ck, "dcp")))
    result = {
        "held": held,
        "kl_sum_at_start": totals["kl"],
        "reloaded_equal": same,
        "files": files,
        "step": state["step"],
        "moments": len(fresh_opt.state),
    }
    del model, wrapped, ref, fresh, fresh_wrapped, optimizer, fresh_opt
    return result


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    """Each rank's results of fsdp_run, fp32 and bf16, from one pair of gloo processes."""
    tmp_path = tmp_path_factory.mktemp("fsdp")
    torch.manual_seed(0)
    toy.ToyMDLM(toy.ToyConfig(n_layers=2, d_model=32)).save_pretrained(tmp_path / "model")
    toy.ToyTokenizer().save_pretrained(tmp_path / "model")
    spawn_bounded(fsdp_worker, (2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, timeout=120)
    return [json.loads((tmp_path / f"fsdp{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_fsdp_gradients_are_sharded_after_every_micro_batch_and_kl_starts_at_zero(fsdp_results):
    for result in (r["fp32"] for r in fsdp_results):
        before_first, before_second, before_third = result["held"]
        assert not any(has for has, _, _ in before_first)
        # after one micro-batch every parameter already holds its reduce-scattered shard (half of it
        # on 2 ranks), not a full-size unsharded gradient kept back until the last micro-batch
        for has, local, full in before_second + before_third:
            assert has and local < full
        assert (
            sum(local for _, local, _ in before_second)
            <= sum(full for _, _, full in before_second) / 2 + 64
        )
        assert (
            result["kl_sum_at_start"] == 0.0
        )  # the reference is the start model, sharded and run the same way
        # checkpoint: each rank wrote its shard, nothing was gathered (no consolidated weights), and
        # a fresh sharded model with its optimiser reads back exactly what was saved
        assert "__0_0.distcp" in result["files"] and "__1_0.distcp" in result["files"]
        assert "model.safetensors" not in result["files"] and "trainer_state.pt" in result["files"]
        assert result["reloaded_equal"] and result["step"] == 1 and result["moments"] > 0


@pytest.mark.slow
def test_fsdp_bf16_reference_kl_is_exactly_zero_at_the_start(fsdp_results):
    for result in (r["bf16"] for r in fsdp_results):
        assert result["kl_sum_at_start"] == 0.0


def dtypes_seen(model):
    """Record the output dtype of every Linear while the returned list is alive."""
    seen = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    return seen


def test_bf16_rollouts_and_training_forwards_on_cpu(tmp_path, tok):
    torch.manual_seed(0)
    toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    ex = toy.make_task("toy-countdown", 2, 0, "train")
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        cfg = dataclasses.replace(
            CFG,
            fsdp=False,
            precision=precision,
            model=str(tmp_path / "model"),
            out=str(tmp_path),
            group_size=2,
            gen_length=8,
            block_lengths=(8,),
            steps=4,
        )
        model, wrapped, ref, _, mask_id = train.build(cfg, 0, 1, torch.device("cpu"))
        seen = dtypes_seen(model)
        rollouts.sample_group(
            wrapped, tok, ex, cfg, mask_id, torch.Generator().manual_seed(0), 0, record=True
        )
        assert seen and set(seen) == {
            dtype
        }, f"rollouts ran in {set(seen)} under --precision {precision}"
        seen.clear()
        batches = fake_batches(2)
        optimise.fix_log_probs(wrapped, ref, batches, cfg, cfg.temperature)
        totals = mdpo_backward(wrapped, batches, cfg)
        assert (
            set(seen) == {dtype} and totals["kl"] == 0.0
        )  # KL sum 0 at the start, in either precision
        assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_activation_checkpointing_gives_the_same_gradients(tmp_path):
    torch.manual_seed(0)
    toy.ToyMDLM(toy.ToyConfig(n_layers=2, d_model=32)).save_pretrained(tmp_path / "model")
    toy.ToyTokenizer().save_pretrained(tmp_path / "model")
    grads = []
    for on in (False, True):
        cfg = dataclasses.replace(
            CFG,
            fsdp=False,
            beta=0.0,
            activation_checkpointing=on,
            model=str(tmp_path / "model"),
            out=str(tmp_path),
        )
        model, wrapped, _, _, _ = train.build(cfg, 0, 1, torch.device("cpu"))
        blocks = distributed.blocks(model)
        assert len(blocks) == 2 and all(("checkpoint" in repr(b.forward)) == on for b in blocks)
        batches = fake_batches(2)
        mdpo_backward(wrapped, batches, cfg)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-7)


def test_training_rollouts_use_the_authors_confidence(tok, monkeypatch):
    """The authors order a rollout's reveals by the tempered confidence (DEVIATIONS.md, sample.py
    5): so do we."""
    seen, real = [], sample.generate
    monkeypatch.setattr(sample, "generate", lambda *a, **k: seen.append(k) or real(*a, **k))
    torch.manual_seed(0)
    model = toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32))
    cfg = config.Config(group_size=2, gen_length=8, block_lengths=(4, 8), steps=4, temperature=0.7)
    rollouts.sample_group(
        model,
        tok,
        toy.make_task("toy-countdown", 2, 0, "train"),
        cfg,
        tok.mask_token_id,
        torch.Generator().manual_seed(0),
        0,
        record=False,
    )
    assert [k["confidence"] for k in seen] == ["sampling", "sampling"] and {
        k["block_length"] for k in seen
    } == {4, 8}


def test_best_is_the_exported_model_of_last_as_hard_links(tmp_path):
    """checkpoint.keep_as_best copies nothing: best/'s files are last/'s (the same inodes), without
    the resumable dcp/ state, and a later save of last/ (new files renamed into place) leaves them
    as they were."""
    last = tmp_path / "last"
    (last / "dcp").mkdir(parents=True)
    (last / "dcp" / "shard").write_bytes(b"optimiser state")
    (last / "model.safetensors").write_bytes(b"weights of update 8")
    (last / "config.json").write_text("{}")
    checkpoint.keep_as_best(last, tmp_path / "best")
    best = tmp_path / "best"
    assert sorted(p.name for p in best.iterdir()) == ["config.json", "model.safetensors"]
    assert (best / "model.safetensors").stat().st_ino == (last / "model.safetensors").stat().st_ino
    new = tmp_path / "last.tmp"  # what checkpoint.save does: write anew, then rename into place
    new.mkdir()
    (new / "model.safetensors").write_bytes(b"weights of update 9")
    last.rename(tmp_path / "last.old")
    new.rename(last)
    assert (best / "model.safetensors").read_bytes() == b"weights of update 8"
