"""GPU memory of train.py, modelled item by item (issue 13), and the model checked on CPU.

    python memory.py                 the README's 8 x H100 MDPO command (LLaDA-8B-Instruct), DDP and FSDP2 columns
    python memory.py --validate      2 gloo ranks run train.py's FSDP2 code on a 29M-parameter toy: measured against
                                     modelled bytes (~4 min on 2 cores)

Items, bytes per GPU (N parameters, W ranks sharing them (1 under DDP), c bytes of the compute dtype, g of a gathered
parameter, b micro-batch rows, S = prompt + L generated tokens, V vocabulary, B rows per sampler forward):
  params, grads, adam  fp32 weights and gradients 4N/W each, AdamW m and v 8N/W (DDP: 4N more in gradient buckets)
  ref                  the frozen reference, fp32, sharded like the policy, 4N/W; its root unit (embeddings, head) is
                       resharded after each of its forwards (distributed.shard reshard_root), so none stays gathered
  root, blocks         the policy's root unit, gathered from its first forward to its backward; 2 blocks: the one
                       computing and the next one's all-gather (forward) or prefetch (backward)
  activations          `block_saved` x layers x b S (checkpointing: each block's input + one block's saved tensors)
  logits               `logits_bytes`: max(c b S V + 8 b L V, 12 b L V), the training forward's log-softmax head
  rollout/eval step    c B S V of a forward's logits + sampler_bytes x B L V held by sample.predict
  load                 train.build loads the policy in full, shards it, then loads the reference: 4N + 4N/W (DDP 8N)
Each phase (build, rollout, train, optimizer, evaluation, checkpoint) sums what it holds (`peak_bytes`); the peak is the
largest phase, not the sum of all items. Assumptions (each a flag):
1. Attention "flash" saves q, k, v, out and the log-sum-exp; "math" materialises fp32 probabilities (b, heads, S, S).
   LLaDA takes the math path on CUDA when a micro-batch has a padded row (flash takes no mask, and LLaDA's code turns
   the memory-efficient kernel off); the peak is the worst micro-batch: with prompts of unequal length, use math.
2. Sampler: 8 bytes per (B, L, V) element (sample.generate's predict_ on fresh float32 logits: the working copy and
   q = softmax); sample.predict on someone else's logits holds 12 (SAMPLER_BYTES_NOW: it copies them first).
3. CUDA context and NCCL buffers: 1 GiB outside torch's allocator; allocator fragmentation is not modelled.
4. LLADA_8B: 32 layers, d 4096, 32 heads, SwiGLU hidden 12288, vocabulary 126464, untied head, no biases: the block
   of modeling_llada.py (autonomousvision/mdpo mirror; the ML-GSAI/LLaDA mirror has no config), the sizes of the model
   card's config.json as public copies quote it: 8,015,581,184 parameters (LLaDA paper: 8.02B, 6.98B non-embedding).
"""
import argparse
import contextlib
import json
import os
import tempfile
import time
from argparse import Namespace
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

GiB, MiB = 2 ** 30, 2 ** 20
SAMPLER_BYTES_NOW = 12  # sample.predict at temperature > 0: fp32 copy 4, softmax(logits) 4, q 4 (see tests)


@dataclass(frozen=True)
class Shape:
    """A pre-norm transformer. kind "llada": RMSNorm, SwiGLU of hidden f, no biases, RoPE, untied head;
    kind "toy" (toy.py): LayerNorm, GELU MLP d -> f -> d, biases, max_len learned positions, untied head."""
    kind: str
    vocab: int
    d: int
    layers: int
    heads: int
    f: int
    max_len: int = 0


LLADA_8B = Shape("llada", vocab=126464, d=4096, layers=32, heads=32, f=12288)


@dataclass(frozen=True)
class Run:
    """What train.py runs, per GPU; defaults: the README command on 8 x H100 (8 rows a sampler forward: --help)."""
    world: int = 8
    fsdp: bool = True
    precision: str = "bf16"
    micro_batch: int = 4
    prompt_len: int = 320
    gen_length: int = 512
    steps: int = 128
    checkpointing: bool = False
    rollout_batch: int = 8
    rollouts_per_rank: int = 16
    eval_batch: int = 8
    reference: bool = True
    attention: str = "flash"
    sampler_bytes: int = 8
    device: str = "cuda"
    unsharded_grads: bool = False  # the old FSDP accumulation: full-size gradients kept until the last micro-batch
    fp32_gather: bool = False      # the old FSDP policy: units gathered in fp32, autocast casts every weight to bf16


def toy_shape(c):  # the Shape of a toy.ToyConfig
    return Shape("toy", c.vocab_size, c.d_model, c.n_layers, c.n_heads, 4 * c.d_model, c.max_len)


def block_params(s):
    """Parameters of one transformer block, one FSDP unit."""
    if s.kind == "llada":
        return 4 * s.d * s.d + 3 * s.d * s.f + 2 * s.d  # q, k, v, attn_out; ff_proj, up_proj, ff_out; 2 RMSNorms
    return 4 * s.d * s.d + 2 * s.d * s.f + 9 * s.d + s.f  # qkv, proj, fc1, fc2 with biases; 2 LayerNorms


def root_params(s):
    """Parameters outside the blocks, FSDP's root unit: embeddings, final norm, output head."""
    if s.kind == "llada":
        return 2 * s.vocab * s.d + s.d  # wte, ff_out (untied), ln_f
    return 2 * s.vocab * s.d + s.vocab + s.max_len * s.d + 2 * s.d  # tok, head and its bias, pos, ln


def n_params(s):
    return s.layers * block_params(s) + root_params(s)


def n_tensors(s):  # parameter tensors: AdamW keeps a step counter for each
    return s.layers * 9 + 3 if s.kind == "llada" else s.layers * 12 + 6


def cast_params(s):
    """Parameters that bf16 autocast copies when it meets them in fp32: every Linear's weight and bias."""
    if s.kind == "llada":
        return s.layers * (4 * s.d * s.d + 3 * s.d * s.f) + s.vocab * s.d
    return s.layers * (4 * s.d * s.d + 2 * s.d * s.f + 5 * s.d + s.f) + s.vocab * s.d + s.vocab


def block_saved(s, c, attention="flash", S=0):
    """Bytes one block saves for its backward, per token: [(what, bytes)]. c: bytes of the compute dtype.
    Read off autograd's saved tensors (tests/test_memory.py checks the toy's with saved_tensors_hooks)."""
    d, f, h = s.d, s.f, s.heads
    attn = ([("q, k, v", 3 * c * d), ("attention log-sum-exp, fp32", 4 * h)] if attention == "flash" else
            [("q, k, v upcast to fp32 (math)", 12 * d), ("attention probabilities, fp32 (math)", 4 * h * S)])
    if s.kind == "toy":  # CPU autocast keeps layer_norm in bf16 (CUDA's runs it in fp32: not modelled)
        norms = [("ln1, ln2 inputs", 2 * c * d), ("ln1, ln2 mean and rstd", 4 * c), ("key mask (b, 1, 1, S)", c),
                 ("ln1, ln2 outputs (qkv, fc1 inputs)", 2 * c * d)]
        mlp = [("fc1 output (GELU input), GELU output (fc2 input)", 2 * c * f)]
    else:  # RMSNorm: x in fp32 (kept by pow and mul), 1/rms, x normalised (c), x times weight (the Linears' input)
        norms = [("attn_norm, ff_norm: x fp32, 1/rms, normalised, output", 2 * (4 * d + 4 + 2 * c * d))]
        mlp = [("ff_proj out, SiLU out, up_proj out, product", 4 * c * f)]
    return norms + attn + [("attention output (output projection input)", c * d)] + mlp


def outside_saved(s, c):
    """Bytes per token saved outside the blocks: token ids (and positions), the final norm, the head's input."""
    if s.kind == "toy":
        return 16 + c * s.d + 2 * c + c * s.d  # ids and positions (int64), ln input, mean and rstd, head input
    return 8 + 4 * s.d + 4 + 2 * c * s.d   # ids; ln_f as a block's RMSNorm


def activations(s, run, b, S):
    """Saved for the backward of one micro-batch, b x S tokens: every block's saved tensors; with checkpointing,
    each block's input (c d per token) and the saved tensors of the one block being recomputed."""
    c = 2 if run.precision == "bf16" else 4
    per_block = sum(v for _, v in block_saved(s, c, run.attention, S))
    held = s.layers * c * s.d + per_block if run.checkpointing else s.layers * per_block
    return b * S * (held + outside_saved(s, c))


def logits_bytes(b, S, L, V, c):
    """The training forward's head (mdpo.token_logp): logits (b, S, V) in the compute dtype + their fp32 copy / T and
    its log-softmax (b, L, V); in the backward the saved log-softmax, its gradient and its input's gradient, fp32."""
    return max(c * b * S * V + 8 * b * L * V, 12 * b * L * V)


def sampler_step(s, run, B):
    """One denoising step's head: the forward's logits (B, S, V), c bytes each, and sampler_bytes per element of
    (B, L, V) held by sample.predict. (The blocks' part of the forward is `nograd_block`.)"""
    c, S = 2 if run.precision == "bf16" else 4, run.prompt_len + run.gen_length
    return c * B * S * s.vocab + run.sampler_bytes * B * run.gen_length * s.vocab


def peak_bytes(s, run=Run()):
    """Bytes per GPU of train.py: {"items": {name: bytes}, "phases": {phase: bytes}, "peak": (phase, bytes)}."""
    N, Nb, Nr, W, fsdp = n_params(s), block_params(s), root_params(s), run.world if run.fsdp else 1, run.fsdp
    c = 2 if run.precision == "bf16" else 4
    g = 4 if run.fp32_gather or c == 4 else 2
    S, L, V, T = run.prompt_len + run.gen_length, run.gen_length, s.vocab, run.steps
    per_block = sum(v for _, v in block_saved(s, c, run.attention, S))
    i = dict(
        params=4 * N // W,
        grads=4 * N // W,
        unsharded=4 * N - 4 * N // W if run.unsharded_grads else 0,  # old: full fp32 gradients to the last micro-batch
        buckets=0 if fsdp else 4 * N,  # DDP's flat gradient buckets (gradient_as_bucket_view=False)
        adam=8 * N // W + 4 * n_tensors(s),
        ref=4 * N // W if run.reference else 0,
        root=g * Nr if fsdp else 0,
        blocks=2 * g * Nb if fsdp else 0,
        casts=2 * cast_params(s) if c == 2 and (run.fp32_gather or not fsdp) else 0,  # autocast keeps them to backward
        activations=activations(s, run, run.micro_batch, S),
        logits=logits_bytes(run.micro_batch, S, L, V, c),
        head_grad=g * V * s.d if fsdp and not run.unsharded_grads else 0,  # waits for the root's reduce-scatter
        unit_reduce=(g + 4) * Nb + 4 * Nb // W if fsdp else 0,  # a unit's gradients + fp32 reduce-scatter in, out
        root_reduce=(g + 4) * Nr + 4 * Nr // W if fsdp else 0,  # the same for the root, at the end of the backward
        # AdamW: CUDA's foreach sqrt(v) of all shards at once; CPU's per-tensor sqrt(v) and quotient, largest tensor
        adam_temp=4 * N // W if run.device == "cuda" else 8 * V * s.d // W,
        nograd_block=run.rollout_batch * S * per_block,  # a block's tensors in a sampler forward (bound: its saved set)
        rollout_step=sampler_step(s, run, run.rollout_batch),
        # sample.generate's record: per step x (B, S) and x_pred, int64, conf and logp, fp32; then stacked;
        # and train.rollouts' x_bar and x_pred (T, N, L), int64
        trajectory=T * run.rollout_batch * (8 * S + 40 * L) + 16 * T * run.rollouts_per_rank * L,
        eval_step=sampler_step(s, run, run.eval_batch),
        # consolidated weights: on a GPU one full fp32 parameter at a time (then on rank 0's host), on a CPU all
        full_weights=4 * N if run.device == "cpu" else 4 * V * s.d,
        load=4 * N + (4 * N // W if fsdp else 4 * N) * run.reference,  # train.build: the policy sharded first
        context=GiB if run.device == "cuda" else 0)  # assumption 3
    persistent = i["params"] + i["buckets"] + i["adam"] + i["ref"] + i["context"]
    sampler = persistent + i["casts"] + i["root"]  # then 2 blocks during the blocks, none during the head
    # backward: at its start everything saved is held; at its end (the root's reduce-scatter) nothing is
    backward = max(i["casts"] + i["activations"] + i["head_grad"] + max(i["logits"], i["unit_reduce"]),
                   i["root_reduce"])
    phases = {"build": i["load"] + i["context"],
              "rollout": sampler + i["trajectory"] + max(i["blocks"] + i["nograd_block"], i["rollout_step"]),
              "train": persistent + i["grads"] + i["unsharded"] + i["root"] + i["blocks"] + backward,
              "optimizer": persistent + i["grads"] + i["adam_temp"],
              "evaluation": sampler + max(i["blocks"] + run.eval_batch * S * per_block, i["eval_step"]),
              "checkpoint": persistent + i["full_weights"]}  # train.release resharded the root after evaluation
    top = max(phases, key=phases.get)
    return {"items": i, "phases": phases, "peak": (top, phases[top])}


LABELS = dict(params="parameters, fp32", grads="gradients, fp32", unsharded="gradients kept unsharded (old FSDP)",
              buckets="DDP gradient buckets", adam="AdamW m, v", ref="reference model, fp32",
              root="policy root unit, gathered",
              blocks="2 gathered blocks", casts="autocast bf16 weight copies", activations="activations, 1 micro-batch",
              logits="logits / log-softmax (b, L, V)", head_grad="head gradient, held in the backward",
              unit_reduce="a block's gradient reduce-scatter", root_reduce="the root's gradient reduce-scatter",
              adam_temp="AdamW step temporaries", nograd_block="a block's tensors, sampler forward",
              rollout_step="sampler step head, rollouts", trajectory="recorded trajectories",
              eval_step="sampler step head, evaluation", full_weights="consolidated-weights gather",
              load="loading: policy in full, then sharded + reference in full", context="CUDA context, NCCL (assumed)")


def markdown_table(s=LLADA_8B, run=Run()):
    """Items and phases in GiB per GPU, DDP and FSDP2 columns, for `run` (default: the README's command)."""
    ddp, fsdp = peak_bytes(s, replace(run, fsdp=False)), peak_bytes(s, replace(run, fsdp=True))
    gib = lambda v: f"{v / GiB:.1f}"  # noqa: E731
    lines = [f"| per GPU, GiB ({run.precision}, micro-batch {run.micro_batch}, S = {run.prompt_len} + "
             f"{run.gen_length}, attention {run.attention}, checkpointing {'on' if run.checkpointing else 'off'}) | "
             f"DDP | FSDP2 over {run.world} |", "|---|---|---|"]
    lines += [f"| {LABELS[k]} | {gib(ddp['items'][k])} | {gib(fsdp['items'][k])} |" for k in LABELS]
    lines += [f"| **phase: {k}** | {gib(ddp['phases'][k])} | {gib(fsdp['phases'][k])} |" for k in fsdp["phases"]]
    return "\n".join(lines + [f"| **peak (phase)** | **{gib(ddp['peak'][1])}** ({ddp['peak'][0]}) | "
                              f"**{gib(fsdp['peak'][1])}** ({fsdp['peak'][0]}) |"])


# ----------------------------------------------------------------------------- validation on CPU (--validate)
TOY = dict(vocab_size=4096, d_model=512, n_layers=8, n_heads=8, max_len=128)
G, T_STEPS, P_TOY = 4, 4, 16  # rollouts per rank (one prompt), denoising steps, prompt tokens ("nums 3 5 7 -> 22")
VARIANTS = {  # bf16 matmuls' backward runs ~20x slower than fp32's on this CPU, so the bf16 variants run few tokens
    "warm-up (the process's first-time costs; not reported)": dict(precision="fp32", gen_length=8, micro_batch=2),
    "fp32": dict(precision="fp32", gen_length=64, micro_batch=4),
    "fp32, grads unsharded (old)": dict(precision="fp32", gen_length=64, micro_batch=4, unsharded_grads=True),
    "fp32, checkpointing": dict(precision="fp32", gen_length=64, micro_batch=4, checkpointing=True),
    "bf16": dict(precision="bf16", gen_length=8, micro_batch=2),
    "bf16, fp32 gather (old)": dict(precision="bf16", gen_length=8, micro_batch=2, fp32_gather=True)}
FIXES = {"gradients sharded after every micro-batch": ("fp32, grads unsharded (old)", "fp32"),  # (without, with)
         "activation checkpointing": ("fp32", "fp32, checkpointing"),
         "bf16 gather": ("bf16, fp32 gather (old)", "bf16")}


def variant_run(name):
    return Run(world=2, prompt_len=P_TOY, steps=T_STEPS, rollout_batch=G, rollouts_per_rank=G, device="cpu",
               sampler_bytes=SAMPLER_BYTES_NOW, **VARIANTS[name])


def to_local(t):
    return t.to_local() if isinstance(t, DTensor) else t


def local_bytes(tensors):
    """Bytes of the storages behind tensors, each storage once (a DTensor's local shard; FSDP pads each shard to
    equal size, and a unit's gradient shards are views of one reduce-scatter output)."""
    return sum({st.data_ptr(): st.nbytes() for st in (to_local(t).untyped_storage() for t in tensors)}.values())


def gathered_bytes(model):  # bytes of the parameters FSDP holds unsharded now (plain tensors, not DTensors)
    return local_bytes(p for p in model.parameters() if not isinstance(p, DTensor))


def vm_bytes(field):
    return 1024 * int(next(x.split()[1] for x in Path("/proc/self/status").read_text().splitlines() if x[:6] == field))


@contextlib.contextmanager
def phase(name, peaks, rss0):
    """peaks[name] = the process's peak resident memory in the block (VmHWM, reset at its start) - rss0."""
    Path("/proc/self/clear_refs").write_text("5")
    yield
    peaks[name] = vm_bytes("VmHWM:") - rss0


def build(run, args, rank, world):
    """train.build, AdamW, and what exists after a first update: AdamW's m and v, a reference forward (whose
    root unit stays gathered). fp32_gather: the old FSDP2 policy, units gathered in fp32 (no param_dtype)."""
    import distributed
    import train
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    model, _, ref, tok, mask_id = train.build(Namespace(**{**vars(args), "fsdp": not run.fp32_gather}), rank,
                                              1 if run.fp32_gather else world, torch.device("cpu"))
    for m in (model, ref) if run.fp32_gather else ():
        for unit in distributed.blocks(m) + [m]:
            fully_shard(unit, mp_policy=MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    got = dict(params=local_bytes(model.parameters()), ref=local_bytes(ref.parameters()),
               adam=local_bytes(t for st in optimizer.state.values() for t in st.values()))
    with torch.no_grad():
        ref(torch.full((1, 8), mask_id), attention_mask=torch.ones(1, 8, dtype=torch.long))
    return model, ref, tok, mask_id, optimizer, got


def micro_batches(ids, attn, x_bar, x_pred, mask_id, b, gen):
    """train.mdpo_micro_batches without rewards: 2 micro-batches of b (rollout, early step) rows, random advantages."""
    T, N, L = x_bar.shape
    n_idx, s_idx, adv = torch.arange(2 * b) % N, torch.arange(2 * b) // N % T, torch.randn(2 * b, 1, generator=gen)
    return [dict(x=torch.cat([ids[n], x_bar[s, n]], 1), attn=attn[n], targets=x_pred[s, n], P=ids.shape[1],
                 mask=x_bar[s, n] == mask_id, adv=adv[k]) for n, s, k in
            zip(n_idx.split(b), s_idx.split(b), torch.arange(2 * b).split(b))]


def run_variant(name, rank, world, tmp):
    """One variant on this rank through train.py's functions; the rollout, train, optimizer (and checkpoint)
    phases' peaks, the items read off the tensors, and the autograd-saved bytes of the first micro-batch."""
    import checkpoint
    import toy
    import train
    run, peaks, t0 = variant_run(name), {}, time.time()
    args = Namespace(model=f"{tmp}/model", out=f"{tmp}/out", algo="mdpo", beta=0.05, trust_remote_code=False,
                     mask_id=None, fsdp=True, precision=run.precision, activation_checkpointing=run.checkpointing,
                     seed=0, task="toy-countdown", group_size=G, steps=T_STEPS, gen_length=run.gen_length,
                     block_lengths=[run.gen_length], remasking="lcr", temperature=0.7, inner_steps=1, eps=0.2,
                     loss_norm="token")
    example = [ex for ex in toy.make_task("toy-countdown", 200, 0) if len(ex["prompt"]) == P_TOY][rank]
    rss0 = vm_bytes("VmRSS:")
    model, ref, tok, mask_id, optimizer, got = build(run, args, rank, world)
    gen = torch.Generator().manual_seed(rank)
    with phase("rollout", peaks, rss0):
        ids, attn, _, x_bar, x_pred = train.rollouts(model.eval(), tok, [example], args, mask_id, 0, gen)
    got["policy root gathered after rollout"] = gathered_bytes(model.train())
    items = micro_batches(ids, attn, x_bar, x_pred, mask_id, run.micro_batch, gen)
    norm, saved, calls = (len(items), sum(it["mask"].sum().item() for it in items), G), {}, []

    def pack(t):  # a saved tensor that is no parameter's storage (sharded or gathered)
        if t.untyped_storage().data_ptr() not in {to_local(p).untyped_storage().data_ptr() for p in model.parameters()}:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def loss_of(it):
        calls.append(it)
        if run.unsharded_grads:  # the old accumulation: reduce-scatter only after the last micro-batch
            model.set_requires_gradient_sync(len(calls) == len(items))
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with hooks if len(calls) == 1 else contextlib.nullcontext():
            return train.rl_loss_fn(model, it, args, 0, norm)

    with phase("train", peaks, rss0):
        train.fixed_log_probs(model, ref, items, args)
        train.backward_micro_batches(model, items, loss_of, args, world)
    got.update({"gradient shards after train": local_bytes(p.grad for p in model.parameters()),
                "saved tensors, micro-batch 1": sum(saved.values()), "reference root gathered": gathered_bytes(ref)})
    with phase("optimizer", peaks, rss0):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if name in list(VARIANTS)[:2]:
        with phase("checkpoint", peaks, rss0):
            checkpoint.save(Path(tmp) / "ck", model, tok, optimizer, {"step": 1}, rank, full_weights=True)
    return dict(peaks=peaks, items=got, seconds=time.time() - t0)


def worker(rank, world, tmp, names):
    import distributed
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    results = {name: run_variant(name, rank, world, tmp) for name in [next(iter(VARIANTS))] + list(names)}
    Path(f"{tmp}/rank{rank}.json").write_text(json.dumps(results))
    distributed.cleanup_distributed()


def modelled_items(s, run):
    """The model's value of each item run_variant reads off the tensors, bytes on one rank."""
    i = peak_bytes(s, run)["items"]
    saved = i["activations"] + 4 * run.micro_batch * run.gen_length * s.vocab + i["casts"]  # + the log-softmax
    return {"params": i["params"], "ref": i["ref"], "adam": i["adam"], "policy root gathered after rollout": i["root"],
            "gradient shards after train": i["grads"], "reference root gathered": 0,  # resharded after its forward
            "saved tensors, micro-batch 1": None if run.checkpointing else saved}


def validate(names=tuple(VARIANTS)[1:], tolerance=0.10, slack=8 * MiB):
    """Spawn 2 gloo ranks running the variants; print measured against modelled bytes as markdown tables. glibc
    serves big blocks from mmap and unmaps them when freed, so resident memory follows the live bytes."""
    import toy
    t0, config = time.time(), toy.ToyConfig(**TOY)
    os.environ.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536", MALLOC_ARENA_MAX="2")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        toy.ToyMDLM(config).save_pretrained(f"{tmp}/model")
        toy.ToyTokenizer().save_pretrained(f"{tmp}/model")
        torch.multiprocessing.spawn(worker, args=(2, tmp, list(names)), nprocs=2, join=True)
        ranks = [json.loads(Path(f"{tmp}/rank{r}.json").read_text()) for r in range(2)]
    s, mib = toy_shape(config), lambda v: f"{v / MiB:.1f}"  # noqa: E731
    agree = lambda m, x: "yes" if abs(m - x) <= max(tolerance * x, slack) else "no"  # noqa: E731
    print(f"Toy {TOY}: {n_params(s) / 1e6:.1f}M parameters, FSDP2 over 2 gloo ranks, {G} rollouts of {T_STEPS} "
          f"steps, prompt {P_TOY}. Measured: peak resident memory (VmHWM, reset per phase) over the RSS before the "
          f"build, max over ranks. Agreement: within {tolerance:.0%} or {slack // MiB} MiB.\n")
    peaks, lines = {}, ["| variant | phase | modelled MiB | measured MiB | diff | agrees |", "|---" * 6 + "|"]
    for name in names:
        modelled = peak_bytes(s, variant_run(name))["phases"]
        for ph in ranks[0][name]["peaks"]:
            peaks[name, ph] = m, x = modelled[ph], max(r[name]["peaks"][ph] for r in ranks)
            lines.append(f"| {name} | {ph} | {mib(m)} | {mib(x)} | {(m - x) / x:+.1%} | {agree(m, x)} |")
    lines += ["", "| variant | item (tensor bytes) | modelled MiB | measured MiB | agrees |", "|---" * 5 + "|"]
    for name in names:
        for item, m in modelled_items(s, variant_run(name)).items():
            x = max(r[name]["items"][item] for r in ranks)
            lines += [f"| {name} | {item} | {mib(m)} | {mib(x)} | {agree(m, x)} |"] if m is not None else []
    lines += ["", "| fix | phase | modelled saving MiB | measured saving MiB |", "|---|---|---|---|"]
    for fix, (old, new) in FIXES.items():
        for ph in ("rollout", "train") if (new, "train") in peaks else ():
            m, x = (peaks[old, ph][k] - peaks[new, ph][k] for k in (0, 1))
            lines.append(f"| {fix} | {ph} | {mib(m)} | {mib(x)} |")
    print("\n".join(lines) + f"\n\n{time.time() - t0:.0f} s in all; per variant (rank 0): " +
          ", ".join(f"{n} {ranks[0][n]['seconds']:.0f} s" for n in names))


def main(argv=None):
    d = Run()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, text in [("world", "GPUs sharing the model under FSDP2"), ("micro_batch", "train.py --micro-batch"),
                       ("prompt_len", "longest prompt, tokens (paper's setup: 256-320)"),
                       ("gen_length", "train.py --gen-length"), ("steps", "train.py --steps"),
                       ("rollout_batch", "rows per sampler forward: G x prompts per rank / block sizes (8 x 2 / 2)"),
                       ("eval_batch", "train.py --eval-batch-size")]:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name), help=f"{text} (%(default)s)")
    p.add_argument("--precision", default=d.precision, choices=["bf16", "fp32"], help="train.py --precision (bf16)")
    p.add_argument("--activation-checkpointing", dest="checkpointing", action="store_true",
                   help="train.py --activation-checkpointing")
    p.add_argument("--no-reference", dest="reference", action="store_false", help="beta = 0: no reference model")
    p.add_argument("--attention", default=d.attention, choices=["flash", "math"], help="flash: no score matrix; math: "
                   "fp32 probabilities (b, heads, S, S), LLaDA's path on CUDA when a micro-batch has padded rows")
    p.add_argument("--sampler-bytes", type=int, default=d.sampler_bytes, help="bytes sample.predict holds per (B, L, "
                   f"V) element (generate: 8; predict on a copy: {SAMPLER_BYTES_NOW})")
    p.add_argument("--unsharded-grads", action="store_true", help="the old FSDP accumulation (full-size gradients)")
    p.add_argument("--fp32-gather", action="store_true", help="the old FSDP policy (units gathered in fp32)")
    p.add_argument("--validate", action="store_true", help="measure the toy on 2 CPU ranks against the model (~3 min)")
    a = vars(p.parse_args(argv))
    if a.pop("validate"):
        return validate()
    run = Run(**a)
    print(f"LLaDA-8B-Instruct, {n_params(LLADA_8B):,} parameters, train.py per GPU:\n\n{markdown_table(LLADA_8B, run)}")


if __name__ == "__main__":
    main()
