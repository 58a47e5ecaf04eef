"""train.py's settings: one frozen dataclass, two presets, the command line, and every check.

`Config`'s defaults are the toy MDPO run (`python train.py`). A preset replaces some of them:
  toy    the toy tasks on a CPU (the default for toy tasks)
  paper  the paper's LLaDA-8B setting, App. A.3 and Section 3.1 (the default for the other tasks)
and each algorithm has its own values inside a preset (`DEFAULTS`). A flag given on the command line
always wins. `python train.py --help` lists every flag with the value each preset and algorithm
gives it.
"""
import argparse
import dataclasses
import os
from dataclasses import dataclass

import torch

import mdpo
import models
import remask
import rewards
import sample
import tasks

ALGOS = ("sft", "mdpo", "diffu-grpo", "cj-grpo", "igpo")


@dataclass(frozen=True)
class Config:
    # model
    model: str = "toy"
    trust_remote_code: bool = False
    mask_id: int | None = None
    shifted_logits: bool = False
    # data
    task: str = "toy-digits"
    train_file: str | None = None
    eval_data: str | None = None
    n_train: int = 5000
    n_eval: int = 500
    prefilter: str = "none"
    format_score: float = 0.0
    # algorithm and rollouts
    preset: str = "toy"
    algo: str = "mdpo"
    gen_length: int = 40
    block_lengths: tuple = (10, 40)
    steps: int = 16
    remasking: str = "lcr"
    schedule: str | None = None
    eoser: bool = False
    eoser_gamma_min: float = 0.01
    temperature: float = 0.7
    # MDPO and diffu-GRPO
    group_size: int = 8
    prompts_per_update: int = 8
    top_c: int = 8
    loss_norm: str = "step"
    eps: float = 0.2
    beta: float = 0.01
    inner_steps: int = 1
    p_mask: float = 0.15
    igpo_ratio: str = "sequence"
    igpo_entropy_keep: float = 0.2
    # optimisation
    lr: float = 3e-5
    max_updates: int = 48
    lr_schedule: str = "constant"
    micro_batch: int = 64
    grad_clip: float = 1.0
    fsdp: bool = False
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_dropout: float = 0.05
    lora_targets: str | None = None
    precision: str = "fp32"
    activation_checkpointing: bool = False
    skip_memory_check: bool = False
    # logging and checkpoints
    out: str = "out/run"
    resume: bool = False
    save_every: int = 25
    eval_every: int = 8
    eval_batch_size: int = 64
    seed: int = 0


# The paper's setting (App. A.3, Section 3.1). Activation checkpointing is on: LLaDA's attention can
# take the math (unfused) path with padded prompts, and without checkpointing its (b, heads, S, S)
# scores put the train phase near 80 GB per GPU at prompts of ~550 tokens (tools/memory.py).
# Micro-batches of 4 rows: memory.py models 38.0 GiB per GPU (fragmentation included) for MDPO on
# LLaDA-8B under FSDP2 over 8 GPUs (results/memory.md); 64 rows would need over 300.
PAPER = dict(gen_length=512, block_lengths=(128, 512), steps=128, temperature=0.4,
             prompts_per_update=16, lr=7e-7, max_updates=100, eval_batch_size=8,
             activation_checkpointing=True, eval_every=10, micro_batch=4)
# What each preset and algorithm changes in Config's defaults. diffu-GRPO's inner_steps also depends
# on the task's kind (d1: 12 for math, 8 for countdown), and so does CJ-GRPO's: `defaults` adds it.
DEFAULTS = {
    ("toy", "mdpo"): {},
    ("toy", "diffu-grpo"): dict(eps=0.5, format_score=0.1, max_updates=4, eval_every=1),
    ("toy", "cj-grpo"): dict(eps=0.5, format_score=0.1, max_updates=4, eval_every=1),
    ("toy", "igpo"): dict(eps=0.2, format_score=0.1, inner_steps=4, p_mask=0.0, max_updates=12,
                          eval_every=2),
    ("toy", "sft"): dict(lr=2e-3, max_updates=1500, lr_schedule="cosine", beta=0.0, eval_every=0),
    ("paper", "mdpo"): dict(PAPER, beta=0.08),
    ("paper", "diffu-grpo"): dict(PAPER, eps=0.5, beta=0.04, format_score=0.1),
    ("paper", "cj-grpo"): dict(PAPER, eps=0.5, beta=0.04, format_score=0.1),
    ("paper", "igpo"): dict(PAPER, eps=0.2, beta=0.01, format_score=0.1, inner_steps=4, p_mask=0.0),
    ("paper", "sft"): dict(PAPER, lr=1e-5, beta=0.0),
}
PRESETS = ("toy", "paper")


def defaults(preset, algo, task):
    """Config's default values for a preset, algorithm and task (before any flag)."""
    values = {f.name: f.default for f in dataclasses.fields(Config)}
    values.update(DEFAULTS[preset, algo], preset=preset, algo=algo, task=task)
    if algo in ("diffu-grpo", "cj-grpo"):  # d1's and EAR's mu: 12 for math, 8 for countdown
        values["inner_steps"] = 12 if rewards.TASK_KIND[task] == "math" else 8
    return values


HELP = {  # flag help; `parser` appends the default of every preset and algorithm
    "model": "'toy' (an SFT-trained toy base, cached in <task>-base/ next to --out) or a model "
             "directory / HF name (paper: GSAI-ML/LLaDA-8B-Instruct)",
    **models.LOADING_HELP,
    "task": "reward and held-out set: " + ", ".join(tasks.TASKS),
    "train_file": "training prompts (.jsonl / .csv, formats in USAGE.md), e.g. the paper's "
                  "over-denoising subset ../shared/data/math_overdenoising_llada_epoch1.csv; "
                  "toy tasks generate theirs",
    "eval_data": "held-out set of --eval-every (toy tasks: the val split; else the task's file)",
    "n_train": "toy training problems to generate",
    "n_eval": "held-out problems of --eval-every (val) and of the toy's final table (test)",
    "prefilter": "overdenoise: train only on prompts greedy decoding gets right at some step "
                 "but wrong at the end (Section 3.3). The paper's training CSV is that subset "
                 "already, so no preset turns it on",
    "format_score": "countdown reward of a well-formed wrong answer (paper: 0, binary; d1: 0.1)",
    "preset": "toy or paper (default: toy for the toy tasks, paper for the others)",
    "algo": "sft = Eq. 1 on reference completions; mdpo; diffu-grpo = d1's baseline; cj-grpo, igpo "
            "(grpo.py, updates.py)",
    "gen_length": "tokens generated L",
    "block_lengths": "block sizes of the rollouts, alternating over groups (Section 3.4's mixture)",
    "steps": "denoising steps T of a rollout",
    "remasking": "remasking of the rollouts: " + ", ".join(sample.REMASKING),
    "schedule": "tokens revealed per step of the rollouts (remask.COUNTS; default: the "
                "remasking's own, linear-official for rcr-latest, else linear). ass: Ascending "
                "Step-Size, one block of --gen-length in floor(log2 L) --steps (the EOSER-ASS "
                "paper's CJ-GRPO: --eoser --schedule ass)",
    "eoser": "EOS Early Rejection in the rollouts (remask.py): an EOS's ranking confidence times "
             "gamma, from --eoser-gamma-min up to 1 over all steps of the generation (the "
             "reference trains one block; in semi-AR rollouts gamma ramps across the blocks)",
    "eoser_gamma_min": "EOSER's first gamma in the rollouts (the reference's training config, "
                       "train.yaml eos_min_gamma: 0.01; its function default 0.4)",
    "temperature": "rollout temperature > 0 (LLaDA: 0.4, the authors' README command)",
    "group_size": "G rollouts per prompt (paper 8)",
    "prompts_per_update": "prompts per update over all ranks (paper 16)",
    "top_c": "MDPO: c steps of largest non-zero |A| per rollout (App. A.3: 8)",
    "loss_norm": "MDPO normaliser (mdpo.loss_denominators): step (authors' code), token, "
                 "paper (Eq. 4 as written)",
    "eps": "clip range of Eq. 5 (MDPO: 0.2; d1: 0.5)",
    "beta": "KL weight (MDPO: 0.08, the authors' README 0.02; d1: 0.04)",
    "inner_steps": "mu optimiser steps per batch of rollouts (MDPO 1; d1 12 math, 8 countdown)",
    "p_mask": "diffu-GRPO, IGPO: prompt masking rate of the one-step log-prob input "
              "(d1 0.15, IGPO 0)",
    "igpo_ratio": "IGPO's importance ratio: sequence (GSPO's, one per completion: IGPO's run "
                  "scripts and paper) or token (per token)",
    "igpo_entropy_keep": "IGPO: share of the hint tokens kept in the loss, those of highest "
                         "entropy (IGPO 0.2; 1 = no filter)",
    "lr": "AdamW learning rate (paper 7e-7)",
    "max_updates": "batches of rollouts (paper 100); SFT: optimiser steps",
    "lr_schedule": "constant (paper) or cosine decay to 0 over --max-updates",
    "micro_batch": "sequences per forward/backward; the rest is accumulated",
    "grad_clip": "max gradient norm",
    "fsdp": "shard model, gradients, optimiser and reference with FSDP2",
    "lora_rank": "LoRA (lora.py, peft): train rank-R adapters on the blocks' linear layers of a "
                 "frozen base (bf16 on CUDA), the reference being the base; 0 = full "
                 "fine-tuning (d1, EAR, IGPO: 128)",
    "lora_alpha": "LoRA scaling alpha / rank (default: rank / 2, as d1's 64 at rank 128)",
    "lora_dropout": "dropout on the adapters' input (d1, EAR, IGPO: 0.05)",
    "lora_targets": "comma list of name endings of the linear layers to adapt (default: every "
                    "linear layer of the transformer blocks: attention and MLP projections, not "
                    "the embeddings or the output layer)",
    "precision": "compute dtype of rollouts, evaluation and forwards (bf16 on CUDA); master "
                 "weights, gradient reduction and AdamW stay fp32",
    "activation_checkpointing": "recompute each block in the backward",
    "skip_memory_check": "on CUDA, run even if memory.py predicts that the run does not fit the "
                         "GPU (train.py checks before it loads the model)",
    "out": "output dir: config.json, log.jsonl, last/, best/, table.md, plot.png",
    "resume": "continue OUT's run even if its settings differ from these",
    "save_every": "write OUT/last every K updates (and at the end)",
    "eval_every": "score the held-out set greedily every K updates, keep the best in OUT/best",
    "eval_batch_size": "prompts per forward when evaluating",
    "seed": "base seed (each rank adds its rank)",
}
CHOICES = {"task": tasks.TASKS, "prefilter": ("none", "overdenoise"), "preset": PRESETS,
           "algo": ALGOS, "remasking": sample.REMASKING, "schedule": remask.COUNTS,
           "loss_norm": mdpo.LOSS_NORMS,
           "lr_schedule": ("constant", "cosine"), "precision": ("bf16", "fp32"),
           "igpo_ratio": ("token", "sequence")}
# what may change between a run's sessions
MAY_CHANGE = {"resume", "save_every", "eval_every", "eval_batch_size", "skip_memory_check"}


def default_text(name):
    """'toy: 3e-05 (sft 0.002); paper: 7e-07 (sft 1e-05)': the default of flag `name` everywhere
    (or 'default: 64' when every preset and algorithm agree)."""
    parts = []
    for preset in PRESETS:
        task = Config.task if preset == "toy" else "math500"
        base = defaults(preset, "mdpo", task)[name]
        others = [f"{a} {show(defaults(preset, a, task)[name])}" for a in ALGOS
                  if a != "mdpo" and defaults(preset, a, task)[name] != base]
        if name == "inner_steps":
            others = ["diffu-grpo and cj-grpo 8 countdown, 12 math; igpo 4"]
        parts.append((show(base), f" ({', '.join(others)})" if others else ""))
    if len(set(parts)) == 1:
        return f"default: {''.join(parts[0])}"
    return "; ".join(f"{preset}: {''.join(part)}" for preset, part in zip(PRESETS, parts))


def show(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def show_json(value):
    """A value as read back from config.json (a list for block_lengths), written as its flag
    takes it."""
    return show(tuple(value)) if isinstance(value, list) else str(value)


def parser(description=None):
    """The command line. Flags left out are not in the parsed namespace (argparse.SUPPRESS), so that
    `from_args` can tell them from flags given with the default's value."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(Config):
        flag, kind = "--" + f.name.replace("_", "-"), type(f.default)
        plain = ("preset", "out", "resume", "task", "algo", "precision")
        extra = "" if f.name in plain else f" [{default_text(f.name)}]"
        text = HELP[f.name] + extra
        if kind is bool:
            p.add_argument(flag, action="store_true", help=text)
        elif f.name == "block_lengths":
            p.add_argument(flag, help=text)
        else:
            cast = {"mask_id": int, "train_file": str, "eval_data": str, "schedule": str,
                    "lora_alpha": float, "lora_targets": str}.get(f.name, kind)
            p.add_argument(flag, type=cast, choices=CHOICES.get(f.name), help=text)
    return p


def from_args(argv=None, description=None):
    """Parse argv into a checked Config: defaults of the preset and algorithm, then the flags
    given."""
    p = parser(description)
    given = vars(p.parse_args(argv))
    algo, task = given.get("algo", Config.algo), given.get("task", Config.task)
    preset = given.get("preset", "toy" if task in tasks.TOY_TASKS else "paper")
    if "block_lengths" in given:
        text = given["block_lengths"]
        if not all(b.strip().isdigit() and int(b) > 0 for b in text.split(",")):
            p.error(f"--block-lengths {text}: must be a comma list of positive integers")
        given["block_lengths"] = tuple(int(b) for b in text.split(","))
    values = {**defaults(preset, algo, task), **given}
    if "precision" not in given:
        values["precision"] = "bf16" if torch.cuda.is_available() else "fp32"
    cfg = Config(**values)
    problem = check(cfg)
    if problem:
        p.error(problem)
    return cfg


AT_LEAST = dict(lora_rank=0, gen_length=1, steps=1, group_size=2, prompts_per_update=1, top_c=1,
                beta=0, inner_steps=1, p_mask=0, max_updates=1, micro_batch=1, save_every=1,
                eval_every=0, eval_batch_size=1, n_train=1, n_eval=1, format_score=0, mask_id=0)


def check(cfg):
    """The first problem with cfg as a one-line message naming the flag, or None."""
    for key, low in AT_LEAST.items():
        value = getattr(cfg, key)
        if value is not None and value < low:
            return f"--{key.replace('_', '-')} {value}: must be >= {low}"
    positive = (("lr", "grad_clip") if cfg.algo == "sft"
                else ("eps", "lr", "grad_clip", "temperature"))
    for key in positive:
        if getattr(cfg, key) <= 0:
            why = (" (greedy rollouts of a group are all the same: every advantage would be 0)"
                   if key == "temperature" else "")
            return f"--{key.replace('_', '-')} {getattr(cfg, key)}: must be > 0{why}"
    world = int(os.environ.get("WORLD_SIZE", 1))
    n_blocks = [cfg.gen_length // b for b in cfg.block_lengths]
    toy_task = cfg.task in tasks.TOY_TASKS
    checks = [
        ("--block-lengths", show(cfg.block_lengths),
         all(cfg.gen_length % b == 0 for b in cfg.block_lengths),
         f"sizes that divide --gen-length {cfg.gen_length}"),
        ("--steps", cfg.steps, all(cfg.steps % n == 0 for n in n_blocks),
         f"a multiple of every block count {n_blocks}"),
        ("--prompts-per-update", cfg.prompts_per_update,
         cfg.algo == "sft" or cfg.prompts_per_update % world == 0,
         f"a multiple of the {world} processes (each rank keeps whole groups)"),
        ("--p-mask", cfg.p_mask, cfg.p_mask < 1, "< 1"),
        ("--format-score", cfg.format_score, cfg.format_score < 1, "< 1"),
        ("--model", cfg.model, cfg.model != "toy" or toy_task,
         f"a model path or HF name: the toy model knows only the toy tasks, not --task {cfg.task}"),
    ]
    if cfg.lora_rank and cfg.fsdp:
        return ("--fsdp with --lora-rank: not supported; a LoRA run keeps its frozen base whole "
                "on every GPU (DDP), and one 80 GB GPU holds LLaDA-8B's (tools/memory.py "
                "--world 1 --lora-rank 128)")
    if cfg.lora_alpha is not None and cfg.lora_alpha <= 0:
        return f"--lora-alpha {cfg.lora_alpha}: must be > 0"
    if not 0 <= cfg.lora_dropout < 1:
        return f"--lora-dropout {cfg.lora_dropout}: must be in [0, 1)"
    if cfg.algo == "igpo" and cfg.fsdp:
        return ("--fsdp with --algo igpo: ranks retry different numbers of all-wrong groups, "
                "and FSDP's gathers need every rank in every forward; use DDP")
    if not 0 < cfg.igpo_entropy_keep <= 1:
        return f"--igpo-entropy-keep {cfg.igpo_entropy_keep}: must be in (0, 1]"
    if not 0 <= cfg.eoser_gamma_min <= 1:
        return f"--eoser-gamma-min {cfg.eoser_gamma_min}: must be in [0, 1]"
    if cfg.schedule == "ass" and cfg.block_lengths != (cfg.gen_length,):
        return (f"--block-lengths {show(cfg.block_lengths)}: --schedule ass decodes one block, "
                f"must be {cfg.gen_length} (--gen-length)")
    if cfg.schedule == "ass" and cfg.steps != remask.ass_steps(cfg.gen_length):
        return (f"--steps {cfg.steps}: --schedule ass takes floor(log2 --gen-length) = "
                f"{remask.ass_steps(cfg.gen_length)} steps")
    if not (toy_task or cfg.algo == "sft" or cfg.train_file):
        return (f"--train-file is needed: --task {cfg.task} generates no training prompts "
                "(toy tasks do)")
    for flag, value, ok, allowed in checks:
        if not ok:
            return f"{flag} {value}: must be {allowed}"
    return None


def as_dict(cfg):
    """cfg as plain JSON values (what log.jsonl and config.json hold)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def describe(cfg):
    """The resolved settings, a few per line, as printed at the start of a run."""
    items = [f"{k}={show(v)}" for k, v in dataclasses.asdict(cfg).items()]
    lines, line = [], ""
    for item in items:
        if len(line) + len(item) > 96:
            lines.append(line)
            line = ""
        line += ("  " if line else "") + item
    return "\n".join(lines + [line])
