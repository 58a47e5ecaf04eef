"""Evaluation: the paper's Table 2 grid and its over-denoising analysis
(Table 1, Fig. 3, Section 3.3).

    # CPU
    python eval.py --model out/toy-digits-base/last --task toy-digits --out runs/eval-toy \\
        --trajectory-stats
    python eval.py --model GSAI-ML/LLaDA-8B-Instruct --trust-remote-code --task math500 \\
        --out runs/llada
    # each rank scores examples[rank::8], rank 0 merges
    torchrun --nproc_per_node 8 eval.py ...

Every (remasking, schedule, block size, steps) setting runs on every example: DIR/samples.jsonl
holds one row per example and setting (a rerun skips the rows already there), DIR/table.md the
accuracies as in Table 2 (tables.py). --trajectory-stats also scores every step's prediction and
writes the over-denoising statistics (overdenoise.py) and first_correct.png.

The protocol (prompts, answer reading) is the authors' by default: see tasks.py. "RCR" in Table 2 is
the authors' code, which this project calls rcr-latest (a re-predicted position takes its latest
confidence); the paper's text describes the running maximum, `rcr`. The tables name both
(REMASKING_NAMES).

Differences from the authors' evaluation (test_llada.py; test_llada_toy_tasks.py for Countdown):
1. The toy grid scales the paper's 512 / (128, 512) / (64, 128, 256) down to 40 / (10, 40) /
   (8, 16, 32): T/2, T and 2T of the toy rollouts' T = 16 as the paper's of its 128 (steps must be
   a multiple of the number of blocks).
2. Math answers are read from the last closed \\boxed{} only and checked with rewards.math_reward
   (see rewards.py for how it compares with their math-verify settings).
"""
import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import torch

import checkpoint
import config
import distributed
import models
import remask
import rewards
import sample
import tasks
from overdenoise import overdenoise_stats, overdenoised, overdenoising_report
from tables import REMASKING_NAMES, accuracy_table, label, read_rows

# Section 3.3 counts over-denoising under greedy decoding with LLaDA's low-confidence remasking: the
# pre-filter (--prefilter overdenoise) keeps the training prompts it gets right at some step and
# wrong at the end
PREFILTER_REMASKING = "lcr"


# --------------------------------------------------------------------------- generation and scoring
def evaluate(model, tokenizer, examples, task, *, gen_length, block_length, steps, remasking="lcr",
             schedule="linear", temperature=0.0, top_p=1.0, eoser_gamma_min=None, batch_size=16,
             mask_id, system=None, format_score=0.0, trajectory=False, progress=True, desc=None,
             generator=None, on_batch=None):
    """Generate for every example and score it -> one row per example, in order:
    {"completion", "reward", "correct"} plus "step_rewards" (T floats, r(x_t) of every step) when
    trajectory=True. on_batch(start, rows), if given, sees each batch's rows as soon as they are
    scored.
    """
    device = next(model.parameters()).device
    texts, out = tasks.prompt_texts(task, examples), []
    with distributed.progress(total=len(examples), desc=desc, disable=not progress) as bar:
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            ids, attn = models.encode_prompts(tokenizer, texts[start:start + batch_size],
                                              system)  # (B, P) each
            result = sample.generate(model, ids.to(device), attention_mask=attn.to(device),
                                     gen_length=gen_length, block_length=block_length, steps=steps,
                                     remasking=remasking,
                                     # rcr-latest: its own linear
                                     schedule=None if schedule == "linear" else schedule,
                                     temperature=temperature, top_p=top_p, mask_id=mask_id,
                                     record=trajectory, eoser_gamma_min=eoser_gamma_min,
                                     eos_id=tokenizer.eos_token_id, generator=generator)
            x, traj = result if trajectory else (result, None)  # x (B, P + L)
            rows = []
            for completion, ex in zip(tasks.completion_texts(tokenizer, x[:, ids.shape[1]:]),
                                      batch):
                r = rewards.reward(task, completion, ex, format_score)
                rows.append({"completion": completion, "reward": r, "correct": r == 1.0})
            if trajectory:
                step_texts = tasks.step_texts(tokenizer, traj.x_pred)
                for row, sr in zip(rows, rewards.score_trajectory(step_texts, task, batch,
                                                                  format_score).tolist()):
                    row["step_rewards"] = sr  # (T,)
            if on_batch is not None:
                on_batch(start, rows)
            out += rows
            bar.update(len(batch))
    return out


def sharded_accuracy(model, tok, examples, args, mask_id, remasking, block_length, rank, world):
    """Greedy accuracy of a model being trained (train.py's args), each rank scoring
    examples[rank::world]. Returns (accuracy over all ranks, step rewards (N_shard, T) of this
    rank's shard). Shards are padded to equal length (the padding is not counted), so every rank
    runs the same forwards (FSDP gathers are collectives)."""
    shard = examples[rank::world]
    padded = shard + examples[: -(-len(examples) // world) - len(shard)]
    device = next(model.parameters()).device
    with distributed.autocast(args.precision, device):
        rows = evaluate(model, tok, padded, args.task, gen_length=args.gen_length,
                        block_length=block_length, steps=args.steps, remasking=remasking,
                        mask_id=mask_id, trajectory=True, progress=False,
                        batch_size=args.eval_batch_size,
                        format_score=args.format_score)[: len(shard)]
    correct, n = distributed.all_sum([sum(r["correct"] for r in rows), len(rows)], device)
    return (correct / max(n, 1),
            torch.tensor([r["step_rewards"] for r in rows]).reshape(len(rows), args.steps))


def prefilter(model, tok, examples, args, mask_id, rank, world):
    """Section 3.3: keep the prompts that greedy decoding gets right at some step but wrong at the
    end (under any of the rollouts' block sizes). Cached in OUT/prefilter.jsonl."""
    cache = Path(args.out) / "prefilter.jsonl"
    if cache.exists():
        return [json.loads(line) for line in cache.read_text().splitlines()]
    keep = torch.zeros(len(examples[rank::world]), dtype=torch.bool)
    for block in args.block_lengths:
        keep |= overdenoised(sharded_accuracy(model, tok, examples, args, mask_id,
                                              PREFILTER_REMASKING, block, rank, world)[1])
    kept = distributed.all_gather_list([ex for ex, k in zip(examples[rank::world], keep.tolist())
                                        if k])
    if not kept:
        raise ValueError(f"the over-denoising pre-filter kept none of {len(examples)} training "
                         "prompts: use --prefilter none")
    if rank == 0:
        cache.write_text("".join(json.dumps(ex) + "\n" for ex in kept))
    distributed.print0(f"pre-filter: {len(kept)} of {len(examples)} training prompts are "
                       "over-denoised, kept")
    return kept


def compare(checkpoints, examples, args, rank, world, device):
    """Greedy accuracy of each model {name: path} with LCR and both RCRs at every block size (the
    toy pipeline's before / after) -> a markdown table with its caption and, for two models, a line
    per column saying before -> after."""
    cols = [(r, b) for b in args.block_lengths for r in ("lcr", "rcr", "rcr-latest")]
    accuracies = {}
    with distributed.progress(total=len(checkpoints) * len(cols), desc="test accuracy",
                              disable=rank != 0) as bar:
        for name, path in checkpoints.items():
            model, tok = models.load_model(str(path), device, torch.float32, args.trust_remote_code,
                                           args.shifted_logits)
            mask_id = models.resolve_mask_id(tok, model, args.mask_id)
            accuracies[name] = []
            for r, b in cols:
                accuracies[name].append(100 * sharded_accuracy(model, tok, examples, args,
                                                               mask_id, r, b, rank, world)[0])
                bar.update(1)
    lines = [f"Greedy accuracy (%) on {len(examples)} held-out {args.task} test problems, "
             f"gen length {args.gen_length}, {args.steps} steps; "
             f"B = block size (B = {args.gen_length}: pure-Diff). "
             "Models: " + ", ".join(f"{n} = {p}" for n, p in checkpoints.items()) + ".", "",
             "| model | " + " | ".join(f"{r.upper()} B={b}" for r, b in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{a:.1f}" for a in accs) + " |"
              for name, accs in accuracies.items()]
    lines += [""] + [f"- {m.upper()}: {REMASKING_NAMES[m]}" for m in ("lcr", "rcr", "rcr-latest")]
    if len(accuracies) == 2:
        (before_name, before), (after_name, after) = accuracies.items()
        changes = [f"{r.upper()} B={b} {x:.1f} -> {y:.1f} ({y - x:+.1f})"
                   for (r, b), x, y in zip(cols, before, after)]
        lines += ["", f"{before_name} -> {after_name}: " + "; ".join(changes) + "."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Table 2's grid and the over-denoising analysis (Table 1, Fig. 3).")
    p.add_argument("--model", required=True,
                   help="toy checkpoint dir (e.g. out/toy-digits-base/last) or HF name/path "
                        "(paper: GSAI-ML/LLaDA-8B-Instruct)")
    p.add_argument("--name", default=None,
                   help="model name in the tables (default: last part of --model)")
    p.add_argument("--task", required=True, choices=tasks.TASKS,
                   help="math500 / countdown (paper), toy tasks, or math (the training CSV, "
                        "to filter it)")
    p.add_argument("--data", default=None,
                   help=f"JSONL or CSV file (default: {tasks.DATA_DIR}/<task file>)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="toy tasks: which split (choose hyperparameters on val, report test)")
    p.add_argument("--gen-length", type=int, default=None,
                   help="tokens generated (paper: 512; toy: 40)")
    p.add_argument("--block-length", default=None,
                   help="comma list of block sizes (paper: 128,512; toy: 10,40)")
    p.add_argument("--steps", default=None,
                   help="comma list of steps T (paper: 64,128,256; toy: 8,16,32)")
    p.add_argument("--remasking", default="lcr,rcr,rcr-latest",
                   help="comma list of lcr, rcr (paper's running max), rcr-latest (authors' code), "
                        "random")
    p.add_argument("--schedule", default="linear",
                   help="comma list of Eq. 13 schedules (App. B.2): linear cosine square cubic exp "
                        "sqrt log (paper: linear; rcr-latest's linear is the authors' count)")
    p.add_argument("--eoser", default="off", choices=["off", "on", "both"],
                   help="EOS Early Rejection (remask.py): off, on, or both (every setting with "
                        "and without)")
    p.add_argument("--eoser-gamma-min", type=float, default=None,
                   help="EOSER's first gamma (default: the reference's 0.4, or 0.01 with "
                        "--schedule ass)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (paper's evaluation)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus (authors' evaluation: 0.95, also when greedy; "
                        "toy default 1.0 = off)")
    p.add_argument("--system-prompt", default=None,
                   help="add a system turn (the authors' protocol has none)")
    p.add_argument("--format-score", type=float, default=0.0,
                   help="countdown: reward of a well-formed wrong answer (paper: 0, binary; "
                        "d1: 0.1)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per forward (per rank)")
    p.add_argument("--limit", type=int, default=None,
                   help="first N examples (paper: all; toy default 200)")
    p.add_argument("--out", required=True,
                   help="output dir: samples.jsonl, table.md, ...; reruns resume")
    models.add_loading_flags(p)
    p.add_argument("--device", default=None,
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--seed", type=int, default=0, help="toy problems and temperature > 0 sampling")
    p.add_argument("--trajectory-stats", action="store_true",
                   help="score every step: overdenoising.md (Table 1) and first_correct.png "
                        "(Fig. 3)")
    p.add_argument("--write-overdenoised", default=None, metavar="FILE",
                   help="JSONL of the examples over-denoised in any setting (Section 3.3's "
                        "filter; the authors kept 2,840 of 40k problems)")
    args = p.parse_args(argv)
    for key, value in grid_defaults(args.task).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.block_length = [int(b) for b in str(args.block_length).split(",")]
        args.steps = [int(t) for t in str(args.steps).split(",")]
    except ValueError:
        p.error(f"--block-length {args.block_length} / --steps {args.steps}: "
                "comma lists of integers")
    args.remasking, args.schedule = args.remasking.split(","), args.schedule.split(",")
    for flag, value, ok in [("--gen-length", args.gen_length, args.gen_length >= 1),
                            ("--batch-size", args.batch_size, args.batch_size >= 1),
                            ("--limit", args.limit, args.limit is None or args.limit >= 1),
                            ("--temperature", args.temperature, args.temperature >= 0),
                            ("--top-p", args.top_p, 0 < args.top_p <= 1),
                            ("--format-score", args.format_score, 0 <= args.format_score < 1),
                            ("--eoser-gamma-min", args.eoser_gamma_min,
                             args.eoser_gamma_min is None or 0 <= args.eoser_gamma_min <= 1),
                            ("--mask-id", args.mask_id, args.mask_id is None or args.mask_id >= 0)]:
        if not ok:
            p.error(f"{flag} {value}: out of range")
    # fail now, not after hours of the grid
    for b, t in itertools.product(args.block_length, args.steps):
        if b < 1 or t < 1 or args.gen_length % b or t % (args.gen_length // b):
            p.error(f"--block-length {b} must divide --gen-length {args.gen_length}, "
                    f"and --steps {t} be a positive multiple of the number of blocks "
                    f"({args.gen_length // max(b, 1)})")
    for flag, values, known in [("--remasking", args.remasking, sample.REMASKING),
                                ("--schedule", args.schedule, remask.COUNTS)]:
        if set(values) - set(known):
            p.error(f"{flag} {','.join(values)}: choose from {','.join(known)}")
    args.name = args.name or Path(args.model.rstrip("/")).name
    args.trajectory = args.trajectory_stats or args.write_overdenoised is not None
    return args


def grid_defaults(task):
    """Table 2's grid for a task, from train.py's preset (config.py): the rollouts' L and block
    sizes, and T/2, T, 2T of their T steps (paper: 512, 128 and 512, 64/128/256). The authors'
    evaluation uses top-p 0.95 even when greedy; the toy keeps 1.0 and scores its first 200 problems
    by default."""
    toy_task = task in tasks.TOY_TASKS
    d = config.defaults("toy" if toy_task else "paper", "mdpo", task)
    return {"gen_length": d["gen_length"], "block_length": ",".join(map(str, d["block_lengths"])),
            "steps": f"{d['steps'] // 2},{d['steps']},{2 * d['steps']}",
            "limit": 200 if toy_task else None, "top_p": 1.0 if toy_task else 0.95}


def grid(args):
    """The decoding settings to score: remasking x schedule x block size x steps (x EOSER on/off).

    Schedule "ass" decodes one block in floor(log2 L) steps (remask.ass_steps): it gets that one
    setting per remasking whatever --block-length and --steps say. EOSER's gamma_min defaults to
    the reference's value for the schedule (0.4, or 0.01 under ASS); the key is left out when
    EOSER is off."""
    eosers = {"off": [False], "on": [True], "both": [False, True]}[args.eoser]
    out = []
    for m, sch, on in itertools.product(args.remasking, args.schedule, eosers):
        shapes = ([(args.gen_length, remask.ass_steps(args.gen_length))] if sch == "ass"
                  else list(itertools.product(args.block_length, args.steps)))
        for b, t in shapes:
            s = {"block_length": b, "steps": t, "remasking": m, "schedule": sch}
            if on:
                s["eoser"] = sample.eoser_gamma_min(True, args.eoser_gamma_min, sch)
            out.append(s)
    return out


def run_setting(args, model, tokenizer, mask_id, examples, settings, done, file, rank, world):
    """Score this rank's shard of the examples not yet in `done` under one setting, appending to
    `file`."""
    key = json.dumps(settings, sort_keys=True)
    mine = list(range(rank, len(examples), world))
    todo = [i for i in mine
            if (key, i) not in done or (args.trajectory and "step_rewards" not in done[key, i])]
    texts = tasks.prompt_texts(args.task, examples)
    if rank == 0:
        print(f"{label(settings)}: skipping {len(mine) - len(todo)} done rows, scoring {len(todo)}")

    def write(start, rows):
        for i, row in zip(todo[start:start + len(rows)], rows):
            file.write(json.dumps({"index": i, "prompt": texts[i], **row, "settings": settings})
                       + "\n")
        file.flush()  # a crash loses at most the batch being generated

    gen = torch.Generator(device=args.device).manual_seed(args.seed + rank)
    evaluate(model, tokenizer, [examples[i] for i in todo], args.task, gen_length=args.gen_length,
             block_length=settings["block_length"], steps=settings["steps"],
             remasking=settings["remasking"], schedule=settings["schedule"],
             temperature=args.temperature, top_p=args.top_p,
             eoser_gamma_min=settings.get("eoser"),
             batch_size=args.batch_size, mask_id=mask_id, system=args.system_prompt,
             format_score=args.format_score, trajectory=args.trajectory, progress=rank == 0,
             desc=label(settings), generator=gen, on_batch=write)


def merge(out_dir):
    """Rank 0, after every rank finished: fold samples.rank*.jsonl (and rows rewritten on resume)
    into one samples.jsonl with one row per (setting, index)."""
    rows = read_rows(out_dir)
    tmp = Path(out_dir) / "samples.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows.values()), encoding="utf-8")
    os.replace(tmp, Path(out_dir) / "samples.jsonl")
    for path in Path(out_dir).glob("samples.rank*.jsonl"):
        path.unlink()


def report(args, examples, all_settings, failures):
    """Write table.md (and print it); with trajectories, overdenoising.md, first_correct.png and
    FILE."""
    out, rows = Path(args.out), read_rows(args.out)
    extra = (f" Reward failures this run (timeouts, worker crashes; scored 0): {failures}."
             if failures else "")
    table = accuracy_table(rows.values(), all_settings, extra)
    (out / "table.md").write_text(table, encoding="utf-8")
    print(table)
    written = [out / "table.md", out / "samples.jsonl"]
    if args.trajectory:
        import plots
        groups, flagged = {}, torch.zeros(len(examples), dtype=torch.bool)
        for s in all_settings:
            key = json.dumps(s, sort_keys=True)
            step_rewards = torch.tensor([rows[key, i]["step_rewards"]
                                         for i in range(len(examples))])  # (N, T)
            groups[label(s)] = overdenoise_stats(step_rewards)
            flagged |= overdenoised(step_rewards)
        if args.trajectory_stats:
            text = overdenoising_report(groups)
            (out / "overdenoising.md").write_text(text, encoding="utf-8")
            plots.first_correct_histograms(groups, out / "first_correct.png")
            print(text)
            written += [out / "overdenoising.md", out / "first_correct.png"]
        if args.write_overdenoised:
            picked = [ex for ex, f in zip(examples, flagged.tolist()) if f]
            Path(args.write_overdenoised).write_text(
                "".join(json.dumps(ex) + "\n" for ex in picked), encoding="utf-8")
            print(f"wrote {len(picked)} over-denoised examples of {len(examples)} to "
                  f"{args.write_overdenoised}")
    print("results: " + ", ".join(map(str, written)))


def main(argv=None):
    args = parse_args(argv)
    try:  # everything that can be checked before loading a model
        examples = tasks.load_examples(args.task, args.data, args.limit, args.seed, args.split)
        models.check_model_path(args.model, args.mask_id)
        out = Path(args.out)
        checkpoint.check_writable(out, "--out")
    except (ValueError, OSError) as e:
        sys.exit(f"eval.py: error: {e}")
    rank, world, device = distributed.setup_distributed(args.device)
    args.device = str(device)
    try:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model, tokenizer = models.load_model(args.model, device, dtype, args.trust_remote_code,
                                             args.shifted_logits)
        mask_id = models.resolve_mask_id(tokenizer, model, args.mask_id)
        done = read_rows(out)
        data = args.data or (f"{args.split} seed={args.seed}" if args.task in tasks.TOY_TASKS
                             else "default")
        common = {"task": args.task, "data": data, "model": args.model, "name": args.name,
                  "gen_length": args.gen_length, "temperature": args.temperature,
                  "top_p": args.top_p, "system_prompt": args.system_prompt,
                  "format_score": args.format_score, "seed": args.seed}
        all_settings = [{**common, **s} for s in grid(args)]
        path = out / ("samples.jsonl" if world == 1 else f"samples.rank{rank}.jsonl")
        failures_before = rewards.calls["timeout"] + rewards.calls["crash"]
        with open(path, "a", encoding="utf-8") as f:
            if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
                f.write("\n")  # end a crashed run's half-written row so the next row starts cleanly
            for settings in all_settings:
                run_setting(args, model, tokenizer, mask_id, examples, settings, done, f, rank,
                            world)
        failures = int(distributed.all_sum(
            [rewards.calls["timeout"] + rewards.calls["crash"] - failures_before], device)[0])
        distributed.barrier()
        if rank == 0:
            merge(out)
            report(args, examples, all_settings, failures)
    finally:
        distributed.cleanup_distributed()


if __name__ == "__main__":
    main()
