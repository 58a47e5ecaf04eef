"""Speed and peak memory of sample.generate against LLaDA's reference loop, reward throughput, and
the phases of one MDPO and one diffu-GRPO update of train.py.

    python tools/bench.py                 # CPU, 3-6 min on 2 cores: prints the tables,
                                          # writes results/bench.md
    python tools/bench.py --quick         # a tiny model, seconds (tests/test_bench.py):
                                          # out/bench-quick.md, never results/
    python tools/bench.py --device cuda   # bf16, a randomly initialised ~1.3B-parameter model,
                                          # LLaDA's vocabulary

Every sampler runs the same randomly initialised toy.ToyMDLM (toy.py's bidirectional transformer,
built from a config: nothing is downloaded) at the size of a small LM with LLaDA-like vocabulary,
whose output bias at [MASK] is -1e4 so it never predicts [MASK], as a trained model. The toy
declares its output layer, so sample.generate runs that layer on the rows a step needs only; "ours
(lcr, full output layer)" runs the same model without that declaration (as any HF model: the whole
forward), to show what it buys. The reference is tools/llada_reference.py: LLaDA's generate.py as
plainly as it is written there, a full forward, float64 Gumbel noise over the full vocabulary, a
full softmax, per-row top-k.

What the table reports, per setting (greedy / temperature > 0, pure-Diff / semi-AR):
- tokens/s: B * L / seconds, the median of --repeats runs, interleaved (one run of every sampler and
  setting, then the next round), so a slow patch of a shared machine hits all of them alike; in wall
  time and, on CPU, in this process's CPU time, which is what the speed-up uses there (on a shared
  machine the wall time also measures the other processes).
- peak memory above the level before the call. CUDA: torch's allocator (max_memory_allocated). CPU:
  a child process with glibc told to mmap every allocation of 64 KiB or more
  (MALLOC_MMAP_THRESHOLD_), so a freed tensor leaves the resident set at once; we reset the
  high-water mark through /proc/self/clear_refs and report VmHWM - VmRSS around one call. It counts
  every allocation, torch's and Python's, at page granularity. The memory runs use two steps per
  block: the first step of a block predicts the most rows, and during the second, tensors that the
  first step's variables still hold are alive too (LLaDA's loop keeps its previous logits and
  softmax until it reassigns them); later steps predict fewer rows (ours) or the same (the
  reference). --quick measures in its own process, without the child, so its memory column is only a
  smoke test.
- bookkeeping: the share of the time spent outside the model (and that time per step): the total
  minus the time inside the model's forward calls and, for sample.generate, its output-layer calls
  on the rows it needs.
- RCR's overhead: its time over LCR's in the same round and setting, the median over all of them
  (RCR predicts the same rows as LCR; only its remask step differs).
- identical: greedy outputs equal to the reference's, token for token (sampled runs cannot be).
Targets, for ours (lcr) with and without record=True: >= 2x the reference's tokens/s and <= 0.5x its
peak memory, greedy and sampled; identical greedy tokens; bookkeeping <= 5% of a step; RCR within 5%
of LCR. The summary says which are met on this machine.
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "bench.md"
sys.path.insert(0, str(ROOT))  # the repo root: sample.py, toy.py, train.py, tools/

import torch  # noqa: E402

import rewards  # noqa: E402
import sample  # noqa: E402
import toy  # noqa: E402
from tools.llada_reference import llada_generate  # noqa: E402

SIZES = {  # vocabulary, width, layers, heads (toy.ToyConfig; the MLP is 4 x width)
    "quick": (512, 32, 2, 2),
    "cpu": (32000, 128, 4, 4),
    "cuda": (126464, 2048, 16, 16),  # ~1.3B parameters, LLaDA-8B's vocabulary
}
MASK_ID = 4
TARGETED = ("ours (lcr)", "ours (lcr, record=True)")  # what the speed and memory targets are about


def build_model(size, device, max_len):
    """A randomly initialised toy.ToyMDLM of one of SIZES, in eval mode, that never predicts
    [MASK]."""
    V, d, layers, heads = SIZES[size]
    config = toy.ToyConfig(
        vocab_size=V,
        d_model=d,
        n_layers=layers,
        n_heads=heads,
        max_len=max_len,
        mask_token_id=MASK_ID,
    )
    torch.manual_seed(0)
    model = toy.ToyMDLM(config).eval()
    with torch.no_grad():
        bias = model.get_output_embeddings().bias
        bias[MASK_ID] = -1e4  # never predicts [MASK], as a trained model
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return model.to(device=device, dtype=dtype)


class FullForward(torch.nn.Module):
    """The same model without a declared output layer, as an HF model: sample.generate runs the
    whole forward and indexes the rows it needs from the full (B, S, V) logits."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids, attention_mask=attention_mask)


class ForwardClock:
    """Time spent inside the model's forward calls and, outside those, inside its output layer's
    calls (sample.generate applies that layer to the rows it needs); nested calls count once. The
    time is this process's CPU time on CPU (other processes on a shared machine barely change it)
    and synchronised wall time on CUDA."""

    def __init__(self, model):
        self.seconds, self.depth, self.start = 0.0, 0, 0.0
        self.cuda = next(model.parameters()).is_cuda
        for module in (model, model.get_output_embeddings()):
            module.register_forward_pre_hook(self.enter)
            module.register_forward_hook(self.leave)

    def now(self):
        if self.cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()

    def enter(self, module, args):
        self.depth += 1
        if self.depth == 1:
            self.start = self.now()

    def leave(self, module, args, output):
        self.depth -= 1
        if self.depth == 0:
            self.seconds += self.now() - self.start


def samplers(args):
    """name -> function(model, prompt, temperature, block_length, steps) for every sampler
    compared."""

    def ours(remasking, record, full=False):
        def run(model, prompt, temperature, block, steps):
            return sample.generate(
                FullForward(model) if full else model,
                prompt,
                gen_length=args.gen_length,
                block_length=block,
                steps=steps,
                remasking=remasking,
                temperature=temperature,
                mask_id=MASK_ID,
                record=record,
                generator=torch.Generator(prompt.device).manual_seed(0),
            )

        return run

    def reference(model, prompt, temperature, block, steps):
        torch.manual_seed(0)  # LLaDA draws its noise from torch's global generator
        return llada_generate(
            model,
            prompt,
            steps=steps,
            gen_length=args.gen_length,
            block_length=block,
            temperature=temperature,
            mask_id=MASK_ID,
        )

    return {
        "LLaDA reference": reference,
        "ours (lcr)": ours("lcr", False),
        "ours (lcr, record=True)": ours("lcr", True),
        "ours (rcr)": ours("rcr", False),
        "ours (lcr, full output layer)": ours("lcr", False, full=True),
    }


def settings(args):
    """(label, temperature, block_length) of every setting measured."""
    out = []
    for t in (0.0, args.temperature):
        for b in (args.gen_length, args.semi_block):
            sampling = "greedy" if t == 0 else f"t={t}"
            blocks = "pure-Diff" if b == args.gen_length else f"semi-AR B={b}"
            out.append((f"{sampling}, {blocks}", t, b))
    return out


def make_prompt(args, device):
    V = SIZES[args.size][0]
    return torch.randint(
        MASK_ID + 1, V, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(1)
    ).to(device)


def warm_up(model, args, prompt):
    """One step of every sampler at every temperature: first calls set up thread pools and
    caches."""
    for run in samplers(args).values():
        for temperature in (0.0, args.temperature):
            run(model, prompt, temperature, args.gen_length, 1)


def time_all(model, args):
    """Interleaved timed runs: {(setting, sampler): {"seconds": [clock time], "wall": [s],
    "outside": [share], "x": greedy output}}, the clock being ForwardClock's (CPU time on CPU)."""
    prompt, clock, out = make_prompt(args, args.device), ForwardClock(model), {}
    warm_up(model, args, prompt)
    for r in range(args.repeats):
        for setting, temperature, block in settings(args):
            for name, run in samplers(args).items():
                clock.seconds, wall, start = 0.0, time.perf_counter(), clock.now()
                x = run(model, prompt, temperature, block, args.steps)
                seconds, wall = clock.now() - start, time.perf_counter() - wall
                cell = out.setdefault((setting, name), {"seconds": [], "wall": [], "outside": []})
                cell["seconds"].append(seconds)
                cell["wall"].append(wall)
                cell["outside"].append(1 - clock.seconds / seconds)
                cell["x"] = x[0] if isinstance(x, tuple) else x
            print(f"round {r + 1}/{args.repeats}: {setting} done", file=sys.stderr, flush=True)
    return out


def peak_bytes(fn, device):
    """Peak memory of fn() above the level before it, in bytes (see the module docstring for the
    method)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size

    def status(key):
        line = next(
            l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":")
        )
        return int(line.split()[1]) * 1024

    before = status("VmRSS")
    fn()
    return status("VmHWM") - before


def peak_all(model, args):
    """{(setting, sampler): peak bytes}, two steps per block (see the module docstring)."""
    prompt, out = make_prompt(args, args.device), {}
    warm_up(model, args, prompt)  # so that lazily created state is not counted
    for setting, temperature, block in settings(args):
        for name, run in samplers(args).items():
            steps = 2 * args.gen_length // block
            out[(setting, name)] = peak_bytes(
                lambda: run(model, prompt, temperature, block, steps), args.device
            )
    return out


def peak_in_child(args):
    """peak_all in a fresh CPU process whose glibc returns freed memory at once
    (MALLOC_MMAP_THRESHOLD_)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, __file__, "--peak-only", *sys.argv[1:]]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"bench.py: the memory child process failed:\n{done.stderr[-4000:]}")
    return {tuple(k.split("|")): v for k, v in json.loads(done.stdout.splitlines()[-1]).items()}


# ----------------------------------------------------------------------------- rewards
MATH_GOLD = ["42", "\\frac{3}{4}", "2\\sqrt{3}", "17", "\\pi", "(1, 2)", "x^2 + 1", "0.5"]
NOISE = [
    "the",
    "=",
    "+",
    "so",
    "\\boxed{1}",
    "\\boxed{7}",
    "<answer>",
    "</answer>",
    "3",
    "x",
    "(",
    ")",
    "we",
    ".",
]


def synthetic_trajectories(task, n, T, seed=0):
    """n rollouts of T steps each, texts[n][s], shaped like a denoising run: every word of the final
    text is replaced by noise with probability 1 - (s + 1) / T at step s. Returns (texts,
    examples)."""
    rng, texts, examples = random.Random(seed), [], []
    for i in range(n):
        if task == "math":
            gold = MATH_GOLD[i % len(MATH_GOLD)]
            final = (
                "We start from the given equation and simplify both sides one step at a time . " * 6
                + f"Therefore the answer is \\boxed{{{gold}}} ."
            )
            examples.append({"answer": gold})
        else:
            a, b, c = rng.randint(2, 60), rng.randint(2, 30), rng.randint(1, 20)
            sentence = (
                f"Let me combine the numbers . {a}+{b} = {a + b} , "
                f"then {a + b}-{c} = {a + b - c} . "
            )
            final = sentence * 3 + f"<answer>({a}+{b})-{c}</answer>"
            examples.append({"numbers": [a, b, c], "target": a + b - c})
        words = final.split(" ")
        texts.append(
            [
                " ".join(w if rng.random() >= 1 - (s + 1) / T else rng.choice(NOISE) for w in words)
                for s in range(T)
            ]
        )
    return texts, examples


def reward_rates(n, T):
    """{task: (intermediate rewards per second, reward() calls, math-verify calls)} of
    rewards.score_trajectory."""
    out = {}
    for task in ("math", "countdown"):
        texts, examples = synthetic_trajectories(task, n, T)
        rewards.score_trajectory(texts[:1], task, examples[:1])  # starts the math-verify worker
        rewards.calls.clear()
        start = time.perf_counter()
        rewards.score_trajectory(texts, task, examples)
        out[task] = (
            n * T / (time.perf_counter() - start),
            rewards.calls["reward"],
            rewards.calls["math_verify"],
        )
    return out


# ----------------------------------------------------------------------------- report
def update_phases(quick):
    """Seconds per phase of one MDPO update and one diffu-GRPO update (mu optimiser steps) of
    train.py on the toy task, from its log: rollouts (sample.generate), rewards (every step's
    prediction for MDPO, the final answers for diffu-GRPO) and the training forwards/backwards. A
    briefly SFT-trained toy model (d1's 0.1 format reward on top) makes sure that advantages are
    not all 0, so that there is something to train on."""
    import contextlib
    import tempfile
    import train

    out, n = {}, (1 if quick else 4)
    with tempfile.TemporaryDirectory() as tmp, open(
        os.devnull, "w"
    ) as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        base = Path(tmp) / "base"
        train.main(
            [
                "--algo",
                "sft",
                "--task",
                "toy-countdown",
                "--max-updates",
                "5" if quick else "60",
                "--n-train",
                "256",
                "--out",
                str(base),
            ]
        )
        for algo in ("mdpo", "diffu-grpo"):
            train.main(
                [
                    "--model",
                    str(base / "last"),
                    "--algo",
                    algo,
                    "--max-updates",
                    str(n),
                    "--format-score",
                    "0.1",
                    "--n-train",
                    "256",
                    "--eval-every",
                    "0",
                    "--out",
                    str(Path(tmp) / algo),
                ]
            )
            log = [
                json.loads(line)
                for line in (Path(tmp) / algo / "log.jsonl").read_text().splitlines()[1:]
            ]
            out[algo] = {
                k: statistics.mean(r.get(k, 0.0) for r in log)
                for k in ("rollout_s", "reward_s", "train_s", "seconds")
            }
    return out


def machine(args):
    if args.device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return (
        f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
        f"thread(s), torch {torch.__version__}"
    )


def report(args, model, times, peaks, rates, phases):
    """The markdown tables and the target summary."""
    V, H, layers, heads = SIZES[args.size]
    size = f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
    clock = "GPU (synchronised wall)" if args.device == "cuda" else "CPU"
    cpu_note = (
        ""
        if args.device == "cuda"
        else (
            " (this process's user + system time, which other processes on a "
            "shared machine change less than its wall time)"
        )
    )
    command = " ".join(["python tools/bench.py", *sys.argv[1:]])
    dtype = "bf16" if args.device == "cuda" else "float32"
    lines = [
        f"# sample.generate vs LLaDA's reference loop ({args.device})",
        "",
        f"Command: `{command}`. Machine: {machine(args)}.",
        f"Model: toy.ToyMDLM, random weights, V={V}, hidden {H}, {layers} layers, {heads} heads, "
        f"MLP {4 * H}, {size}, [MASK]'s output bias -1e4, "
        f"{dtype}. B={args.batch}, prompt {args.prompt_len}, "
        f"L={args.gen_length}, {args.steps} steps; median of {args.repeats} interleaved runs.",
        "Peak memory: "
        + (
            "torch.cuda.max_memory_allocated above the level before the call."
            if args.device == "cuda"
            else "VmHWM - VmRSS of a child process (glibc mmap threshold 64 KiB, high-water "
            "mark reset via /proc/self/clear_refs), two steps per block."
        ),
        "",
        f"Speed-up and bookkeeping use {clock} time{cpu_note}.",
        "",
        f"| setting | sampler | tokens/s (wall) | tokens per {clock} s | speed-up | peak MiB | "
        "memory ratio | bookkeeping (per step) | identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    checks = {"speed": [], "memory": [], "bookkeeping": [], "rcr": [], "identical": [], "rows": []}
    for setting, temperature, block in settings(args):
        ref = times[(setting, "LLaDA reference")]
        ref_s = statistics.median(ref["seconds"])
        ref_peak = peaks[(setting, "LLaDA reference")] or float("nan")
        for name in samplers(args):
            cell = times[(setting, name)]
            sec, peak = statistics.median(cell["seconds"]), peaks[(setting, name)]
            share = statistics.median(cell["outside"])
            same = (
                "n/a (sampled)"
                if temperature > 0
                else ("yes" if torch.equal(cell["x"], ref["x"]) else "NO")
            )
            if name == "LLaDA reference":
                same = "-"
            elif "rcr" in name and temperature == 0:
                same = "n/a (RCR)"
            elif temperature == 0:
                checks["identical"].append(same == "yes")
            if name in TARGETED:
                checks["speed"].append(ref_s / sec)
                checks["memory"].append(peak / ref_peak)
                checks["bookkeeping"].append(share)
            tokens = args.batch * args.gen_length
            wall_rate = tokens / statistics.median(cell["wall"])
            lines.append(
                f"| {setting} | {name} | {wall_rate:.0f} | {tokens / sec:.0f} | "
                f"{ref_s / sec:.2f}x | {peak / 2 ** 20:.1f} | {peak / ref_peak:.2f} | "
                f"{100 * share:.1f}% ({1000 * sec * share / args.steps:.1f} ms) | {same} |"
            )
        rcr, lcr = (
            times[(setting, "ours (rcr)")]["seconds"],
            times[(setting, "ours (lcr)")]["seconds"],
        )
        checks["rcr"] += [r / l - 1 for r, l in zip(rcr, lcr)]  # paired within each round
        full = times[(setting, "ours (lcr, full output layer)")]["seconds"]
        checks["rows"].append(
            (
                statistics.median(full) / statistics.median(lcr),
                peaks[(setting, "ours (lcr, full output layer)")]
                / (peaks[(setting, "ours (lcr)")] or float("nan")),
            )
        )
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    bookkeeping = max(checks["bookkeeping"])
    see_below = " (see below)" if bookkeeping > 0.05 else ""
    identical = checks["identical"]
    lines += [
        "",
        "| target | measured | |",
        "|---|---|---|",
        "| ours (lcr, both record settings) >= 2x the reference's tokens/s | "
        f"lowest {min(checks['speed']):.2f}x | "
        f"{met(min(checks['speed']) >= 2)} |",
        f"| ours (lcr, both record settings) peak memory <= 0.5x the reference's | "
        f"highest {max(checks['memory']):.2f}x | "
        f"{met(max(checks['memory']) <= 0.5)} |",
        "| bookkeeping <= 5% of a step (ours, lcr) | "
        f"highest {100 * bookkeeping:.1f}% | "
        f"{met(bookkeeping <= 0.05)}{see_below} |",
        "| RCR within 5% of LCR | "
        f"median {100 * statistics.median(checks['rcr']):+.1f}% (runs from "
        f"{100 * min(checks['rcr']):+.1f}% to {100 * max(checks['rcr']):+.1f}%) | "
        f"{met(abs(statistics.median(checks['rcr'])) <= 0.05)} |",
        "| greedy outputs identical to the reference | "
        f"{sum(identical)}/{len(identical)} | "
        f"{met(all(identical))} |",
        "",
        "The output layer on the needed rows only (the model declares it; an HF model does not): "
        f"running the full forward instead takes {min(t for t, _ in checks['rows']):.2f}x to "
        f"{max(t for t, _ in checks['rows']):.2f}x the time and "
        f"{min(m for _, m in checks['rows']):.2f}x "
        f"to {max(m for _, m in checks['rows']):.2f}x the peak memory of ours (lcr) (the "
        '"full output layer" rows; not part of the targets).',
        "",
        "Bookkeeping is mostly the softmax and argmax (and, sampled, the draw) over the V logits "
        "of each predicted row, which LLaDA's loop computes for every row; next to a narrow output "
        f"layer (hidden {H} here) they cost about half as much as the matmul that makes the "
        "logits, next to LLaDA-8B's 4096-wide one about 1% of it.",
        "",
        "Intermediate rewards (rewards.score_trajectory, "
        f"{args.reward_rollouts} synthetic rollouts x "
        f"{args.reward_steps} steps):",
        "",
        "| task | rewards/s | reward() calls | math-verify calls |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {task} | {rate:.0f} | {calls} | {verifier} |"
        for task, (rate, calls, verifier) in rates.items()
    ]
    lines += [
        "",
        "One update of train.py on the toy (toy-countdown, 8 prompts x G = 8, T = 16, CPU), "
        "seconds per phase (mean of the logged updates):",
        "",
        "| algorithm | rollouts | rewards | training forwards/backwards | update "
        "| rewards' share |",
        "|---|---|---|---|---|---|",
    ]
    for algo, v in phases.items():
        within = met(v["reward_s"] <= 0.1 * v["seconds"])
        lines.append(
            f"| {algo} | {v['rollout_s']:.2f} | {v['reward_s']:.3f} | {v['train_s']:.2f} | "
            f"{v['seconds']:.2f} | "
            f"{100 * v['reward_s'] / v['seconds']:.1f}% ({within}: <= 10%) |"
        )
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(
        description="Benchmark sample.generate against LLaDA's reference loop and the "
        "intermediate rewards; prints markdown and writes it to --out."
    )
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="cuda: bf16, ~1.3B-parameter model"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny model and settings, memory measured in this "
        "process (seconds; the smoke test)",
    )
    p.add_argument(
        "--batch", type=int, default=None, help="rows B (default 4 on CPU, 8 on CUDA, 2 quick)"
    )
    p.add_argument(
        "--prompt-len", type=int, default=None, help="prompt tokens (default 16 on CPU, 64 on CUDA)"
    )
    p.add_argument(
        "--gen-length",
        type=int,
        default=None,
        help="generated tokens L (default 128 on CPU, 256 on CUDA)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps (default L / 8, which keeps the CPU run under 6 minutes)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default 1: on a shared 2-core machine two "
        "OpenMP threads wait on each other and runs vary 4x)",
    )
    p.add_argument(
        "--semi-block", type=int, default=32, help="block length of the semi-AR settings"
    )
    p.add_argument(
        "--temperature", type=float, default=0.7, help="temperature of the sampled settings"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="interleaved timed runs per sampler and setting (median)",
    )
    p.add_argument(
        "--reward-rollouts", type=int, default=64, help="synthetic rollouts for the reward section"
    )
    p.add_argument("--reward-steps", type=int, default=128, help="steps per synthetic rollout")
    p.add_argument(
        "--out",
        default=None,
        help="markdown file the tables are written to (default results/bench.md; --quick: "
        "out/bench-quick.md, never over results/)",
    )
    # the memory child process
    p.add_argument("--peak-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "bench.py: --device cuda needs a CUDA GPU, and torch.cuda.is_available() is False here"
        )
    args.size = "quick" if args.quick else args.device
    quick_out = ROOT / "out" / "bench-quick.md"
    args.out = Path(args.out) if args.out else quick_out if args.quick else OUT
    quick = dict(
        batch=2,
        prompt_len=4,
        gen_length=16,
        steps=4,
        semi_block=8,
        repeats=1,
        reward_rollouts=4,
        reward_steps=8,
    )
    defaults = (
        quick
        if args.quick
        else dict(
            batch=8 if args.device == "cuda" else 4,
            prompt_len=64 if args.device == "cuda" else 16,
            gen_length=256 if args.device == "cuda" else 128,
        )
    )
    for key, value in defaults.items():
        if args.quick or getattr(args, key) is None:
            setattr(args, key, value)
    args.steps = args.steps or args.gen_length // 8
    torch.set_num_threads(args.threads)
    model = build_model(args.size, args.device, args.prompt_len + args.gen_length)
    if args.peak_only:
        print(json.dumps({"|".join(k): v for k, v in peak_all(model, args).items()}))
        return
    peaks = peak_all(model, args) if args.device == "cuda" or args.quick else peak_in_child(args)
    times = time_all(model, args)
    phases = update_phases(args.quick) if args.device == "cpu" else {}
    table = report(
        args, model, times, peaks, reward_rates(args.reward_rollouts, args.reward_steps), phases
    )
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
