"""Plain torch.distributed for train.py and eval.py: setup, teardown, and the few
collectives they use.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them a script is one plain process (rank 0 of
1) and runs the same code path. Backend nccl on CUDA (each rank on cuda:LOCAL_RANK), gloo on CPU.
"""
import collections
import gc
import os
import sys

import torch
import torch.distributed as dist
from tqdm import tqdm


def setup_distributed(device=None):
    """(rank, world size, device). `device`: "cpu", "cuda" or None (CUDA when available); under
    torchrun a CUDA device becomes cuda:LOCAL_RANK."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if "RANK" not in os.environ:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
        torch.cuda.set_device(device)  # before init, so nccl binds this rank to its GPU
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def cleanup_distributed():
    """Tear the process group down, last. Whatever holds it (a DDP or FSDP model) must be gone by
    now: gloo's destructor joins its worker thread while holding the GIL, and that thread may need
    the GIL to free its last work item. If a model that still references the group is the one to
    free it, the two wait on each other forever (seen in CI); destroy_process_group releases the GIL
    while it waits, so the group must die there.
    """
    if dist.is_initialized():
        # models caught in reference cycles drop the group now, while the registry still holds it
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def device_memory(device):
    """Bytes of memory of a CUDA device, None for a CPU (nothing to check)."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def all_sum(values, device):
    """Sum a list of floats over ranks (a no-op in one process)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def all_gather_list(items):
    """Concatenate every rank's Python list, in rank order (the list itself in one process)."""
    if not dist.is_initialized():
        return list(items)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def barrier():
    if dist.is_initialized():
        dist.barrier()


def in_turn(fn):
    """fn() on every rank, the ranks of a node one at a time (a barrier after each turn): each rank
    reads a model onto the host before moving it to its GPU, and one copy at a time (16 GB for
    LLaDA-8B in bf16) fits a node's RAM where 8 at once might not. Returns this rank's fn()."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    result = None
    for turn in range(int(os.environ.get("LOCAL_WORLD_SIZE", 1))):
        if turn == local:
            result = fn()
        barrier()
    return result


def progress(**kwargs):
    """A tqdm bar. When stderr is not a terminal (a log file), a line at most every 30 s instead of
    a redraw at every update."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30)
    return tqdm(**kwargs)


def print0(*a):
    """Print on rank 0 only, without breaking a tqdm bar."""
    if int(os.environ.get("RANK", 0)) == 0:
        tqdm.write(" ".join(map(str, a)))


def pad_micro_batches(items, empty):
    """Pad this rank's micro-batches with `empty(item)` copies (zero loss, the same collectives) up
    to the largest count over ranks: DDP and FSDP need every rank to run the same forwards and
    backwards."""
    most = max(all_gather_list([len(items)]))
    if most > len(items) and not items:
        raise RuntimeError("this rank has no micro-batch to pad from while another rank has some")
    return items + [empty(items[-1])] * (most - len(items))


# --------------------------------------------------------------------------- precision and sharding
def autocast(precision, device):
    """bf16 compute (precision "bf16") around every forward: rollouts, evaluation, reference and
    training. Weights stay fp32 (the optimiser's master copy); CPU autocast runs bf16 too, so the
    path is testable here."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                          enabled=precision == "bf16")


def blocks(model):
    """The transformer blocks: the modules named in HF's _no_split_modules (LLaDA's and the
    toy's)."""
    return [m for m in model.modules()
            if type(m).__name__ in (getattr(model, "_no_split_modules", None) or [])]


def shard(model, precision, reshard_root=False):
    """FSDP2: one unit per block, then the root (which keeps what the blocks do not: embeddings,
    output layer). Parameters, gradients and optimiser state live sharded; a unit's parameters are
    gathered in bf16 (precision "bf16") for its forward and backward; gradients reduce in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if precision == "bf16" else None,
                                  reduce_dtype=torch.float32)
    uses = collections.Counter(id(q) for _, q in model.named_parameters(remove_duplicate=False))
    # a block holding a tied weight (BERT's embeddings) stays with the root
    for block in blocks(model):
        if all(uses[id(q)] == 1 for q in block.parameters()):
            fully_shard(block, mp_policy=policy)
    # FSDP2 keeps a root's parameters gathered from its forward until its backward; a model that
    # never runs a backward (the frozen reference) would keep them for good: reshard_root frees them
    # after every forward
    return fully_shard(model, mp_policy=policy,
                       reshard_after_forward=True if reshard_root else None)


def back_to_training(model, fsdp):
    """After rollouts or an evaluation: train mode, and under FSDP free the root unit their
    forwards left gathered."""
    if fsdp:
        model.reshard()
    model.train()


def checkpoint_blocks(model):
    """Activation checkpointing: every block recomputes its forward in the backward instead of
    keeping it."""
    import functools
    from torch.utils.checkpoint import checkpoint as recompute
    for block in blocks(model):
        block.forward = functools.partial(recompute, block.forward, use_reentrant=False)
