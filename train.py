r"""SFT (Eq. 1), MDPO (Section 2.3), and diffu-GRPO, CJ-GRPO and IGPO for masked diffusion LMs, with
plain torch.distributed.

Runbook
  the toy pipeline, CPU:     python train.py
      SFT-trains the toy base (cached in out/toy-digits-base, next to --out), trains it with
      MDPO and prints the greedy test accuracy before -> after (out/run/table.md, plot.png). A
      rerun resumes.
  the other algorithms:      python train.py --algo diffu-grpo --out out/grpo   (cj-grpo, igpo)
  two CPU processes (gloo):  torchrun --nproc_per_node 2 train.py --out out/ddp
  one node, 8 GPUs (nccl):   torchrun --nproc_per_node 8 train.py \
                                 --model GSAI-ML/LLaDA-8B-Instruct --trust-remote-code \
                                 --task math500 --fsdp --micro-batch 4 \
                                 --train-file ../shared/data/math_overdenoising_llada_epoch1.csv \
                                 --out out/llada
  several nodes:             torchrun --nnodes N --node_rank R --master_addr HOST \
                                 --nproc_per_node 8 train.py ...

The loop: setup -> (the toy's SFT base) -> for each update: this rank's prompts -> one update of
updates.py (sample, reward, advantages, select, loss, backward, step) -> log -> evaluate ->
checkpoint.
"""
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
import transformers
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import config
import distributed
import eval as evaluation
import ledger
import lora
import memory
import models
import rewards
import tasks
import toy
import updates
from distributed import print0


def main(argv=None):
    cfg = config.from_args(argv, __doc__)
    transformers.utils.logging.disable_progress_bar()
    try:  # everything that can be checked before a model loads
        base = toy_base_config(cfg)
        if base is not None:
            cfg = dataclasses.replace(cfg, model=str(Path(base.out) / "last"))
        elif cfg.model != "toy":
            models.check_model_path(cfg.model, cfg.mask_id)
        examples, eval_examples, test_examples = load_data(cfg, base is not None)
        checkpoint.check_writable(Path(cfg.out), "--out")
        if base is not None:
            checkpoint.check_writable(Path(base.out),
                                      f"the toy base's cache (next to --out {cfg.out})")
        resume_from = checkpoint.resume_point(cfg, config.MAY_CHANGE)
        base_from = checkpoint.resume_point(base, config.MAY_CHANGE) if base else None
    except (ValueError, OSError) as e:
        sys.exit(f"train.py: error: {e}")
    rank, world, device = distributed.setup_distributed()
    print0(f"settings:\n{config.describe(cfg)}")
    problem = memory_problem(cfg, examples, world, distributed.device_memory(device))
    if problem:
        distributed.cleanup_distributed()
        sys.exit(f"train.py: error: {problem}")
    try:
        if base is not None:  # always the same base: RL seeds vary, the base does not
            train(base, toy.make_task(cfg.task, base.n_train, 0, "train"), None, base_from, rank,
                  world, device)
        final, n_new = train(cfg, examples, eval_examples, resume_from, rank, world, device)
        written = [Path(cfg.out) / "config.json", Path(cfg.out) / "log.jsonl", final]
        if base is not None:
            written += [before_after_table(cfg, final, test_examples, n_new, rank, world, device),
                        Path(base.out) / "last"]
        if rank == 0:
            import plots
            written.append(plots.training_curves(Path(cfg.out) / "log.jsonl",
                                                 Path(cfg.out) / "plot.png"))
        print0("results: " + ", ".join(map(str, written)))
    except KeyboardInterrupt:
        last = checkpoint.latest(cfg.out)
        saved = (f"{last} holds update {checkpoint.saved_step(last)}" if last
                 else "nothing was saved")
        print0(f"\ninterrupted: {saved}; run the same command again to continue")
        sys.exit(130)
    finally:
        distributed.cleanup_distributed()


def toy_base_config(cfg):
    """The SFT run that makes the toy base for `--model toy` RL
    (None when there is nothing to build)."""
    if cfg.model != "toy" or cfg.algo == "sft":
        return None
    argv = ["--algo", "sft", "--task", cfg.task, "--precision", cfg.precision,
            "--out", str(Path(cfg.out).parent / f"{cfg.task}-base")]
    return config.from_args(argv)


def memory_problem(cfg, examples, world, device_bytes):
    """On CUDA, before any model loads: memory.py's peak per GPU for these settings, the model's
    sizes (its config.json) and the longest training prompt, against the device's memory. A
    one-line message naming the flags that would fit, or None (fits, a CPU, or sizes unknown)."""
    if device_bytes is None or cfg.skip_memory_check or cfg.model == "toy":
        return None
    shape = memory.shape_of(models.read_config(cfg.model, cfg.trust_remote_code))
    if shape is None:
        return None
    tokenizer = models.load_tokenizer(cfg.model, cfg.trust_remote_code)
    prompts = tasks.prompt_texts(cfg.task, examples)
    prompt_len = models.encode_prompts(tokenizer, prompts)[0].shape[1]  # the longest, padded to
    return memory.check_fits(shape, memory.run_of(cfg, world, prompt_len), device_bytes)


def load_data(cfg, toy_pipeline):
    """(training examples, held-out val examples or None, test examples for the toy's table or
    None)."""
    if cfg.train_file:
        examples = tasks.load_examples(cfg.task, cfg.train_file)
    else:
        examples = toy.make_task(cfg.task, cfg.n_train, cfg.seed, split="train")
    if cfg.algo == "igpo" and not all(ex.get("solution") or ex.get("completion")
                                      for ex in examples):
        raise ValueError("--algo igpo needs a reference solution per training example "
                         "(its hints): the toy tasks have them; "
                         f"{cfg.train_file} holds final answers only")
    held_out = None
    # toy tasks: the best checkpoint is chosen on val (the same problems for every seed)
    if cfg.eval_every:
        held_out = tasks.load_examples(cfg.task, cfg.eval_data, cfg.n_eval, 0, split="val")
    test = (tasks.load_examples(cfg.task, None, cfg.n_eval, 0, split="test") if toy_pipeline
            else None)
    return examples, held_out, test


def train(cfg, examples, eval_examples, resume_from, rank, world, device):
    """Run cfg.algo up to cfg.max_updates (from resume_from, if given). Returns (OUT/last, updates
    run now)."""
    out = Path(cfg.out)
    state = checkpoint.trainer_state(resume_from) if resume_from else {"step": 0}
    if state["step"] >= cfg.max_updates:
        print0(f"{out}: finished ({cfg.algo}, update {state['step']} of {cfg.max_updates}); "
               "nothing to train")
        return out / "last", 0
    torch.manual_seed(cfg.seed)  # torch's own generator: LoRA's initialisation and dropout
    policy, wrapped, reference, tok, mask_id = build(cfg, rank, world, device)
    counts = {}  # the compute ledger: this rank's forwards and tokens so far
    ledger.count_forwards(policy, counts)
    if reference is not None:
        ledger.count_forwards(reference, counts, reference=True)
    trainable = [p for p in policy.parameters() if p.requires_grad]  # LoRA: the adapters alone
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + rank)
    step, pos, best = 0, 0, -1.0
    if resume_from is not None:
        step, pos, best = restore(resume_from, policy, optimizer, gen, cfg, rank, world)
        print0(f"resuming from {resume_from} (update {step} of {cfg.max_updates})")
    if cfg.algo != "sft" and cfg.prefilter == "overdenoise":  # Section 3.3
        examples = evaluation.prefilter(policy.eval(), tok, examples, cfg, mask_id, rank, world)
    log = start_log(cfg, resume_from, step, rank)
    if cfg.eval_every and step == 0:  # the starting model: the val curve's update 0
        log({"step": 0, "eval_accuracy": val_accuracy(policy, tok, eval_examples, cfg, mask_id,
                                                      rank, world)})
    per_rank = (cfg.prompts_per_update // world if cfg.algo != "sft"
                else max(cfg.micro_batch // world, 1))
    first = step
    bar = distributed.progress(total=cfg.max_updates, initial=step,
                               desc=f"{cfg.algo} {cfg.task}", disable=rank != 0)
    while step < cfg.max_updates:
        batch = [examples[tasks.prompt_order(pos + rank * per_rank + i, len(examples), cfg.seed)]
                 for i in range(per_rank)]
        pos += per_rank * world
        stats = run_update(cfg, wrapped, reference, optimizer, batch, tok, mask_id, gen, step,
                           counts)
        step += 1
        stats["step"] = step
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_updates):
            stats["eval_accuracy"] = val_accuracy(policy, tok, eval_examples, cfg, mask_id, rank,
                                                  world)
        if step % cfg.save_every == 0 or step == cfg.max_updates or "eval_accuracy" in stats:
            best = save(cfg, policy, tok, optimizer, gen, step, pos, best,
                        stats.get("eval_accuracy"), rank)
        log(stats)
        bar.set_postfix({k: f"{stats[k]:.3f}" for k in ("loss", "reward", "eval_accuracy")
                         if k in stats}, refresh=False)
        bar.update(1)
    bar.close()
    print0(ledger.summary(out / "log.jsonl"))
    return out / "last", step - first


# The held-out (val) curve's decoding: greedy, LLaDA's low-confidence remasking, the rollouts' first
# block size and steps (toy: B = 10, T = 16)
VAL_REMASKING = "lcr"


def val_accuracy(policy, tok, examples, cfg, mask_id, rank, world):
    """Greedy accuracy on the held-out set with VAL_REMASKING and block size
    cfg.block_lengths[0]; the policy is back in training mode after."""
    accuracy = evaluation.sharded_accuracy(policy.eval(), tok, examples, cfg, mask_id,
                                           VAL_REMASKING, cfg.block_lengths[0], rank, world)[0]
    distributed.back_to_training(policy, cfg.fsdp)
    return accuracy


def run_update(cfg, wrapped, reference, optimizer, batch, tok, mask_id, gen, step, counts):
    """One update of cfg.algo at the learning rate of this step; its statistics, with timing,
    failures and its compute ledger (ledger.py; counts: this rank's forward counts)."""
    t0, failures = time.time(), rewards.calls["timeout"] + rewards.calls["crash"]
    before = dict(counts)
    decay = (0.5 * (1 + math.cos(math.pi * step / cfg.max_updates))
             if cfg.lr_schedule == "cosine" else 1.0)
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * decay
    kw = dict(tokenizer=tok, mask_id=mask_id, generator=gen)
    if cfg.algo == "sft":
        stats = updates.sft_update(wrapped, optimizer, batch, cfg, **kw)
    else:
        stats = updates.UPDATES[cfg.algo](wrapped, reference, optimizer, batch, cfg, update=step,
                                          **kw)
    if stats.get("skipped"):
        print0(f"update {step + 1}: non-finite loss {stats['loss']} or gradient norm "
               f"{stats['grad_norm']}: not applied")
    device = next(wrapped.parameters()).device
    new_failures = rewards.calls["timeout"] + rewards.calls["crash"] - failures
    stats["reward_failures"] = int(distributed.all_sum([new_failures], device)[0])
    stats.update(ledger.update_costs(cfg, stats, before, counts, device))
    stats["seconds"] = time.time() - t0
    stats["tokens_per_s"] = stats.get("tokens", 0) / stats["seconds"]
    return stats


def build(cfg, rank, world, device):
    """(policy with fp32 master weights, its DDP/FSDP wrapper, the frozen reference or None,
    tokenizer, mask id). The reference is the starting model, run like the policy: the KL is exactly
    0 at the start."""
    out = Path(cfg.out)
    # a fresh toy model for SFT, saved once so that every rank and a resume load it
    if cfg.model == "toy":
        if rank == 0 and not (out / "init" / "config.json").exists():
            toy.save_fresh(out / "init", cfg.seed)
        distributed.barrier()
    start = str(out / "init") if cfg.model == "toy" else cfg.model

    # fp32 master weights; a LoRA base is frozen in the compute dtype (no master copy)
    dtype = torch.bfloat16 if cfg.lora_rank and cfg.precision == "bf16" else torch.float32

    def load():  # on the host in the checkpoint's dtype, then cast on the device
        return models.load_model(start, device, dtype, cfg.trust_remote_code, cfg.shifted_logits)
    policy, tok = distributed.in_turn(load)
    mask_id = models.resolve_mask_id(tok, policy, cfg.mask_id)
    if cfg.activation_checkpointing:
        distributed.checkpoint_blocks(policy)
    if cfg.lora_rank:
        policy = lora.add_adapter(policy, cfg.lora_rank, cfg.lora_alpha or cfg.lora_rank / 2,
                                  cfg.lora_dropout,
                                  cfg.lora_targets.split(",") if cfg.lora_targets else None)
    # under FSDP the policy is sharded before the reference loads: one full fp32 copy on a GPU at a
    # time
    if cfg.fsdp:
        wrapped = distributed.shard(policy, cfg.precision)
    else:
        wrapped = DDP(policy) if world > 1 else policy
    reference = None
    if cfg.algo != "sft" and cfg.beta > 0 and cfg.lora_rank:
        reference = lora.AdapterOff(policy)  # the base: the policy with its adapter off
    elif cfg.algo != "sft" and cfg.beta > 0:
        reference = distributed.in_turn(load)[0]
        reference.requires_grad_(False)
        if cfg.fsdp:
            reference = distributed.shard(reference, cfg.precision, reshard_root=True)
    return policy.train(), wrapped, reference, tok, mask_id


def restore(path, policy, optimizer, gen, cfg, rank, world):
    """Model, optimiser and this rank's sampling stream from a checkpoint
    -> (step, data position, best)."""
    state = checkpoint.load(path, policy, optimizer)
    if len(state["gen"]) == world:
        gen.set_state(state["gen"][rank])
        for rng, saved in zip(global_rngs(gen.device), state.get("torch_rng", [[]] * world)[rank]):
            rng.set_rng_state(saved)  # dropout's (LoRA's adapters)
    else:
        print0(f"{path} was written by {len(state['gen'])} processes, this run has {world}: "
               "the sampling streams start afresh, so the run is not bit-identical to an "
               "uninterrupted one")
    return state["step"], state["pos"], state["best"]


def save(cfg, policy, tok, optimizer, gen, step, pos, best, accuracy, rank):
    """OUT/last (and OUT/best when the held-out accuracy improved). Returns the best accuracy so
    far."""
    out = Path(cfg.out)
    new_best = accuracy is not None and accuracy > best
    best = max(best, -1.0 if accuracy is None else accuracy)
    state = {"gen": distributed.all_gather_list([gen.get_state()]), "step": step, "pos": pos,
             "best": best, "torch_rng": distributed.all_gather_list(
                 [[rng.get_rng_state() for rng in global_rngs(gen.device)]])}
    final = step == cfg.max_updates
    checkpoint.save(out / "last", policy, tok, optimizer, state, rank,
                    full_weights=not cfg.fsdp or final or new_best)
    if rank == 0 and new_best:
        checkpoint.keep_as_best(out / "last", out / "best")
    return best


def global_rngs(device):
    """torch's global generators a run draws from outside its own generator: dropout's (LoRA's
    adapters), on the CPU and on this rank's GPU."""
    return [torch] + ([torch.cuda] if torch.device(device).type == "cuda" else [])


def start_log(cfg, resume_from, step, rank):
    """OUT/config.json and OUT/log.jsonl (the config on its first line; a resumed run keeps the
    lines up to its checkpoint). Returns log(stats), which appends one JSON line (rank 0)."""
    path = Path(cfg.out) / "log.jsonl"
    if rank == 0:
        lines = path.read_text().splitlines() if resume_from and path.exists() else []
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        header = json.dumps({"config": config.as_dict(cfg)})
        path.write_text("".join(line + "\n" for line in (kept or [header])))
        (Path(cfg.out) / "config.json").write_text(json.dumps(config.as_dict(cfg), indent=1) + "\n")

    def log(stats):
        if rank == 0:
            row = {k: round(v, 6) if isinstance(v, float) else v for k, v in stats.items()}
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
    return log


def before_after_table(cfg, final, examples, n_new, rank, world, device):
    """The toy pipeline's result: greedy test accuracy of the base and of the trained model, with
    LCR and both RCRs at every block size (OUT/table.md, printed). The trained model is the one
    the val curve picks, OUT/best (the update of highest val accuracy), else OUT/last. A finished
    run's table is not computed again."""
    table = Path(cfg.out) / "table.md"
    best = Path(cfg.out) / "best"
    trained = best if (best / "trainer_state.pt").exists() else final
    if n_new or not table.exists():
        update = checkpoint.saved_step(trained)
        print0(f"scoring the base and the trained model ({trained}, update {update}) on "
               f"{len(examples)} test problems")
        name = f"+ {cfg.algo} ({trained.name}: update {update}"
        name += ", the best val accuracy)" if trained == best else ")"
        text = evaluation.compare({"toy base (SFT, Eq. 1)": cfg.model, name: str(trained)},
                                  examples, cfg, rank, world, device)
        if rank == 0:
            table.write_text(text)
    distributed.barrier()
    print0("\n" + table.read_text())
    return table


if __name__ == "__main__":
    main()
