"""One GPU in minutes: the sampler, one MDPO micro-batch and one training step at LLaDA-8B's shapes,
measured, and memory.py's model of the same settings beside each measurement.

    python tools/gpu_check.py            # CUDA, <= 8 min: results/gpu.md and results/gpu.json
    python tools/gpu_check.py --tiny     # every part on CPU at toy sizes, <= 3 min: out/gpu-check/

The model is `LladaShaped`: LLaDA-8B-Instruct's shapes (hidden 4096, 32 layers, 32 heads, SwiGLU
MLP 12288, vocabulary 126,464, untied output layer, no biases, RMSNorm, rotary positions; its
config.json) with random weights, built directly on the GPU in bf16: the same matmuls and memory as
LLaDA without its code or weights. Like LLaDA's code, it takes a left-padded batch's mask as an
additive (b, 1, S, S) bias. Parts, each under the time left (--budget-s) and each surviving an
out-of-memory error in itself:
  a. sampler: sample.generate (LCR, greedy) against tools/llada_reference.py, unpadded and
     left-padded prompts, torch's memory-efficient attention kernel on (models.load_model switches
     it back on) and off (LLaDA's code switches it off): seconds per step, tokens per second, peak
     memory, the share of a step spent outside the model (bookkeeping), model FLOPs utilisation,
     and the attention kernel that ran (read off the profiler);
  b. memory: one MDPO micro-batch (paper preset: 4 rows of 550 + 512 tokens) forward and backward,
     activation checkpointing on and off, on --train-layers of the 32 blocks (fp32 weights and
     gradients of all 32 do not fit one GPU beside the activations): measured peak against
     memory.py's train phase for the same shape, one process (no DDP buckets, no reference);
  c. step: one training step (forward, backward, AdamW) of that model: seconds and MFU.
"""
import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root: sample.py, memory.py, ...
os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start and stop lines, unprinted

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import distributed  # noqa: E402
import mdpo  # noqa: E402
import memory  # noqa: E402
import models  # noqa: E402
import sample  # noqa: E402
from tools.bench import ForwardClock  # noqa: E402
from tools.llada_reference import llada_generate  # noqa: E402

# LLaDA-8B-Instruct's config.json: d_model, n_layers, n_heads, mlp_hidden_size, vocab_size
# (and its [MASK] id)
LLADA = dict(d=4096, layers=32, heads=32, f=12288, vocab=126464, rope_theta=500000.0,
             mask_id=126336)
TINY = dict(d=64, layers=2, heads=4, f=128, vocab=1024, rope_theta=500000.0, mask_id=1000)
FULL = dict(batch=8, prompt=550, gen=512, steps=16, block=512, micro_batch=4, train_layers=4)
SMALL = dict(batch=4, prompt=24, gen=32, steps=4, block=32, micro_batch=4, train_layers=2)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 per second
KERNELS = {"flash": "flash", "efficient": "efficient", "cudnn": "cudnn", "math": "math"}


# ----------------------------------------------------------------------------- the model
class Block(nn.Module):
    """A LLaDA block: RMSNorm, attention with rotary positions, RMSNorm, SwiGLU MLP; no biases."""

    def __init__(self, s):
        super().__init__()
        d, self.heads = s["d"], s["heads"]
        self.attn_norm, self.ff_norm = nn.RMSNorm(d, eps=1e-5), nn.RMSNorm(d, eps=1e-5)
        self.q, self.k, self.v, self.out = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(d, s["f"], bias=False), nn.Linear(d, s["f"], bias=False)
        self.down = nn.Linear(s["f"], d, bias=False)

    def forward(self, x, bias, cos, sin):  # x (B, S, d), bias (B, 1, S, S) or None
        B, S, d = x.shape
        h = self.attn_norm(x)
        q, k, v = (f(h).view(B, S, self.heads, -1).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)  # (B, heads, S, d / heads)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, heads, S, d / heads)
        x = x + self.out(a.transpose(1, 2).reshape(B, S, d))
        h = self.ff_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def rotate(x, cos, sin):
    """Rotary positions on the last dimension of x (B, heads, S, e), halves rotated."""
    x1, x2 = x.chunk(2, -1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


class LladaShaped(nn.Module):
    """LLaDA-8B's shapes with random weights; its logits are its output layer on the final norm's
    output, nothing after (model type "llada": the sampler runs that layer on the rows it needs)."""

    _no_split_modules = ["Block"]

    def __init__(self, s):
        super().__init__()
        self.config = SimpleNamespace(model_type="llada", mask_token_id=s["mask_id"])
        self.s = s
        self.wte = nn.Embedding(s["vocab"], s["d"])
        self.blocks = nn.ModuleList(Block(s) for _ in range(s["layers"]))
        self.norm = nn.RMSNorm(s["d"], eps=1e-5)
        self.ff_out = nn.Linear(s["d"], s["vocab"], bias=False)

    def get_output_embeddings(self):
        return self.ff_out

    def set_output_embeddings(self, head):
        self.ff_out = head

    def forward(self, input_ids, attention_mask=None):
        B, S = input_ids.shape
        e = self.s["d"] // self.s["heads"] // 2
        freq = self.s["rope_theta"] ** (-torch.arange(e, device=input_ids.device) / e)  # (e,)
        angle = torch.arange(S, device=input_ids.device)[:, None] * freq  # (S, e)
        cos, sin = angle.cos(), angle.sin()
        bias = None
        if attention_mask is not None and not attention_mask.all():  # LLaDA's additive mask
            keep = attention_mask.bool()[:, None, None, :].expand(B, 1, S, S)
            bias = torch.zeros(B, 1, S, S, device=input_ids.device)
            bias = bias.masked_fill(~keep, torch.finfo(bias.dtype).min).to(self.wte.weight.dtype)
        x = self.wte(input_ids)
        for block in self.blocks:
            x = block(x, bias, cos, sin)
        return SimpleNamespace(logits=self.ff_out(self.norm(x)))


def build(s, device, dtype):
    torch.manual_seed(0)
    with torch.device(device):
        model = LladaShaped(s).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:  # weights; the norms keep their ones
                p.normal_(0, 0.02)
    return model.eval()


def memory_shape(s, layers=None):
    return memory.Shape("llada", s["vocab"], s["d"], layers or s["layers"], s["heads"], s["f"])


def forward_flops(s, tokens, S, head_rows, layers=None):
    """Matmul FLOPs of one forward: 2 x weights x tokens in the blocks, 4 S d per token of attention
    scores and values, 2 d V per row through the output layer."""
    layers = layers or s["layers"]
    d, f = s["d"], s["f"]
    blocks = layers * tokens * (2 * (4 * d * d + 3 * d * f) + 4 * S * d)
    return blocks + 2 * d * s["vocab"] * head_rows


def mfu(flops, seconds, device):
    name = torch.cuda.get_device_name() if device == "cuda" else ""
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return None if peak is None else flops / seconds / peak


# ----------------------------------------------------------------------------- measuring
def now(device):
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_of(fn, device):
    """(fn's result, the peak bytes allocated while it ran above those before it; None on CPU)."""
    if device != "cuda":
        return fn(), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() - before


def attention_kernel(fn):
    """The scaled-dot-product-attention implementation that ran in fn(), from the profiler's op
    names (aten::_scaled_dot_product_{flash,efficient,cudnn}_attention..., or the math path)."""
    with torch.profiler.profile() as prof:
        fn()
    names = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}
    found = [k for k in ("flash", "efficient", "cudnn", "math") if any(k in n for n in names)]
    return found[0] if found else "none seen"


def prompts(s, n, P, padded, device):
    """n random prompts of P tokens; padded: row i left-padded by i * P / (2n) tokens."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, s["mask_id"], (n, P), generator=g)
    attn = torch.ones(n, P, dtype=torch.long)
    for i in range(n if padded else 0):
        attn[i, : i * P // (2 * n)] = 0
    return ids.to(device), attn.to(device)


# ----------------------------------------------------------------------------- the parts
def part_sampler(s, size, device, dtype, deadline):
    """a: sample.generate and LLaDA's loop, greedy LCR, a few steps of one block."""
    model, rows = build(s, device, dtype), []
    clock, steps = ForwardClock(model), size["steps"]
    gen = dict(gen_length=size["gen"], block_length=size["block"], steps=steps,
               mask_id=s["mask_id"])
    cases = [("unpadded", False, True), ("left-padded", True, True),
             ("left-padded, memory-efficient kernel off (LLaDA's code)", True, False)]
    for name, padded, efficient in cases:
        if time.time() > deadline:
            break
        ids, attn = prompts(s, size["batch"], size["prompt"], padded, device)
        mask = attn if padded else None
        if device == "cuda":
            torch.backends.cuda.enable_mem_efficient_sdp(efficient)
        runs = {"sample.generate": lambda: sample.generate(model, ids, attention_mask=mask, **gen)}
        if not padded:  # LLaDA's loop takes no attention mask
            runs["LLaDA reference"] = lambda: llada_generate(
                model, ids, steps=steps, gen_length=size["gen"], block_length=size["block"],
                mask_id=s["mask_id"])
        for sampler, run in runs.items():
            run()  # warm-up: first calls build caches and pick kernels
            clock.seconds, start = 0.0, clock.now()  # CPU time on a CPU, synchronised wall on CUDA
            _, peak = peak_of(run, device)
            seconds = clock.now() - start
            kernel = attention_kernel(lambda: model(ids, attention_mask=mask))
            S, head_rows = size["prompt"] + size["gen"], size["batch"] * size["gen"]
            flops = steps * forward_flops(s, size["batch"] * S, S, head_rows)
            rows.append(dict(case=name, sampler=sampler, s_per_step=seconds / steps,
                             tokens_per_s=size["batch"] * size["gen"] / seconds,
                             peak_gib=None if peak is None else peak / memory.GiB,
                             outside_model=1 - clock.seconds / seconds,
                             mfu=mfu(flops, seconds, device), attention=kernel))
    models.enable_memory_efficient_attention()
    return rows


def micro_batch(s, size, device):
    """One MDPO micro-batch of the paper preset: (rows, P + L) inputs with half the completion
    masked, targets, advantages; the first row's prompt left-padded by a quarter."""
    B, P, L = size["micro_batch"], size["prompt"], size["gen"]
    ids, attn = prompts(s, B, P, True, device)
    g = torch.Generator().manual_seed(2)
    target = torch.randint(10, s["mask_id"], (B, L), generator=g).to(device)
    masked = torch.rand(B, L, generator=g).to(device) < 0.5  # (B, L)
    x = torch.cat([ids, torch.where(masked, s["mask_id"], target)], 1)  # (B, P + L)
    full_attn = torch.cat([attn, torch.ones_like(target)], 1)
    adv = torch.randn(B, 1, generator=g).to(device)
    return x, full_attn, target, masked, adv


def mdpo_step(model, batch, P, precision, device, optimizer=None):
    """Forward and backward of Eq. 4 on one micro-batch (train.py's path: bf16 autocast over fp32
    weights, float32 log-softmax), then AdamW if given."""
    x, attn, target, masked, adv = batch
    with distributed.autocast(precision, device):
        logits = models.logits(model, x, attn)[:, P:]  # (B, L, V)
        logp = mdpo.token_logp(logits, target, 0.4)  # (B, L)
        loss = mdpo.mdpo_loss(logp, logp.detach(), None, adv, masked, beta=0.0)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    model.zero_grad(set_to_none=True)


def above_weights(shape, run):
    """memory.py's train phase less what exists before a micro-batch in one process without an
    optimiser step: the fp32 weights (and DDP's buckets, AdamW, the CUDA context: none here)."""
    out = memory.peak_bytes(shape, run)
    i = out["items"]
    return out["phases"]["train"] - i["params"] - i["buckets"] - i["adam"] - i["context"]


def part_memory(s, size, device, precision, deadline):
    """b: peak of one micro-batch forward + backward, checkpointing off and on, against memory.py's
    train phase of the same shape with either attention kernel (one process: no DDP buckets, no
    reference)."""
    layers, rows = size["train_layers"], []
    shape = memory_shape(s, layers)
    for checkpointing in (False, True):
        if time.time() > deadline:
            break
        model = build({**s, "layers": layers}, device, torch.float32).train()
        if checkpointing:
            distributed.checkpoint_blocks(model)
        batch = micro_batch(s, size, device)
        mdpo_step(model, batch, size["prompt"], precision, device)  # warm-up
        _, peak = peak_of(lambda: mdpo_step(model, batch, size["prompt"], precision, device),
                          device)
        run = memory.Run(world=1, fsdp=False, precision=precision,
                         micro_batch=size["micro_batch"], prompt_len=size["prompt"],
                         gen_length=size["gen"], checkpointing=checkpointing, reference=False,
                         device=device)
        for kernel in ("math", "flash"):
            modelled = above_weights(shape, replace(run, attention=kernel))
            rows.append(dict(checkpointing=checkpointing, attention_model=kernel,
                             measured_gib=None if peak is None else peak / memory.GiB,
                             modelled_gib=modelled / memory.GiB,
                             ratio=None if peak is None else peak / modelled))
        if device == "cuda":  # this model's memory back before the next one is built
            model = None
            torch.cuda.empty_cache()
    return rows


def part_step(s, size, device, precision, deadline):
    """c: one training step (forward, backward, AdamW) of the --train-layers model: seconds, MFU."""
    layers = size["train_layers"]
    model = build({**s, "layers": layers}, device, torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    batch = micro_batch(s, size, device)
    mdpo_step(model, batch, size["prompt"], precision, device, optimizer)  # warm-up, AdamW state
    start = now(device)
    mdpo_step(model, batch, size["prompt"], precision, device, optimizer)
    seconds = now(device) - start
    S = size["prompt"] + size["gen"]
    B = size["micro_batch"]
    flops = 3 * forward_flops(s, B * S, S, B * S, layers)  # backward ~ twice the forward
    return [dict(layers=layers, micro_batch=B, tokens=B * S, seconds=seconds,
                 mfu=mfu(flops, seconds, device))]


# ----------------------------------------------------------------------------- the report
PARTS = {"a. sampler": part_sampler, "b. memory, one MDPO micro-batch": part_memory,
         "c. one training step": part_step}


def run_parts(s, size, device, budget_s):
    """Every part under the deadline; an out-of-memory error ends its part only."""
    deadline, out = time.time() + budget_s, {}
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    precision = "bf16" if device == "cuda" else "fp32"
    for name, part in PARTS.items():
        start = time.time()
        if start > deadline:
            out[name] = dict(status="skipped: out of time", rows=[])
            continue
        arg = dtype if part is part_sampler else precision
        try:
            out[name] = dict(status="ok", rows=part(s, size, device, arg, deadline))
        except torch.OutOfMemoryError as e:
            out[name] = dict(status=f"out of memory: {str(e).splitlines()[0]}", rows=[])
        if device == "cuda":
            torch.cuda.empty_cache()
        out[name]["seconds"] = time.time() - start
        print(f"{name}: {out[name]['status']} ({out[name]['seconds']:.0f} s)", file=sys.stderr)
    return out


def cell(v):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def markdown(results, header):
    lines = header
    for name, part in results.items():
        lines += ["", f"## {name} ({part['status']}, {part.get('seconds', 0):.0f} s)", ""]
        if part["rows"]:
            keys = list(part["rows"][0])
            lines += ["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
            lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in part["rows"]]
    return "\n".join(lines) + "\n"


def machine(device):
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} "
            f"thread(s), torch {torch.__version__}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="every part on CPU at toy sizes (a check of this script, in minutes)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for all parts; a part that would start later is skipped "
                        "(default 420, --tiny 150)")
    p.add_argument("--train-layers", type=int, default=None,
                   help="blocks of the model of parts b and c (default 4 of 32; --tiny 2)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for gpu.md and gpu.json (default results/, --tiny out/gpu-check/)")
    args = p.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check.py: error: no CUDA device; --tiny runs every part on the CPU")
    s, size = (TINY, dict(SMALL)) if args.tiny else (LLADA, dict(FULL))
    if args.train_layers:
        size["train_layers"] = args.train_layers
    out = args.out or (ROOT / "out" / "gpu-check" if args.tiny else ROOT / "results")
    start = time.time()
    results = run_parts(s, size, device, args.budget_s or (150 if args.tiny else 420))
    command = "python tools/gpu_check.py" + (" --tiny" if args.tiny else "")
    header = [f"# GPU check ({'tiny, CPU' if args.tiny else 'LLaDA-8B shapes'})", "",
              f"`{command}` on {machine(device)}, {time.time() - start:.0f} s in all. Model: "
              f"{s['layers']} blocks, d {s['d']}, {s['heads']} heads, MLP {s['f']}, vocabulary "
              f"{s['vocab']} (random weights, tools/gpu_check.py's LladaShaped). Sizes: {size}.",
              "MFU: model FLOPs per second over the GPU's dense bf16 peak (n/a on a CPU or an "
              "unknown GPU); outside_model: the share of the sampler's time not in the model."]
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(dict(command=command, machine=machine(device),
                                                  sizes=size, model=s, parts=results), indent=1))
    (out / "gpu.md").write_text(markdown(results, header))
    print((out / "gpu.md").read_text())
    return results


if __name__ == "__main__":
    main()
