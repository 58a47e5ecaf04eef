"""memory.py: the memory model's items worked out by hand, checked against the tensors train.py really allocates,
and the README command's prediction. CPU, seconds (the 2-process measurement is `python memory.py --validate`).
pytest -q tests/test_memory.py"""
from argparse import Namespace
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

import memory
import sample
import toy
import train
from memory import GiB, LLADA_8B, Run, Shape, peak_bytes
from test_train import fake_items

TINY = Shape("toy", vocab=59, d=8, layers=1, heads=2, f=32, max_len=16)


def test_llada_parameter_count_by_hand():
    # block: 4 * 4096^2 + 3 * 4096 * 12288 + 2 * 4096 = 67,108,864 + 150,994,944 + 8,192 = 218,112,000
    assert memory.block_params(LLADA_8B) == 218_112_000
    # root: 2 * 126,464 * 4096 + 4096 = 1,035,993,088 + 4,096 = 1,035,997,184
    assert memory.root_params(LLADA_8B) == 1_035_997_184
    # 32 * 218,112,000 + 1,035,997,184 = 8,015,581,184 (LLaDA paper: 8.02B; 6.98B outside the embeddings)
    assert memory.n_params(LLADA_8B) == 8_015_581_184


def test_sharded_states_by_hand():
    items = peak_bytes(LLADA_8B, Run())["items"]
    # 8,015,581,184 params x 4 B / 8 ranks = 4,007,790,592 B, the "4 GB" shard
    assert items["params"] == items["grads"] == items["ref"] == 4_007_790_592
    # AdamW: m and v, 2 x 4,007,790,592, plus a 4-byte step for each of 32 * 9 + 3 = 291 tensors
    assert items["adam"] == 2 * 4_007_790_592 + 4 * 291
    ddp = peak_bytes(LLADA_8B, Run(fsdp=False))["items"]
    assert ddp["params"] == ddp["grads"] == ddp["buckets"] == 4 * 8_015_581_184 and ddp["root"] == 0
    # the reference's root unit is resharded after each forward: nothing of it stays gathered
    assert "ref_root" not in items


def test_toy_block_saved_bytes_by_hand():
    # d 8, f 32, 2 heads, fp32 (c = 4): LN inputs 2*4*8 + stats 16 + key mask 4 + LN outputs 2*4*8 + q, k, v 3*4*8
    # + log-sum-exp 4*2 + attention output 4*8 + fc1 and GELU outputs 2*4*32 = 64+16+4+64+96+8+32+256 = 540
    assert sum(v for _, v in memory.block_saved(TINY, 4)) == 540
    # bf16 (c = 2): all but the fp32 log-sum-exp halve: 64/2 + 16/2 + 4/2 + 64/2 + 96/2 + 8 + 32/2 + 256/2 = 274
    assert sum(v for _, v in memory.block_saved(TINY, 2)) == 274
    # math attention: q, k, v in fp32 (12*8) and fp32 probabilities 4 * heads * S per token replace 3*4*8 + 4*2
    assert sum(v for _, v in memory.block_saved(TINY, 4, "math", S=10)) == 540 - 104 + 96 + 80


def saved_bytes(fn, exclude):
    """Bytes of the distinct storages autograd saves while fn() runs, parameters (exclude) left out."""
    skip, seen = {p.untyped_storage().data_ptr() for p in exclude}, {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_toy_block_saved_bytes_match_autograd():
    for dtype, c in ((torch.float32, 4), (torch.bfloat16, 2)):
        torch.manual_seed(0)
        block = toy.Block(8, 2).to(dtype)
        x = torch.randn(2, 5, 8, dtype=dtype, requires_grad=True)
        mask = torch.ones(2, 5, dtype=torch.bool)
        mask[0, :2] = False  # a left-padded row, as in training
        got = saved_bytes(lambda: block(x, mask[:, None, None, :]), block.parameters())
        assert got == 2 * 5 * sum(v for _, v in memory.block_saved(TINY, c))  # 10 tokens x 540 (fp32) or 274 (bf16)


def test_training_forward_saves_what_the_model_says(tmp_path):
    """One micro-batch through train.rl_loss_fn: the blocks, the outside parts and the fp32 log-softmax (b, L, V)."""
    torch.manual_seed(0)
    config = toy.ToyConfig(d_model=32, n_layers=2, n_heads=4)
    model = toy.ToyMDLM(config)
    args = Namespace(algo="mdpo", temperature=0.7, inner_steps=1, eps=0.2, beta=0.0, loss_norm="token")
    it = fake_items(1, b=3, P=5, L=8)[0]
    got = saved_bytes(lambda: train.rl_loss_fn(model, it, args, 0, (1, 12, 3)), model.parameters())
    s, run = memory.toy_shape(config), Run(precision="fp32", micro_batch=3, prompt_len=5, gen_length=8)
    modelled = memory.activations(s, run, 3, 13) + 4 * 3 * 8 * config.vocab_size
    assert modelled <= got <= modelled * 1.02  # what is left: (b, L) tensors of the loss itself


def test_monotonic():
    base = peak_bytes(LLADA_8B, Run())
    more_ranks = peak_bytes(LLADA_8B, Run(world=16))
    assert all(more_ranks["items"][k] < base["items"][k] for k in ("params", "grads", "adam", "ref"))
    assert memory.activations(LLADA_8B, Run(checkpointing=True), 4, 832) < memory.activations(LLADA_8B, Run(), 4, 832)
    train = lambda **kw: peak_bytes(LLADA_8B, Run(**kw))["phases"]["train"]  # noqa: E731
    assert train(checkpointing=True) < train() and train(micro_batch=2) < train()
    assert train(attention="math") > train() and train(fp32_gather=True) > train()
    assert peak_bytes(LLADA_8B, Run(reference=False))["phases"]["build"] < base["phases"]["build"]


def test_old_fsdp_accumulation_costs_the_unsharded_gradients():
    base, old = peak_bytes(LLADA_8B, Run()), peak_bytes(LLADA_8B, Run(unsharded_grads=True))
    # full fp32 gradients 4 N instead of the shard 4 N / 8: + 7/8 x 32,062,324,736 = 28,054,534,144 B; the head's
    # bf16 gradient (2 x 126,464 x 4096 = 1,035,993,088 B) no longer waits separately: it is part of them
    assert old["phases"]["train"] - base["phases"]["train"] == 28_054_534_144 - 1_035_993_088
    assert old["phases"]["optimizer"] == base["phases"]["optimizer"]  # sharded again after the last micro-batch


def test_readme_command_fits_under_70_gib():
    out = peak_bytes(LLADA_8B, Run())
    assert out["peak"] == ("train", max(out["phases"].values())) and out["peak"][1] < sum(out["phases"].values())
    # loading: the policy in full (4 x 8,015,581,184 B), sharded to 1/8, then the reference in full: 33.6 GiB + 1 GiB
    assert out["phases"]["build"] == 4 * 8_015_581_184 + 4 * 8_015_581_184 // 8 + GiB
    assert out["peak"][1] <= 70 * GiB and out["phases"]["train"] <= 46 * GiB  # 45.9 GiB
    assert peak_bytes(LLADA_8B, Run(attention="math"))["peak"][1] <= 70 * GiB  # train 58.9 GiB: padded micro-batches
    assert peak_bytes(LLADA_8B, Run(fsdp=False))["peak"][1] > 80 * GiB  # DDP does not fit an H100
    assert "| **peak (phase)** | **216.6** (train) | **45.9** (train) |" in memory.markdown_table()


def test_cli_flags_change_the_table(capsys):
    memory.main(["--micro-batch", "2", "--activation-checkpointing", "--no-reference"])
    out = capsys.readouterr().out
    assert "micro-batch 2" in out and "checkpointing on" in out
    assert "| **phase: train** | 166.5 | 24.9 |" in out  # README command: 216.6 | 47.8
    assert "| **peak (phase)** | **180.2** (optimizer) | **30.9** (build) |" in out  # no reference: half the load


def test_model_bytes_equal_the_trainers_tensors(tmp_path):
    """train.build (one process), a backward, an AdamW step: parameters, gradients, AdamW state and reference are
    exactly the modelled bytes, and the shape functions count the toy's real parameters."""
    torch.manual_seed(0)
    config = toy.ToyConfig(d_model=32, n_layers=2, n_heads=4)
    toy.ToyMDLM(config).save_pretrained(tmp_path / "model")
    toy.ToyTokenizer().save_pretrained(tmp_path / "model")
    args = Namespace(model=str(tmp_path / "model"), out=str(tmp_path), algo="mdpo", beta=0.05, trust_remote_code=False,
                     mask_id=None, activation_checkpointing=False, fsdp=False, precision="fp32", temperature=0.7,
                     inner_steps=1, eps=0.2, loss_norm="token")
    model, wrapped, ref, _, _ = train.build(args, 0, 1, torch.device("cpu"))
    items = fake_items(2)
    train.fixed_log_probs(wrapped, ref, items, args)
    train.backward_micro_batches(wrapped, items, lambda it: train.rl_loss_fn(wrapped, it, args, 0, (2, 24, 6)), args, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.step()
    s = memory.toy_shape(config)
    items = peak_bytes(s, Run(world=1, fsdp=False, precision="fp32", device="cpu"))["items"]
    nbytes = lambda ts: sum(t.untyped_storage().nbytes() for t in ts)  # noqa: E731
    assert nbytes(model.parameters()) == items["params"] == 4 * sum(p.numel() for p in model.parameters())
    assert nbytes(p.grad for p in model.parameters()) == items["grads"]
    assert nbytes(t for st in optimizer.state.values() for t in st.values()) == items["adam"]
    assert nbytes(ref.parameters()) == items["ref"]
    assert memory.n_tensors(s) == len(list(model.parameters()))
    assert memory.block_params(s) == sum(p.numel() for p in model.blocks[0].parameters())
    assert memory.cast_params(s) == sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
                                        for p in m.parameters())


def test_sampler_bytes_now_is_what_sample_predict_holds():
    """Peak bytes sample.predict allocates per logit element (one thread: the profiler sees every free). When the
    sampler changes this changes: set memory.SAMPLER_BYTES_NOW to the new value, which --validate assumes."""
    B, L, V = 2, 8, 32000
    logits = torch.randn(B, L, V)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        sample.predict(logits, 0.7, 1, torch.Generator().manual_seed(0))
    live = peak = 0
    for _, n in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                       if e.name() == "[memory]"):
        live += n
        peak = max(peak, live)
    # fp32 copy 4 + softmax(logits) 4 + q 4 per element, and a few KiB per row: the two-level draw's (rows, 256)
    # float64 cumulative sums and int64 indices (8.2 KiB here), whatever V is
    assert memory.SAMPLER_BYTES_NOW * B * L * V <= peak <= memory.SAMPLER_BYTES_NOW * B * L * V + 10240 * B * L


def test_peak_follows_the_phase_that_grows():
    small_vocab = replace(LLADA_8B, vocab=1000)
    assert peak_bytes(small_vocab, Run(sampler_bytes=10 ** 6))["peak"][0] == "rollout"
    assert peak_bytes(LLADA_8B, Run(micro_batch=1, checkpointing=True, fsdp=False))["peak"][0] == "optimizer"
