"""Checkpoints of train.py: written atomically, resumable exactly (on one machine), sharded
under FSDP.

A checkpoint is a directory (OUT/last; OUT/best holds the exported model of the best update, no
dcp/):
  dcp/               model and optimiser state, torch.distributed.checkpoint format: under FSDP
                     every rank writes and reads only its own shards (no rank gathers the 8B
                     model and its AdamW state), and a resume on another number of ranks
                     reshards on load;
  trainer_state.pt   step, data position, best held-out accuracy, the world size and every
                     rank's RNG state;
  config.json + weights + tokenizer
                     the consolidated model (save_pretrained), what sample.py / eval.py load.
                     Under FSDP it is gathered only when asked (`full_weights`: the final and
                     the best model).
Each save goes to PATH.tmp and is renamed into place, so a crash leaves the previous checkpoint
whole; a Ctrl-C that arrives during a save is held until the save is complete (the collective save
must not stop half-way).
"""
import contextlib
import json
import os
import pickle
import signal
import shutil
import threading
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

import distributed
import lora

# one process: what every toy run means
QUIET = "torch.distributed is disabled, unavailable or uninitialized"


@contextlib.contextmanager
def ctrl_c_held():
    """Hold a SIGINT that arrives inside the block and raise it (KeyboardInterrupt) once the block
    is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def save(path, model, tok, optimizer, state, rank, full_weights=True):
    """Every rank calls it. state: small picklable dict (step, pos, best, gen = one RNG state per
    rank, ...). full_weights: also write the consolidated model (gathered onto rank 0's CPU when
    the model is sharded)."""
    with ctrl_c_held():  # a Ctrl-C now would stop the ranks' collective save half-way
        path, tmp, old = Path(path), Path(f"{path}.tmp"), Path(f"{path}.old")
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        distributed.barrier()
        # sharded (DTensor) under FSDP, plain tensors otherwise; a LoRA model's adapters alone
        weights, optim = get_state_dict(model, optimizer, options=trainable_only(model))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=QUIET)
            dcp.save({"model": weights, "optim": optim}, checkpoint_id=tmp / "dcp",
                     no_dist=not dist.is_initialized())
        if full_weights and lora.is_lora_model(model):  # the adapter; its base is --model
            if rank == 0:
                model.save_pretrained(tmp)
        elif full_weights:
            full = get_state_dict(
                model, [], options=StateDictOptions(full_state_dict=True, cpu_offload=True))[0]
            if rank == 0:
                with own_class(model):
                    model.save_pretrained(tmp, state_dict=full)
        if rank == 0:
            tok.save_pretrained(tmp)
            torch.save(state, tmp / "trainer_state.pt")
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        distributed.barrier()  # nobody reads PATH before it is complete


@contextlib.contextmanager
def own_class(model):
    """The model seen as its own class inside the block. FSDP2 gives a sharded model a class of its
    own (FSDPLLaDAModelLM, a subclass of FSDPModule and LLaDAModelLM), and save_pretrained writes
    the object's class into config.json ("architectures", and "auto_map" for a model with its own
    code, whose source file it copies): without this, an FSDP run's export names torch's wrapper
    and carries torch's file instead of modeling_llada.py, and no fresh process can load it."""
    from torch.distributed.fsdp import FSDPModule
    sharded = type(model)
    if isinstance(model, FSDPModule):
        model.__class__ = next(c for c in sharded.__mro__ if not issubclass(c, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = sharded


def load(path, model, optimizer):
    """Restore model and optimiser in place from PATH/dcp (resharding if the world size changed);
    returns the trainer state written by `save`."""
    weights, optim = get_state_dict(model, optimizer, options=trainable_only(model))
    loaded = {"model": weights, "optim": optim}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=QUIET)
        dcp.load(loaded, checkpoint_id=Path(path) / "dcp", no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=loaded["model"],
                   optim_state_dict=loaded["optim"], options=trainable_only(model))
    return trainer_state(path)


def trainable_only(model):
    """The state-dict options of a model with frozen parameters (a LoRA base): they are --model's,
    loaded as it is at every start, so dcp/ holds the trainable parameters and their AdamW state
    alone."""
    frozen = any(not p.requires_grad for p in model.parameters())
    # loading leaves the frozen parameters as they are: they are not in dcp/, and that is no error
    return StateDictOptions(ignore_frozen_params=frozen, strict=not frozen)


def trainer_state(path):
    """PATH/trainer_state.pt: step, data position, best accuracy (numbers) and RNG states (tensors).

    Read with weights_only=True: a file that holds anything else (objects whose unpickling would run
    code, say, in a checkpoint someone shared) is refused with a ValueError naming it.
    """
    file = Path(path) / "trainer_state.pt"
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{file}: not a trainer state written by train.py, refused unread "
                         f"({first})") from None


def saved_step(path):
    return trainer_state(path)["step"]


def latest(out):
    """OUT/last, or OUT/last.old if a crash hit between the two renames of `save`; None if neither
    is there."""
    return next((Path(out) / n for n in ("last", "last.old")
                 if (Path(out) / n / "trainer_state.pt").exists()), None)


def resume_point(cfg, may_change=()):
    """The checkpoint to continue from, or None to start afresh. A rerun never destroys a run: with
    the same settings (up to the keys in may_change, and flags the run's version did not have) it
    continues; with other settings it stops, naming --resume (continue with the new settings) and
    how to start over. The checkpoint's trainer state is read here, so that a bad one fails
    before any model loads."""
    import config
    out, mine = Path(cfg.out), config.as_dict(cfg)
    saved, last = saved_config(out), latest(out)
    diff = [k for k in mine
            if k not in may_change and saved is not None and k in saved and saved[k] != mine[k]]
    if diff and not cfg.resume:
        said = "; ".join(f"--{k.replace('_', '-')} {config.show_json(saved.get(k))} there, "
                         f"{config.show_json(mine[k])} here" for k in diff[:3])
        raise ValueError(f"--out {out} holds a run with other settings ({said}). "
                         "Pass --resume to continue it with these settings, "
                         f"or choose another --out (or delete {out}) to start over")
    if last is not None:
        trainer_state(last)
    return last


def check_writable(path, what):
    """Create the directory `path` and check that a file can be written there; a ValueError names
    `what`."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path}: is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"  # one per process: every rank checks at once
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot write there ({e.strerror})") from None


def keep_as_best(last, best):
    """best/ := the exported model of last/ (config, weights, tokenizer, model code and
    trainer_state.pt), each file a hard link to last's: no copy, however large the model, so rank 0
    is done at once while the other ranks wait (a full copy of an 8B run's checkpoint took minutes,
    past NCCL's timeout). The next save of last/ writes new files and leaves these alone. Not dcp/:
    best/ is a model to load, not a run to resume. A filesystem without hard links gets copies."""
    best, tmp = Path(best), Path(f"{best}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(last, tmp, ignore=shutil.ignore_patterns("dcp"), copy_function=link_or_copy)
    shutil.rmtree(best, ignore_errors=True)
    tmp.rename(best)


def link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def saved_config(out):
    """The config recorded on the first line of OUT/log.jsonl, or None."""
    log = Path(out) / "log.jsonl"
    if not log.exists() or not log.read_text().strip():
        return None
    return json.loads(log.read_text().splitlines()[0]).get("config")
