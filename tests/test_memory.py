"""tools/memory.py: the memory model's items worked out by hand, checked against the tensors
train.py really allocates, and the paper command's prediction. CPU, seconds; the 2-process
measurement (`python tools/memory.py --validate`) runs one variant here, marked slow.
pytest -q tests/test_memory.py"""

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

import config
import distributed
import mdpo
import models
import optimise
import sample
import speedups
import toy
import train
from conftest import spawn_bounded
from hf_models import LLADA_SPECIALS, LLAMA3_CHAT, char_tokenizer
from test_train import fake_batches, mdpo_backward
import memory
from memory import GiB, LLADA_8B, Run, Shape, peak_bytes
from tools import memory as memory_tool

TINY = Shape("toy", vocab=59, d=8, layers=1, heads=2, f=32, max_len=16)


def test_llada_parameter_count_by_hand():
    # block: 4 * 4096^2 + 3 * 4096 * 12288 + 2 * 4096 = 67,108,864 + 150,994,944 + 8,192 =
    # 218,112,000
    assert memory.block_params(LLADA_8B) == 218_112_000
    # root: 2 * 126,464 * 4096 + 4096 = 1,035,993,088 + 4,096 = 1,035,997,184
    assert memory.root_params(LLADA_8B) == 1_035_997_184
    # 32 * 218,112,000 + 1,035,997,184 = 8,015,581,184 (LLaDA paper: 8.02B; 6.98B outside the
    # embeddings)
    assert memory.n_params(LLADA_8B) == 8_015_581_184


def test_sharded_states_by_hand():
    items = peak_bytes(LLADA_8B, Run())["items"]
    # 8,015,581,184 params x 4 B / 8 ranks = 4,007,790,592 B, the "4 GB" shard
    assert items["params"] == items["grads"] == items["ref"] == 4_007_790_592
    # AdamW: m and v, 2 x 4,007,790,592, plus a 4-byte step for each of 32 * 9 + 3 = 291 tensors
    assert items["adam"] == 2 * 4_007_790_592 + 4 * 291
    ddp = peak_bytes(LLADA_8B, Run(fsdp=False))["items"]
    assert ddp["params"] == ddp["grads"] == ddp["buckets"] == 4 * 8_015_581_184 and ddp["root"] == 0
    # FSDP2's prefetch: 3 gathered bf16 blocks, 3 x 2 x 218,112,000 = 1,308,672,000 B; 2
    # reduce-scatters in flight, each a block's bf16 gradient + fp32 reduce-scatter input + fp32
    # output shard: 2 x (6 x 218,112,000 + 4 x 218,112,000 / 8) = 2 x 1,417,728,000 = 2,835,456,000
    # B
    assert items["blocks"] == 1_308_672_000 and items["unit_reduce"] == 2_835_456_000
    # the reference's root unit is resharded after each forward: nothing of it stays gathered
    assert "ref_root" not in items


def test_toy_block_saved_bytes_by_hand():
    # d 8, f 32, 2 heads, fp32 (c = 4): LN inputs 2*4*8 + stats 16 + key mask 4 + LN outputs 2*4*8 +
    # q, k, v 3*4*8 + log-sum-exp 4*2 + attention output 4*8 + fc1 and GELU outputs 2*4*32 =
    # 64+16+4+64+96+8+32+256 = 540
    assert sum(v for _, v in memory.block_saved(TINY, 4)) == 540
    # bf16 (c = 2): all but the fp32 log-sum-exp halve: 64/2 + 16/2 + 4/2 + 64/2 + 96/2 + 8 + 32/2 +
    # 256/2 = 274
    assert sum(v for _, v in memory.block_saved(TINY, 2)) == 274
    # math attention, bf16, S = 5: q, k, v in fp32 12*8 = 96 and fp32 probabilities 4 * 2 heads * 5
    # = 40 replace q, k, v 48, log-sum-exp 8 and key mask 2: 274 - 58 + 136 = 352
    assert sum(v for _, v in memory.block_saved(TINY, 2, "math", S=5)) == 352


def saved_bytes(fn, exclude):
    """Bytes of the distinct storages autograd saves while fn() runs, parameters (exclude) left
    out."""
    skip, seen = {p.untyped_storage().data_ptr() for p in exclude}, {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def padded_block_input(dtype):
    torch.manual_seed(0)
    block = toy.Block(8, 2).to(dtype)
    x = torch.randn(2, 5, 8, dtype=dtype, requires_grad=True)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, :2] = False  # a left-padded row, as in training
    return block, x, mask[:, None, None, :]


def test_toy_block_saved_bytes_match_autograd():
    for dtype, c in ((torch.float32, 4), (torch.bfloat16, 2)):
        block, x, key_mask = padded_block_input(dtype)
        got = saved_bytes(lambda: block(x, key_mask), block.parameters())
        assert got == 2 * 5 * sum(
            v for _, v in memory.block_saved(TINY, c)
        )  # 10 tokens x 540 (fp32) or 274 (bf16)


def test_math_attention_saves_fp32_qkv_and_probabilities():
    """torch's math kernel on bf16 inputs (LLaDA's path when a micro-batch has a padded row): per
    token 12 d bytes of fp32 q, k, v and 4 heads S of fp32 probabilities, read off autograd."""
    block, x, key_mask = padded_block_input(torch.bfloat16)
    with sdpa_kernel(SDPBackend.MATH):
        got = saved_bytes(lambda: block(x, key_mask), block.parameters())
    assert got == 2 * 5 * sum(
        v for _, v in memory.block_saved(TINY, 2, "math", S=5)
    )  # 10 tokens x 352
    # the kernel alone, on LLaDA-like separate bf16 q, k, v (b 2, heads 4, S 10, head dim 8, d 32)
    q, k, v = (torch.randn(2, 4, 10, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    with sdpa_kernel(SDPBackend.MATH):
        got = saved_bytes(
            lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask.repeat(1, 1, 1, 2)),
            (q, k, v),
        )
    # 20 tokens x (12 x 32 + 4 x 4 x 10) = 20 x 544 = 10,880
    shape = Shape("llada", vocab=1, d=32, layers=1, heads=4, f=1)
    assert got == 20 * sum(v for _, v in memory.attention_saved(shape, 2, "math", 10)) == 10_880


def test_training_forward_saves_what_the_model_says():
    """One micro-batch through mdpo_update's loss (its log-probs, then mdpo.mdpo_loss): the blocks,
    the outside parts and the fp32 log-softmax (b, L, V)."""
    torch.manual_seed(0)
    toy_config = toy.ToyConfig(d_model=32, n_layers=2, n_heads=4)
    model = toy.ToyMDLM(toy_config)
    cfg = config.Config(temperature=0.7, inner_steps=1, eps=0.2, beta=0.0, loss_norm="token")
    batch = fake_batches(1, b=3, P=5, L=8)[0]

    def loss():
        logp = optimise.policy_logp(model, batch, 0, cfg.temperature)  # (3, 8)
        return mdpo.mdpo_loss(logp, logp.detach(), None, batch.adv, batch.loss_mask, cfg.eps,
                              cfg.beta, 12)
    got = saved_bytes(loss, model.parameters())
    s, run = memory.toy_shape(toy_config), Run(
        precision="fp32",
        micro_batch=3,
        prompt_len=5,
        gen_length=8,
        checkpointing=False,
        attention="flash",
    )
    modelled = memory.activations(s, run, 3, 13) + 4 * 3 * 8 * toy_config.vocab_size
    assert modelled <= got <= modelled * 1.02  # what is left: (b, L) tensors of the loss itself


def test_monotonic():
    base = peak_bytes(LLADA_8B, Run())
    more_ranks = peak_bytes(LLADA_8B, Run(world=16))
    assert all(
        more_ranks["items"][k] < base["items"][k] for k in ("params", "grads", "adam", "ref")
    )
    off = Run(checkpointing=False)
    assert memory.activations(LLADA_8B, Run(), 4, 832) < memory.activations(LLADA_8B, off, 4, 832)
    train_phase = lambda **kw: peak_bytes(LLADA_8B, Run(**kw))["phases"]["train"]  # noqa: E731
    assert (
        train_phase() < train_phase(checkpointing=False)
        and train_phase(micro_batch=2) < train_phase()
    )
    assert train_phase(attention="flash") < train_phase() < train_phase(prompt_len=600)
    assert (
        train_phase(fp32_gather=True) > train_phase()
        and train_phase(gathered_blocks=2) < train_phase()
    )
    assert peak_bytes(LLADA_8B, Run(reference=False))["phases"]["build"] < base["phases"]["build"]
    assert base["total"] == base["peak"][1] + base["fragmentation"] > base["peak"][1]


def test_old_fsdp_accumulation_costs_the_unsharded_gradients():
    base, old = peak_bytes(LLADA_8B, Run()), peak_bytes(LLADA_8B, Run(unsharded_grads=True))
    # full fp32 gradients 4 N instead of the shard 4 N / 8: + 7/8 x 32,062,324,736 = 28,054,534,144
    # B; the head's bf16 gradient (2 x 126,464 x 4096 = 1,035,993,088 B) no longer waits separately:
    # it is part of them
    assert old["phases"]["train"] - base["phases"]["train"] == 28_054_534_144 - 1_035_993_088
    assert (
        old["phases"]["optimizer"] == base["phases"]["optimizer"]
    )  # sharded again after the last micro-batch


def test_paper_command_fits_under_60_gib_on_the_math_path_at_prompt_550():
    """The paper preset (activation checkpointing on), math attention, prompts of 550 tokens: the
    training phase item by item, by hand, and the peak (loading) with its fragmentation allowance
    under 60 GiB.
    """
    run = Run()
    assert (run.attention, run.prompt_len, run.checkpointing, run.fragmentation) == (
        "math",
        550,
        True,
        0.10,
    )
    out = peak_bytes(LLADA_8B, run)
    i = out["items"]
    # S = 550 + 512 = 1062, b = 4: 4,248 tokens. One block, math, per token: RMSNorms 2 x (4 x 4096
    # + 4 + 2 x 2 x 4096) = 65,544; q, k, v in fp32 12 x 4096 = 49,152; probabilities 4 x 32 x 1062
    # = 135,936; attention output 2 x 4096 = 8,192; SwiGLU 4 x 2 x 12,288 = 98,304: 357,128 in all.
    assert sum(v for _, v in memory.block_saved(LLADA_8B, 2, "math", 1062)) == 357_128
    # checkpointing: 32 block inputs 32 x 2 x 4096 = 262,144, the block being recomputed 357,128,
    # outside the blocks 8 + 4 x 4096 + 4 + 2 x 2 x 4096 = 32,780: 4,248 x 652,052 = 2,769,916,896 B
    # (2.6 GiB)
    assert i["activations"] == 4_248 * 652_052 == 2_769_916_896
    # math backward: the gradients of probabilities and scores, 2 x 4 B x 4 x 32 x 1,127,844 =
    # 1,154,912,256 B
    assert i["attn_backward"] == 1_154_912_256
    # logits: max(2 x 4 x 1062 x 126,464 + 8 x 4 x 512 x 126,464, 12 x 4 x 512 x 126,464)
    #       = max(1,074,438,144 + 2,071,986,176, 3,107,979,264) = 3,146,424,320
    assert i["logits"] == 3_146_424_320
    # persistent: parameters 4,007,790,592 + AdamW 8,015,582,348 + reference 4,007,790,592 + context
    # 2^30
    persistent = 4_007_790_592 + 8_015_582_348 + 4_007_790_592 + 2**30
    # train = persistent + gradient shards + gathered root (2 x 1,035,997,184) + 3 blocks
    # 1,308,672,000 + activations + head gradient 1,035,993,088 + max(logits, 2 reduce-scatters +
    # attention backward), the latter 2,835,456,000 + 1,154,912,256 = 3,990,368,256
    backward = 2_769_916_896 + 1_035_993_088 + max(3_146_424_320, 2_835_456_000 + 1_154_912_256)
    train_phase = persistent + 4_007_790_592 + 2_071_994_368 + 1_308_672_000 + backward
    assert out["phases"]["train"] == train_phase == 32_289_640_556  # 30.1 GiB
    # the peak is loading: the policy in full (4 x 8,015,581,184 B), sharded to 1/8, then the
    # reference in full, + the context: 32,062,324,736 + 4,007,790,592 + 2^30 = 37,143,857,152 B
    # (34.6 GiB)
    assert out["peak"] == ("build", 37_143_857_152)
    # + 10% of its tensor bytes (the context aside): 3,607,011,532 B -> 40,750,868,684 B (38.0 GiB)
    # <= 60 GiB
    assert out["total"] == 40_750_868_684 <= 60 * GiB
    assert peak_bytes(LLADA_8B, replace(run, attention="flash"))["peak"] == out["peak"]


def test_the_audit_figures_and_why_the_preset_checkpoints():
    """Without checkpointing, with the audit's FSDP2 depth (2 gathered blocks, 1 reduce-scatter):
    the flash figure 45.9 GiB and the math figures 58.9 / ~66 / ~72 GiB at prompts of 320 / 450 /
    550 tokens.
    """
    audit = Run(checkpointing=False, gathered_blocks=2, reduces_in_flight=1)
    train_gib = lambda **kw: round(
        peak_bytes(LLADA_8B, replace(audit, **kw))["phases"]["train"] / GiB, 1
    )  # noqa
    assert train_gib(prompt_len=320, attention="flash") == 45.9
    assert [train_gib(prompt_len=P) for P in (320, 450, 550)] == [58.9, 65.9, 71.6]
    # this model's depth (3 blocks, 2 reduce-scatters) at 550 without checkpointing: 72.8 GiB, + 10%
    # = 80.0 GiB: over an 80 GB card, which is why the paper preset checkpoints
    no_ckpt = peak_bytes(LLADA_8B, Run(checkpointing=False))
    assert no_ckpt["peak"][0] == "train" and no_ckpt["total"] > 80e9
    assert peak_bytes(LLADA_8B, Run(fsdp=False))["peak"][1] > 80 * GiB  # DDP does not fit an H100


def test_report_shows_both_kernels_and_writes_the_results_file(tmp_path, capsys):
    memory_tool.main(["--out", str(tmp_path / "memory.md")])
    out = capsys.readouterr().out
    assert out.strip() == (tmp_path / "memory.md").read_text().strip()
    assert "| 550 (the paper preset) | on | 34.6 (build) | 34.6 (build) | 38.0 | yes |" in out
    assert "| 320 | off | 46.3 (train) | 59.7 (train) | 65.5 | yes |" in out
    assert "| 550 | off | 51.7 (train) | 72.8 (train) | 80.0 | NO |" in out
    assert "| **phase: train** | 199.6 | 29.1 | 30.1 |" in out  # DDP math, FSDP2 flash, FSDP2 math
    assert "| allocator fragmentation, +10% (assumed) | 20.9 | 3.4 | 3.4 |" in out
    assert (
        "| 3 gathered blocks (FSDP2 prefetch) |" in out
        and "| 2 blocks' gradient reduce-scatters" in out
    )


def test_cli_flags_change_the_table(tmp_path, capsys):
    memory_tool.main(
        [
            "--micro-batch",
            "2",
            "--no-activation-checkpointing",
            "--no-reference",
            "--prompt-len",
            "320",
            "--out",
            str(tmp_path / "memory.md"),
        ]
    )
    out = capsys.readouterr().out
    assert "micro-batch 2, S = 320 + 512, activation checkpointing off" in out
    assert "| **phase: train** | 182.0 | 32.5 | 39.3 |" in out  # DDP math, FSDP2 flash, FSDP2 math
    assert "| **peak (phase)** | **182.0** (train) | **32.5** (train) | **39.3** (train) |" in out


def test_model_bytes_equal_the_trainers_tensors(tmp_path):
    """train.build (one process), a backward, an AdamW step: parameters, gradients, AdamW state and
    reference are exactly the modelled bytes, and the shape functions count the toy's real
    parameters."""
    torch.manual_seed(0)
    toy_config = toy.ToyConfig(d_model=32, n_layers=2, n_heads=4)
    toy.ToyMDLM(toy_config).save_pretrained(tmp_path / "model")
    toy.ToyTokenizer().save_pretrained(tmp_path / "model")
    cfg = config.Config(
        model=str(tmp_path / "model"),
        out=str(tmp_path),
        algo="mdpo",
        beta=0.05,
        fsdp=False,
        precision="fp32",
        temperature=0.7,
        inner_steps=1,
        eps=0.2,
        loss_norm="token",
    )
    model, wrapped, ref, _, _ = train.build(cfg, 0, 1, torch.device("cpu"))
    batches = fake_batches(2)
    optimise.fix_log_probs(wrapped, ref, batches, cfg, cfg.temperature)
    mdpo_backward(wrapped, batches, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.step()
    s = memory.toy_shape(toy_config)
    items = peak_bytes(s, Run(world=1, fsdp=False, precision="fp32", device="cpu"))["items"]
    nbytes = lambda ts: sum(t.untyped_storage().nbytes() for t in ts)  # noqa: E731
    assert (
        nbytes(model.parameters())
        == items["params"]
        == 4 * sum(p.numel() for p in model.parameters())
    )
    assert nbytes(p.grad for p in model.parameters()) == items["grads"]
    assert nbytes(t for st in optimizer.state.values() for t in st.values()) == items["adam"]
    assert nbytes(ref.parameters()) == items["ref"]
    assert memory.n_tensors(s) == len(list(model.parameters()))
    assert memory.block_params(s) == sum(p.numel() for p in model.blocks[0].parameters())
    assert memory.cast_params(s) == sum(
        p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()
    )


def predict_peak(confidence, n=16, V=32000):
    """Peak bytes sample.predict allocates on fresh logits (n, V) at temperature 0.7 (one thread:
    the profiler sees every free)."""
    logits = torch.randn(n, V)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        sample.predict(logits, 0.7, 1, torch.Generator().manual_seed(0), confidence=confidence)
    live = peak = 0
    for _, nbytes in sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    ):
        live += nbytes
        peak = max(peak, live)
    return peak


def test_predict_bytes_are_what_sample_predict_holds():
    """Bytes sample.predict allocates per logit beyond its input. When the sampler changes this
    changes: set memory.PREDICT_BYTES (and the chunk constants) to the new values."""
    n, V = 16, 32000
    # confidence "model" (LLaDA's): softmax(logits) 4 + q 4 per element, the logits overwritten in
    # place; plus a few KiB per row: the two-level draw's (rows, 256) float64 cumulative sums and
    # int64 indices
    assert (
        memory.PREDICT_BYTES * n * V
        <= predict_peak("model")
        <= memory.PREDICT_BYTES * n * V + 10240 * n
    )
    # confidence "sampling" (the authors', every rollout's): q only
    assert 4 * n * V <= predict_peak("sampling") <= 4 * n * V + 10240 * n
    # LLaDA's step on a GPU: its output layer on the rows it needs (speedups.split_output_layer),
    # one chunk of 2^27 // 126,464 = 1,061 rows at a time, 12 B each: 1,061 x 126,464 x 12 =
    # 1,610,139,648 B
    assert sample.CHUNK_ELEMENTS["cuda"] == 2**27 and speedups.ROWS == memory.MIN_ROWS
    assert memory.sampler_step(LLADA_8B, Run(), 8) == 1_610_139_648
    # a model that runs its output layer on every position (Dream's shifted logits) also holds the
    # forward's logits, (8, 1062, 126,464) bf16 = 2,148,876,288 B
    full = replace(LLADA_8B, row_head=False)
    assert memory.sampler_step(full, Run(), 8) == 2_148_876_288 + 1_610_139_648


def test_peak_follows_the_phase_that_grows():
    small_vocab = replace(LLADA_8B, vocab=1000)
    assert peak_bytes(small_vocab, Run(sampler_bytes=10**6))["peak"][0] == "rollout"
    assert peak_bytes(LLADA_8B, Run(micro_batch=1, fsdp=False))["peak"][0] == "optimizer"
    assert peak_bytes(LLADA_8B, Run(checkpointing=False))["peak"][0] == "train"


@pytest.mark.slow
@pytest.mark.timeout(
    190
)  # ~70 s on 2 idle cores, ~110 s when shared; faulthandler's limit is 200 s
def test_two_gloo_ranks_measure_what_the_model_says(tmp_path, monkeypatch):
    """--validate's fp32 variant: 2 gloo ranks run train.py's FSDP2 code (rollouts, a backward, an
    AdamW step, a checkpoint) on a 4M-parameter toy; every phase's measured peak agrees with the
    model."""
    for key in (
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
    ):  # freed blocks leave the resident set
        monkeypatch.setenv(key, "65536")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    # a 4M-parameter toy (--validate's has 29M): the same phases, in a fraction of the time
    monkeypatch.setattr(memory_tool, "TOY", dict(vocab_size=2048, d_model=256, n_layers=4,
                                                 n_heads=4, max_len=128))
    memory_tool.save_toy(tmp_path)
    spawn_bounded(memory_tool.worker, (2, str(tmp_path), ["fp32"]), nprocs=2, timeout=170)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    peaks = memory_tool.measured_peaks(ranks, ["fp32"])
    assert set(peaks) == {("fp32", ph) for ph in ("rollout", "train", "optimizer", "checkpoint")}
    assert all(memory_tool.agrees(m, x, slack=4 * memory.MiB) for m, x in peaks.values()), peaks


def test_the_paper_preset_fits_under_60_gib_per_gpu_on_8():
    """--preset paper resolves a micro-batch that the model puts under 60 GiB per GPU (fragmentation
    included) for the README's MDPO command: FSDP2 over 8 GPUs, bf16, prompts of 550 tokens."""
    cfg = config.from_args(["--task", "math500", "--train-file", "x.csv", "--model", "m", "--fsdp",
                            "--precision", "bf16"])
    assert cfg.preset == "paper" and cfg.micro_batch == 4 and cfg.activation_checkpointing
    total = peak_bytes(LLADA_8B, memory.run_of(cfg, 8, 550))["total"]
    assert total <= 60 * GiB
    too_big = replace(cfg, micro_batch=64)
    assert peak_bytes(LLADA_8B, memory.run_of(too_big, 8, 550))["total"] > 80e9


def llada_8b_config_only(path):
    """A directory with LLaDA-8B-Instruct's sizes in config.json and a tokenizer, but no weights."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps(dict(
        model_type="llada", d_model=4096, n_layers=32, n_heads=32, mlp_hidden_size=12288,
        vocab_size=126464, embedding_size=126464, mask_token_id=126336)))
    char_tokenizer(126464, LLADA_SPECIALS, "<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>",
                   LLAMA3_CHAT).save_pretrained(path)
    return path


def test_a_run_predicted_not_to_fit_stops_before_the_model_loads(tmp_path, monkeypatch):
    """On a (faked) 80 GB GPU, one process of full fine-tuning of an 8B model cannot fit: train.py
    says so in one line, with the prediction and settings that would fit, before loading anything;
    --skip-memory-check goes on to load."""
    model = llada_8b_config_only(tmp_path / "llada-8b")
    data = tmp_path / "math.jsonl"
    data.write_text('{"problem": "What is 1+1?", "answer": "2"}\n')
    monkeypatch.setattr(distributed, "device_memory", lambda device: 80 * 10**9)

    def load_model(*a, **kw):
        raise RuntimeError("the model was loaded")
    monkeypatch.setattr(models, "load_model", load_model)
    argv = ["--model", str(model), "--task", "math500", "--train-file", str(data), "--precision",
            "bf16", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    message = str(stop.value)
    assert message.startswith("train.py: error: predicted peak ") and "\n" not in message
    assert "GiB per GPU > this GPU's 74.5 GiB" in message
    assert "would fit: --fsdp on 4 GPUs (53.0 GiB)" in message and "--skip-memory-check" in message
    with pytest.raises(RuntimeError, match="the model was loaded"):
        train.main(argv + ["--skip-memory-check"])
