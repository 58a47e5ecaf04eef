"""GPU memory of train.py per GPU: memory.py's model as tables, and the model checked on CPU.

    python tools/memory.py              the paper command on 8 x H100, LLaDA-8B-Instruct:
                                        both attention kernels, prompts of 320, 450, 550
                                        tokens (-> results/memory.md)
    python tools/memory.py --validate   2 gloo ranks run train.py's FSDP2 code on a
                                        29M-parameter toy: measured peaks against the model
                                        (~2 min on 2 cores)

The model itself (every tensor of every phase, and its assumptions) is memory.py at the top level,
which train.py also uses to check a run before it loads a model.
"""

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root: train.py, rollouts.py, ...

import torch  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

import memory  # noqa: E402
from memory import LLADA_8B, GiB, MiB, Run, n_params, peak_bytes, toy_shape  # noqa: E402

OUT = ROOT / "results" / "memory.md"


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
            "A micro-batch with a left-padded row needs a kernel that takes a mask: torch's "
            "memory-efficient one, which LLaDA's code turns off and models.load_model turns back "
            "on. Until tools/gpu_check.py has shown which kernel runs on a GPU, plan for math.",
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


def lora_report(s, run):
    """The markdown of a LoRA plan (`python tools/memory.py --world 1 --lora-rank 128`): the phases
    and items per GPU with either attention kernel, the peak and its fragmentation allowance."""
    columns = {f"LoRA rank {run.lora_rank}, {k}": replace(run, attention=k) for k in ("math",
                                                                                  "flash")}
    out = {name: peak_bytes(s, r) for name, r in columns.items()}
    names = labels(run)
    names.update(params="parameters: the frozen base (compute dtype) + fp32 adapters",
                 grads="adapter gradients, fp32", adam="AdamW m, v (adapters)",
                 ref="reference model (none: the base, adapters off)",
                 full_weights="checkpoint: the adapters", load="loading: the base")
    lines = [f"| per GPU, GiB ({describe(run)}; {run.world} GPU(s)) | " + " | ".join(out) + " |",
             "|---" * (len(out) + 1) + "|"]

    def row(text, cell):
        return f"| {text} | " + " | ".join(cell(o) for o in out.values()) + " |"

    lines += [row(text, lambda o, k=k: gib(o["items"][k])) for k, text in names.items()
              if any(o["items"][k] for o in out.values())]
    lines += [row(f"**phase: {k}**", lambda o, k=k: gib(o["phases"][k]))
              for k in next(iter(out.values()))["phases"]]
    lines += [row("**peak (phase)**", lambda o: f"**{gib(o['peak'][1])}** ({o['peak'][0]})"),
              row(f"allocator fragmentation, +{run.fragmentation:.0%} (assumed)",
                  lambda o: gib(o["fragmentation"])),
              row("**peak + fragmentation**", lambda o: f"**{gib(o['total'])}**")]
    math_total = out[next(iter(out))]["total"]
    return "\n".join([
        f"# Memory per GPU of train.py with LoRA (modelled: `python tools/memory.py --world "
        f"{run.world} --lora-rank {run.lora_rank}`)", "",
        f"LLaDA-8B-Instruct, {n_params(s):,} parameters frozen in {run.precision}, "
        f"{memory.lora_params(s, run.lora_rank):,} adapter parameters (rank {run.lora_rank} on "
        "every linear layer of the 32 blocks, fp32, AdamW); the reference is the base with the "
        f"adapters off. {run.rollouts_per_rank} rollouts per GPU, {run.rollout_batch} rows per "
        "sampler forward (the paper's 16 prompts x G = 8). Assumptions: memory.py's docstring.",
        "", f"**Peak + fragmentation: {gib(math_total)} GiB per GPU on the math attention path "
        f"({gib(out[list(out)[1]]['total'])} GiB with a fused kernel).**", "", *lines, ""])


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
    "fp32, LoRA rank 16 (DDP)": dict(precision="fp32", gen_length=64, micro_batch=4, lora_rank=16),
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
                fsdp="lora_rank" not in VARIANTS[name],
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
        fsdp=not run.fp32_gather and not run.lora_rank,
        lora_rank=run.lora_rank,
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

    model, wrapped, ref, tok, mask_id = train.build(
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
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters
    optimizer = torch.optim.AdamW(trainable, lr=1e-6, weight_decay=0.0)
    for p in trainable:
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
    return model, wrapped, ref, tok, mask_id, optimizer, got


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
    import mdpo
    import optimise
    import rollouts
    import toy

    run, peaks, t0 = variant_run(name), {}, time.time()
    cfg = variant_config(run, tmp)
    examples = [ex for ex in toy.make_task("toy-countdown", 200, 0) if len(ex["prompt"]) == P_TOY]
    example = examples[rank]
    # the variant before this one, in this process, left models in reference cycles: collected now,
    # not half-way through this variant's phases (where their freeing would hide up to a shard)
    gc.collect()
    rss0 = vm_bytes("VmRSS:")
    model, wrapped, ref, tok, mask_id, optimizer, got = build(run, cfg, rank, world)
    gen = torch.Generator().manual_seed(rank)
    with phase("rollout", peaks, rss0):
        group = rollouts.sample_group(
            model.eval(), tok, [example], cfg, mask_id, gen, 0, record=True
        )
    got["policy root gathered after rollout"] = gathered_bytes(model.train())
    batches = micro_batches(group, mask_id, run.micro_batch, gen)
    n_tokens = sum(b.loss_mask.sum().item() for b in batches)
    saved = {}

    def pack(t):  # a saved tensor that is no parameter's storage (sharded or gathered)
        if t.untyped_storage().data_ptr() not in {
            to_local(p).untyped_storage().data_ptr() for p in model.parameters()
        }:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with phase("train", peaks, rss0):  # updates.mdpo_update's micro-batch loop
        optimise.fix_log_probs(model, ref, batches, cfg, cfg.temperature)
        for i, b in enumerate(batches):
            if run.unsharded_grads:  # the old accumulation: reduce-scatter after the last only
                model.set_requires_gradient_sync(i == len(batches) - 1)
            hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
            with optimise.micro_step(wrapped, i, len(batches), cfg), \
                    hooks if i == 0 else contextlib.nullcontext():
                logp = optimise.policy_logp(wrapped, b, 0, cfg.temperature)  # (b, L)
                old, reference_logp = optimise.fixed_logps(b, 0, logp)
                loss = mdpo.mdpo_loss(logp, old, reference_logp, b.adv, b.loss_mask, cfg.eps,
                                      cfg.beta, n_tokens)
            loss.backward()
    got.update(
        {
            "gradient shards after train": local_bytes(p.grad for p in model.parameters()
                                                         if p.grad is not None),
            "saved tensors, micro-batch 1": sum(saved.values()),
            "reference root gathered": gathered_bytes(ref),
        }
    )
    with phase("optimizer", peaks, rss0):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if name in list(VARIANTS)[:2] or run.lora_rank:
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
        # FSDP only: a DDP model's parameters are all whole
        "policy root gathered after rollout": i["root"] if run.fsdp else None,
        "gradient shards after train": i["grads"],
        "reference root gathered": 0 if run.fsdp else None,  # resharded after its forward
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
        ("world", "GPUs (FSDP2 shares the model over them; LoRA runs DDP, a base on each)"),
        ("micro_batch", "train.py --micro-batch"),
        ("prompt_len", "longest prompt of a micro-batch, tokens (the paper's CSV: up to ~550)"),
        ("gen_length", "train.py --gen-length"),
        ("steps", "train.py --steps"),
        (
            "rollout_batch",
            "rows per sampler forward: G x prompts per rank / block sizes (default: the paper's "
            "8 x 16 prompts over --world GPUs, / 2)",
        ),
        ("rollouts_per_rank", "rollouts a GPU holds (default: the paper's 8 x 16 / --world)"),
        ("lora_rank", "train.py --lora-rank: the LoRA plan (one GPU, or DDP; no FSDP)"),
        ("eval_batch", "train.py --eval-batch-size"),
        ("gathered_blocks", "blocks FSDP2 holds gathered at once (prefetch depth)"),
        ("reduces_in_flight", "blocks' gradient reduce-scatters FSDP2 has in flight"),
    ]:
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=None if name.startswith("rollout") else getattr(d, name),
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
        "--out",
        type=Path,
        default=None,
        help="markdown file written (default results/memory.md; with --lora-rank "
        "results/memory-lora.md)",
    )
    p.add_argument(
        "--validate",
        action="store_true",
        help="measure the toy on 2 CPU ranks against the model (~2 min on 2 cores; every "
        "phase peak is expected to agree)",
    )
    a = vars(p.parse_args(argv))
    if a.pop("validate"):
        return validate()
    out = a.pop("out") or (OUT.with_name("memory-lora.md") if a["lora_rank"] else OUT)
    a["rollouts_per_rank"] = a["rollouts_per_rank"] or 8 * 16 // a["world"]
    a["rollout_batch"] = a["rollout_batch"] or max(a["rollouts_per_rank"] // 2, 1)
    run = Run(**a, fsdp=not a["lora_rank"])
    text = lora_report(LLADA_8B, run) if run.lora_rank else report(LLADA_8B, run)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
