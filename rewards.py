"""Verifiable rewards r(x) for MDPO: scored on final answers and on every intermediate prediction.

The paper (Sec. 3.1, App. A) scores the full prediction x_t of every denoising step with a static
verifier; these numbers feed the intermediate-reward advantages of Eq. 6 / Eq. 11 (mdpo.py). Rewards
are binary, as in the paper (App. C.1: "we only use the binary rewards").

- Math (MATH-500, toy-arith) → `math_reward`: 1.0 if the content of the last closed \\boxed{...}
  equals the gold answer (by string after normalisation, else by math-verify), otherwise 0.0, also
  when there is no closed box: a cut-off box or a number somewhere in the reasoning earns nothing.
- Countdown (countdown, toy-countdown) → `countdown_reward`: 1.0 if the final answer, the last
  closed \\boxed{...} or the last <answer>...</answer> (whichever starts later), is an expression
  over + - * / ( ) that uses every given number exactly once and equals the target; else 0.0.
  `format_score=0.1` gives d1's scheme: a wrong answer earns 0.1 when the text has an answer tag.
- Intermediate rewards → `score_trajectory`: r(x_t) for every rollout n and step s, memoised per
  rollout on what the reward reads (`final_answer`).
- Silent failures → `calls`, a Counter the trainer can log as deltas: "reward" (answers scored),
  "math_verify" (worker requests), "timeout" (requests over TIMEOUT_S: worker killed, reward 0.0)
  and "crash" (requests whose worker died or did not start: reward 0.0).

Where this differs from the reference implementations (d1, the authors', TinyZero): DEVIATIONS.md,
"rewards.py" (the last closed box only, countdown without `eval`, math-verify in a worker
interpreter with a time limit, intermediate rewards memoised on the final answer).
"""
import ast
import atexit
import collections
import dataclasses
import logging
import math
import multiprocessing
import multiprocessing.connection
import operator
import os
import re
import signal
import subprocess
import sys
import threading
from fractions import Fraction
from functools import lru_cache

from math_verify import parse, verify

TASK_KIND = {"math500": "math", "math": "math", "toy-arith": "math", "toy-digits": "math",
             "countdown": "countdown", "toy-countdown": "countdown"}

TIMEOUT_S = 1.0            # wall-clock limit of one math-verify call
STARTUP_TIMEOUT_S = 60.0   # wall-clock limit of a worker's startup (about 1 s)
MAX_ANSWER_CHARS = 300     # longest boxed answer we read (MATH-500's longest gold: 53 chars)
CD_MAX_CHARS, CD_MAX_DIGITS, CD_MAX_DEPTH = 200, 6, 20

calls = collections.Counter()  # keys "reward", "math_verify", "timeout", "crash": see the top


# ----------------------------------------------------------------------------- answer extraction
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"\\[{}]|[{}]")  # escaped braces (\{ \}) are matched and skipped


def last_boxed_at(text: str, max_len: int = MAX_ANSWER_CHARS) -> tuple[int, str] | None:
    """(start, content) of the last \\boxed{...} / \\fbox{...};
    None if absent, unbalanced or over max_len.

    Scanning stops after max_len characters, so a box that never closes costs no more than that.
    """
    last = None
    for last in _BOXED.finditer(text):
        pass
    if last is None:
        return None
    depth = 1
    for brace in _BRACE.finditer(text, last.end(), last.end() + max_len + 1):
        depth += {"{": 1, "}": -1}.get(brace.group(), 0)
        if depth == 0:
            return last.start(), text[last.end():brace.start()]
    return None


def last_answer_tag_at(text: str) -> tuple[int, str] | None:
    """(start, content) of the last <answer>...</answer>, None if there is none. Linear time."""
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    if start < 0:
        return None
    content = start + len("<answer>")
    return start, text[content:text.find("</answer>", content)]


def last_boxed(text: str, max_len: int = MAX_ANSWER_CHARS) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...}; None if absent, unbalanced or over
    max_len."""
    found = last_boxed_at(text, max_len)
    return None if found is None else found[1]


def math_answer(completion: str) -> str | None:
    """What math_reward reads: the content of the last closed box (NUL characters dropped), or
    None."""
    return last_boxed(completion.replace("\x00", ""))


def countdown_answer(completion: str) -> tuple[str | None, bool]:
    """What countdown_reward reads:
    (final answer or None, whether an <answer>...</answer> is there).

    The final answer is the content of the last closed box or of the last answer tag, whichever
    starts later; a box inside the tag (<answer>\\boxed{...}</answer>) starts later, so it wins.
    """
    box, tag = last_boxed_at(completion), last_answer_tag_at(completion)
    found = [x for x in (box, tag) if x is not None]
    return (max(found)[1] if found else None), tag is not None


def _normalise(latex: str) -> str:
    """Purely cosmetic rewrites, so that equal normalised strings are equal answers."""
    latex = re.sub(r"\\(?:left|right)(?![a-zA-Z])|\\[!,;: ]|\s+", "", latex)
    return re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", latex)


# ----------------------------------------------------------------------------- math-verify worker
@lru_cache(maxsize=1024)  # gold answers (and many predictions) repeat across steps and rollouts
def _parse(latex: str) -> list:
    return parse(latex, parsing_timeout=None)


def _verify(pred: str, gold: str) -> bool:
    try:
        return bool(verify(_parse(gold), _parse(pred), timeout_seconds=None))
    except Exception:  # math-verify catches its own errors; this is a last line of defence
        return False


def _serve(fd: int) -> None:
    """The worker (python rewards.py --math-verify-worker FD): answers requests on socket FD
    until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's business; it kills us
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # an alarm ends this process, even deep in C code
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # silences "timeout is disabled"
    conn = multiprocessing.connection.Connection(fd)
    try:
        _verify("$0.5$", r"$\frac{1}{2}$")  # the first verify imports more modules: part of startup
        conn.send("ready")
        while True:
            pred, gold, alarm_s = conn.recv()
            signal.alarm(alarm_s)  # the parent kills us sooner; this is for when it died meanwhile
            ok = _verify(pred, gold)
            signal.alarm(0)
            conn.send(ok)
    except (EOFError, OSError):  # the parent closed the socket, or exited
        return


@dataclasses.dataclass
class _Worker:
    proc: subprocess.Popen
    conn: multiprocessing.connection.Connection  # our end of the socket pair
    ready: bool = False                          # it said "ready": startup is over


_worker = None  # this process's _Worker, started on first use
_lock = threading.Lock()
_HERE = os.path.abspath(__file__)


def _start_worker() -> _Worker:
    # subprocess starts a fresh interpreter by fork + exec with no Python code in between, so it is
    # safe from any thread. Our end of the socket goes to no other process (a forked copy of us
    # closes its copy: _forget_worker_after_fork), so the worker sees EOF when we exit.
    ours, theirs = multiprocessing.Pipe()
    cmd = [sys.executable, _HERE, "--math-verify-worker", str(theirs.fileno())]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            pass_fds=[theirs.fileno()])
    theirs.close()
    return _Worker(proc, ours)


def _stop_worker() -> None:
    global _worker
    if _worker is not None:
        worker, _worker = _worker, None
        worker.proc.kill()
        worker.proc.wait()
        worker.conn.close()


def _ready_worker() -> _Worker | None:
    """This process's worker once it has started up, None if it does not. Call with _lock held."""
    global _worker
    if _worker is None or _worker.proc.poll() is not None:  # first use, or it died between calls
        _stop_worker()
        _worker = _start_worker()
    if not _worker.ready:
        try:
            _worker.ready = _worker.conn.poll(STARTUP_TIMEOUT_S) and _worker.conn.recv() == "ready"
        except (OSError, EOFError):
            pass
    return _worker if _worker.ready else None


def _ask(worker: _Worker, pred: str, gold: str) -> bool | str:
    """The worker's verdict, "timeout" if it has none after TIMEOUT_S, "crash" if it died."""
    try:
        worker.conn.send((pred, gold, math.ceil(TIMEOUT_S) + 1))
        return worker.conn.recv() if worker.conn.poll(TIMEOUT_S) else "timeout"
    except (OSError, EOFError):
        return "crash"


def verify_in_worker(pred: str, gold: str) -> bool:
    """math-verify's verify(parse(gold), parse(pred)); False after TIMEOUT_S seconds or a crash."""
    global _worker
    with _lock:  # one worker per process: threads take turns
        calls["math_verify"] += 1
        worker = _ready_worker()
        verdict = "crash" if worker is None else _ask(worker, pred, gold)
        if isinstance(verdict, bool):
            return verdict
        calls[verdict] += 1
        _stop_worker()
        _worker = _start_worker()  # the replacement starts up while the caller goes on
        return False


def _forget_worker_after_fork() -> None:
    """A forked copy of this process (a DataLoader or pool worker) starts its own worker when
    needed."""
    global _worker, _lock
    if _worker is not None:
        _worker.conn.close()  # our worker must still see EOF when we exit
    _worker, _lock = None, threading.Lock()


atexit.register(_stop_worker)
os.register_at_fork(after_in_child=_forget_worker_after_fork)


# ----------------------------------------------------------------------------- math
def math_score(boxed: str | None, gold: str) -> float:
    """1.0 if a boxed answer equals `gold` (LaTeX, no $): as strings after normalising, else by
    math-verify."""
    if boxed is None or not boxed.strip():
        return 0.0
    if _normalise(boxed) == _normalise(gold):
        return 1.0
    return float(verify_in_worker(f"${boxed}$", f"${gold}$"))


def math_reward(completion: str, gold: str) -> float:
    """1.0 if the completion's last closed \\boxed{} equals `gold`, else 0.0."""
    return math_score(math_answer(completion), gold)


# ----------------------------------------------------------------------------- countdown
_CD_CHARS = re.compile(r"[0-9+\-*/()\s]*")
_CD_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub,
              ast.Mult: operator.mul, ast.Div: operator.truediv}
_LATEX_OPS = {"times": "*", "cdot": "*", "div": "/"}
_LATEX_OP = re.compile(r"\\(times|cdot|div)(?![a-zA-Z])")


def _cd_walk(node, depth: int, literals: list[int]) -> Fraction:
    """Exact value of an AST node; raises ValueError on anything but ints, + - * / and unary -."""
    if depth > CD_MAX_DEPTH:
        raise ValueError("expression nested too deeply")
    if isinstance(node, ast.Constant) and type(node.value) is int:
        if node.value >= 10 ** CD_MAX_DIGITS:
            raise ValueError("literal too large")
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _cd_walk(node.operand, depth + 1, literals)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _CD_BINOPS:
        left = _cd_walk(node.left, depth + 1, literals)
        right = _cd_walk(node.right, depth + 1, literals)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ValueError("division by zero")
        return _CD_BINOPS[type(node.op)](left, right)
    raise ValueError(f"not allowed in countdown: {type(node).__name__}")


def countdown_eval(expr: str) -> tuple[Fraction, list[int]] | None:
    """(exact value, integer literals used) of an arithmetic expression, or None if invalid."""
    expr = expr.strip()
    if not expr or len(expr) > CD_MAX_CHARS or not _CD_CHARS.fullmatch(expr):
        return None
    literals = []
    try:
        value = _cd_walk(ast.parse(expr, mode="eval").body, 0, literals)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return value, literals


def _cd_expression(answer: str, target: int) -> str:
    """The expression in a final answer: \\times \\cdot \\div become * * /,
    a trailing "= target" goes."""
    answer = _LATEX_OP.sub(lambda m: _LATEX_OPS[m.group(1)], answer)
    left, equals, right = answer.rpartition("=")
    return left if equals and right.strip() == str(target) else answer


def countdown_score(answer: tuple[str | None, bool], numbers: list[int], target: int,
                    format_score: float = 0.0) -> float:
    """Score of a `countdown_answer`: 1.0 if right; else format_score if it has an answer tag,
    else 0.0.

    d1 (diffu-grpo/reward_func.py, compute_score) pays its format score, 0.1, exactly when the last
    <answer>...</answer> exists but is invalid or wrong, and 0 when there is no tag; so do we.
    """
    expr, has_tag = answer
    if expr is not None:
        result = countdown_eval(_cd_expression(expr, target))
        if result is not None and result[0] == target and sorted(result[1]) == sorted(numbers):
            return 1.0
    return format_score if has_tag else 0.0


def countdown_reward(completion: str, numbers: list[int], target: int,
                     format_score: float = 0.0) -> float:
    """1.0 if the final answer uses each number once and equals target, else 0.0
    (or format_score)."""
    return countdown_score(countdown_answer(completion), numbers, target, format_score)


# ----------------------------------------------------------------------------- any task
def _kind(task: str) -> str:
    if task not in TASK_KIND:
        raise ValueError(f"rewards.py: unknown task {task!r}; known: {sorted(TASK_KIND)}")
    return TASK_KIND[task]


def final_answer(task: str, completion: str):
    """Everything the reward of `task` reads from a completion:
    `math_answer` or `countdown_answer`."""
    return math_answer(completion) if _kind(task) == "math" else countdown_answer(completion)


def score_answer(task: str, answer, example: dict, format_score: float = 0.0) -> float:
    """r of a `final_answer`. example: {"answer": str} (math) or {"numbers", "target"}
    (countdown)."""
    calls["reward"] += 1
    if _kind(task) == "math":
        return math_score(answer, example["answer"])
    return countdown_score(answer, example["numbers"], example["target"], format_score)


def reward(task: str, completion: str, example: dict, format_score: float = 0.0) -> float:
    """r(x) of one completion; format_score is d1's 0.1 for a wrong tagged countdown answer
    (paper: 0)."""
    return score_answer(task, final_answer(task, completion), example, format_score)


def score_trajectory(texts: list[list[str]], task: str, examples: list[dict],
                     format_score: float = 0.0) -> "torch.Tensor":
    """r(x_t) for every step: texts[n][s] is rollout n's full prediction at step s. -> (N, T) float.

    `reward` is score_answer(final_answer(text)) and nothing else reads the text, so two steps of a
    rollout with equal final answers have equal rewards: memoising on the final answer is exact.
    A step without one (None) scores 0 (or format_score) without a verifier call.
    """
    import torch  # here, not at the top: the math-verify worker runs this file and needs no torch
    T = len(texts[0]) if texts else 0
    scores = torch.zeros(len(texts), T)  # (N, T)
    for n, (row, example) in enumerate(zip(texts, examples, strict=True)):
        if len(row) != T:
            raise ValueError(f"rewards.py: rollout {n} has {len(row)} steps, rollout 0 has {T}")
        memo, values = {}, []
        for text in row:
            key = final_answer(task, text)
            if key not in memo:
                memo[key] = score_answer(task, key, example, format_score)
            values.append(memo[key])
        scores[n] = torch.tensor(values)  # (T,)
    return scores


if __name__ == "__main__" and sys.argv[1:2] == ["--math-verify-worker"]:
    _serve(int(sys.argv[2]))
