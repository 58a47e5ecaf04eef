"""Evaluation: the paper's Table 2 grid and its over-denoising analysis (Table 1, Fig. 3, Section 3.3).

    python eval.py --model out/toy-base --task toy-arith --out runs/eval-toy --trajectory-stats   # CPU
    python eval.py --model GSAI-ML/LLaDA-8B-Instruct --trust-remote-code --task math500 --out runs/llada
    torchrun --nproc_per_node 8 eval.py ...        # each rank scores examples[rank::8], rank 0 merges

Each (remasking, block size, steps) setting runs greedily on every example: DIR/samples.jsonl holds one
row per example and setting (a rerun skips rows already there), DIR/table.md the accuracies as in Table 2.
Over-denoised = correct at some intermediate step, wrong at the end: `overdenoised` (Table 1's "w/ inter.
ans", Section 3.3's filter), `longest_correct_span`, `n_correct_spans` (Fig. 3 left, middle), and
`first_correct_fraction` (Fig. 3 right, drawn as a histogram).

Prompts. Toy tasks: the toy prompt as it is ("a=3+4;b=a*2;b-5=?"), no system prompt, no chat template.
Real tasks: the chat template (sample.encode_prompts) with SYSTEM_PROMPTS[kind] as the system turn and
- math500 / math: the problem + "\\n" + MATH_INSTRUCTION ("Let's think step by step and output the final
  answer within \\boxed{}."), as in the training CSV, whose problems already end with it;
- countdown: COUNTDOWN_QUESTION, "Using the numbers [30, 100, 93], create an equation that equals 23. You
  can use basic arithmetic operations (+, -, *, /) and each number can only be used once. ..."

Differences from the official evaluation (autonomousvision/mdpo test_llada.py; d1 for countdown):
1. They send no system turn (the instruction is in the user turn). Set SYSTEM_PROMPTS[kind] = None for that.
2. The toy grid scales the paper's 512 / (128, 512) / (64, 128, 256) down to 40 / (10, 40) / (8, 20, 40):
   5, 2 and 1 tokens per step (steps must be a multiple of the number of blocks).
3. first_correct_fraction counts steps from 1: first correct at step s of T gives s / T (1.0 = last step).
"""
import argparse
import csv
import itertools
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import rewards
import sample
import toy

DATA_DIR = Path(__file__).resolve().parent.parent / "shared" / "data"
DATA_FILES = {"math500": "math500_test.jsonl", "countdown": "countdown_cd3_test.jsonl",
              "math": "math_overdenoising_llada_epoch1.csv"}
TOY_TASKS = ("toy-countdown", "toy-arith")
MATH_FIELDS = (("prompt", "answer"), ("Problem", "Solution"), ("problem", "answer"))  # question, gold
MATH_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
COUNTDOWN_QUESTION = ("Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
                      "arithmetic operations (+, -, *, /) and each number can only be used once. Give the final "
                      "equation, without '=' or the target, in <answer> </answer> tags, for example "
                      "<answer> (1 + 2) / 3 </answer>.")
SYSTEM_PROMPTS = {
    "math": "You are a helpful assistant. Reason step by step, then put the final answer within \\boxed{}.",
    "countdown": "You are a helpful assistant. First reason about the problem step by step, then give the "
                 "equation that reaches the target inside <answer> </answer> tags.",
}
# Defaults: the paper's setup for real models, a scaled-down grid (see note 2) for the toy tasks.
PAPER = {"gen_length": 512, "block_length": "128,512", "steps": "64,128,256", "limit": None}
TOY = {"gen_length": 40, "block_length": "10,40", "steps": "8,20,40", "limit": 200}


# ----------------------------------------------------------------------------- data and prompts
def load_examples(task, path=None, limit=None, seed=0, split="test"):
    """Example dicts of `task`: {"prompt", "answer"} (math-like) or {"prompt", "numbers", "target"}.

    Files: MATH-500 JSONL (problem, answer), countdown JSONL (input "30,100,93", output "23"), the
    training CSV (Problem, Solution or problem, answer) and JSONL of example dicts (--write-overdenoised).
    Toy tasks without a path are generated: toy.make_task(task, limit or 200, seed, split).
    `limit` keeps the first rows of a file; `seed` and `split` only choose toy problems.
    """
    if task not in rewards.TASK_KIND:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(rewards.TASK_KIND)}")
    if path is None and task in TOY_TASKS:
        return toy.make_task(task, limit or 200, seed, split)
    path = Path(path) if path is not None else DATA_DIR / DATA_FILES[task]
    if not path.exists():
        raise FileNotFoundError(f"{task}: no data file at {path}; pass --data PATH (a .jsonl or .csv file)")
    kind = rewards.TASK_KIND[task]
    if path.suffix == ".csv" and kind != "math":
        raise ValueError(f"{path.name}: CSV files hold math problems; give {task} data as JSONL")
    rows = _read_csv(path) if path.suffix == ".csv" else _read_jsonl(path)
    examples = [_example(row, kind, f"{path.name}:{line}") for line, row in rows]
    return examples[:limit] if limit else examples


def _read_jsonl(path):
    """(line number, dict) for every non-blank line; a line that is not a JSON object stops with file:line."""
    out = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path.name}:{line}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path.name}:{line}: expected a JSON object, got {type(row).__name__}")
        out.append((line, row))
    return out


def _read_csv(path):
    """(line where the record starts, row dict) for every CSV record; problems may span several lines."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not any({q, a} <= set(reader.fieldnames or []) for q, a in MATH_FIELDS[1:]):
            raise ValueError(f'{path.name}:1: needs columns "Problem","Solution" or "problem","answer"; '
                             f"found {reader.fieldnames}")
        out, start = [], reader.line_num + 1
        for row in reader:
            out.append((start, row))
            start = reader.line_num + 1
    return out


def _example(row, kind, where):
    """One example dict from a file row (any format load_examples reads), checking the fields it needs."""
    def field(key):
        if row.get(key) in (None, ""):
            raise ValueError(f'{where}: missing "{key}"')
        return row[key]

    if kind == "math":
        q, a = next((f for f in MATH_FIELDS if f[0] in row), MATH_FIELDS[-1])
        return {"prompt": str(field(q)), "answer": str(field(a))}
    fn, ft = ("numbers", "target") if "prompt" in row else ("input", "output")
    numbers, target = field(fn), field(ft)
    try:
        numbers = [int(n) for n in (numbers if isinstance(numbers, list) else str(numbers).split(","))]
        target = int(target)
    except (TypeError, ValueError):
        raise ValueError(f'{where}: "{fn}" must be integers and "{ft}" an integer, '
                         f"got {numbers!r}, {target!r}") from None
    prompt = row["prompt"] if "prompt" in row else COUNTDOWN_QUESTION.format(numbers=numbers, target=target)
    return {"prompt": prompt, "numbers": numbers, "target": target}


def system_prompt(task):
    """The system turn for `task`; None for the toy tasks (no chat template)."""
    return None if task in TOY_TASKS else SYSTEM_PROMPTS[rewards.TASK_KIND[task]]


def prompt_texts(task, examples):
    """The user turn of each example: math problems get MATH_INSTRUCTION unless they already end with it."""
    if task in TOY_TASKS or rewards.TASK_KIND[task] == "countdown":
        return [ex["prompt"] for ex in examples]
    return [p if p.rstrip().endswith(MATH_INSTRUCTION) else f"{p.rstrip()}\n{MATH_INSTRUCTION}"
            for p in (ex["prompt"] for ex in examples)]


# ----------------------------------------------------------------------------- generation and scoring
def decode_steps(tokenizer, x_pred):
    """Text of every step's full prediction: x_pred (T, N, L) -> N lists of T strings, cut at [EOS]."""
    return [sample.decode_completions(tokenizer, x_pred[:, n]) for n in range(x_pred.shape[1])]


def evaluate(model, tokenizer, examples, task, *, gen_length, block_length, steps, remasking="lcr",
             temperature=0.0, batch_size=16, mask_id, trajectory=False, progress=True, desc=None,
             generator=None, on_batch=None):
    """Generate for every example and score it -> one row per example, in order:
    {"completion", "reward", "correct"} plus "step_rewards" (T floats, r(x_t) of every step) when
    trajectory=True. on_batch(start, rows), if given, sees each batch's rows as soon as they are scored.
    """
    device = next(model.parameters()).device
    texts, system, out = prompt_texts(task, examples), system_prompt(task), []
    with tqdm(total=len(examples), desc=desc, disable=not progress) as bar:
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            ids, attn = sample.encode_prompts(tokenizer, texts[start:start + batch_size], system)  # (B, P) each
            result = sample.generate(model, ids.to(device), attention_mask=attn.to(device), gen_length=gen_length,
                                     block_length=block_length, steps=steps, remasking=remasking,
                                     temperature=temperature, mask_id=mask_id, record=trajectory,
                                     generator=generator)
            x, traj = result if trajectory else (result, None)  # x (B, P + L)
            completions = sample.decode_completions(tokenizer, x[:, ids.shape[1]:])
            rows = []
            for completion, ex in zip(completions, batch):
                r = rewards.reward(task, completion, ex)
                rows.append({"completion": completion, "reward": r, "correct": r == 1.0})
            if trajectory:
                step_rewards = rewards.score_trajectory(decode_steps(tokenizer, traj.x_pred), task, batch)  # (B, T)
                for row, sr in zip(rows, step_rewards.tolist()):
                    row["step_rewards"] = sr
            if on_batch is not None:
                on_batch(start, rows)
            out += rows
            bar.update(len(batch))
    return out


# ----------------------------------------------------------------------------- over-denoising statistics
def overdenoised(step_rewards):
    """Correct (reward 1) at some step before the last but wrong at the last. (N, T) -> bool (N,)."""
    correct = step_rewards == 1.0  # (N, T)
    return correct[:, :-1].any(1) & ~correct[:, -1]


def longest_correct_span(correct):
    """Most consecutive correct steps of each trajectory (Fig. 3 left). bool (N, T) -> long (N,)."""
    t = torch.arange(correct.shape[1])  # (T,)
    last_wrong = torch.where(correct, -1, t).cummax(1).values  # (N, T) latest wrong step at or before t
    return (t - last_wrong).max(1).values  # run of correct steps ending at t is t - last_wrong


def n_correct_spans(correct):
    """Number of separate runs of correct steps (Fig. 3 middle). bool (N, T) -> long (N,)."""
    return correct[:, 0].long() + (correct[:, 1:] & ~correct[:, :-1]).sum(1)  # runs start where 0 -> 1


def first_correct_fraction(correct):
    """s / T for the first correct step s = 1..T of each trajectory ever correct (Fig. 3 right).
    bool (N, T) -> float (N',) with N' the rows that have a correct step."""
    ever = correct.any(1)  # (N,)
    return (correct[ever].float().argmax(1) + 1).float() / correct.shape[1]


def overdenoise_stats(step_rewards):
    """Table 1 and Fig. 3 numbers of one setting from its (N, T) step rewards. Span statistics are over
    the over-denoised rows (the samples Fig. 3 analyses); their means are nan when there are none."""
    correct, od = step_rewards == 1.0, overdenoised(step_rewards)  # (N, T), (N,)
    longest, spans = longest_correct_span(correct[od]), n_correct_spans(correct[od])  # (N_od,) each
    mean = lambda v: v.float().mean().item() if len(v) else float("nan")  # noqa: E731
    return {"n": len(correct), "accuracy": mean(correct[:, -1]), "any_step_accuracy": mean(correct.any(1)),
            "overdenoised_rate": mean(od), "first_correct_fraction": first_correct_fraction(correct).tolist(),
            "longest_span": longest.tolist(), "n_spans": spans.tolist(),
            "mean_longest_span": mean(longest), "mean_n_spans": mean(spans)}


# ----------------------------------------------------------------------------- results files
def read_rows(out_dir):
    """Every row of DIR/samples*.jsonl keyed by (settings, index); a later row replaces an earlier one."""
    rows = {}
    for path in sorted(Path(out_dir).glob("samples*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the half-written last line of a crashed run: score it again
                print(f"{path.name}:{n}: unreadable row skipped")
                continue
            rows[(json.dumps(row["settings"], sort_keys=True), row["index"])] = row
    return rows


def label(s):
    """How a setting is named in the reports."""
    return f'{s["name"]} / {s["remasking"]} / B={s["block_length"]} T={s["steps"]}'


def accuracy_table(rows, task):
    """Markdown shaped like Table 2: rows model / remasking, columns block size x steps, accuracy in %."""
    cells = {}  # (model / remasking, (B, T)) -> correct flags
    for s, correct in ((r["settings"], r["correct"]) for r in rows):
        if s["task"] == task:
            cells.setdefault((f'{s["name"]} / {s["remasking"]}', (s["block_length"], s["steps"])), []).append(correct)
    names, cols = list(dict.fromkeys(k[0] for k in cells)), sorted({k[1] for k in cells})
    n = "/".join(str(k) for k in sorted({len(v) for v in cells.values()}))
    acc = lambda v: f"{100 * sum(v) / len(v):.1f}" if v else "-"  # noqa: E731
    lines = [f"Accuracy (%) on {task}, {n} examples per cell", "",
             "| Model / remasking | " + " | ".join(f"B={b} T={t}" for b, t in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(acc(cells.get((name, c), [])) for c in cols) + " |" for name in names]
    return "\n".join(lines) + "\n"


def overdenoising_report(groups):
    """Markdown of Table 1's numbers and Fig. 3's span means for each setting: {label: stats}."""
    nan = lambda x: "-" if x != x else f"{x:.2f}"  # noqa: E731
    lines = ["| Setting | n | Acc. (%) | + w/ inter. ans (%) = over-denoised rate | mean longest span | mean #spans |",
             "|---|---|---|---|---|---|"]
    for name, st in groups.items():
        lines.append(f'| {name} | {st["n"]} | {100 * st["accuracy"]:.1f} | +{100 * st["overdenoised_rate"]:.1f} | '
                     f'{nan(st["mean_longest_span"])} | {nan(st["mean_n_spans"])} |')
    return "Over-denoising (correct at an intermediate step, wrong at the end); spans over over-denoised rows\n\n" \
        + "\n".join(lines) + "\n"


def plot_first_correct(groups, path):
    """Fig. 3 (right) as a histogram: at what fraction of T each trajectory is first correct."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, st in groups.items():
        ax.hist(st["first_correct_fraction"], bins=10, range=(0, 1), histtype="step", linewidth=1.5, label=name)
    ax.set(xlabel="first correct step / T", ylabel="trajectories", title="When is the answer first correct?")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Table 2's grid and the over-denoising analysis (Table 1, Fig. 3).")
    p.add_argument("--model", required=True, help="toy checkpoint dir or HF name/path (paper: LLaDA-8B-Instruct)")
    p.add_argument("--name", default=None, help="model name in the tables (default: last part of --model)")
    p.add_argument("--task", required=True, choices=["math500", "countdown", "toy-countdown", "toy-arith", "math"],
                   help="math500 / countdown (paper), toy tasks, or math (the training CSV, to filter it)")
    p.add_argument("--data", default=None, help=f"JSONL or CSV file (default: {DATA_DIR}/<task file>)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="toy tasks: which split")
    p.add_argument("--gen-length", type=int, default=None, help="tokens generated (paper: 512; toy: 40)")
    p.add_argument("--block-length", default=None, help="comma list of block sizes (paper: 128,512; toy: 10,40)")
    p.add_argument("--steps", default=None, help="comma list of steps T (paper: 64,128,256; toy: 8,20,40)")
    p.add_argument("--remasking", default="lcr,rcr", help="comma list of lcr, rcr, rcr-latest, random (paper: lcr,rcr)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (paper's evaluation)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per forward (per rank)")
    p.add_argument("--limit", type=int, default=None, help="first N examples (paper: all; toy default 200)")
    p.add_argument("--out", required=True, help="output dir: samples.jsonl, table.md, ...; reruns resume")
    p.add_argument("--mask-id", type=int, default=None, help="[MASK] id if the tokenizer lacks it (LLaDA: 126336)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (needed for LLaDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--seed", type=int, default=0, help="toy problems and temperature > 0 sampling")
    p.add_argument("--trajectory-stats", action="store_true",
                   help="score every step: overdenoising.md (Table 1) and first_correct.png (Fig. 3)")
    p.add_argument("--write-overdenoised", default=None, metavar="FILE",
                   help="JSONL of the examples over-denoised in any setting (Section 3.3's filter, paper: ~10%%)")
    args = p.parse_args(argv)
    for key, value in (TOY if args.task in TOY_TASKS else PAPER).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.block_length = [int(b) for b in str(args.block_length).split(",")]
    args.steps = [int(t) for t in str(args.steps).split(",")]
    args.remasking = args.remasking.split(",")
    for b, t in itertools.product(args.block_length, args.steps):  # fail now, not after hours of the grid
        if args.gen_length % b or t % (args.gen_length // b):
            p.error(f"block length {b} must divide gen length {args.gen_length}, and steps {t} be a multiple "
                    f"of the number of blocks")
    if set(args.remasking) - set(sample.REMASKING):
        p.error(f"--remasking {','.join(args.remasking)}: choose from {','.join(sample.REMASKING)}")
    args.name = args.name or Path(args.model.rstrip("/")).name
    args.trajectory = args.trajectory_stats or args.write_overdenoised is not None
    return args


def setup_distributed(device):
    """(rank, world size, device): torchrun's WORLD_SIZE > 1 means one shard of the examples per rank."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1, device
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world, device


def run_setting(args, model, tokenizer, mask_id, examples, settings, done, file, rank, world):
    """Score this rank's shard of the examples not yet in `done` under one setting, appending to `file`."""
    key = json.dumps(settings, sort_keys=True)
    mine = list(range(rank, len(examples), world))
    todo = [i for i in mine if (key, i) not in done or (args.trajectory and "step_rewards" not in done[key, i])]
    texts = prompt_texts(args.task, examples)
    if rank == 0:
        print(f"{label(settings)}: skipping {len(mine) - len(todo)} done rows, scoring {len(todo)}")

    def write(start, rows):
        for i, row in zip(todo[start:start + len(rows)], rows):
            file.write(json.dumps({"index": i, "prompt": texts[i], **row, "settings": settings}) + "\n")
        file.flush()  # a crash loses at most the batch being generated

    gen = torch.Generator(device=args.device).manual_seed(args.seed + rank)
    evaluate(model, tokenizer, [examples[i] for i in todo], args.task, gen_length=args.gen_length,
             block_length=settings["block_length"], steps=settings["steps"], remasking=settings["remasking"],
             temperature=args.temperature, batch_size=args.batch_size, mask_id=mask_id, trajectory=args.trajectory,
             progress=rank == 0, desc=label(settings), generator=gen, on_batch=write)


def merge(out_dir):
    """Rank 0, after every rank finished: fold samples.rank*.jsonl (and rows rewritten on resume)
    into one samples.jsonl with one row per (setting, index)."""
    rows = read_rows(out_dir)
    tmp = Path(out_dir) / "samples.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows.values()), encoding="utf-8")
    os.replace(tmp, Path(out_dir) / "samples.jsonl")
    for path in Path(out_dir).glob("samples.rank*.jsonl"):
        path.unlink()


def report(args, examples, all_settings):
    """Write table.md (and print it); with trajectories, overdenoising.md, first_correct.png and FILE."""
    out, rows = Path(args.out), read_rows(args.out)
    table = accuracy_table(rows.values(), args.task)
    (out / "table.md").write_text(table, encoding="utf-8")
    print(table)
    if not args.trajectory:
        return
    groups, flagged = {}, torch.zeros(len(examples), dtype=torch.bool)
    for s in all_settings:
        key = json.dumps(s, sort_keys=True)
        step_rewards = torch.tensor([rows[key, i]["step_rewards"] for i in range(len(examples))])  # (N, T)
        groups[label(s)] = overdenoise_stats(step_rewards)
        flagged |= overdenoised(step_rewards)
    if args.trajectory_stats:
        text = overdenoising_report(groups)
        (out / "overdenoising.md").write_text(text, encoding="utf-8")
        plot_first_correct(groups, out / "first_correct.png")
        print(text)
    if args.write_overdenoised:
        picked = [ex for ex, f in zip(examples, flagged.tolist()) if f]
        Path(args.write_overdenoised).write_text("".join(json.dumps(ex) + "\n" for ex in picked), encoding="utf-8")
        print(f"wrote {len(picked)} over-denoised examples of {len(examples)} to {args.write_overdenoised}")


def main(argv=None):
    args = parse_args(argv)
    rank, world, args.device = setup_distributed(args.device)
    try:
        examples = load_examples(args.task, args.data, args.limit, args.seed, args.split)
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        model, tokenizer = sample.load_model(args.model, args.device, dtype, args.trust_remote_code)
        mask_id = sample.resolve_mask_id(tokenizer, model, args.mask_id)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        done = read_rows(out)
        data = args.data or (f"{args.split} seed={args.seed}" if args.task in TOY_TASKS else "default")
        all_settings = [{"task": args.task, "data": data, "model": args.model, "name": args.name,
                         "gen_length": args.gen_length, "block_length": b, "steps": t, "remasking": m,
                         "temperature": args.temperature, "seed": args.seed}
                        for m in args.remasking for b in args.block_length for t in args.steps]
        path = out / ("samples.jsonl" if world == 1 else f"samples.rank{rank}.jsonl")
        with open(path, "a", encoding="utf-8") as f:
            if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
                f.write("\n")  # end a crashed run's half-written row so the next row starts cleanly
            for settings in all_settings:
                run_setting(args, model, tokenizer, mask_id, examples, settings, done, f, rank, world)
        if world > 1:
            dist.barrier()
        if rank == 0:
            merge(out)
            report(args, examples, all_settings)
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
