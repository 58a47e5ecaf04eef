"""GPU memory of train.py per GPU, modelled tensor by tensor, and the model checked on CPU.

    python tools/memory.py              the paper command on 8 x H100, LLaDA-8B-Instruct:
                                        both attention kernels, prompts of 320, 450, 550
                                        tokens (-> results/memory.md)
    python tools/memory.py --validate   2 gloo ranks run train.py's FSDP2 code on a
                                        29M-parameter toy: measured peaks against the model
                                        (~4 min on 2 cores)

Each phase of train.py (build, rollout, train, optimizer, evaluation, checkpoint) sums the tensors
it holds (`peak_bytes`); the peak is the largest phase. Assumptions (each a field of `Run`):
1. attention: "flash", a fused kernel, saves q, k, v, its output and the log-sum-exp. "math",
   torch's math kernel, upcasts bf16 q, k, v to fp32 and saves them with the fp32 probabilities (b,
   heads, S, S) of every layer. LLaDA's model turns torch's memory-efficient kernel off and flash
   takes no mask: a micro-batch with a left-padded row (prompts of unequal length) takes the math
   path. Plan for math.
2. prompt_len: the longest prompt of a micro-batch, 550 tokens (the paper's training CSV goes up to
   ~550); S = prompt + 512 generated tokens.
3. FSDP2 on CUDA overlaps communication with compute: 3 gathered blocks and 2 blocks' gradient
   reduce-scatters in flight at once (--validate's gloo ranks on CPU, which do not overlap: 2 and
   1).
4. Allocator fragmentation: +10% of the peak's tensor bytes, its own line (5-15% is typical); CUDA
   context and NCCL buffers: 1 GiB outside torch's allocator.
5. Sampler: LLaDA declares no output layer to sample.py, so a step holds the forward's logits (B, S,
   V) in bf16; sample.py predicts a chunk of <= 2^22 of them at a time, 12 bytes each (float32,
   softmax, q).
6. LLADA_8B: 32 layers, d 4096, 32 heads, SwiGLU hidden 12288, vocabulary 126464, untied head, no
   biases: 8,015,581,184 parameters (modeling_llada.py; the model card's config.json).
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root: train.py, rollouts.py, ...

import torch  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

GiB, MiB = 2**30, 2**20
# sample.predict_masked predicts a chunk of rows at a time, (rows, V) <= CHUNK_ELEMENTS and rows >=
# MIN_ROWS; sample.CHUNK_ELEMENTS, speedups.ROWS (tests/test_memory.py checks)
CHUNK_ELEMENTS, MIN_ROWS = 2**22, 16
# sample.predict beyond its input, per element: softmax(logits) 4 and q 4 (see tests)
PREDICT_BYTES = 8
OUT = ROOT / "results" / "memory.md"


@dataclass(frozen=True)
class Shape:
    """A pre-norm transformer. kind "llada": RMSNorm, SwiGLU of hidden f, no biases, RoPE, untied
    head; kind "toy" (toy.py): LayerNorm, GELU MLP d -> f -> d, biases, max_len learned positions,
    untied head.
    """

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
    """What train.py runs, per GPU. Defaults: the README's MDPO command on 8 x H100 (--preset
    paper, whose activation checkpointing is on; --fsdp --micro-batch 4; 8 rows a sampler forward:
    --help)."""

    world: int = 8
    fsdp: bool = True
    precision: str = "bf16"
    micro_batch: int = 4
    prompt_len: int = 550
    gen_length: int = 512
    steps: int = 128
    checkpointing: bool = True
    rollout_batch: int = 8
    rollouts_per_rank: int = 16
    eval_batch: int = 8
    reference: bool = True
    attention: str = "math"
    gathered_blocks: int = 3
    reduces_in_flight: int = 2
    fragmentation: float = 0.10
    sampler_bytes: int = 4 + PREDICT_BYTES  # a chunk's fresh float32 logits, then predict's tensors
    device: str = "cuda"
    # the old FSDP accumulation: full-size gradients kept to the last micro-batch
    unsharded_grads: bool = False
    # the old FSDP policy: units gathered in fp32, autocast casts every weight
    fp32_gather: bool = False


def toy_shape(c):  # the Shape of a toy.ToyConfig
    return Shape("toy", c.vocab_size, c.d_model, c.n_layers, c.n_heads, 4 * c.d_model, c.max_len)


def block_params(s):
    """Parameters of one transformer block, one FSDP unit."""
    if s.kind == "llada":
        # q, k, v, attn_out; ff_proj, up_proj, ff_out; 2 norms
        return 4 * s.d * s.d + 3 * s.d * s.f + 2 * s.d
    # qkv, proj, fc1, fc2 with biases; 2 LayerNorms
    return 4 * s.d * s.d + 2 * s.d * s.f + 9 * s.d + s.f


def root_params(s):
    """Parameters outside the blocks, FSDP's root unit: embeddings, final norm, output head."""
    if s.kind == "llada":
        return 2 * s.vocab * s.d + s.d  # wte, ff_out (untied), ln_f
    # tok, head and its bias, pos, ln
    return 2 * s.vocab * s.d + s.vocab + s.max_len * s.d + 2 * s.d


def n_params(s):
    return s.layers * block_params(s) + root_params(s)


def n_tensors(s):  # parameter tensors: AdamW keeps a step counter for each
    return s.layers * 9 + 3 if s.kind == "llada" else s.layers * 12 + 6


def cast_params(s):
    """Parameters that bf16 autocast copies when it meets them in fp32: every Linear's weight and
    bias."""
    if s.kind == "llada":
        return s.layers * (4 * s.d * s.d + 3 * s.d * s.f) + s.vocab * s.d
    return s.layers * (4 * s.d * s.d + 2 * s.d * s.f + 5 * s.d + s.f) + s.vocab * s.d + s.vocab


def attention_saved(s, c, attention, S):
    """Bytes per token the attention kernel saves for its backward: [(what, bytes)]. flash: q, k, v
    in the compute dtype and the fp32 log-sum-exp of each head (and the toy's key mask); its output
    is the output projection's input (`block_saved`). math (torch's
    _scaled_dot_product_attention_math): q, k, v upcast to fp32 (bf16 compute; LLaDA's separate
    q, k, v in fp32 too) and the fp32 probabilities, a row of S per head; the mask is added in
    place, not saved. tests/test_memory.py reads both off autograd."""
    if attention == "math":
        return [
            ("q, k, v upcast to fp32 (math)", 12 * s.d),
            ("attention probabilities (b, heads, S, S), fp32 (math)", 4 * s.heads * S),
        ]
    mask = [("key mask (b, 1, 1, S)", c)] if s.kind == "toy" else []
    return [("q, k, v", 3 * c * s.d), ("attention log-sum-exp, fp32", 4 * s.heads)] + mask


def block_saved(s, c, attention="flash", S=0):
    """Bytes one block saves for its backward, per token: [(what, bytes)]. c: bytes of the compute
    dtype. Read off autograd's saved tensors (tests/test_memory.py checks the toy's with
    saved_tensors_hooks).
    """
    d, f = s.d, s.f
    if s.kind == "toy":
        # CPU autocast keeps layer_norm in bf16 (CUDA's runs it in fp32: not modelled)
        norms = [
            ("ln1, ln2 inputs", 2 * c * d),
            ("ln1, ln2 mean and rstd", 4 * c),
            ("ln1, ln2 outputs (qkv, fc1 inputs)", 2 * c * d),
        ]
        mlp = [("fc1 output (GELU input), GELU output (fc2 input)", 2 * c * f)]
    else:
        # RMSNorm: x in fp32 (kept by pow and mul), 1/rms, x normalised (c), x times weight (the
        # Linears' input)
        norms = [
            ("attn_norm, ff_norm: x fp32, 1/rms, normalised, output", 2 * (4 * d + 4 + 2 * c * d))
        ]
        mlp = [("ff_proj out, SiLU out, up_proj out, product", 4 * c * f)]
    out = [("attention output (output projection input)", c * d)]
    return norms + attention_saved(s, c, attention, S) + out + mlp


def outside_saved(s, c):
    """Bytes per token saved outside the blocks: token ids (and positions), the final norm, the
    head's input."""
    if s.kind == "toy":
        # ids and positions (int64), ln input, mean and rstd, head input
        return 16 + c * s.d + 2 * c + c * s.d
    return 8 + 4 * s.d + 4 + 2 * c * s.d  # ids; ln_f as a block's RMSNorm


def activations(s, run, b, S):
    """Saved for the backward of one micro-batch, b x S tokens: every block's saved tensors; with
    checkpointing, each block's input (c d per token) and the saved tensors of the one block being
    recomputed."""
    c = 2 if run.precision == "bf16" else 4
    per_block = sum(v for _, v in block_saved(s, c, run.attention, S))
    held = s.layers * c * s.d + per_block if run.checkpointing else s.layers * per_block
    return b * S * (held + outside_saved(s, c))


def attention_backward(s, run, b, S):
    """The math kernel's backward in one block: the gradients of the probabilities and of the
    scores, (b, heads, S, S) fp32 each, alive together. A fused kernel keeps nothing of that
    size."""
    return 2 * 4 * b * s.heads * S * S if run.attention == "math" else 0


def logits_bytes(b, S, L, V, c):
    """The training forward's head (mdpo.token_logp): logits (b, S, V) in the compute dtype + their
    fp32 copy / T and its log-softmax (b, L, V); in the backward the saved log-softmax, its
    gradient and its input's gradient, fp32.
    """
    return max(c * b * S * V + 8 * b * L * V, 12 * b * L * V)


def sampler_step(s, run, B):
    """One denoising step's output layer: the forward's logits (B, S, V) in the compute dtype (none
    for the toy, whose declared output layer sample.py runs on the rows a step needs), and
    sampler_bytes per element of one chunk of those rows, (rows, V). (The blocks' part of the
    forward is `nograd_block`.)"""
    c, S = 2 if run.precision == "bf16" else 4, run.prompt_len + run.gen_length
    logits = 0 if s.kind == "toy" else c * B * S * s.vocab
    rows = min(B * run.gen_length, max(MIN_ROWS, CHUNK_ELEMENTS // s.vocab))
    return logits + run.sampler_bytes * rows * s.vocab


def peak_bytes(s, run=Run()):
    """Bytes per GPU of train.py: {"items": {name: bytes}, "phases": {phase: bytes}, "peak":
    (phase, bytes), "fragmentation": the allowance on the peak's tensor bytes, "total": peak +
    fragmentation}."""
    N, Nb, Nr = n_params(s), block_params(s), root_params(s)
    W, fsdp = run.world if run.fsdp else 1, run.fsdp
    c = 2 if run.precision == "bf16" else 4
    g = 4 if run.fp32_gather or c == 4 else 2
    S, L, V, T = run.prompt_len + run.gen_length, run.gen_length, s.vocab, run.steps
    per_block = sum(v for _, v in block_saved(s, c, run.attention, S))
    i = dict(
        params=4 * N // W,
        grads=4 * N // W,
        # old: full fp32 gradients to the last micro-batch
        unsharded=4 * N - 4 * N // W if run.unsharded_grads else 0,
        buckets=0 if fsdp else 4 * N,  # DDP's flat gradient buckets (gradient_as_bucket_view=False)
        adam=8 * N // W + 4 * n_tensors(s),
        ref=4 * N // W if run.reference else 0,
        root=g * Nr if fsdp else 0,
        blocks=run.gathered_blocks * g * Nb if fsdp else 0,
        # autocast keeps them to backward
        casts=2 * cast_params(s) if c == 2 and (run.fp32_gather or not fsdp) else 0,
        activations=activations(s, run, run.micro_batch, S),
        attn_backward=attention_backward(s, run, run.micro_batch, S),
        logits=logits_bytes(run.micro_batch, S, L, V, c),
        # waits for the root's reduce-scatter
        head_grad=g * V * s.d if fsdp and not run.unsharded_grads else 0,
        # a unit's gradients + the fp32 reduce-scatter's input and output, for each one in flight
        unit_reduce=run.reduces_in_flight * ((g + 4) * Nb + 4 * Nb // W) if fsdp else 0,
        # the same for the root, at the end of the backward
        root_reduce=(g + 4) * Nr + 4 * Nr // W if fsdp else 0,
        # AdamW: CUDA's foreach sqrt(v) of all shards at once; CPU's per-tensor sqrt(v) and
        # quotient, largest tensor
        adam_temp=4 * N // W if run.device == "cuda" else 8 * V * s.d // W,
        # a block's tensors in a sampler forward (bound: its saved set)
        nograd_block=run.rollout_batch * S * per_block,
        rollout_step=sampler_step(s, run, run.rollout_batch),
        # sample.generate's record: per step x (B, S) and x_pred, int64, conf and logp, fp32; then
        # stacked; and rollouts.sample_group's x_bar and x_pred (T, N, L), int64
        trajectory=T * run.rollout_batch * (8 * S + 40 * L) + 16 * T * run.rollouts_per_rank * L,
        eval_step=sampler_step(s, run, run.eval_batch),
        # consolidated weights: on a GPU one full fp32 parameter at a time (then on rank 0's host),
        # on a CPU all
        full_weights=4 * N if run.device == "cpu" else 4 * V * s.d,
        # train.build: the policy sharded first
        load=4 * N + (4 * N // W if fsdp else 4 * N) * run.reference,
        context=GiB if run.device == "cuda" else 0,  # assumption 4
    )
    persistent = i["params"] + i["buckets"] + i["adam"] + i["ref"] + i["context"]
    # then the gathered blocks during the blocks, none during the head
    sampler = persistent + i["casts"] + i["root"]
    # backward: at its start everything saved is held and the head's gradient flows (logits); then
    # block by block, the attention's gradients beside the reduce-scatters in flight; at its end the
    # root's reduce-scatter
    backward = max(
        i["casts"]
        + i["activations"]
        + i["head_grad"]
        + max(i["logits"], i["unit_reduce"] + i["attn_backward"]),
        i["root_reduce"],
    )
    phases = {  # train.py resharded the root after evaluation
        "build": i["load"] + i["context"],
        "rollout": sampler
        + i["trajectory"]
        + max(i["blocks"] + i["nograd_block"], i["rollout_step"]),
        "train": persistent + i["grads"] + i["unsharded"] + i["root"] + i["blocks"] + backward,
        "optimizer": persistent + i["grads"] + i["adam_temp"],
        "evaluation": sampler + max(i["blocks"] + run.eval_batch * S * per_block, i["eval_step"]),
        "checkpoint": persistent + i["full_weights"],
    }
    top = max(phases, key=phases.get)
    fragmentation = int(run.fragmentation * (phases[top] - i["context"]))  # torch's allocator only
    return {
        "items": i,
        "phases": phases,
        "peak": (top, phases[top]),
        "fragmentation": fragmentation,
        "total": phases[top] + fragmentation,
    }


# ----------------------------------------------------------------------------- tables
def labels(run):
    return dict(
        params="parameters, fp32",
        grads="gradients, fp32",
        unsharded="gradients kept unsharded (old FSDP)",
        buckets="DDP gradient buckets",
        adam="AdamW m, v",
        ref="reference model, fp32",
        root="policy root unit, gathered",
        blocks=f"{run.gathered_blocks} gathered blocks (FSDP2 prefetch)",
        casts="autocast bf16 weight copies",
        activations="activations, 1 micro-batch",
        attn_backward="attention backward, (b, heads, S, S) gradients",
        logits="logits / log-softmax (b, L, V)",
        head_grad="head gradient, held in the backward",
        unit_reduce=f"{run.reduces_in_flight} blocks' gradient reduce-scatters in flight",
        root_reduce="the root's gradient reduce-scatter",
        adam_temp="AdamW step temporaries",
        nograd_block="a block's tensors, sampler forward",
        rollout_step="sampler step head, rollouts",
        trajectory="recorded trajectories",
        eval_step="sampler step head, evaluation",
        full_weights="consolidated-weights gather",
        load="loading: policy in full, then sharded + reference in full",
        context="CUDA context, NCCL (assumed)",
    )


def gib(v):
    return f"{v / GiB:.1f}"


def describe(run):
    return (
        f"{run.precision}, micro-batch {run.micro_batch}, S = {run.prompt_len} + {run.gen_length}, "
        f"activation checkpointing {'on' if run.checkpointing else 'off'}"
    )


def summary_table(s=LLADA_8B, run=Run(), prompt_lens=(320, 450, 550)):
    """The peak per GPU of FSDP2 for each kernel, prompt length and checkpointing setting, GiB
    (phase)."""
    pct = f"{run.fragmentation:.0%}"
    lines = [
        f"| prompt tokens | activation checkpointing | flash | math | math + {pct} fragmentation | "
        f"math + {pct} under 80 GB (74.5 GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for P in sorted(set(prompt_lens) | {run.prompt_len}):
        for ckpt in (False, True):
            flash, math = (
                peak_bytes(s, replace(run, prompt_len=P, checkpointing=ckpt, attention=k))
                for k in ("flash", "math")
            )
            paper = " (the paper preset)" if ckpt and P == run.prompt_len else ""
            lines.append(
                f"| {P}{paper} | {'on' if ckpt else 'off'} | {gib(flash['peak'][1])} "
                f"({flash['peak'][0]}) | {gib(math['peak'][1])} ({math['peak'][0]}) | "
                f"{gib(math['total'])} | {'yes' if math['total'] <= 80e9 else 'NO'} |"
            )
    return "\n".join(lines)


def markdown_table(s=LLADA_8B, run=Run()):
    """Items and phases in GiB per GPU for `run`: DDP (math), FSDP2 with each kernel."""
    columns = {
        "DDP, math": replace(run, fsdp=False, attention="math"),
        "FSDP2, flash": replace(run, attention="flash"),
        "FSDP2, math": replace(run, attention="math"),
    }
    out = {name: peak_bytes(s, r) for name, r in columns.items()}
    lines = [
        f"| per GPU, GiB ({describe(run)}; FSDP2 over {run.world}) | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]

    def row(text, cell):
        return f"| {text} | " + " | ".join(cell(o) for o in out.values()) + " |"

    lines += [row(text, lambda o: gib(o["items"][k])) for k, text in labels(run).items()]
    lines += [
        row(f"**phase: {k}**", lambda o: gib(o["phases"][k])) for k in out["FSDP2, math"]["phases"]
    ]
    lines += [
        row("**peak (phase)**", lambda o: f"**{gib(o['peak'][1])}** ({o['peak'][0]})"),
        row(
            f"allocator fragmentation, +{run.fragmentation:.0%} (assumed)",
            lambda o: gib(o["fragmentation"]),
        ),
        row("**peak + fragmentation**", lambda o: f"**{gib(o['total'])}**"),
    ]
    return "\n".join(lines)


def report(s=LLADA_8B, run=Run()):
    """The markdown `python tools/memory.py` prints and writes to results/memory.md."""
    paper = peak_bytes(s, run)
    flash = peak_bytes(s, replace(run, attention="flash"))
    return "\n".join(
        [
            "# Memory per GPU of train.py at paper scale (modelled: `python tools/memory.py`)",
            "",
            f"LLaDA-8B-Instruct, {n_params(s):,} parameters; "
            f"train.py --fsdp on {run.world} GPUs ({describe(run)}; "
            "the defaults are the README's MDPO command). Assumptions: tools/memory.py's "
            "docstring. FSDP2 keeps "
            f"{run.gathered_blocks} gathered blocks and {run.reduces_in_flight} reduce-scatters "
            "in flight; "
            f"allocator fragmentation +{run.fragmentation:.0%} of the peak's tensor bytes; "
            "the CUDA context and NCCL buffers 1 GiB.",
            "",
            f"**Peak per GPU {gib(paper['peak'][1])} GiB ({paper['peak'][0]} phase), "
            f"{gib(paper['total'])} GiB with fragmentation; "
            f"training phase {gib(paper['phases']['train'])} GiB on the math attention path, "
            f"{gib(flash['phases']['train'])} GiB with a fused (flash) kernel; "
            f"prompts of {run.prompt_len} tokens.** "
            "A micro-batch with a left-padded row takes the math path (LLaDA turns torch's "
            "memory-efficient kernel off; flash takes no mask).",
            "",
            "## Peak by kernel, prompt length and activation checkpointing (FSDP2, GiB)",
            "",
            summary_table(s, run),
            "",
            f"## Item by item, prompts of {run.prompt_len} tokens (GiB)",
            "",
            markdown_table(s, run),
            "",
        ]
    )


# ------------------------------------------------------------------- validation on CPU (--validate)
TOY = dict(vocab_size=4096, d_model=512, n_layers=8, n_heads=8, max_len=128)
# rollouts per rank (one prompt), denoising steps, prompt tokens ("nums 3 5 7 -> 22")
G, T_STEPS, P_TOY = 4, 4, 16
# bf16 matmuls' backward runs ~20x slower than fp32's on this CPU, so the bf16 variants run few
# tokens
VARIANTS = {
    "warm-up (the process's first-time costs; not reported)": dict(
        precision="fp32", gen_length=8, micro_batch=2
    ),
    "fp32": dict(precision="fp32", gen_length=64, micro_batch=4),
    "fp32, grads unsharded (old)": dict(
        precision="fp32", gen_length=64, micro_batch=4, unsharded_grads=True
    ),
    "fp32, checkpointing": dict(precision="fp32", gen_length=64, micro_batch=4, checkpointing=True),
    "bf16": dict(precision="bf16", gen_length=8, micro_batch=2),
    "bf16, fp32 gather (old)": dict(
        precision="bf16", gen_length=8, micro_batch=2, fp32_gather=True
    ),
}
FIXES = {  # (without, with)
    "gradients sharded after every micro-batch": ("fp32, grads unsharded (old)", "fp32"),
    "activation checkpointing": ("fp32", "fp32, checkpointing"),
    "bf16 gather": ("bf16, fp32 gather (old)", "bf16"),
}


def variant_run(name):
    """The Run of a validation variant. gloo on CPU runs each collective to its end before the next
    computation: 2 gathered blocks (the one computing and the next) and one reduce-scatter at a
    time. Rollouts order by the authors' "sampling" confidence: sample.predict keeps q but no
    softmax(logits).
    """
    return Run(
        **{
            **dict(
                world=2,
                prompt_len=P_TOY,
                steps=T_STEPS,
                rollout_batch=G,
                rollouts_per_rank=G,
                device="cpu",
                sampler_bytes=4 + 4,
                checkpointing=False,
                attention="flash",
                gathered_blocks=2,
                reduces_in_flight=1,
            ),
            **VARIANTS[name],
        }
    )


def variant_config(run, tmp):
    """The train.py settings (config.Config) of a validation variant."""
    import config

    return config.Config(
        model=f"{tmp}/model",
        out=f"{tmp}/out",
        algo="mdpo",
        beta=0.05,
        fsdp=not run.fp32_gather,
        precision=run.precision,
        activation_checkpointing=run.checkpointing,
        seed=0,
        task="toy-countdown",
        group_size=G,
        steps=T_STEPS,
        gen_length=run.gen_length,
        block_lengths=(run.gen_length,),
        remasking="lcr",
        temperature=0.7,
        inner_steps=1,
        eps=0.2,
        loss_norm="token",
        micro_batch=run.micro_batch,
    )


def to_local(t):
    return t.to_local() if isinstance(t, DTensor) else t


def local_bytes(tensors):
    """Bytes of the storages behind tensors, each storage once (a DTensor's local shard; FSDP pads
    each shard to equal size, and a unit's gradient shards are views of one reduce-scatter
    output)."""
    return sum(
        {
            st.data_ptr(): st.nbytes() for st in (to_local(t).untyped_storage() for t in tensors)
        }.values()
    )


def gathered_bytes(model):
    """Bytes of the parameters FSDP holds unsharded now (plain tensors, not DTensors)."""
    return local_bytes(p for p in model.parameters() if not isinstance(p, DTensor))


def vm_bytes(field):
    return 1024 * int(
        next(
            x.split()[1]
            for x in Path("/proc/self/status").read_text().splitlines()
            if x[:6] == field
        )
    )


@contextlib.contextmanager
def phase(name, peaks, rss0):
    """peaks[name] = the process's peak resident memory in the block (VmHWM, reset at its start) -
    rss0."""
    Path("/proc/self/clear_refs").write_text("5")
    yield
    peaks[name] = vm_bytes("VmHWM:") - rss0


def build(run, cfg, rank, world):
    """train.build, AdamW, and what exists after a first update: AdamW's m and v, a reference
    forward (whose root unit is resharded after it). fp32_gather: the old FSDP2 policy, units
    gathered in fp32."""
    import distributed
    import train
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model, _, ref, tok, mask_id = train.build(
        cfg, rank, 1 if run.fp32_gather else world, torch.device("cpu")
    )
    for m in (model, ref) if run.fp32_gather else ():
        # the reference's root resharded after each forward, as now
        for unit in distributed.blocks(m) + [m]:
            fully_shard(
                unit,
                mp_policy=MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32),
                reshard_after_forward=True if unit is ref else None,
            )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    got = dict(
        params=local_bytes(model.parameters()),
        ref=local_bytes(ref.parameters()),
        adam=local_bytes(t for st in optimizer.state.values() for t in st.values()),
    )
    with torch.no_grad():
        ref(torch.full((1, 8), mask_id), attention_mask=torch.ones(1, 8, dtype=torch.long))
    return model, ref, tok, mask_id, optimizer, got


def micro_batches(group, mask_id, b, gen):
    """2 MDPO micro-batches of b (rollout, step) rows (updates.trajectory_batch), random
    advantages."""
    T, N, L = group.x_bar.shape
    adv = torch.randn(N, T, generator=gen)  # (N, T)
    rows, steps = torch.arange(2 * b) % N, torch.arange(2 * b) // N % T  # (2b,) each
    import updates

    return [
        updates.trajectory_batch(group, r, s, adv, mask_id)
        for r, s in zip(rows.split(b), steps.split(b))
    ]


def run_variant(name, rank, world, tmp):
    """One variant on this rank through train.py's functions; the rollout, train, optimizer (and
    checkpoint) phases' peaks, the items read off the tensors, and the autograd-saved bytes of the
    first micro-batch.
    """
    import checkpoint
    import optimise
    import rollouts
    import toy
    import updates

    run, peaks, t0 = variant_run(name), {}, time.time()
    cfg = variant_config(run, tmp)
    examples = [ex for ex in toy.make_task("toy-countdown", 200, 0) if len(ex["prompt"]) == P_TOY]
    example = examples[rank]
    rss0 = vm_bytes("VmRSS:")
    model, ref, tok, mask_id, optimizer, got = build(run, cfg, rank, world)
    gen = torch.Generator().manual_seed(rank)
    with phase("rollout", peaks, rss0):
        group = rollouts.sample_group(
            model.eval(), tok, [example], cfg, mask_id, gen, 0, record=True
        )
    got["policy root gathered after rollout"] = gathered_bytes(model.train())
    batches = micro_batches(group, mask_id, run.micro_batch, gen)
    loss_fn = updates.mdpo_objective(
        cfg, 2 * run.micro_batch, sum(b.loss_mask.sum().item() for b in batches), G
    )
    saved, calls = {}, []

    def pack(t):  # a saved tensor that is no parameter's storage (sharded or gathered)
        if t.untyped_storage().data_ptr() not in {
            to_local(p).untyped_storage().data_ptr() for p in model.parameters()
        }:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def loss_of(b):
        calls.append(b)
        if (
            run.unsharded_grads
        ):  # the old accumulation: reduce-scatter only after the last micro-batch
            model.set_requires_gradient_sync(len(calls) == len(batches))
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with hooks if len(calls) == 1 else contextlib.nullcontext():
            return optimise.batch_loss(model, b, 0, loss_fn, cfg, cfg.temperature)

    with phase("train", peaks, rss0):
        optimise.fix_log_probs(model, ref, batches, cfg, cfg.temperature)
        optimise.backward(model, batches, loss_of, cfg)
    got.update(
        {
            "gradient shards after train": local_bytes(p.grad for p in model.parameters()),
            "saved tensors, micro-batch 1": sum(saved.values()),
            "reference root gathered": gathered_bytes(ref),
        }
    )
    with phase("optimizer", peaks, rss0):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if name in list(VARIANTS)[:2]:
        with phase("checkpoint", peaks, rss0):
            checkpoint.save(
                Path(tmp) / "ck", model, tok, optimizer, {"step": 1}, rank, full_weights=True
            )
    return dict(peaks=peaks, items=got, seconds=time.time() - t0)


def worker(rank, world, tmp, names):
    import distributed

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world
    )
    results = {
        name: run_variant(name, rank, world, tmp) for name in [next(iter(VARIANTS))] + list(names)
    }
    Path(f"{tmp}/rank{rank}.json").write_text(json.dumps(results))
    distributed.cleanup_distributed()


def modelled_items(s, run):
    """The model's value of each item run_variant reads off the tensors, bytes on one rank."""
    i = peak_bytes(s, run)["items"]
    saved = (
        i["activations"] + 4 * run.micro_batch * run.gen_length * s.vocab + i["casts"]
    )  # + the log-softmax
    return {
        "params": i["params"],
        "ref": i["ref"],
        "adam": i["adam"],
        "policy root gathered after rollout": i["root"],
        "gradient shards after train": i["grads"],
        "reference root gathered": 0,  # resharded after its forward
        "saved tensors, micro-batch 1": None if run.checkpointing else saved,
    }


def save_toy(tmp):
    """The validation's toy model (TOY, seed 0) and its tokenizer, saved to tmp/model."""
    import toy

    torch.manual_seed(0)
    toy.ToyMDLM(toy.ToyConfig(**TOY)).save_pretrained(f"{tmp}/model")
    toy.ToyTokenizer().save_pretrained(f"{tmp}/model")


def agrees(modelled, measured, tolerance=0.10, slack=8 * MiB):
    return abs(modelled - measured) <= max(tolerance * measured, slack)


def measured_peaks(ranks, names):
    """{(variant, phase): (modelled, measured)} bytes, the measured peak the largest over ranks."""
    import toy

    s = toy_shape(toy.ToyConfig(**TOY))
    return {
        (name, ph): (
            peak_bytes(s, variant_run(name))["phases"][ph],
            max(r[name]["peaks"][ph] for r in ranks),
        )
        for name in names
        for ph in ranks[0][name]["peaks"]
    }


def validate(names=tuple(VARIANTS)[1:]):
    """Spawn 2 gloo ranks running the variants; print measured against modelled bytes as markdown
    tables. glibc serves big blocks from mmap and unmaps them when freed, so resident memory
    follows the live bytes.
    """
    import toy

    t0, s = time.time(), toy_shape(toy.ToyConfig(**TOY))
    os.environ.update(
        MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536", MALLOC_ARENA_MAX="2"
    )
    with tempfile.TemporaryDirectory() as tmp:
        save_toy(tmp)
        torch.multiprocessing.spawn(worker, args=(2, tmp, list(names)), nprocs=2, join=True)
        ranks = [json.loads(Path(f"{tmp}/rank{r}.json").read_text()) for r in range(2)]
    mib = lambda v: f"{v / MiB:.1f}"  # noqa: E731
    yes = lambda m, x: "yes" if agrees(m, x) else "no"  # noqa: E731
    print(
        f"Toy {TOY}: {n_params(s) / 1e6:.1f}M parameters, FSDP2 over 2 gloo ranks, "
        f"{G} rollouts of {T_STEPS} steps, prompt {P_TOY}. "
        "Measured: peak resident memory (VmHWM, reset per phase) over the RSS before the "
        f"build, max over ranks. Agreement: within 10% or 8 MiB.\n"
    )
    peaks = measured_peaks(ranks, names)
    lines = ["| variant | phase | modelled MiB | measured MiB | diff | agrees |", "|---" * 6 + "|"]
    lines += [
        f"| {name} | {ph} | {mib(m)} | {mib(x)} | {(m - x) / x:+.1%} | {yes(m, x)} |"
        for (name, ph), (m, x) in peaks.items()
    ]
    lines += [
        "",
        "| variant | item (tensor bytes) | modelled MiB | measured MiB | agrees |",
        "|---" * 5 + "|",
    ]
    for name in names:
        for item, m in modelled_items(s, variant_run(name)).items():
            x = max(r[name]["items"][item] for r in ranks)
            lines += (
                [f"| {name} | {item} | {mib(m)} | {mib(x)} | {yes(m, x)} |"]
                if m is not None
                else []
            )
    lines += [
        "",
        "| fix | phase | modelled saving MiB | measured saving MiB |",
        "|---|---|---|---|",
    ]
    for fix, (old, new) in FIXES.items():
        for ph in ("rollout", "train") if (new, "train") in peaks else ():
            m, x = (peaks[old, ph][k] - peaks[new, ph][k] for k in (0, 1))
            lines.append(f"| {fix} | {ph} | {mib(m)} | {mib(x)} |")
    n_agree = sum(agrees(m, x) for m, x in peaks.values())
    print(
        "\n".join(lines) + f"\n\n{n_agree} of {len(peaks)} phase peaks agree with the model. "
        f"{time.time() - t0:.0f} s in all; per variant (rank 0): "
        + ", ".join(f"{n} {ranks[0][n]['seconds']:.0f} s" for n in names)
    )


def main(argv=None):
    d = Run()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, text in [
        ("world", "GPUs sharing the model under FSDP2"),
        ("micro_batch", "train.py --micro-batch"),
        ("prompt_len", "longest prompt of a micro-batch, tokens (the paper's CSV: up to ~550)"),
        ("gen_length", "train.py --gen-length"),
        ("steps", "train.py --steps"),
        (
            "rollout_batch",
            "rows per sampler forward: G x prompts per rank / block sizes (8 x 2 / 2)",
        ),
        ("eval_batch", "train.py --eval-batch-size"),
        ("gathered_blocks", "blocks FSDP2 holds gathered at once (prefetch depth)"),
        ("reduces_in_flight", "blocks' gradient reduce-scatters FSDP2 has in flight"),
    ]:
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=getattr(d, name),
            help=f"{text} (%(default)s)",
        )
    p.add_argument(
        "--precision",
        default=d.precision,
        choices=["bf16", "fp32"],
        help="train.py --precision (bf16)",
    )
    p.add_argument(
        "--activation-checkpointing",
        dest="checkpointing",
        action=argparse.BooleanOptionalAction,
        default=d.checkpointing,
        help="train.py --activation-checkpointing (on in --preset paper)",
    )
    p.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="beta = 0: no reference model",
    )
    p.add_argument(
        "--fragmentation",
        type=float,
        default=d.fragmentation,
        help="allocator fragmentation, a share of the peak's tensor bytes (%(default)s)",
    )
    p.add_argument(
        "--sampler-bytes",
        type=int,
        default=d.sampler_bytes,
        help="bytes per logit of a chunk of rows "
        "a step predicts: its float32 logits 4 + sample.predict's (confidence model 8, sampling 4)",
    )
    p.add_argument(
        "--unsharded-grads",
        action="store_true",
        help="the old FSDP accumulation (full-size gradients)",
    )
    p.add_argument(
        "--fp32-gather", action="store_true", help="the old FSDP policy (units gathered in fp32)"
    )
    p.add_argument(
        "--out", type=Path, default=OUT, help="markdown file written (default results/memory.md)"
    )
    p.add_argument(
        "--validate",
        action="store_true",
        help="measure the toy on 2 CPU ranks against the model (~4 min)",
    )
    a = vars(p.parse_args(argv))
    if a.pop("validate"):
        return validate()
    out = a.pop("out")
    text = report(LLADA_8B, Run(**a))
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
