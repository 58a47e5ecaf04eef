"""SFT (Eq. 1) and MDPO (Eq. 4-6, 11, 12) for masked diffusion LMs, with plain torch.distributed DDP.

Runbook
  toy pipeline, CPU, ~10 min:  python train.py
      builds the toy base (SFT on toy-countdown, cached in out/toy-base), measures it, keeps the
      over-denoised training prompts (Section 3.3), runs MDPO and prints a before/after table.
  two CPU processes (gloo):    torchrun --nproc_per_node 2 train.py --max-updates 20
  one node, 8 GPUs (nccl):     torchrun --nproc_per_node 8 train.py --model GSAI-ML/LLaDA-8B-Instruct \
                                   --trust-remote-code --task math500 --out out/llada-mdpo \
                                   --train-file ../shared/data/math_overdenoising_llada_epoch1.csv
  several nodes:               torchrun --nnodes N --node_rank R --master_addr HOST --nproc_per_node 8 train.py ...

One update of MDPO (Section 2.3, Appendix A): every rank takes its prompts, samples G rollouts of
each with sample.generate(record=True) (block size alternating over groups: Section 3.4's mixture),
scores the full prediction of every step (rewards.py), turns the rewards into step scores (Eq. 11),
group advantages (Eq. 6) and the c steps of largest |A|, then runs one forward/backward per selected
step on x_bar_t with the recorded predictions x_{t-1} as targets (Eq. 4, 5, 12), --inner-steps times.
"""
import argparse
import contextlib
import gc
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_optimizer_state_dict
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import transformers

import eval as evaluation
import mdpo
import rewards
import sample
import toy

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
# model
p.add_argument("--model", default="toy", help="'toy' (SFT-built toy base, cached in OUT/toy-base) or an HF name/path")
p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (needed for LLaDA)")
p.add_argument("--mask-id", type=int, default=None, help="[MASK] id if the tokenizer does not say (LLaDA: 126336)")
# data
p.add_argument("--task", default="toy-countdown", help="toy-countdown | toy-arith | math500 | countdown (reward + eval set)")
p.add_argument("--train-file", default=None, help="training prompts (.jsonl/.csv), e.g. the paper's over-denoising "
               "subset ../shared/data/math_overdenoising_llada_epoch1.csv; toy tasks generate their own")
p.add_argument("--eval-data", default=None, help="held-out set for --eval-every (default: the task's test file)")
p.add_argument("--n-train", type=int, default=2000, help="toy training problems to generate")
p.add_argument("--n-eval", type=int, default=500, help="held-out problems scored by --eval-every and the final table")
p.add_argument("--prefilter", default=None, choices=["none", "overdenoise"], help="keep only prompts that are correct "
               "at some intermediate step but wrong at the end under greedy decoding (Section 3.3; default none: "
               "on the toy it overfits the few hundred prompts it keeps, see README)")
# algorithm
p.add_argument("--algo", default="mdpo", choices=["sft", "mdpo"], help="sft = Eq. 1 on reference completions; mdpo")
# rollouts
p.add_argument("--gen-length", type=int, default=None, help="tokens generated (paper 512, toy 40)")
p.add_argument("--block-lengths", default=None, help="block sizes, alternating over groups (paper 128,512; toy 10,40)")
p.add_argument("--steps", type=int, default=None, help="denoising steps T of a rollout (paper 128, toy 20)")
p.add_argument("--remasking", default="lcr", choices=sample.REMASKING, help="remasking of the rollouts (paper: lcr)")
p.add_argument("--temperature", type=float, default=None, help="rollout temperature > 0 (authors 0.4; toy 0.7)")
# MDPO
p.add_argument("--group-size", type=int, default=8, help="G rollouts per prompt (paper 8)")
p.add_argument("--prompts-per-update", type=int, default=None, help="prompts per update over all ranks (paper 16 x G 8 = 128; toy 8)")
p.add_argument("--top-c", type=int, default=8, help="c steps of largest |A| trained per rollout (paper 8)")
p.add_argument("--eps", type=float, default=0.2, help="clip range of Eq. 5 (paper 0.2)")
p.add_argument("--beta", type=float, default=None, help="KL weight of Eq. 4 (paper 0.08; toy 0.01)")
p.add_argument("--inner-steps", type=int, default=1, help="mu optimiser steps per batch of rollouts (paper 1)")
# optimisation
p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (paper 7e-7; toy MDPO 3e-4, toy SFT 2e-3)")
p.add_argument("--max-updates", type=int, default=None, help="optimiser updates (paper 100; toy MDPO 120, toy SFT 1500)")
p.add_argument("--lr-schedule", default=None, choices=["constant", "cosine"], help="constant (paper) or cosine "
               "decay to 0 over --max-updates (toy SFT)")
p.add_argument("--micro-batch", type=int, default=64, help="sequences per forward/backward; the rest is accumulated")
p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm")
p.add_argument("--fsdp", action="store_true", help="shard the model with FSDP2 fully_shard instead of DDP")
# logging and checkpoints
p.add_argument("--out", default="out/run", help="output dir: log.jsonl, last/, best/, plot.png")
p.add_argument("--resume", action="store_true", help="continue from OUT/last (same result as an uninterrupted run)")
p.add_argument("--save-every", type=int, default=25, help="write OUT/last every K updates (and at the end)")
p.add_argument("--eval-every", type=int, default=0, help="score the held-out set greedily every K updates, keep best/")
p.add_argument("--plot", action="store_true", help="render log.jsonl to OUT/plot.png at the end")
p.add_argument("--seed", type=int, default=0, help="base seed (each rank adds its rank)")

TOY = dict(gen_length=40, block_lengths="10,40", steps=20, temperature=0.7, prompts_per_update=8, beta=0.01,
           prefilter="none")
PAPER = dict(gen_length=512, block_lengths="128,512", steps=128, temperature=0.4, prompts_per_update=16, beta=0.08,
             prefilter="none", lr=7e-7, max_updates=100, lr_schedule="constant")
TOY_ALGO = {"mdpo": dict(lr=3e-4, max_updates=120, lr_schedule="constant"),
            "sft": dict(lr=2e-3, max_updates=1500, lr_schedule="cosine")}


def resolve(args):
    """Fill the flags left unset with the toy or the paper's values."""
    for key, value in ({**TOY, **TOY_ALGO[args.algo]} if args.task.startswith("toy") else PAPER).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.block_lengths = [int(b) for b in str(args.block_lengths).split(",")]
    return args


def setup_distributed():
    """(rank, local rank, world size, device) from torchrun's variables; one plain process without them."""
    if "RANK" not in os.environ:
        return 0, 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local, cuda = int(os.environ["LOCAL_RANK"]), torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)  # before init, so nccl binds this rank to its GPU
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), local, dist.get_world_size(), device


def cleanup_distributed():
    """Tear the process group down last. Callers first drop what holds it (the DDP/FSDP model, its optimiser):
    gloo's destructor joins its worker thread while holding the GIL, and that thread may need the GIL to free
    its last work item, so the group must die in destroy_process_group (which releases the GIL), never when a
    model that still references it is garbage-collected (a deadlock, seen in CI)."""
    if dist.is_initialized():
        gc.collect()  # modules in reference cycles let go of the group now, while the registry still holds it
        dist.barrier()
        dist.destroy_process_group()


def all_sum(values, device):
    """Sum a list of floats over ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def print0(*a):
    if int(os.environ.get("RANK", 0)) == 0:
        tqdm.write(" ".join(map(str, a)))


def accuracy(model, tok, examples, args, mask_id, remasking, block_length, rank, world):
    """Greedy accuracy on examples, each rank scoring its shard. Returns (accuracy, step rewards of this shard).
    Shards are padded to equal length (the padding is not counted), so every rank runs the same forwards."""
    shard = examples[rank::world]
    padded = shard + examples[: math.ceil(len(examples) / world) - len(shard)]
    rows = evaluation.evaluate(model, tok, padded, args.task, gen_length=args.gen_length, block_length=block_length,
                               steps=args.steps, remasking=remasking, mask_id=mask_id, trajectory=True,
                               progress=False, batch_size=max(args.micro_batch, 64))[: len(shard)]
    correct, n = all_sum([sum(r["correct"] for r in rows), len(rows)], next(model.parameters()).device)
    return correct / max(n, 1), torch.tensor([r["step_rewards"] for r in rows]).reshape(len(rows), args.steps)


def prefilter(model, tok, examples, args, mask_id, rank, world):
    """Section 3.3: keep the prompts that greedy decoding gets right at some step but wrong at the end
    (under any of the block sizes used for rollouts). Cached in OUT/prefilter.jsonl."""
    cache = Path(args.out) / "prefilter.jsonl"
    if cache.exists():
        return [json.loads(line) for line in cache.read_text().splitlines()]
    keep = torch.zeros(len(examples[rank::world]), dtype=torch.bool)
    for block in args.block_lengths:
        _, step_rewards = accuracy(model, tok, examples, args, mask_id, "lcr", block, rank, world)
        keep |= evaluation.overdenoised(step_rewards)
    kept = [ex for ex, k in zip(examples[rank::world], keep.tolist()) if k]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, kept)
        kept = [ex for part in gathered for ex in part]
    if rank == 0:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text("".join(json.dumps(ex) + "\n" for ex in kept))
    return kept


def rollouts(raw, tok, examples, args, mask_id, update, gen):
    """G rollouts of each example with recorded trajectories; block sizes alternate over groups.
    Returns (prompt ids (N, P), attention mask (N, P+L), Trajectory fields stacked (T, N, L), texts N x T)."""
    G, N = args.group_size, len(examples) * args.group_size
    ids, attn = sample.encode_prompts(tok, evaluation.prompt_texts(args.task, examples), evaluation.system_prompt(args.task))
    ids, attn = ids.repeat_interleave(G, 0).to(raw.device), attn.repeat_interleave(G, 0).to(raw.device)  # (N, P)
    block_of_row = torch.tensor([args.block_lengths[(update + n // G) % len(args.block_lengths)] for n in range(N)])
    shape = (args.steps, N, args.gen_length)
    x_bar, x_pred, logp = (torch.empty(shape, dtype=d, device=raw.device) for d in (torch.long, torch.long, torch.float))
    for block in args.block_lengths:
        rows = (block_of_row == block).nonzero()[:, 0].to(raw.device)
        if len(rows):
            _, tr = sample.generate(raw, ids[rows], attention_mask=attn[rows], gen_length=args.gen_length,
                                    block_length=block, steps=args.steps, remasking=args.remasking,
                                    temperature=args.temperature, mask_id=mask_id, record=True, generator=gen)
            x_bar[:, rows], x_pred[:, rows], logp[:, rows] = tr.x_bar, tr.x_pred, tr.logp
    texts = evaluation.decode_steps(tok, x_pred)  # N x T
    full_attn = torch.cat([attn, torch.ones(N, args.gen_length, dtype=attn.dtype, device=attn.device)], 1)
    return ids, full_attn, x_bar, x_pred, logp, texts


def mdpo_micro_batches(model, ref, tok, examples, args, mask_id, update, gen, stats):
    """Rollouts -> rewards -> Eq. 11 -> Eq. 6 -> top-c steps -> micro-batches of (x_bar_t, x_{t-1}, A) to train on."""
    t0 = time.time()
    raw = model.module if isinstance(model, DDP) else model
    ids, attn, x_bar, x_pred, old_logp, texts = rollouts(raw, tok, examples, args, mask_id, update, gen)
    t1 = time.time()
    R = rewards.score_trajectory(texts, args.task, [ex for ex in examples for _ in range(args.group_size)])  # (N, T)
    adv = mdpo.group_advantages(mdpo.step_scores(R), args.group_size)  # (N, T)
    sel = mdpo.select_steps(adv, args.top_c)  # (N, c)
    stats.update(rollout_s=t1 - t0, reward_s=time.time() - t1, reward=R[:, -1].mean().item(),
                 accuracy=(R[:, -1] == 1).float().mean().item(), adv_abs=adv.gather(1, sel).abs().mean().item(),
                 adv_nonzero=(adv.gather(1, sel) != 0).float().mean().item())
    P, items, adv = ids.shape[1], [], adv.to(ids.device)
    n_idx = torch.arange(len(sel), device=ids.device).repeat_interleave(sel.shape[1])  # (N * c,) rollout
    s_idx = sel.reshape(-1).to(ids.device)  # (N * c,) its selected step
    for n, s in zip(n_idx.split(args.micro_batch), s_idx.split(args.micro_batch)):
        it = dict(x=torch.cat([ids[n], x_bar[s, n]], 1), attn=attn[n], targets=x_pred[s, n], P=P,  # (b, P+L), (b, L)
                  mask=x_bar[s, n] == mask_id, adv=adv[n, s][:, None], old_logp=old_logp[s, n])  # (b, L), (b, 1)
        if ref is not None:
            with torch.no_grad():
                ref_logits = ref(it["x"], attention_mask=it["attn"]).logits[:, P:]  # (b, L, V)
                it["ref_logp"] = mdpo.token_logp(ref_logits, it["targets"], args.temperature)
        items.append(it)
    return items


def mdpo_loss_fn(model, it, args, n_tokens):
    logp = mdpo.token_logp(model(it["x"], attention_mask=it["attn"]).logits[:, it["P"]:], it["targets"], args.temperature)
    old = logp.detach() if args.inner_steps == 1 else it["old_logp"]  # ratio 1 at mu = 1, as in the paper's code
    loss = mdpo.mdpo_loss(logp, old, it.get("ref_logp"), it["adv"], it["mask"], args.eps, args.beta, n_tokens)
    kl = mdpo.kl_k2(logp, it["ref_logp"])[it["mask"]].sum().item() if "ref_logp" in it else 0.0
    clip = mdpo.clip_fraction(logp, old, it["adv"], it["mask"], args.eps).item() * it["mask"].sum().item()
    return loss, kl, clip


def backward_micro_batches(wrapped, items, loss_of, world, fsdp, device):
    """Forward/backward every micro-batch; gradients are all-reduced across ranks on the last one only.
    loss_of(item) -> (loss already divided by the update's normaliser, KL sum, clipped tokens).
    Returns [loss, KL sum, clipped tokens, masked tokens] summed over this rank's micro-batches."""
    totals = [0.0, 0.0, 0.0, 0.0]
    for i, it in enumerate(items):
        last = i == len(items) - 1
        if fsdp:
            wrapped.set_requires_gradient_sync(last)
        sync = wrapped.no_sync() if world > 1 and not fsdp and not last else contextlib.nullcontext()
        with sync, torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, kl, clip = loss_of(it)
            loss.backward()
        totals = [a + b for a, b in zip(totals, [loss.item(), kl, clip, it["mask"].sum().item() if "mask" in it else 0])]
    return totals


def sft_micro_batches(tok, examples, args, device):
    """Prompt + reference completion + [EOS] padding to gen_length; the completion part is maskable (Eq. 1)."""
    ids, attn = sample.encode_prompts(tok, evaluation.prompt_texts(args.task, examples), evaluation.system_prompt(args.task))
    comp = [tok.encode(ex["completion"])[: args.gen_length] for ex in examples]
    comp = torch.tensor([c + [tok.eos_token_id] * (args.gen_length - len(c)) for c in comp])  # (B, L)
    x = torch.cat([ids, comp], 1).to(device)  # (B, P+L)
    attn = torch.cat([attn, torch.ones_like(comp)], 1).to(device)
    maskable = torch.zeros_like(x, dtype=torch.bool)
    maskable[:, ids.shape[1]:] = True
    return [dict(x=x[c], attn=attn[c], maskable=maskable[c]) for c in torch.split(torch.arange(len(x)), args.micro_batch)]


def save_checkpoint(path, model, tok, optimizer, state, master):
    """save_pretrained weights + optimiser, RNG and data position, written to PATH.tmp and renamed.
    Every rank calls it: with FSDP the full state is gathered from the shards (onto rank 0's CPU)."""
    weights, optim = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not master:
        return
    path, tmp, old = Path(path), Path(f"{path}.tmp"), Path(f"{path}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=weights)
    tok.save_pretrained(tmp)
    torch.save({"optimizer": optim, **state}, tmp / "trainer_state.pt")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(out):
    """OUT/last, or OUT/last.old if a crash hit between the two renames of save_checkpoint."""
    return next((Path(out) / n for n in ("last", "last.old") if (Path(out) / n / "trainer_state.pt").exists()), None)


def train(args, rank, world, device):
    """Run --algo on --model; returns the path of the final weights."""
    master, out, dtype = rank == 0, Path(args.out), torch.bfloat16 if device.type == "cuda" else torch.float32
    out.mkdir(parents=True, exist_ok=True)
    resume_from = last_checkpoint(out) if args.resume else None
    start = resume_from or args.model
    if args.model == "toy" and resume_from is None:
        torch.manual_seed(args.seed)
        start = out / "init"
        if master:
            toy.ToyMDLM(toy.ToyConfig()).save_pretrained(start)
            toy.ToyTokenizer().save_pretrained(start)
        if world > 1:
            dist.barrier()
    model, tok = sample.load_model(str(start), device, torch.float32, args.trust_remote_code)
    model.train()
    mask_id = sample.resolve_mask_id(tok, model, args.mask_id)
    ref = None
    if args.algo == "mdpo" and args.beta > 0:
        ref = sample.load_model(args.model, device, dtype, args.trust_remote_code)[0].requires_grad_(False)
    if not args.train_file and not args.task.startswith("toy"):
        raise ValueError(f"--task {args.task}: pass --train-file with the training prompts")
    examples = (evaluation.load_examples(args.task, args.train_file) if args.train_file
                else toy.make_task(args.task, args.n_train, args.seed, split="train"))
    if args.eval_every:  # only then: a run without --eval-every needs no held-out file
        eval_examples = evaluation.load_examples(args.task, args.eval_data, limit=args.n_eval, seed=args.seed)
    if args.algo == "mdpo" and args.prefilter == "overdenoise":
        model.eval()
        examples = prefilter(model, tok, examples, args, mask_id, rank, world)
        model.train()
        print0(f"pre-filter: {len(examples)} over-denoised training prompts kept")
    if not examples:
        raise ValueError("no training prompts left (the pre-filter kept none): try --prefilter none")
    if args.fsdp:  # one FSDP unit per transformer block (HF's _no_split_modules), then the root
        from torch.distributed.fsdp import fully_shard
        for block in [m for m in model.modules() if type(m).__name__ in (model._no_split_modules or [])]:
            fully_shard(block)
        wrapped = fully_shard(model)
    else:
        wrapped = DDP(model) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    per_rank = args.prompts_per_update // world if args.algo == "mdpo" else max(args.micro_batch // world, 1)
    if args.algo == "mdpo" and per_rank * world != args.prompts_per_update:
        raise ValueError(f"--prompts-per-update {args.prompts_per_update} must divide over {world} ranks")
    gen = torch.Generator(device=device).manual_seed(args.seed + rank)
    step, pos, best = 0, 0, -1.0
    if resume_from is not None:
        state = torch.load(resume_from / "trainer_state.pt", weights_only=False)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        gen.set_state(state["gen"][rank])
        step, pos, best = state["step"], state["pos"], state["best"]
    log_path = out / "log.jsonl"
    if master:
        kept = [line for line in (log_path.read_text().splitlines() if resume_from and log_path.exists() else [])
                if json.loads(line).get("step", 0) <= step]
        log_path.write_text("".join(line + "\n" for line in (kept or [json.dumps({"config": vars(args)}, default=str)])))
    bar = tqdm(total=args.max_updates, initial=step, desc=f"{args.algo} {args.task}", disable=not master)
    while step < args.max_updates:
        t0, stats = time.time(), {}
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(args.seed + pos // len(examples)))
        batch_idx = [order[(pos + rank * per_rank + i) % len(examples)].item() for i in range(per_rank)]
        batch = [examples[i] for i in batch_idx]
        pos += per_rank * world
        for inner in range(args.inner_steps if args.algo == "mdpo" else 1):
            if args.algo == "mdpo":
                if inner == 0:
                    model.eval()
                    items = mdpo_micro_batches(wrapped, ref, tok, batch, args, mask_id, step, gen, stats)
                    model.train()
                n_tokens = all_sum([sum(it["mask"].sum().item() for it in items)], device)[0] / world
            else:
                items = sft_micro_batches(tok, batch, args, device)
            t1 = time.time()
            if args.algo == "mdpo":
                loss_of = lambda it: mdpo_loss_fn(wrapped, it, args, n_tokens)  # noqa: E731
            else:  # Eq. 1; each micro-batch loss is a mean over its rows, so average over the micro-steps
                loss_of = lambda it: (mdpo.masked_diffusion_loss(  # noqa: E731
                    wrapped, it["x"], it["maskable"], mask_id, it["attn"], gen) / len(items), 0.0, 0.0)
            totals = backward_micro_batches(wrapped, items, loss_of, world, args.fsdp, device)
            totals = all_sum(totals, device)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: DTensor
            decay = 0.5 * (1 + math.cos(math.pi * step / args.max_updates)) if args.lr_schedule == "cosine" else 1.0
            for group in optimizer.param_groups:
                group["lr"] = args.lr * decay
            if math.isfinite(totals[0]) and torch.isfinite(grad_norm):
                optimizer.step()
            else:
                stats["skipped"] = True
                print0(f"step {step}: non-finite loss {totals[0]} or grad norm {grad_norm.item()}, update skipped")
            optimizer.zero_grad(set_to_none=True)
        step += 1
        stats.update(step=step, loss=totals[0] / world, kl=totals[1] / max(totals[3], 1),
                     clip_frac=totals[2] / max(totals[3], 1), grad_norm=float(grad_norm), train_s=time.time() - t1,
                     seconds=time.time() - t0, tokens_per_s=totals[3] / max(time.time() - t0, 1e-9))
        if args.algo == "mdpo":  # average the rank-local rollout statistics
            keys = ["reward", "accuracy", "adv_abs", "adv_nonzero"]
            stats.update(zip(keys, [v / world for v in all_sum([stats[k] for k in keys], device)]))
        if args.eval_every and (step % args.eval_every == 0 or step == args.max_updates):
            model.eval()
            stats["eval_accuracy"] = accuracy(model, tok, eval_examples, args, mask_id, "lcr", args.block_lengths[0], rank, world)[0]
            model.train()
        if step % args.save_every == 0 or step == args.max_updates or "eval_accuracy" in stats:
            gens = [gen.get_state()] * world
            if world > 1:
                dist.all_gather_object(gens, gen.get_state())
            state = {"gen": gens, "step": step, "pos": pos, "best": max(best, stats.get("eval_accuracy", -1.0))}
            save_checkpoint(out / "last", model, tok, optimizer, state, master)
            if master and stats.get("eval_accuracy", -1.0) > best:
                shutil.rmtree(out / "best", ignore_errors=True)
                shutil.copytree(out / "last", out / "best")
        if master:
            with open(log_path, "a") as f:
                f.write(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in stats.items()}) + "\n")
        best = max(best, stats.get("eval_accuracy", -1.0))
        bar.set_postfix({k: f"{stats[k]:.3f}" for k in ("loss", "reward", "eval_accuracy") if k in stats})
        bar.update(1)
    bar.close()
    return out / "last"


def before_after(paths, args, rank, world, device):
    """Greedy accuracy of each model with LCR and RCR for every block size -> markdown table."""
    eval_examples = evaluation.load_examples(args.task, args.eval_data, limit=args.n_eval, seed=args.seed)
    cols = [(r, b) for b in args.block_lengths for r in ("lcr", "rcr")]
    lines = ["| model | " + " | ".join(f"{r.upper()} B={b}" for r, b in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, path in paths.items():
        model, tok = sample.load_model(str(path), device, torch.float32, args.trust_remote_code)
        mask_id = sample.resolve_mask_id(tok, model, args.mask_id)
        accs = [accuracy(model, tok, eval_examples, args, mask_id, r, b, rank, world)[0] for r, b in cols]
        lines.append(f"| {name} | " + " | ".join(f"{100 * a:.1f}" for a in accs) + " |")
    return "\n".join(lines)


def plot(log_path, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines()[1:]]
    keys = [k for k in ("loss", "reward", "accuracy", "eval_accuracy", "kl", "adv_nonzero") if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3))
    for ax, k in zip(list(axes) if len(keys) > 1 else [axes], keys):
        steps, values = zip(*[(r["step"], r[k]) for r in rows if k in r])
        ax.plot(steps, values, alpha=0.4, marker="." if len(steps) < 30 else None)
        smooth = [sum(values[max(0, i - 9):i + 1]) / len(values[max(0, i - 9):i + 1]) for i in range(len(values))]
        ax.plot(steps, smooth, color="C0")  # running mean over 10 updates
        ax.set_title(k)
        ax.set_xlabel("update")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main(argv=None):
    args = resolve(p.parse_args(argv))
    transformers.utils.logging.disable_progress_bar()
    rank, _, world, device = setup_distributed()
    try:
        if args.model == "toy" and args.algo == "mdpo":  # the toy pipeline: SFT base, then MDPO
            base = Path(args.out).parent / "toy-base"  # cached: a finished base resumes into nothing to do
            sft = ["--algo", "sft", "--task", args.task, "--out", str(base), "--seed", str(args.seed), "--resume"]
            train(resolve(p.parse_args(sft)), rank, world, device)
            args.model = str(base / "last")
        final = train(args, rank, world, device)
        if args.algo == "mdpo" and args.task.startswith("toy"):
            table = before_after({"toy base": args.model, "+ MDPO": final}, args, rank, world, device)
            print0("\n" + table)
            if rank == 0:
                (Path(args.out) / "table.md").write_text(table + "\n")
        if args.plot and rank == 0:
            plot(Path(args.out) / "log.jsonl", Path(args.out) / "plot.png")
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
