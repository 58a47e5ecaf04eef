"""Shared test helpers: the repo root on sys.path, the shared data folder, a small toy model, and
bounded processes: every subprocess or spawned process a test starts is killed (with its stacks
printed) when it runs over its time limit, so a hang fails the test instead of stalling CI."""

import collections
import faulthandler
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

import toy  # noqa: E402


# ----------------------------------------------------------------------------- bounded processes
def descendants(pid):
    """Every live process below pid, children first (Linux /proc)."""
    children = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[ppid].append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children[todo.pop()]:
            out.append(child)
            todo.append(child)
    return out


def alive(pid):
    """True while pid runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_tree(pid, grace_s=5.0):
    """SIGABRT pid and everything below it (Python's faulthandler, on through PYTHONFAULTHANDLER=1,
    prints each process's thread stacks to its stderr, even when a thread holds the GIL), then
    SIGKILL what is left. The list is taken first: torchrun's workers run in their own sessions and
    outlive a killed parent.
    """
    procs = [pid] + descendants(pid)
    for sig in (signal.SIGABRT, signal.SIGKILL):
        for p in procs:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while sig == signal.SIGABRT and time.time() < deadline and any(map(alive, procs)):
            time.sleep(0.1)


def run_bounded(cmd, timeout, env=None, cwd=None):
    """subprocess.run(cmd, capture_output=True, text=True) that cannot hang: past `timeout` seconds
    the whole process tree is stopped as in kill_tree and the test fails with the stacks it
    printed."""
    # one torch thread per process: the processes of a test (torchrun's ranks) share 2 cores, and
    # OpenMP threads that wait on each other make them several times slower
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        pytest.fail(
            f"{' '.join(map(str, cmd))} ran over {timeout} s and was killed; "
            "its stderr (stacks at the end):\n"
            f"{err[-8000:]}"
        )
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _bounded_target(fn, limit_s, rank, *args):
    faulthandler.dump_traceback_later(
        limit_s, exit=True
    )  # a hung child prints its stacks and exits
    torch.set_num_threads(1)  # the spawned processes share 2 cores (see run_bounded)
    fn(rank, *args)


def spawn_bounded(fn, args, nprocs, timeout):
    """torch.multiprocessing.spawn(fn, args, nprocs) with a time limit: each child prints its stacks
    and exits after `timeout` seconds, and the parent kills what is still alive a little later.
    Fails the test unless every child exits with 0."""
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_bounded_target, args=(fn, timeout, rank, *args))
        for rank in range(nprocs)
    ]
    for proc in procs:
        proc.start()
    deadline = time.time() + timeout + 10
    try:
        for proc in procs:
            proc.join(max(deadline - time.time(), 0))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    codes = [proc.exitcode for proc in procs]
    assert (
        codes == [0] * nprocs
    ), f"spawned processes exited with {codes} (a hang prints its stacks above)"


def snapshot(folder):
    """{file name: (size, mtime)} of every file in folder (a preview leaves results/ as it is)."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).iterdir()}


# ----------------------------------------------------------------------------- models
class NoMaskPrediction(torch.nn.Module):
    """Wraps a model so that it never predicts [MASK], as a trained MDLM never does."""

    def __init__(self, model, mask_id):
        super().__init__()
        self.model, self.mask_id, self.config = model, mask_id, model.config

    def forward(self, input_ids, attention_mask=None):
        out = self.model(input_ids, attention_mask=attention_mask)
        out.logits[..., self.mask_id] = -1e9
        return out


@pytest.fixture
def tok():
    return toy.ToyTokenizer()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny random toy model (1 layer, width 32) and its tokenizer, saved the way train.py saves
    one."""
    path = tmp_path_factory.mktemp("tiny") / "model"
    torch.manual_seed(0)
    toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32)).save_pretrained(path)
    toy.ToyTokenizer().save_pretrained(path)
    return path


def large_weights_toy():
    """A random toy model (seed 0) with large weights, so its confidences are spread out (not all
    ~1/V)."""
    torch.manual_seed(0)
    model = toy.ToyMDLM(toy.ToyConfig(n_layers=2, d_model=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


@pytest.fixture
def peaked_model(tok):
    return NoMaskPrediction(large_weights_toy(), tok.mask_token_id).eval()
