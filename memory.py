"""GPU memory of train.py per GPU, modelled tensor by tensor: what train.py checks before it loads
a model (`check_fits`), and what tools/memory.py reports (results/memory.md) and validates on CPU.

Each phase of train.py (build, rollout, train, optimizer, evaluation, checkpoint) sums the tensors
it holds (`peak_bytes`); the peak is the largest phase. Assumptions (each a field of `Run`):
1. attention: "flash" (also torch's memory-efficient kernel) saves q, k, v, its output and the
   log-sum-exp. "math", torch's math kernel, upcasts bf16 q, k, v to fp32 and saves them with the
   fp32 probabilities (b, heads, S, S) of every layer. The flash kernel takes no mask, so a
   micro-batch with a left-padded row (prompts of unequal length) needs the memory-efficient one:
   LLaDA's code switches it off, models.load_model switches it back on. Until a GPU shows which
   kernel runs (tools/gpu_check.py), we plan for math.
2. prompt_len: the longest prompt of a micro-batch, 550 tokens (the paper's training CSV goes up to
   ~550); S = prompt + 512 generated tokens. train.py measures it on its training prompts.
3. FSDP2 on CUDA overlaps communication with compute: 3 gathered blocks and 2 blocks' gradient
   reduce-scatters in flight at once (--validate's gloo ranks on CPU, which do not overlap: 2 and
   1).
4. Allocator fragmentation: +10% of the peak's tensor bytes, its own line (5-15% is typical); CUDA
   context and NCCL buffers: 1 GiB outside torch's allocator.
5. Sampler: the toy, LLaDA and ModernBERT run their output layer on the rows a step needs
   (speedups.py), so a step holds no (B, S, V) logits; another model (Dream) holds them in bf16.
   sample.py predicts a chunk of <= CHUNK_ELEMENTS of them at a time, 12 bytes each (float32,
   softmax, q).
6. LLADA_8B: 32 layers, d 4096, 32 heads, SwiGLU hidden 12288, vocabulary 126464, untied head, no
   biases: 8,015,581,184 parameters (modeling_llada.py; the model card's config.json).
"""
from dataclasses import dataclass, replace

from sample import CHUNK_ELEMENTS
from speedups import ROW_HEAD_MODEL_TYPES, ROWS as MIN_ROWS

GiB, MiB = 2**30, 2**20
# sample.predict_masked predicts a chunk of rows at a time: (rows, V) <= CHUNK_ELEMENTS[device] and
# rows >= MIN_ROWS. sample.predict beyond its input, per element: softmax(logits) 4 and q 4 (see
# tests/test_memory.py)
PREDICT_BYTES = 8


@dataclass(frozen=True)
class Shape:
    """A pre-norm transformer. kind "llada": RMSNorm, SwiGLU of hidden f, no biases, RoPE, untied
    head; kind "toy" (toy.py): LayerNorm, GELU MLP d -> f -> d, biases, max_len learned positions,
    untied head. row_head: the sampler runs the output layer on the rows a step needs
    (speedups.split_output_layer).
    """

    kind: str
    vocab: int
    d: int
    layers: int
    heads: int
    f: int
    max_len: int = 0
    row_head: bool = True


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
    # LoRA (train.py --lora-rank): adapters of this rank on every linear layer of the blocks, the
    # base frozen in the compute dtype; lora_dropout: the adapters' input dropout is on
    lora_rank: int = 0
    lora_dropout: bool = True


def toy_shape(c):  # the Shape of a toy.ToyConfig
    return Shape("toy", c.vocab_size, c.d_model, c.n_layers, c.n_heads, 4 * c.d_model, c.max_len)


def shape_of(config):
    """The Shape of a model from its config.json (a dict), or None when the keys are not known.
    LLaDA's names (d_model, n_layers, mlp_hidden_size), the toy's, or the usual transformers names
    (hidden_size, num_hidden_layers, intermediate_size; a gated MLP of three matrices, as Dream's
    and ModernBERT's, modelled as LLaDA's block)."""
    kind = config.get("model_type")
    row_head = kind in ROW_HEAD_MODEL_TYPES and not config.get("shifted_logits")
    if kind == "mdpo-toy":
        return Shape("toy", config["vocab_size"], config["d_model"], config["n_layers"],
                     config["n_heads"], 4 * config["d_model"], config["max_len"])
    if kind == "llada":
        return Shape("llada", config.get("embedding_size") or config["vocab_size"],
                     config["d_model"], config["n_layers"], config["n_heads"],
                     config["mlp_hidden_size"], row_head=row_head)
    names = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size")
    if not all(config.get(k) for k in names):
        return None
    return Shape("llada", *(config[k] for k in names), row_head=row_head)


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


def adapted_linears(s):
    """(in, out) of the linear layers of a block that LoRA adapts (lora.target_modules): LLaDA's
    q, k, v, attn_out, ff_proj, up_proj, ff_out; the toy's qkv, proj and its MLP's two."""
    d, f = s.d, s.f
    if s.kind == "llada":
        return [(d, d)] * 4 + [(d, f)] * 2 + [(f, d)]
    return [(d, 3 * d), (d, d), (d, f), (f, d)]


def lora_params(s, r):
    """Parameters of rank-r adapters on every block: A (r x in) and B (out x r) per linear."""
    return s.layers * sum(r * (i + o) for i, o in adapted_linears(s))


def lora_saved(s, c, run):
    """Bytes per token a block's adapters save for the backward: with dropout, each adapted layer's
    dropped-out input (c bytes) and its mask (1 byte); always, each A's output (r, c bytes)."""
    inputs = sum(i for i, _ in adapted_linears(s)) * (c + 1) if run.lora_dropout else 0
    return inputs + len(adapted_linears(s)) * run.lora_rank * c


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
    if run.lora_rank:
        per_block += lora_saved(s, c, run)
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
    for a model whose output layer sample.py runs on the rows a step needs, `Shape.row_head`), and
    sampler_bytes per element of one chunk of those rows, (rows, V). (The blocks' part of the
    forward is `nograd_block`.)"""
    c, S = 2 if run.precision == "bf16" else 4, run.prompt_len + run.gen_length
    logits = 0 if s.row_head else c * B * S * s.vocab
    rows = min(B * run.gen_length, max(MIN_ROWS, CHUNK_ELEMENTS[run.device] // s.vocab))
    return logits + run.sampler_bytes * rows * s.vocab


def lora_items(s, run, c):
    """The items a LoRA run changes (one process or DDP, no FSDP): the base frozen in the compute
    dtype (no fp32 master copy, no gradient, no AdamW state), A fp32 adapter parameters with their
    gradients, DDP buckets and AdamW state; no reference model (the base with the adapters off);
    the checkpoint writes the adapters alone."""
    N, A = n_params(s), lora_params(s, run.lora_rank)
    adapters = 2 * len(adapted_linears(s)) * s.layers  # A and B of each adapted layer
    return dict(params=c * N + 4 * A, grads=4 * A, buckets=4 * A if run.world > 1 else 0,
                adam=8 * A + 4 * adapters, ref=0, root=0, blocks=0, unsharded=0, head_grad=0,
                unit_reduce=0, root_reduce=0, casts=2 * A if c == 2 else 0,
                adam_temp=4 * A, full_weights=4 * A, load=c * N)


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
        # DDP's flat gradient buckets (gradient_as_bucket_view=False); one process has no DDP
        buckets=0 if fsdp or run.world == 1 else 4 * N,
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
    if run.lora_rank:
        i.update(lora_items(s, run, c))
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




# ------------------------------------------------------------- train.py's check before it loads
def run_of(cfg, world, prompt_len):
    """The Run of train.py's settings (a config.Config) on `world` GPUs, prompts of up to
    prompt_len tokens. The sampler runs each block size of the rollouts' mixture as one batch."""
    per_rank = max(cfg.prompts_per_update // world, 1) * cfg.group_size
    sizes = len(cfg.block_lengths)
    return Run(world=world, fsdp=cfg.fsdp, precision=cfg.precision, micro_batch=cfg.micro_batch,
               prompt_len=prompt_len, gen_length=cfg.gen_length, steps=cfg.steps,
               checkpointing=cfg.activation_checkpointing,
               rollout_batch=-(-per_rank // (sizes * cfg.group_size)) * cfg.group_size,
               rollouts_per_rank=per_rank, eval_batch=cfg.eval_batch_size,
               reference=cfg.algo != "sft" and cfg.beta > 0, device="cuda",
               lora_rank=cfg.lora_rank, lora_dropout=cfg.lora_dropout > 0)


def alternatives(run):
    """Settings to try when `run` does not fit, smallest change first: [(the flags, their Run)]. A
    smaller micro-batch (with activation checkpointing) on the same GPUs, then FSDP on them, then
    FSDP on more."""
    setups = [(run.world, run.fsdp, "")]
    if not run.fsdp and run.world > 1:
        setups.append((run.world, True, "--fsdp"))
    setups += [(w, True, f"--fsdp on {w} GPUs") for w in (2, 4, 8, 16, 32, 64) if w > run.world]
    out = []
    for world, fsdp, flag in setups:
        b = run.micro_batch
        while b >= 1:
            flags = [flag] if flag else []
            flags += [f"--micro-batch {b}"] if b != run.micro_batch else []
            flags += [] if run.checkpointing else ["--activation-checkpointing"]
            if flags:
                out.append((" ".join(flags), replace(run, world=world, fsdp=fsdp, micro_batch=b,
                                                     checkpointing=True)))
            b //= 2
    return out


def check_fits(shape, run, device_bytes):
    """None when the modelled peak per GPU (with its fragmentation allowance) fits device_bytes,
    else a one-line message with the prediction and up to two changes that would fit."""
    total = peak_bytes(shape, run)["total"]
    if total <= device_bytes:
        return None
    fits = {}  # the first setting that fits on each number of GPUs, with or without FSDP
    for flags, r in alternatives(run):
        if (r.world, r.fsdp) not in fits and peak_bytes(shape, r)["total"] <= device_bytes:
            fits[r.world, r.fsdp] = f"{flags} ({peak_bytes(shape, r)['total'] / GiB:.1f} GiB)"
    fits = list(fits.values())[:2]
    advice = ("; would fit: " + " or ".join(fits)) if fits else "; no setting tried fits"
    return (f"predicted peak {total / GiB:.1f} GiB per GPU > this GPU's "
            f"{device_bytes / GiB:.1f} GiB (memory.py, {run.precision}, --micro-batch "
            f"{run.micro_batch}, prompts of {run.prompt_len} tokens){advice}; "
            "--skip-memory-check runs it anyway")
