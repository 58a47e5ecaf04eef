r"""SFT (Eq. 1), MDPO (Eq. 4-6, 11, 12) and the diffu-GRPO baseline for masked diffusion LMs, plain torch.distributed.

Runbook
  toy pipeline, CPU, ~8 min:   python train.py
      SFT-trains the toy base on toy-countdown (cached in out/toy-countdown-base, next to --out), runs MDPO on it and
      prints greedy accuracy before / after (out/run/table.md). A rerun picks up where it stopped.
  plot a finished run:         python train.py --out out/run --plot        (nothing left to train: just the plot)
  diffu-GRPO baseline (d1):    python train.py --algo diffu-grpo --out out/grpo
  two CPU processes (gloo):    torchrun --nproc_per_node 2 train.py --out out/ddp
  one node, 8 GPUs (nccl):     torchrun --nproc_per_node 8 train.py --model GSAI-ML/LLaDA-8B-Instruct \
                                   --trust-remote-code --task math500 --fsdp --out out/llada-mdpo \
                                   --train-file ../shared/data/math_overdenoising_llada_epoch1.csv
  several nodes:               torchrun --nnodes N --node_rank R --master_addr HOST --nproc_per_node 8 train.py ...

One MDPO update (Section 2.3, Appendix A): every rank takes its prompts, samples G rollouts of each with
sample.generate(record=True) (block size alternating over groups: Section 3.4's mixture), scores the full
prediction of every step (rewards.py), turns the rewards into step scores (Eq. 11), group advantages (Eq. 6)
and the c steps of largest non-zero |A|, then runs one forward/backward per trained step on x_bar_t with the
recorded predictions x_{t-1} as targets (Eq. 4, 5, 12), --inner-steps times. diffu-GRPO: see grpo.py.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import transformers

import checkpoint
import distributed
import eval as evaluation
import grpo
import mdpo
import report
import rewards
import sample
import tasks
import toy
from distributed import all_sum, print0

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
# model
p.add_argument("--model", default="toy", help="'toy' (an SFT-built toy base, cached in <task>-base/ next to --out) "
               "or a model directory / HF name (paper: GSAI-ML/LLaDA-8B-Instruct)")
p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (needed for LLaDA)")
p.add_argument("--mask-id", type=int, default=None, help="[MASK] id if the tokenizer does not say (LLaDA: 126336)")
# data
p.add_argument("--task", default="toy-countdown", choices=tasks.TASKS, help="reward and held-out set: toy-countdown, "
               "toy-arith, math500, countdown (math = the training CSV's task, math reward)")
p.add_argument("--train-file", default=None, help="training prompts (.jsonl/.csv; formats: README), e.g. the "
               "paper's over-denoising subset ../shared/data/math_overdenoising_llada_epoch1.csv; toy tasks generate theirs")
p.add_argument("--eval-data", default=None, help="held-out set of --eval-every (default: toy val split / task's file)")
p.add_argument("--n-train", type=int, default=5000, help="toy training problems to generate (nearly the whole train "
               "split: 5.9k toy-countdown, 5.2k toy-arith)")
p.add_argument("--n-eval", type=int, default=500, help="held-out problems of --eval-every (val) and of the toy table (test)")
p.add_argument("--prefilter", default="none", choices=["none", "overdenoise"], help="overdenoise: train only on "
               "prompts greedy decoding gets right at some step but wrong at the end (Section 3.3; paper: on)")
p.add_argument("--format-score", type=float, default=None, help="countdown reward of a well-formed wrong answer "
               "(paper: 0, binary; d1, and our diffu-grpo default: 0.1)")
# algorithm
p.add_argument("--algo", default="mdpo", choices=["sft", "mdpo", "diffu-grpo"], help="sft = Eq. 1 on reference "
               "completions; mdpo; diffu-grpo = d1's baseline (grpo.py)")
# rollouts
p.add_argument("--gen-length", type=int, default=None, help="tokens generated (paper 512, toy 40)")
p.add_argument("--block-lengths", default=None, help="block sizes, alternating over groups (paper 128,512; toy 10,40)")
p.add_argument("--steps", type=int, default=None, help="denoising steps T of a rollout (paper 128, toy 16)")
p.add_argument("--remasking", default="lcr", choices=sample.REMASKING, help="remasking of the rollouts (paper: lcr)")
p.add_argument("--temperature", type=float, default=None, help="rollout temperature > 0 (LLaDA: 0.4, the authors' "
               "README command 'with the paper's setting', which overrides their recipe file's 0.1; toy 0.7)")
# MDPO and diffu-GRPO
p.add_argument("--group-size", type=int, default=8, help="G rollouts per prompt (paper 8)")
p.add_argument("--prompts-per-update", type=int, default=None, help="prompts per update over all ranks (paper 16; toy 8)")
p.add_argument("--top-c", type=int, default=8, help="MDPO: c steps of largest non-zero |A| per rollout (paper 8)")
p.add_argument("--loss-norm", default="step", choices=mdpo.LOSS_NORMS, help="MDPO normaliser (mdpo.loss_denominators): "
               "step (authors' code), token, paper (Eq. 4 as written)")
p.add_argument("--eps", type=float, default=None, help="clip range of Eq. 5 (MDPO 0.2; diffu-GRPO 0.5)")
p.add_argument("--beta", type=float, default=None, help="KL weight (MDPO paper 0.08, authors' README 0.02; toy 0.01; diffu-GRPO 0.04)")
p.add_argument("--inner-steps", type=int, default=None, help="mu optimiser steps per batch of rollouts (MDPO 1; "
               "diffu-GRPO 12 math, 8 countdown)")
p.add_argument("--p-mask", type=float, default=0.15, help="diffu-GRPO: prompt masking rate (d1 0.15)")
# optimisation
p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (paper 7e-7; toy RL 3e-5, toy SFT 2e-3)")
p.add_argument("--max-updates", type=int, default=None, help="batches of rollouts (paper 100; toy MDPO 96, diffu-GRPO "
               "12 = 96 optimiser steps at mu 8; toy SFT: optimiser steps, 1500)")
p.add_argument("--lr-schedule", default=None, choices=["constant", "cosine"], help="constant (paper) or cosine "
               "decay to 0 over --max-updates (toy SFT)")
p.add_argument("--micro-batch", type=int, default=64, help="sequences per forward/backward; the rest is accumulated")
p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm")
p.add_argument("--fsdp", action="store_true", help="shard model, gradients, optimiser and reference with FSDP2")
p.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="compute dtype of rollouts, evaluation "
               "and forwards; master weights, gradient reduction and the optimiser stay fp32 (default: bf16 on CUDA)")
p.add_argument("--activation-checkpointing", action="store_true", help="recompute each block in the backward")
# logging and checkpoints
p.add_argument("--out", default="out/run", help="output dir: log.jsonl, last/, best/, table.md, plot.png")
p.add_argument("--resume", action="store_true", help="continue OUT's run even if its settings differ from these")
p.add_argument("--save-every", type=int, default=25, help="write OUT/last every K updates (and at the end)")
p.add_argument("--eval-every", type=int, default=0, help="score the held-out set greedily every K updates, keep best/")
p.add_argument("--eval-batch-size", type=int, default=None, help="prompts per forward when evaluating (toy 64, LLaDA 8)")
p.add_argument("--plot", action="store_true", help="render log.jsonl to OUT/plot.png at the end")
p.add_argument("--seed", type=int, default=0, help="base seed (each rank adds its rank)")

TOY = dict(gen_length=40, block_lengths="10,40", steps=16, temperature=0.7, prompts_per_update=8, eval_batch_size=64)
PAPER = dict(gen_length=512, block_lengths="128,512", steps=128, temperature=0.4, prompts_per_update=16, lr=7e-7,
             max_updates=100, lr_schedule="constant", eval_batch_size=8)
ALGO = {"mdpo": dict(eps=0.2, beta=0.08, inner_steps=1, format_score=0.0),
        "diffu-grpo": dict(eps=0.5, beta=0.04, format_score=0.1), "sft": dict(eps=0.2, beta=0.0, inner_steps=1, format_score=0.0)}
TOY_ALGO = {"mdpo": dict(lr=3e-5, max_updates=96, lr_schedule="constant", beta=0.01),  # lr: val probes (reproduce.py
            "diffu-grpo": dict(lr=3e-5, max_updates=12, lr_schedule="constant", beta=0.01),  # sweeps its own); x mu = 96
            "sft": dict(lr=2e-3, max_updates=1500, lr_schedule="cosine")}
AT_LEAST = dict(gen_length=1, steps=1, group_size=2, prompts_per_update=1, top_c=1, beta=0,
                inner_steps=1, p_mask=0, max_updates=1, micro_batch=1, save_every=1, eval_every=0, eval_batch_size=1,
                n_train=1, n_eval=1, format_score=0, mask_id=0)
NOT_CONFIG = {"resume", "plot", "save_every", "eval_every", "eval_batch_size"}  # may change between a run's sessions


def resolve(args):
    """Fill the flags left unset with the toy's or the paper's values, then check every flag."""
    toy_task = args.task in tasks.TOY_TASKS
    grpo_mu = {"inner_steps": 12 if rewards.TASK_KIND[args.task] == "math" else 8} if args.algo == "diffu-grpo" else {}
    for key, value in {**(TOY if toy_task else PAPER), **ALGO[args.algo], **(TOY_ALGO[args.algo] if toy_task else {}),
                       **grpo_mu, "precision": "bf16" if torch.cuda.is_available() else "fp32"}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if not all(b.strip().isdigit() and int(b) > 0 for b in str(args.block_lengths).split(",")):
        p.error(f"--block-lengths {args.block_lengths}: must be a comma list of positive integers")
    args.block_lengths = [int(b) for b in str(args.block_lengths).split(",")]
    for key, low in AT_LEAST.items():
        if getattr(args, key) is not None and getattr(args, key) < low:
            p.error(f"--{key.replace('_', '-')} {getattr(args, key)}: must be >= {low}")
    for key in ("eps", "lr", "grad_clip", "temperature") if args.algo != "sft" else ("lr", "grad_clip"):
        if getattr(args, key) <= 0:
            p.error(f"--{key.replace('_', '-')} {getattr(args, key)}: must be > 0" + (
                " (greedy rollouts of a group are all the same: every advantage would be 0)" * (key == "temperature")))
    n_blocks, world = [args.gen_length // b for b in args.block_lengths], int(os.environ.get("WORLD_SIZE", 1))
    checks = [("--block-lengths", args.block_lengths, all(args.gen_length % b == 0 for b in args.block_lengths),
               f"sizes that divide --gen-length {args.gen_length}"),
              ("--steps", args.steps, all(args.steps % n == 0 for n in n_blocks), f"a multiple of every block count {n_blocks}"),
              ("--prompts-per-update", args.prompts_per_update, args.prompts_per_update % world == 0 or args.algo == "sft",
               f"a multiple of the {world} processes (each rank keeps whole groups)"),
              ("--p-mask", args.p_mask, args.p_mask < 1, "< 1"), ("--format-score", args.format_score, args.format_score < 1, "< 1"),
              ("--train-file", args.train_file, toy_task or args.algo == "sft" or args.train_file,
               f"a file of training prompts: --task {args.task} generates none"),
              ("--model", args.model, args.model != "toy" or toy_task, f"a model path or HF name: the toy model "
               f"knows only the toy tasks, not --task {args.task}")]
    for flag, value, ok, allowed in checks:
        if not ok:
            p.error(f"{flag} {value}: must be {allowed}")
    return args


def rollouts(raw, tok, examples, args, mask_id, update, gen, record=True):
    """G rollouts of each example; block sizes alternate over groups. Returns prompt ids (N, P), attention mask
    (N, P+L), completions (N, L) and, with record=True, the recorded x_bar and x_pred (T, N, L) each."""
    G, N = args.group_size, len(examples) * args.group_size
    ids, attn = sample.encode_prompts(tok, tasks.prompt_texts(args.task, examples))
    ids, attn = ids.repeat_interleave(G, 0).to(raw.device), attn.repeat_interleave(G, 0).to(raw.device)  # (N, P)
    block_of_row = torch.tensor([args.block_lengths[(update + n // G) % len(args.block_lengths)] for n in range(N)])
    x = torch.empty(N, ids.shape[1] + args.gen_length, dtype=torch.long, device=raw.device)  # (N, P+L)
    x_bar, x_pred = (torch.empty(args.steps * record, N, args.gen_length, dtype=torch.long, device=raw.device)
                     for _ in range(2))  # (T, N, L) each
    for block in args.block_lengths:  # the same sizes on every rank, so FSDP's collectives line up
        rows = (block_of_row == block).nonzero()[:, 0].to(raw.device)
        if len(rows):
            with distributed.autocast(args.precision, raw.device):
                out = sample.generate(raw, ids[rows], attention_mask=attn[rows], gen_length=args.gen_length,
                                      block_length=block, steps=args.steps, remasking=args.remasking,
                                      temperature=args.temperature, mask_id=mask_id, record=record, generator=gen,
                                      confidence="sampling")
            x[rows] = out[0] if record else out
            if record:
                x_bar[:, rows], x_pred[:, rows] = out[1].x_bar, out[1].x_pred
    full_attn = torch.cat([attn, torch.ones(N, args.gen_length, dtype=attn.dtype, device=attn.device)], 1)
    return ids, full_attn, x[:, ids.shape[1]:], x_bar, x_pred


def mdpo_micro_batches(model, ref, tok, examples, args, mask_id, update, gen, stats):
    """Rollouts -> rewards -> Eq. 11 -> Eq. 6 -> top-c steps with A != 0 -> micro-batches (x_bar_t, x_{t-1}, A)."""
    t0, raw = time.time(), model.module if isinstance(model, DDP) else model
    ids, attn, _, x_bar, x_pred = rollouts(raw, tok, examples, args, mask_id, update, gen)
    t1 = time.time()
    R = rewards.score_trajectory(tasks.step_texts(tok, x_pred), args.task,  # (N, T)
                                 [ex for ex in examples for _ in range(args.group_size)], args.format_score)
    adv = mdpo.group_advantages(mdpo.step_scores(R), args.group_size)  # (N, T)
    sel, valid = mdpo.select_steps(adv, args.top_c)  # (N, c) each
    n_idx, s_idx = torch.arange(len(sel)).repeat_interleave(sel.shape[1])[valid.flatten()], sel[valid]  # (n_valid,)
    stats.update(rollout_s=t1 - t0, reward_s=time.time() - t1, reward=R[:, -1].mean().item(),
                 accuracy=(R[:, -1] == 1).float().mean().item(), trained_steps=valid.float().mean().item(),
                 adv_abs=adv[n_idx, s_idx].abs().mean().item() if len(n_idx) else 0.0)
    P, adv = ids.shape[1], adv.to(ids.device)
    return [dict(x=torch.cat([ids[n], x_bar[s, n]], 1), attn=attn[n], targets=x_pred[s, n], P=P,  # (b, P+L), (b, L)
                 mask=x_bar[s, n] == mask_id, adv=adv[n, s][:, None]) for n, s in  # (b, L), (b, 1)
            zip(n_idx.to(ids.device).split(args.micro_batch), s_idx.to(ids.device).split(args.micro_batch))]


def grpo_micro_batches(model, ref, tok, examples, args, mask_id, update, gen, stats):
    """d1's diffu-GRPO: G completions per prompt, A = final reward - group mean, and one perturbed input per inner
    iteration (completion all [MASK], each prompt token masked with probability p), drawn up front (grpo.py)."""
    t0, raw = time.time(), model.module if isinstance(model, DDP) else model
    ids, attn, completions, _, _ = rollouts(raw, tok, examples, args, mask_id, update, gen, record=False)  # (N, L)
    t1 = time.time()
    R = torch.tensor([rewards.reward(args.task, text, ex, args.format_score) for text, ex in zip(
        tasks.completion_texts(tok, completions), [ex for ex in examples for _ in range(args.group_size)])])  # (N,)
    adv = grpo.group_advantages(R, args.group_size).to(ids.device)  # (N,)
    stats.update(rollout_s=t1 - t0, reward_s=time.time() - t1, reward=R.mean().item(),
                 accuracy=(R == 1).float().mean().item(), adv_abs=adv.abs().mean().item())
    mask = grpo.completion_mask(completions, tok.eos_token_id)  # (N, L)
    items = []
    for c in torch.arange(len(ids), device=ids.device).split(args.micro_batch):
        xs = [grpo.perturbed_input(ids[c], completions[c], attn[c, :ids.shape[1]], mask_id, args.p_mask, gen)
              for _ in range(args.inner_steps)]  # (b, P+L) each
        items.append(dict(xs=xs, attn=attn[c], targets=completions[c], P=ids.shape[1], mask=mask[c], adv=adv[c, None]))
    return items


def policy_logp(model, it, args, x):
    """log p_theta of the targets: one forward on x (b, P+L) -> (b, L). MDPO scores at the rollout temperature
    (so the ratio is 1 at the first update); diffu-GRPO at temperature 1, as d1."""
    return mdpo.token_logp(model(x, attention_mask=it["attn"]).logits[:, it["P"]:], it["targets"],
                           args.temperature if args.algo == "mdpo" else 1.0)


def fixed_log_probs(model, ref, items, args):
    """Before the first inner step, for every inner input: the rollout policy's log-probs (mu > 1 only;
    recomputed with the training forward, so that the ratio is exactly 1 at the first step, as PPO
    implementations do) and the frozen reference's (beta > 0)."""
    with torch.no_grad(), distributed.autocast(args.precision, next(model.parameters()).device):
        for it in items:
            xs = it["xs"] if "xs" in it else [it["x"]]
            if args.inner_steps > 1:
                it["old_logp"] = [policy_logp(model, it, args, x) for x in xs]
            if ref is not None:
                it["ref_logp"] = [policy_logp(ref, it, args, x) for x in xs]


def rl_loss_fn(model, it, args, inner, norm):
    """Loss of one micro-batch (MDPO steps or diffu-GRPO completions), its KL sum and its clipped-token count.
    norm = (trained rows, masked tokens, rollouts) of the whole update, divided by the world size."""
    k = inner if "xs" in it else 0  # diffu-GRPO: the inner-th perturbed input; MDPO: x_bar_t every time
    logp = policy_logp(model, it, args, it["xs"][k] if "xs" in it else it["x"])  # (b, L)
    old = it["old_logp"][k] if "old_logp" in it else logp.detach()  # mu = 1: ratio 1, as in the paper's code
    ref = it["ref_logp"][k] if "ref_logp" in it else None
    if args.algo == "mdpo":
        denom = mdpo.loss_denominators(it["mask"], args.loss_norm, *norm)
        loss, kl = mdpo.mdpo_loss(logp, old, ref, it["adv"], it["mask"], args.eps, args.beta, denom), mdpo.kl_k2
    else:
        loss, kl = grpo.grpo_loss(logp, old, ref, it["adv"], it["mask"], args.eps, args.beta, norm[1]), grpo.kl_k3
    kl_sum = kl(logp, ref)[it["mask"]].sum().item() if ref is not None else 0.0
    return loss, kl_sum, mdpo.clip_fraction(logp, old, it["adv"], it["mask"], args.eps).item() * it["mask"].sum().item()


def backward_micro_batches(wrapped, items, loss_of, args, world):
    """Forward/backward every micro-batch. DDP all-reduces on the last one only (no_sync before); FSDP reduce-
    scatters on every one, so each rank holds sharded gradients, never the full model's, between micro-batches.
    loss_of(item) -> (loss already divided by the update's normaliser, KL sum, clipped tokens).
    Returns [loss, KL sum, clipped tokens, masked tokens] summed over this rank's micro-batches."""
    totals = [0.0, 0.0, 0.0, 0.0]
    for i, it in enumerate(items):
        ddp_wait = world > 1 and not args.fsdp and i < len(items) - 1
        device = next(wrapped.parameters()).device
        with wrapped.no_sync() if ddp_wait else contextlib.nullcontext(), distributed.autocast(args.precision, device):
            loss, kl, clip = loss_of(it)
        loss.backward()
        totals = [a + b for a, b in zip(totals, [loss.item(), kl, clip, it["mask"].sum().item()])]
    return totals


def sft_micro_batches(tok, examples, args, device):
    """Eq. 1's data: prompt + reference completion + [EOS] padding, the completion maskable, split into micro-batches."""
    x, attn, maskable = (v.to(device) for v in tasks.sft_batch(tok, examples, args.task, args.gen_length))  # (B, P+L)
    return [dict(x=x[c], attn=attn[c], mask=maskable[c]) for c in torch.arange(len(x)).split(args.micro_batch)]


def build(args, rank, world, device):
    """(policy with fp32 master weights, its DDP/FSDP wrapper, the frozen reference or None, tokenizer, mask id).
    The reference is the starting model, sharded and run like the policy, so the KL is exactly 0 at the start."""
    out = Path(args.out)
    if args.model == "toy":  # a fresh toy model for SFT, saved once so that every rank and a resume load the same
        if rank == 0 and not (out / "init" / "config.json").exists():
            toy.save_fresh(out / "init", args.seed)
        distributed.barrier()
    start = str(out / "init") if args.model == "toy" else args.model
    model, tok = sample.load_model(start, device, torch.float32, args.trust_remote_code)
    mask_id = sample.resolve_mask_id(tok, model, args.mask_id)
    if args.activation_checkpointing:
        distributed.checkpoint_blocks(model)
    # under FSDP the policy is sharded before the reference is loaded: one full fp32 copy on a GPU at a time
    wrapped = distributed.shard(model, args.precision) if args.fsdp else DDP(model) if world > 1 else model
    ref = None
    if args.algo != "sft" and args.beta > 0:
        ref = sample.load_model(start, device, torch.float32, args.trust_remote_code)[0].requires_grad_(False)
        ref = distributed.shard(ref, args.precision, reshard_root=True) if args.fsdp else ref
    return model.train(), wrapped, ref, tok, mask_id


def optimizer_step(model, wrapped, optimizer, items, loss_of, args, world, step, stats):
    """Backward over the micro-batches, clip, step (skipped and logged if anything is non-finite), zero."""
    device = next(model.parameters()).device
    totals = all_sum(backward_micro_batches(wrapped, items, loss_of, args, world), device)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)  # FSDP: DTensor
    decay = 0.5 * (1 + math.cos(math.pi * step / args.max_updates)) if args.lr_schedule == "cosine" else 1.0
    for group in optimizer.param_groups:
        group["lr"] = args.lr * decay
    if math.isfinite(totals[0]) and math.isfinite(grad_norm):
        optimizer.step()
    else:
        stats["skipped"] = True
        print0(f"update {step + 1}: non-finite loss {totals[0]} or gradient norm {grad_norm}: not applied")
    optimizer.zero_grad(set_to_none=True)
    stats.update(loss=totals[0] / world, kl=totals[1] / max(totals[3], 1), clip_frac=totals[2] / max(totals[3], 1),
                 grad_norm=grad_norm, lr=args.lr * decay, tokens=totals[3])


def train(args, examples, eval_examples, resume_from, rank, world, device):
    """Run --algo from --model (or resume_from); returns the path of the final checkpoint."""
    out, master = Path(args.out), rank == 0
    model, wrapped, ref, tok, mask_id = build(args, rank, world, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator(device=device).manual_seed(args.seed + rank)
    step, pos, best = 0, 0, -1.0
    if resume_from is not None:
        state = checkpoint.load(resume_from, model, optimizer)
        step, pos, best = state["step"], state["pos"], state["best"]
        if len(state["gen"]) == world:
            gen.set_state(state["gen"][rank])
        elif step < args.max_updates:
            print0(f"{resume_from} was written by {len(state['gen'])} processes, this run has {world}: the sampling "
                   "streams start afresh, so the run is not bit-identical to an uninterrupted one")
    if args.algo != "sft" and args.prefilter == "overdenoise":
        examples = evaluation.prefilter(model.eval(), tok, examples, args, mask_id, rank, world)
        model.train()
    log_path = out / "log.jsonl"
    if master:
        kept = [line for line in (log_path.read_text().splitlines() if resume_from and log_path.exists() else [])
                if json.loads(line).get("step", 0) <= step]
        header = json.dumps({"config": checkpoint.config(args)})
        log_path.write_text("".join(line + "\n" for line in (kept or [header])))
    per_rank = args.prompts_per_update // world if args.algo != "sft" else max(args.micro_batch // world, 1)
    build_items = mdpo_micro_batches if args.algo == "mdpo" else grpo_micro_batches
    bar, first = tqdm(total=args.max_updates, initial=step, desc=f"{args.algo} {args.task}", disable=not master), step
    while step < args.max_updates:
        t0, stats, failures = time.time(), {}, rewards.calls["timeout"] + rewards.calls["crash"]
        batch = [examples[tasks.prompt_order(pos + rank * per_rank + i, len(examples), args.seed)] for i in range(per_rank)]
        pos += per_rank * world
        if args.algo == "sft":  # Eq. 1; each micro-batch loss is a mean over its rows: average over micro-steps
            items = sft_micro_batches(tok, batch, args, device)
            loss_of = lambda it: (mdpo.masked_diffusion_loss(  # noqa: E731
                wrapped, it["x"], it["mask"], mask_id, it["attn"], gen) / len(items), 0.0, 0.0)
            optimizer_step(model, wrapped, optimizer, items, loss_of, args, world, step, stats)
        else:
            model.eval()
            items = distributed.pad_micro_batches(build_items(wrapped, ref, tok, batch, args, mask_id, step, gen, stats),
                                                  lambda it: {**it, "mask": torch.zeros_like(it["mask"])})
            distributed.back_to_training(model, args.fsdp)
            trained = [len(it["mask"]) if it["mask"].any() else 0 for it in items]
            norm = [v / world for v in all_sum([sum(trained), sum(it["mask"].sum().item() for it in items),
                                                len(batch) * args.group_size], device)]
            t1 = time.time()
            if norm[0] == 0:  # no advantage anywhere in this update: nothing to learn from it
                stats["no_signal"] = True
            else:
                fixed_log_probs(wrapped, ref, items, args)
                for inner in range(args.inner_steps):
                    loss_of = lambda it: rl_loss_fn(wrapped, it, args, inner, norm)  # noqa: E731
                    optimizer_step(model, wrapped, optimizer, items, loss_of, args, world, step, stats)
            stats["train_s"] = time.time() - t1
            keys = ["reward", "accuracy", "adv_abs"] + (["trained_steps"] if args.algo == "mdpo" else [])
            stats.update(zip(keys, [v / world for v in all_sum([stats[k] for k in keys], device)]))
        step += 1
        stats.update(step=step, seconds=time.time() - t0, tokens_per_s=stats.get("tokens", 0) / (time.time() - t0),
                     reward_failures=int(all_sum([rewards.calls["timeout"] + rewards.calls["crash"] - failures],
                                                 device)[0]))
        if args.eval_every and (step % args.eval_every == 0 or step == args.max_updates):
            stats["eval_accuracy"] = evaluation.sharded_accuracy(model.eval(), tok, eval_examples, args, mask_id,
                                                                 "lcr", args.block_lengths[0], rank, world)[0]
            distributed.back_to_training(model, args.fsdp)
        if step % args.save_every == 0 or step == args.max_updates or "eval_accuracy" in stats:
            new_best = stats.get("eval_accuracy", -1.0) > best
            best = max(best, stats.get("eval_accuracy", -1.0))
            state = {"gen": distributed.all_gather_list([gen.get_state()]), "step": step, "pos": pos, "best": best}
            checkpoint.save(out / "last", model, tok, optimizer, state, rank,
                            full_weights=not args.fsdp or step == args.max_updates or new_best)
            if master and new_best:
                checkpoint.copy(out / "last", out / "best")
        if master:
            with open(log_path, "a") as f:
                f.write(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in stats.items()}) + "\n")
        bar.set_postfix({k: f"{stats[k]:.3f}" for k in ("loss", "reward", "eval_accuracy") if k in stats})
        bar.update(1)
    bar.close()
    return out / "last", step - first


def main(argv=None):
    args = resolve(p.parse_args(argv))
    transformers.utils.logging.disable_progress_bar()
    toy_base = args.model == "toy" and args.algo != "sft"  # the toy pipeline: an SFT base first, then RL on it
    base = Path(args.out).parent / f"{args.task}-base"
    try:  # everything that can be checked before a model is loaded
        if not toy_base and args.model != "toy":
            sample.check_model_path(args.model, args.mask_id)
        examples = (tasks.load_examples(args.task, args.train_file) if args.train_file
                    else toy.make_task(args.task, args.n_train, args.seed, split="train"))
        eval_examples = (tasks.load_examples(args.task, args.eval_data, args.n_eval, args.seed, split="val")
                         if args.eval_every else None)  # toy tasks: best/ is chosen on val, never on test
        test_examples = tasks.load_examples(args.task, None, args.n_eval, 0, split="test") if toy_base else None
        sft_args = resolve(p.parse_args(["--algo", "sft", "--task", args.task, "--out", str(base), "--precision",
                                         args.precision])) if toy_base else None
        args.model = str(base / "last") if toy_base else args.model  # recorded so, and compared so on a rerun
        resume_from = checkpoint.resume_point(args, NOT_CONFIG)
        checkpoint.check_writable([base] * toy_base + [Path(args.out)])
    except (ValueError, OSError) as e:
        sys.exit(f"train.py: error: {e}")
    rank, world, device = distributed.setup_distributed()
    try:
        if toy_base:  # the base always from seed 0: RL seeds vary, the base does not
            train(sft_args, toy.make_task(args.task, sft_args.n_train, 0, "train"), None,
                  checkpoint.resume_point(sft_args, NOT_CONFIG), rank, world, device)
        final, n_new = train(args, examples, eval_examples, resume_from, rank, world, device)
        table, written = Path(args.out) / "table.md", [Path(args.out) / "log.jsonl", final]
        if toy_base and (n_new or not table.exists()):  # a finished run's table is not computed again
            text = evaluation.compare({"toy base (SFT, Eq. 1)": args.model, f"+ {args.algo}": str(final)},
                                      test_examples, args, rank, world, device)
            if rank == 0:
                table.write_text(text)
        if toy_base and rank == 0:
            print0("\n" + table.read_text())
            written.append(table)
        if args.plot and rank == 0:
            report.plot_log(Path(args.out) / "log.jsonl", Path(args.out) / "plot.png")
            written.append(Path(args.out) / "plot.png")
        print0("results: " + ", ".join(map(str, written)))
    except KeyboardInterrupt:
        last = checkpoint.latest(args.out)
        saved = f"{last} holds update {torch.load(last / 'trainer_state.pt')['step']}" if last else "nothing was saved"
        print0(f"\ninterrupted: {saved}; run the same command again to continue")
        sys.exit(130)
    finally:
        distributed.cleanup_distributed()


if __name__ == "__main__":
    main()
