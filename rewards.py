"""Verifiable rewards r(x) for MDPO: scored on final answers and on every intermediate prediction.

The paper (Sec. 3.1, App. A) scores the full prediction x_t of every denoising step with a static
verifier; these numbers feed the intermediate-reward advantages of Eq. 6 / Eq. 11 (mdpo.py).

- Math (MATH-500, toy-arith) → `math_reward`: binary. 1.0 if the last \\boxed{...} (or, if there is
  none, what math-verify extracts from the end of the text) equals the gold answer by math-verify.
- Countdown (countdown, toy-countdown) → `countdown_reward`: the d1/MDPO scheme, 1.0 if the last
  <answer>...</answer> is an expression over + - * / ( ) that uses every given number exactly once
  and equals the target, 0.1 if an answer tag is there but the expression is invalid or wrong,
  0.0 if there is no answer tag.
- Intermediate rewards → `score_trajectory`: r(x_t) for every rollout n and step s, memoised per
  rollout on the extracted answer, since consecutive steps mostly share their final answer.

Differences from the reference implementations (d1 / MDPO / TinyZero reward code):
1. Countdown never calls `eval`: `countdown_eval` walks Python's AST over exact Fractions and rejects
   **, //, names, calls, floats, literals of 7+ digits, strings over 200 characters and nesting
   deeper than 20 (the reference `eval` hangs on `30**100**93`). Values must equal the target
   exactly instead of within 1e-5. Unary minus is allowed, as the reference's regex allows it.
2. math-verify runs in one persistent worker process per calling process, with a wall-clock limit
   of `TIMEOUT_S` per call; on timeout the worker is killed (and restarted on the next call) and
   the reward is 0.0. math-verify's own timeouts use SIGALRM, which raises ValueError off the main
   thread and only counts whole seconds; the worker turns them off and we enforce ours from outside.
   The worker is forked from the caller, so a (re)start takes milliseconds, and the reward
   functions work from any thread and in every DDP rank at once (each rank has its own worker).
3. Cheap guards come first. Identical answers score 1.0 without a verifier call: boxed answer and
   gold are compared as strings after cosmetic normalisation (spaces, \\left/\\right, thin spaces,
   \\dfrac; spaces inside \\text{} are the one change that is not purely cosmetic). A box longer
   than `MAX_ANSWER_CHARS` counts as no box, and math-verify sees at most `TAIL_CHARS` of text.
   All 500 MATH-500 gold answers also verify against themselves with plain parse/verify (the
   tests check both paths), so the string check only saves time and none needed special handling.
4. The references score every step from scratch; `score_trajectory` memoises per rollout on the
   extracted answer (exact: see its docstring), so a 128-step trajectory costs a handful of
   verifier calls. `calls` counts reward evaluations, math-verify calls and timeouts.
"""
import ast
import atexit
import collections
import logging
import multiprocessing
import operator
import os
import re
import signal
import threading
from fractions import Fraction
from functools import lru_cache

import torch
from math_verify import parse, verify

TASK_KIND = {"math500": "math", "math": "math", "toy-arith": "math",
             "countdown": "countdown", "toy-countdown": "countdown"}

TIMEOUT_S = 1.0            # wall-clock limit of one math-verify call
MAX_ANSWER_CHARS = 300     # longest boxed answer we read (MATH-500's longest gold: 53 chars)
TAIL_CHARS = 2000          # text math-verify searches when there is no \boxed{}
CD_MAX_CHARS, CD_MAX_DIGITS, CD_MAX_DEPTH = 200, 6, 20

# "reward": reward() evaluations, "math_verify": worker requests, "timeout": workers killed.
calls = collections.Counter()


# ----------------------------------------------------------------------------- answer extraction
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"\\[{}]|[{}]")  # escaped braces (\{ \}) are matched and skipped


def last_boxed(text: str, max_len: int = MAX_ANSWER_CHARS) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...}; None if absent, unbalanced or over max_len.

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
            return text[last.end():brace.start()]
    return None


def last_answer_tag(text: str) -> str | None:
    """Content of the last <answer>...</answer>, None if there is none. Linear time on any input."""
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    if start < 0:
        return None
    start += len("<answer>")
    return text[start:text.find("</answer>", start)]


def math_answer(completion: str) -> str:
    """What math-verify is shown: "$<last boxed>$", else the last TAIL_CHARS characters."""
    text = completion.replace("\x00", "")
    boxed = last_boxed(text)
    return text[-TAIL_CHARS:] if boxed is None else f"${boxed}$"


def _normalise(latex: str) -> str:
    """Purely cosmetic rewrites, so that equal normalised strings are equal answers."""
    latex = re.sub(r"\\(?:left|right)(?![a-zA-Z])|\\[!,;: ]|\s+", "", latex)
    return re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", latex)


# ----------------------------------------------------------------------------- math-verify worker
def _serve(conn, parent_end) -> None:
    """Worker loop: answer (pred, gold) with math-verify until the parent closes the pipe."""
    parent_end.close()  # inherited through fork; closing it lets recv() see EOF when the parent dies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it kills us
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # silences "timeout is disabled"
    while True:
        try:
            pred, gold = conn.recv()
        except EOFError:
            return
        try:
            ok = verify(_parse(gold), _parse(pred), timeout_seconds=None)
        except Exception:  # math-verify catches its own errors; this is a last line of defence
            ok = False
        conn.send(bool(ok))


@lru_cache(maxsize=1024)  # gold answers (and many predictions) repeat across steps and rollouts
def _parse(latex: str) -> list:
    return parse(latex, parsing_timeout=None)


_worker = None  # (process, connection) of this process's worker; started on first use
_lock = threading.Lock()


def _start_worker():
    # fork, as PyTorch's DataLoader does: the child starts in milliseconds with sympy loaded and
    # nothing re-imported (spawn/forkserver would re-run an unguarded __main__). The child only
    # ever runs sympy, never torch or CUDA, which is what makes forking a trainer safe. A daemonic
    # process (a multiprocessing.Pool worker) may not have children: use ProcessPoolExecutor.
    ctx = multiprocessing.get_context("fork")
    conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child_conn, conn), name="math-verify", daemon=True)
    proc.start()
    child_conn.close()  # so that conn.recv() sees EOF if the worker dies
    return proc, conn


def _stop_worker() -> None:
    global _worker
    if _worker is not None:
        proc, conn = _worker
        _worker = None
        proc.kill()
        proc.join()
        conn.close()


def _forget_worker_after_fork() -> None:
    """A forked copy of this process (a DataLoader or pool worker) must start its own worker."""
    global _worker, _lock
    _worker, _lock = None, threading.Lock()


atexit.register(_stop_worker)
os.register_at_fork(after_in_child=_forget_worker_after_fork)


def verify_in_worker(pred: str, gold: str) -> bool:
    """math-verify's verify(parse(gold), parse(pred)), or False after TIMEOUT_S seconds or a crash."""
    global _worker
    with _lock:  # one worker per process: threads take turns
        calls["math_verify"] += 1
        try:
            if _worker is None or not _worker[0].is_alive():
                _stop_worker()
                _worker = _start_worker()
            conn = _worker[1]
            conn.send((pred, gold))
            if conn.poll(TIMEOUT_S):
                return conn.recv()
            calls["timeout"] += 1
        except (OSError, EOFError):  # the worker died (a crash in sympy, say): score 0
            pass
        _stop_worker()
        return False


# ----------------------------------------------------------------------------- rewards
def math_reward(completion: str, gold: str) -> float:
    """1.0 if the completion's final answer equals `gold` (LaTeX, no $) by math-verify, else 0.0."""
    pred = math_answer(completion)
    if not pred.strip():
        return 0.0
    if _normalise(pred) == _normalise(f"${gold}$"):
        return 1.0
    return float(verify_in_worker(pred, f"${gold}$"))


_CD_CHARS = re.compile(r"[0-9+\-*/()\s]*")
_CD_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub,
              ast.Mult: operator.mul, ast.Div: operator.truediv}


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


def countdown_reward(completion: str, numbers: list[int], target: int) -> float:
    """1.0 if the last answer uses each number once and equals target; 0.1 if wrong; 0.0 if absent."""
    expr = last_answer_tag(completion)
    if expr is None:
        return 0.0
    result = countdown_eval(expr)
    ok = result is not None and result[0] == target and sorted(result[1]) == sorted(numbers)
    return 1.0 if ok else 0.1


def reward(task: str, completion: str, example: dict, format_score=0.1) -> float:  # COMPAT-TEMP
    """r(x) of one completion. example: {"answer": str} (math) or {"numbers", "target"} (countdown)."""
    if task not in TASK_KIND:
        raise ValueError(f"rewards.py: unknown task {task!r}; known: {sorted(TASK_KIND)}")
    calls["reward"] += 1
    if TASK_KIND[task] == "math":
        return math_reward(completion, example["answer"])
    return countdown_reward(completion, example["numbers"], example["target"])


def score_trajectory(texts: list[list[str]], task: str, examples: list[dict], format_score=0.1) -> torch.Tensor:  # COMPAT-TEMP
    """r(x_t) for every step: texts[n][s] is rollout n's full prediction at step s. -> (N, T) float.

    The reward depends on a text only through its extracted answer (`math_answer` or
    `last_answer_tag`), so memoising per rollout on that answer is exact.
    """
    extract = math_answer if TASK_KIND[task] == "math" else last_answer_tag
    T = len(texts[0]) if texts else 0
    scores = torch.zeros(len(texts), T)  # (N, T)
    for n, (row, example) in enumerate(zip(texts, examples, strict=True)):
        if len(row) != T:
            raise ValueError(f"rewards.py: rollout {n} has {len(row)} steps, rollout 0 has {T}")
        memo, values = {}, []
        for text in row:
            key = extract(text)
            if key not in memo:
                memo[key] = reward(task, text, example)
            values.append(memo[key])
        scores[n] = torch.tensor(values)  # (T,)
    return scores
