"""Tests for rewards.py: math and countdown rewards, hostile inputs, the math-verify worker,
trajectories.

Run: pytest -q tests/test_rewards.py   (CPU, about 30 s; -s prints calls/s)
"""

import concurrent.futures
import itertools
import json
import multiprocessing
import operator
import os
import random
import re
import signal
import sys
import threading
import time
from fractions import Fraction

import pytest
import torch

import rewards
from conftest import DATA, ROOT, alive, run_bounded
from rewards import (
    countdown_eval,
    countdown_reward,
    last_answer_tag_at,
    last_boxed,
    math_reward,
    reward,
    score_trajectory,
    verify_in_worker,
)

MATH500, COUNTDOWN = DATA / "math500_test.jsonl", DATA / "countdown_cd3_test.jsonl"
LIMIT_S = 1.5  # wall-clock limit of one reward call on any input, once the worker has started
TOWER = r"9^{9^{9^{9^{9}}}}"  # sympy evaluates the tower: far over TIMEOUT_S


def read_jsonl(path):
    if not path.exists():
        pytest.skip(f"{path} not found (the shared data folder sits next to the repository)")
    return [json.loads(line) for line in path.read_text().splitlines()]


def delta(before):
    """How much each key of rewards.calls grew since `before` (a dict copy)."""
    return {k: v - before.get(k, 0) for k, v in rewards.calls.items() if v != before.get(k, 0)}


def worker_ready():
    """Wait until this process's worker has started, so that a timed call measures the call
    alone."""
    with rewards._lock:
        assert rewards._ready_worker() is not None


def wait_until_gone(pid, seconds):
    deadline = time.time() + seconds
    while alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    return not alive(pid)


# ----------------------------------------------------------------------------- answer extraction
def test_last_boxed():
    assert last_boxed(r"a \boxed{1} b \boxed{\frac{\sqrt{3}}{2}} c") == r"\frac{\sqrt{3}}{2}"
    assert last_boxed(r"\boxed {x+1}") == "x+1"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"\boxed{\{1,2\}}") == r"\{1,2\}"  # escaped braces are not structure
    assert last_boxed(r"\boxed{\frac{1}{2}") is None  # unbalanced
    assert last_boxed(r"\boxed{1} then \boxed{2") is None  # the last box decides, even if broken
    assert last_boxed("no box here") is None
    long = "1+" * 200 + "1"  # 401 characters
    assert last_boxed(f"\\boxed{{{long}}}") is None  # over MAX_ANSWER_CHARS = 300
    assert last_boxed(f"\\boxed{{{long}}}", max_len=401) == long
    assert last_boxed(f"\\boxed{{{long}}}", max_len=400) is None


def test_last_answer_tag():
    assert last_answer_tag_at("<answer>1+2</answer> x <answer>3*4</answer>")[1] == "3*4"
    assert last_answer_tag_at("<answer>a</answer> b </answer>")[1] == "a"
    assert last_answer_tag_at("<answer>a<answer>b</answer>")[1] == "b"
    assert last_answer_tag_at("<answer></answer>")[1] == ""
    assert last_answer_tag_at("<answer>3*4") is None
    assert last_answer_tag_at("3*4</answer>") is None


# ----------------------------------------------------------------------------- math
def test_math_gold_round_trip():
    """Every MATH-500 gold answer, boxed at the end of a solution, scores 1.0 against itself; and
    without the string shortcut, math-verify itself accepts each against itself."""
    golds = [r["answer"] for r in read_jsonl(MATH500)]
    assert len(golds) == 500
    assert [
        g for g in golds if math_reward(f"Done, so the answer is $\\boxed{{{g}}}$.", g) != 1.0
    ] == []
    assert [g for g in golds if not verify_in_worker(f"${g}$", f"${g}$")] == []


def test_math_hand_made():
    before = dict(rewards.calls)
    assert math_reward(r"so $\boxed{0.5}$", r"\frac{1}{2}") == 1.0  # 0.5 = 1/2, needs sympy
    assert delta(before) == {"math_verify": 1}
    assert math_reward(r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}") == 1.0  # same after normalising...
    assert delta(before) == {"math_verify": 1}  # ... so no verifier call
    assert math_reward(r"\boxed{3}", "2") == 0.0
    assert math_reward(r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)") == 1.0
    assert math_reward(r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}") == 1.0
    assert (
        math_reward(r"\boxed{\frac53}", r"\frac{5}{3}") == 1.0
    )  # the authors' config rejects \frac53
    assert math_reward(r"first \boxed{1}, finally \boxed{2}", "2") == 1.0
    assert math_reward(r"first \boxed{1}, finally \boxed{2}", "1") == 0.0
    assert math_reward(r"\boxed{\text{Evelyn}}", r"\text{Evelyn}") == 1.0


def test_math_pays_only_a_closed_box():
    """No closed \\boxed{}: 0.0 and no verifier call. Each of the first three scored 1.0 when the
    last 2,000 characters went to math-verify's default extraction, which picks values out of the
    reasoning."""
    before = dict(rewards.calls)
    assert math_reward("First we add 3 and 4 to get 7, then we", "7") == 0.0
    assert (
        math_reward(r"Adding 2 and 3 gives 5, so the final answer is $\boxed{", "5") == 0.0
    )  # cut off
    assert math_reward(r"The ratio approaches 4/3, so <answer>\frac53</answer>", r"\frac43") == 0.0
    assert (
        math_reward(r"The final answer is $\frac{1}{2}$.", "0.5") == 0.0
    )  # no box (the authors pay this)
    assert math_reward(r"\boxed{7} and then \boxed{7", "7") == 0.0  # the last box is cut off
    assert math_reward("\\boxed{" + "1+" * 200 + "1}", "201") == 0.0  # a box over 300 characters
    assert math_reward("", "7") == math_reward(r"\boxed{ }", "7") == 0.0
    row = ["2 + 5 = 7, so the answer is 7", r"so the answer is $\boxed{7", "7"] * 40  # (T = 120)
    assert score_trajectory([row], "math500", [{"answer": "7"}]).tolist() == [[0.0] * 120]
    assert delta(before) == {
        "reward": 1
    }  # one answer (None) in the rollout, scored without math-verify


# ----------------------------------------------------------------------------- countdown
def tag(expr):
    return f"Let me think.\n<answer>{expr}</answer>"


@pytest.mark.parametrize(
    "completion, numbers, target, expected",
    [
        (tag("3*5+7"), [3, 5, 7], 22, 1.0),  # 15 + 7 = 22
        (tag(" 7 + 5 * 3 "), [3, 5, 7], 22, 1.0),  # order and spaces do not matter
        (tag("8/(3-8/3)"), [3, 3, 8, 8], 24, 1.0),  # 3 - 8/3 = 1/3, 8 / (1/3) = 24 exactly
        (tag("-3+5+7"), [3, 5, 7], 9, 1.0),  # unary minus allowed: -3 + 12 = 9
        (tag("(1+2+3)+(1+2+3)"), [1, 2, 3], 12, 0.0),  # value 12 is right, each number used twice
        (tag("3*5"), [3, 5, 7], 15, 0.0),  # 7 missing
        (tag("5/(2-2)"), [2, 2, 5], 5, 0.0),  # division by zero
        (tag("2**3*1"), [1, 2, 3], 8, 0.0),  # 2**3 * 1 = 8, but ** is not allowed
        (tag("abs(-3)+5+7"), [3, 5, 7], 15, 0.0),  # calls and names not allowed
        (tag("__import__('os').getpid()"), [1], 1, 0.0),
        (tag("3.0*5+7"), [3, 5, 7], 22, 0.0),  # floats not allowed
        (tag("1234567-1234545"), [1234567, 1234545], 22, 0.0),  # literals over 6 digits
        (tag("3+5+7"), [3, 5, 7], 22, 0.0),  # 15 != 22
        ("3*5+7", [3, 5, 7], 22, 0.0),  # no final answer
        (tag("3+5+7") + tag("3*5+7"), [3, 5, 7], 22, 1.0),  # last tag wins
        (tag("3*5+7") + tag("3+5+7"), [3, 5, 7], 22, 0.0),
        # the authors' form: \boxed{}, LaTeX operators, a trailing "= target"
        (r"so \boxed{(3*5)+7}", [3, 5, 7], 22, 1.0),
        (r"\boxed{3 \times 5 + 7}", [3, 5, 7], 22, 1.0),
        (r"\boxed{3 \cdot 5 + 7}", [3, 5, 7], 22, 1.0),
        (r"\boxed{8 \div (3 - 8 \div 3)}", [3, 3, 8, 8], 24, 1.0),
        (r"\boxed{3 \timesx 5 + 7}", [3, 5, 7], 22, 0.0),  # \timesx is not \times
        (tag("3*5+7 = 22"), [3, 5, 7], 22, 1.0),
        (r"\boxed{3 \times 5 + 7 = 22}", [3, 5, 7], 22, 1.0),
        (tag("3*5+7=23"), [3, 5, 7], 22, 0.0),  # a false equation (the authors pay it)
        # the last final answer wins, box or tag
        (r"<answer>\boxed{3*5+7}</answer>", [3, 5, 7], 22, 1.0),  # the box starts after the tag
        (r"\boxed{3+5+7} or rather " + tag("3*5+7"), [3, 5, 7], 22, 1.0),
        (tag("3+5+7") + r" or rather \boxed{3*5+7}", [3, 5, 7], 22, 1.0),
        (tag("3*5+7") + r" or rather \boxed{3+5+7}", [3, 5, 7], 22, 0.0),
        (tag("3*5+7") + r" or rather \boxed{3+5", [3, 5, 7], 22, 1.0),  # a cut-off box is no answer
        (r"\boxed{3*5+7} then \boxed{3+5", [3, 5, 7], 22, 0.0),  # ... but the last box decides
    ],
)
def test_countdown_hand_made(completion, numbers, target, expected):
    assert countdown_reward(completion, numbers, target) == expected


def d1_countdown_score(text, numbers, target, format_score=0.1):
    """d1's compute_score (diffu-grpo/reward_func.py) written out again: last <answer> tag, then
    eval."""
    tags = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if not tags:
        return 0.0
    expr = tags[-1].strip()
    try:  # eval only ever sees our own test strings
        ok = (
            sorted(int(n) for n in re.findall(r"\d+", expr)) == sorted(numbers)
            and re.match(r"^[\d+\-*/().\s]+$", expr)
            and abs(eval(expr, {"__builtins__": None}, {}) - target) < 1e-5
        )
    except Exception:
        ok = False
    return 1.0 if ok else format_score


OPS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": lambda a, b: a / b if b else None,
}


def solve_countdown(numbers, target):
    """Brute force over all orders, operators and both tree shapes of three numbers, in
    Fractions."""
    for (a, b, c), o1, o2 in itertools.product(itertools.permutations(numbers), OPS, OPS):
        left, right = OPS[o1](Fraction(a), b), OPS[o2](Fraction(b), c)
        if left is not None and OPS[o2](left, c) == target:
            return f"({a}{o1}{b}){o2}{c}"
        if right is not None and OPS[o1](Fraction(a), right) == target:
            return f"{a}{o1}({b}{o2}{c})"
    return None


def countdown_rows():
    for line, row in enumerate(read_jsonl(COUNTDOWN), 1):
        numbers, target = [int(x) for x in row["input"].split(",")], int(row["output"])
        solution = solve_countdown(numbers, target)
        assert solution is not None, f"countdown_cd3_test.jsonl:{line}: no solution"
        a, b, c = numbers
        wrong = f"{a}+{b}+{c}" if a + b + c != target else f"{a}*{b}*{c}"
        yield line, numbers, target, solution, wrong


def test_countdown_dataset():
    """Every CD3 line: a solver's answer scores 1.0 in either form, a wrong one 0.0, none 0.0."""
    for line, numbers, target, solution, wrong in countdown_rows():
        latex = solution.replace("*", r" \times ").replace("/", r" \div ")
        assert countdown_reward(tag(solution), numbers, target) == 1.0, (line, solution)
        assert countdown_reward(f"\\boxed{{{latex} = {target}}}", numbers, target) == 1.0, (
            line,
            latex,
        )
        assert countdown_reward(tag(wrong), numbers, target) == 0.0, (line, wrong)
        assert countdown_reward(solution, numbers, target) == 0.0


def test_countdown_format_score_matches_d1():
    """format_score=0.1 pays exactly when d1 does: on answer tags (no boxes), our reward equals
    d1's."""
    for _, numbers, target, solution, wrong in countdown_rows():
        for text in [
            tag(solution),
            tag(wrong),
            tag(f" {solution} "),
            solution,
            tag(""),
            tag("junk"),
            tag(wrong) + tag(solution),
            tag(solution) + tag(wrong),
            "<answer>" + solution,
            tag(solution) + " and some words after",
            tag(solution[:-1]),
            f"{solution}</answer>",
        ]:
            expected = d1_countdown_score(text, numbers, target)
            assert countdown_reward(text, numbers, target, format_score=0.1) == expected, text
            assert countdown_reward(text, numbers, target) == (expected == 1.0)  # binary by default
    # a box is not d1's format: a wrong boxed answer alone earns nothing, a tag anywhere earns 0.1
    assert countdown_reward(r"\boxed{3+5+7}", [3, 5, 7], 22, format_score=0.1) == 0.0
    assert (
        countdown_reward(tag("3*5+7") + r" \boxed{3+5+7}", [3, 5, 7], 22, format_score=0.1) == 0.1
    )


def test_countdown_eval_is_exact():
    # 8/3 is not a float: 3 - 8/3 = 1/3 exactly, while floats give 23.99999999999999
    assert countdown_eval("8/(3-8/3)") == (Fraction(24), [8, 3, 8, 3])
    assert countdown_eval("-" * 25 + "3") is None  # nested deeper than 20
    assert countdown_eval("1+" * 100 + "1") is None  # longer than 200 characters


def test_reward_dispatch():
    example = {"numbers": [3, 5, 7], "target": 22}
    assert reward("toy-arith", r"\boxed{9}", {"answer": "9"}) == 1.0
    assert reward("toy-countdown", tag("3*5+7"), example) == 1.0
    assert (
        reward("toy-countdown", tag("3+5+7"), example),
        reward("toy-countdown", tag("3+5+7"), example, 0.1),
    ) == (0, 0.1)
    assert reward("math500", r"\boxed{8}", {"answer": "9"}, 0.1) == 0.0  # math has no format score
    with pytest.raises(ValueError, match="unknown task"):
        reward("chess", "", {})


# ----------------------------------------------------------------------------- hostile inputs
HOSTILE = [
    "\\boxed{" + TOWER + "}",
    r"\boxed{10^{10^{10^{10}}}}",
    r"The final answer is $2^{2^{2^{2^{2^{2^{2}}}}}}$",  # a tower without a box: no verifier call
    r"\boxed{100000!}",
    "\\boxed{" + "\\frac{1}{" * 500 + "2" + "}" * 500 + "}",  # \frac 500 deep (over 300 characters)
    "\\boxed{" + "\\frac{1}{" * 25 + "2" + "}" * 25 + "}",  # \frac 25 deep
    "x" * 10**6,
    "\\boxed{" * 10**5,
    "{" * 10**6 + "}" * 10**6,
    "\\boxed{" + "{}" * 10**6,  # a box that never closes
    "<answer>" * 10**5 + "</answer>",
    "<answer>30**100**93</answer>",
    "<answer>" + "(" * 10**5 + "1" + ")" * 10**5 + "</answer>",
    "\x00\\boxed{\x00}\x00<answer>\x00</answer>",
    bytes(random.Random(0).randbytes(10**5)).decode("utf-8", errors="replace"),
]


def timed_rewards(texts, gold="5"):
    """(reward, seconds) for both task kinds on every text; a worker's startup is not timed."""
    out = []
    for text in texts:
        for task, example in [
            ("math500", {"answer": gold}),
            ("countdown", {"numbers": [3, 5, 7], "target": 22}),
        ]:
            worker_ready()
            start = time.perf_counter()
            value = reward(task, text, example)
            out.append((value, time.perf_counter() - start))
    return out


def test_hostile_inputs_main_thread():
    for value, seconds in timed_rewards(HOSTILE, gold=r"\frac{17}{19}"):
        assert value == 0.0
        assert seconds < LIMIT_S
    assert math_reward(r"\boxed{0.5}", r"\frac{1}{2}") == 1.0  # the worker recovered


# --------------------------------------------------------------------------- the math-verify worker
def test_timeout_is_counted_and_the_worker_replaced_at_once():
    worker_ready()
    old, before, start = rewards._worker.proc.pid, dict(rewards.calls), time.perf_counter()
    assert not verify_in_worker(f"${TOWER}$", "$1$")
    assert rewards.TIMEOUT_S <= time.perf_counter() - start < LIMIT_S
    assert delta(before) == {"math_verify": 1, "timeout": 1}
    assert not alive(old)  # killed (and reaped) ...
    assert (
        rewards._worker.proc.poll() is None and not rewards._worker.ready
    )  # ... and a new one starting
    assert verify_in_worker("$0.5$", r"$\frac{1}{2}$")


def test_crash_is_counted(monkeypatch):
    """The worker dies mid-call (here: we kill it): the call scores False at once and counts as a
    crash. A worker that died between calls is replaced before the next call, which loses
    nothing."""
    monkeypatch.setattr(rewards, "TIMEOUT_S", 5.0)  # so that a late kill cannot pass for a timeout
    worker_ready()
    pid, before = rewards._worker.proc.pid, dict(rewards.calls)
    killer = threading.Timer(0.2, os.kill, (pid, signal.SIGKILL))
    killer.start()
    start = time.perf_counter()
    assert not verify_in_worker(f"${TOWER}$", "$1$")
    assert time.perf_counter() - start < rewards.TIMEOUT_S  # the call ended with the worker
    killer.join()
    assert delta(before) == {"math_verify": 1, "crash": 1}
    worker_ready()
    rewards._worker.proc.kill()
    rewards._worker.proc.wait()
    assert verify_in_worker("$0.5$", r"$\frac{1}{2}$")
    assert delta(before) == {"math_verify": 2, "crash": 1}


def test_many_threads_at_once():
    """math-verify's own timeouts need the main thread; ours must not. Four threads share the
    worker."""
    pairs = [(f"${k}/{2 * k}$", "$0.5$") for k in range(1, 11)] + [
        (f"${k}$", "$0.5$") for k in range(1, 11)
    ]
    before = dict(rewards.calls)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda p: verify_in_worker(*p), pairs + [(f"${TOWER}$", "$1$")] + pairs)
        )
    assert (
        results == [True] * 10 + [False] * 10 + [False] + [True] * 10 + [False] * 10
    )  # the tower timed out
    assert delta(before) == {"math_verify": 41, "timeout": 1}


def score_in_another_process(text):
    """Run in a process pool: each process starts its own math-verify worker."""
    return timed_rewards([text, r"\boxed{0.5}", r"\boxed{5.0}"]), rewards._worker.proc.pid


def test_several_processes_at_once():
    """Like DDP ranks: two processes forked from this one (which has a worker) score at once; their
    workers end with them (a pool process exits without atexit: its worker sees EOF)."""
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        results = list(pool.map(score_in_another_process, HOSTILE[:2]))
    pids = {pid for _, pid in results}
    assert len(pids) == 2 and rewards._worker.proc.pid not in pids
    for rows, _ in results:
        assert [v for v, _ in rows] == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # 0.5 != 5, 5.0 = 5
        assert max(s for _, s in rows) < LIMIT_S
    assert all(wait_until_gone(pid, 10) for pid in pids)


HELD_IMPORT = r"""
import importlib, json, sys, threading
sys.path.insert(0, sys.argv[1])
import rewards
# not imported by `import rewards`; the worker's first parse imports it
MODULE = "antlr4.LL1Analyzer"
assert MODULE not in sys.modules, f"{MODULE} is imported already: nothing to provoke"
held, release = threading.Event(), threading.Event()

# holds MODULE's import lock, as a thread half-way through importing it does
def import_in_progress():
    with importlib._bootstrap._ModuleLockManager(MODULE):
        held.set()
        release.wait(30)

importer = threading.Thread(target=import_in_progress)
importer.start()
held.wait()
ok = [rewards.verify_in_worker("$0.5$", r"$\frac{1}{2}$") for _ in range(2)]
release.set()
importer.join()
print(json.dumps({"ok": ok, "calls": rewards.calls}))
"""


def test_worker_starts_while_another_thread_holds_an_import_lock():
    """Issue 8: a worker forked while another thread imports a module it needs waits for that import
    forever (the lock is copied held), so every call timed out; a fresh interpreter does not care.
    """
    out = run_bounded([sys.executable, "-c", HELD_IMPORT, ROOT], 60)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result == {"ok": [True, True], "calls": {"math_verify": 2}}, result


EXITS = r"""
import os, signal, sys, threading, time
sys.path.insert(0, sys.argv[1])
import rewards
assert rewards.verify_in_worker("$0.5$", r"$\frac{1}{2}$")
print(rewards._worker.proc.pid, flush=True)
if sys.argv[2] == "busy":  # die while the worker computes a tower that never ends
    threading.Thread(target=rewards.verify_in_worker, args=(r"$9^{9^{9^{9^{9}}}}$", "$1$")).start()
    time.sleep(0.3)
if sys.argv[2] != "exit":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["exit", "idle", "busy"])
def test_worker_ends_with_its_process(how):
    """exit: atexit kills the worker; killed while idle: it reads EOF; killed while busy: its alarm
    ends it."""
    out = run_bounded([sys.executable, "-c", EXITS, ROOT, how], 60)
    assert out.returncode == (0 if how == "exit" else -signal.SIGKILL), out.stderr[-3000:]
    pid = int(out.stdout)
    assert wait_until_gone(pid, 0.5 if how == "exit" else rewards.TIMEOUT_S + 5)


# ----------------------------------------------------------------------------- trajectories
def random_text(rng):
    """A text mixing the pieces the readers look at: boxes (closed or not), tags, LaTeX, '= 22'."""
    pieces = [
        r"\boxed{3*5+7}",
        r"\boxed{3 \times 5 + 7 = 22}",
        r"\boxed{0.5}",
        r"\boxed{\frac12}",
        r"\boxed{1/2",
        "<answer>3*5+7</answer>",
        "<answer>3+5+7</answer>",
        "<answer>",
        "</answer>",
        "3*5+7",
        "the sum",
        r"<answer>\boxed{3+5+7}</answer>",
        " ",
    ]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))


@pytest.mark.parametrize(
    "task, example",
    [("countdown", {"numbers": [3, 5, 7], "target": 22}), ("math500", {"answer": r"\frac{1}{2}"})],
)
@pytest.mark.parametrize("format_score", [0.0, 0.1])
def test_score_trajectory_matches_reward(task, example, format_score):
    """The memo is exact: every step scores what reward() gives its text alone."""
    rng = random.Random(0)
    texts = [[random_text(rng) for _ in range(32)] for _ in range(4)]
    scores = score_trajectory(texts, task, [example] * 4, format_score)
    expected = [[reward(task, t, example, format_score) for t in row] for row in texts]
    assert torch.equal(scores, torch.tensor(expected))
    assert len({v for row in expected for v in row}) > 1  # both right and wrong steps


def noisy_trajectory(solution, T, rng):
    """Full predictions of a fake T-step denoiser: words are revealed in random order and the
    still-masked ones are filled with other words of the solution, as an MDLM's x_pred is."""
    words = solution.split()
    order = list(range(len(words)))
    rng.shuffle(order)
    rank = {
        i: r for r, i in enumerate(order)
    }  # word i shows from the step that reveals rank[i] + 1 words
    return [
        " ".join(
            w if rank[i] < round(len(words) * (s + 1) / T) else rng.choice(words)
            for i, w in enumerate(words)
        )
        for s in range(T)
    ]


def test_score_trajectory_throughput():
    """Verifier calls: one per distinct boxed answer of a rollout that is not the gold string, none
    else."""
    rows = read_jsonl(MATH500)[:8]
    rng = random.Random(0)
    texts = [noisy_trajectory(r["solution"], 128, rng) for r in rows]  # (N=8, T=128)
    golds = [r["answer"] for r in rows]
    answers = [
        set(map(rewards.math_answer, row)) for row in texts
    ]  # what the reward reads, per rollout
    expected_calls = sum(
        len(
            {
                b
                for b in row
                if b and b.strip() and rewards._normalise(b) != rewards._normalise(gold)
            }
        )
        for row, gold in zip(answers, golds)
    )
    before, start = dict(rewards.calls), time.perf_counter()
    scores = score_trajectory(texts, "math500", [{"answer": gold} for gold in golds])
    seconds = time.perf_counter() - start
    calls = delta(before).get("math_verify", 0)
    print(
        f"\nscore_trajectory: {scores.numel()} steps in {seconds:.2f} s "
        f"({scores.numel() / seconds:.0f} steps/s), {calls} math-verify calls "
        f"({calls / seconds:.0f} calls/s), final-step accuracy {scores[:, -1].mean():.2f}"
    )
    assert calls == expected_calls > 0
    assert delta(before)["reward"] == sum(map(len, answers))  # one score per distinct answer
    assert scores[:, -1].tolist() == [1.0] * 8  # the last step is the solution itself
