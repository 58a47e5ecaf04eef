"""Tests for rewards.py: math-verify rewards, countdown rewards, hostile inputs, trajectory scoring.

Run: pytest -q tests/test_rewards.py   (CPU, about 15 s; -s prints calls/s)
"""
import concurrent.futures
import itertools
import json
import multiprocessing
import random
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rewards  # noqa: E402
from rewards import (countdown_eval, countdown_reward, last_answer_tag, last_boxed,  # noqa: E402
                     math_reward, reward, score_trajectory, verify_in_worker)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MATH500, COUNTDOWN = DATA / "math500_test.jsonl", DATA / "countdown_cd3_test.jsonl"
LIMIT_S = 1.5  # wall-clock limit of one reward call on any input


def read_jsonl(path):
    if not path.exists():
        pytest.skip(f"{path} not found (the shared data folder sits next to the repository)")
    return [json.loads(line) for line in path.read_text().splitlines()]


def n_verifier_calls():
    return rewards.calls["math_verify"]


@pytest.fixture(scope="module", autouse=True)
def warm_worker():
    """Start the math-verify worker once, so timed tests measure calls, not sympy's first parse."""
    assert verify_in_worker("$0.5$", r"$\frac{1}{2}$")


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
    assert last_answer_tag("<answer>1+2</answer> x <answer>3*4</answer>") == "3*4"
    assert last_answer_tag("<answer>a</answer> b </answer>") == "a"
    assert last_answer_tag("<answer>a<answer>b</answer>") == "b"
    assert last_answer_tag("<answer></answer>") == ""
    assert last_answer_tag("<answer>3*4") is None
    assert last_answer_tag("3*4</answer>") is None


# ----------------------------------------------------------------------------- math
def test_math_gold_round_trip():
    """Every MATH-500 gold answer, boxed at the end of a solution, scores 1.0 against itself."""
    rows = read_jsonl(MATH500)
    assert len(rows) == 500
    failed = [r["answer"] for r in rows
              if math_reward(f"Done, so the answer is $\\boxed{{{r['answer']}}}$.", r["answer"]) != 1.0]
    assert failed == []


def test_math_gold_round_trip_through_math_verify():
    """Same round trip without the string shortcut: math-verify itself must accept all 500."""
    rows = read_jsonl(MATH500)
    failed = [r["answer"] for r in rows
              if not verify_in_worker(f"Answer: $\\boxed{{{r['answer']}}}$.", f"${r['answer']}$")]
    assert failed == []


def test_math_hand_made():
    before = n_verifier_calls()
    assert math_reward(r"so $\boxed{0.5}$", r"\frac{1}{2}") == 1.0  # 0.5 = 1/2, needs sympy
    assert n_verifier_calls() == before + 1
    assert math_reward(r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}") == 1.0  # same after normalising
    assert n_verifier_calls() == before + 1  # ... so no verifier call
    assert math_reward(r"\boxed{3}", "2") == 0.0
    assert math_reward(r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)") == 1.0
    assert math_reward(r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}") == 1.0
    assert math_reward(r"first \boxed{1}, finally \boxed{2}", "2") == 1.0
    assert math_reward(r"first \boxed{1}, finally \boxed{2}", "1") == 0.0
    assert math_reward(r"\boxed{\text{Evelyn}}", r"\text{Evelyn}") == 1.0
    # no \boxed{}: math-verify extracts the answer from the text itself
    assert math_reward("Adding up, the final answer is 0.5", r"\frac{1}{2}") == 1.0
    assert math_reward(r"The final answer is $\frac{1}{2}$.", "0.5") == 1.0
    assert math_reward("I do not know.", "7") == 0.0
    assert math_reward("", "7") == 0.0
    assert math_reward(r"\boxed{}", "7") == 0.0
    # a box over 300 characters counts as no box: math-verify reads the text, finds 1+1+...+1 = 201
    assert math_reward("\\boxed{" + "1+" * 200 + "1}", "201") == 1.0


# ----------------------------------------------------------------------------- countdown
def tag(expr):
    return f"Let me think.\n<answer>{expr}</answer>"


@pytest.mark.parametrize("completion, numbers, target, expected", [
    (tag("3*5+7"), [3, 5, 7], 22, 1.0),               # 15 + 7 = 22
    (tag(" 7 + 5 * 3 "), [3, 5, 7], 22, 1.0),          # order and spaces do not matter
    (tag("8/(3-8/3)"), [3, 3, 8, 8], 24, 1.0),         # 3 - 8/3 = 1/3, 8 / (1/3) = 24 exactly
    (tag("-3+5+7"), [3, 5, 7], 9, 1.0),                # unary minus allowed: -3 + 12 = 9
    (tag("(1+2+3)+(1+2+3)"), [1, 2, 3], 12, 0.1),      # value 12 is right, each number used twice
    (tag("3*5"), [3, 5, 7], 15, 0.1),                  # 7 missing
    (tag("3*5+7+1"), [3, 5, 7], 23, 0.1),              # extra number 1
    (tag("5/(2-2)"), [2, 2, 5], 5, 0.1),               # division by zero
    (tag("2**3*1"), [1, 2, 3], 8, 0.1),                # 2**3 * 1 = 8, but ** is not allowed
    (tag("8//3*3"), [3, 3, 8], 6, 0.1),                # floor division not allowed
    (tag("abs(-3)+5+7"), [3, 5, 7], 15, 0.1),          # calls and names not allowed
    (tag("__import__('os').getpid()"), [1], 1, 0.1),
    (tag("3.0*5+7"), [3, 5, 7], 22, 0.1),              # floats not allowed
    (tag("1234567-1234545"), [1234567, 1234545], 22, 0.1),  # literals over 6 digits
    (tag("3+5+7"), [3, 5, 7], 22, 0.1),                # 15 != 22
    (tag("I think it is 22"), [3, 5, 7], 22, 0.1),     # answer tag with junk: format only
    (tag(""), [3, 5, 7], 22, 0.1),
    (tag("3*5+7=22"), [3, 5, 7], 22, 0.1),             # an equation, not an expression
    ("3*5+7", [3, 5, 7], 22, 0.0),                     # no tag
    ("<answer>3*5+7", [3, 5, 7], 22, 0.0),             # unclosed tag
    (tag("3+5+7") + tag("3*5+7"), [3, 5, 7], 22, 1.0),  # last tag wins
    (tag("3*5+7") + tag("3+5+7"), [3, 5, 7], 22, 0.1),
])
def test_countdown_hand_made(completion, numbers, target, expected):
    assert countdown_reward(completion, numbers, target) == expected


def test_countdown_eval_is_exact():
    # 8/3 is not a float: 3 - 8/3 = 1/3 exactly, while floats give 23.99999999999999
    assert countdown_eval("8/(3-8/3)") == (Fraction(24), [8, 3, 8, 3])
    assert countdown_eval("-" * 25 + "3") is None  # nested deeper than 20
    assert countdown_eval("1+" * 100 + "1") is None  # longer than 200 characters


def solve_countdown(numbers, target):
    """Brute force over all orders, operators and both tree shapes of three numbers."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
           "/": lambda a, b: a / b if b else None}
    for a, b, c in itertools.permutations(numbers):
        for o1, o2 in itertools.product(ops, repeat=2):
            left = ops[o1](Fraction(a), Fraction(b))
            if left is not None and ops[o2](left, Fraction(c)) == target:
                return f"({a}{o1}{b}){o2}{c}"
            right = ops[o2](Fraction(b), Fraction(c))
            if right is not None and ops[o1](Fraction(a), right) == target:
                return f"{a}{o1}({b}{o2}{c})"
    return None


def test_countdown_dataset():
    """Every CD3 line: a solver's answer scores 1.0, a well-formed wrong one 0.1, none 0.0."""
    rows = read_jsonl(COUNTDOWN)
    for line, row in enumerate(rows, 1):
        numbers, target = [int(x) for x in row["input"].split(",")], int(row["output"])
        solution = solve_countdown(numbers, target)
        assert solution is not None, f"countdown_cd3_test.jsonl:{line}: no solution"
        a, b, c = numbers
        wrong = f"{a}+{b}+{c}" if a + b + c != target else f"{a}*{b}*{c}"
        assert countdown_reward(tag(solution), numbers, target) == 1.0, (line, solution)
        assert countdown_reward(tag(wrong), numbers, target) == 0.1, (line, wrong)
        assert countdown_reward(solution, numbers, target) == 0.0


def test_reward_dispatch():
    assert reward("toy-arith", r"\boxed{9}", {"answer": "9"}) == 1.0
    assert reward("toy-countdown", tag("3*5+7"), {"numbers": [3, 5, 7], "target": 22}) == 1.0
    with pytest.raises(ValueError, match="unknown task"):
        reward("chess", "", {})


# ----------------------------------------------------------------------------- hostile inputs
HOSTILE = [
    r"\boxed{9^{9^{9^{9^{9}}}}}",                           # sympy evaluates the tower: timeout
    r"\boxed{10^{10^{10^{10}}}}",
    r"The final answer is $2^{2^{2^{2^{2^{2^{2}}}}}}$",      # the same without a box
    r"\boxed{100000!}",
    "\\boxed{" + "\\frac{1}{" * 500 + "2" + "}" * 500 + "}",  # \frac 500 deep, boxed
    "$" + "\\frac{1}{" * 500 + "2" + "}" * 500 + "$",         # ... and in plain text
    "x" * 10**6,
    "\\boxed{" * 10**5,
    "{" * 10**6 + "}" * 10**6,
    "\\boxed{" + "{}" * 10**6,                               # a box that never closes
    "<answer>" * 10**5 + "</answer>",
    "<answer>30**100**93</answer>",
    "<answer>" + "(" * 10**5 + "1" + ")" * 10**5 + "</answer>",
    "\x00\\boxed{\x00}\x00<answer>\x00</answer>",
    bytes(random.Random(0).randbytes(10**5)).decode("utf-8", errors="replace"),
]


def timed_rewards(texts, gold="5"):
    """(reward, seconds) for both task kinds on every text."""
    out = []
    for text in texts:
        for task, example in [("math500", {"answer": gold}),
                              ("countdown", {"numbers": [3, 5, 7], "target": 22})]:
            start = time.perf_counter()
            value = reward(task, text, example)
            out.append((value, time.perf_counter() - start))
    return out


def test_hostile_inputs_main_thread():
    # the random bytes hold digits such as 5 that math-verify may pick up, so a rarer gold here
    for value, seconds in timed_rewards(HOSTILE, gold=r"\frac{17}{19}"):
        assert value in (0.0, 0.1)
        assert seconds < LIMIT_S
    assert math_reward(r"\boxed{0.5}", r"\frac{1}{2}") == 1.0  # the worker recovered


def test_hostile_inputs_other_thread():
    """math-verify's own timeouts need the main thread; ours must not."""
    results = []
    texts = HOSTILE[:1] + [r"\boxed{5.0}"]  # no answer tags: countdown gives 0.0 throughout
    thread = threading.Thread(target=lambda: results.extend(timed_rewards(texts)))
    thread.start()
    thread.join()
    assert [v for v, _ in results] == [0.0, 0.0, 1.0, 0.0]  # 9^9^9^9^9 timed out; 5.0 = 5
    assert max(s for _, s in results) < LIMIT_S


def score_in_another_process(text):
    """Run in a process pool: each process starts its own math-verify worker."""
    return timed_rewards([text, r"\boxed{0.5}", r"\boxed{5.0}"])


def test_several_processes_at_once():
    """Like DDP ranks: two processes (forked from this one, which already has a worker) score at once."""
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        results = list(pool.map(score_in_another_process, HOSTILE[:2]))
    for rows in results:
        assert [v for v, _ in rows] == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # 0.5 != 5, 5.0 = 5
        assert max(s for _, s in rows) < LIMIT_S


# ----------------------------------------------------------------------------- trajectories
def test_score_trajectory_memoises():
    # 128 steps whose final answer changes twice: 3 distinct answers, 3 verifier calls at most
    T = 128
    row = [f"step {s}: ... \\boxed{{{'0.25' if s < 40 else '1/2' if s < 90 else '0.5'}}}"
           for s in range(T)]
    before_reward, before_calls = rewards.calls["reward"], n_verifier_calls()
    scores = score_trajectory([row, row[::-1]], "math500", [{"answer": r"\frac{1}{2}"}] * 2)
    assert scores.shape == (2, T) and scores.dtype == torch.float32
    assert rewards.calls["reward"] - before_reward == 6  # 3 distinct answers per row
    assert n_verifier_calls() - before_calls <= 6
    expected = [0.0] * 40 + [1.0] * 88  # 0.25 != 1/2; 1/2 and 0.5 == 1/2
    assert scores[0].tolist() == expected and scores[1].tolist() == expected[::-1]


def test_score_trajectory_matches_reward():
    texts = [["", tag("3+5+7"), tag("3*5+7") + " more", tag("3*5+7")],
             ["<answer>", tag("junk"), tag("7+3*5"), "no tag any more"]]
    example = {"numbers": [3, 5, 7], "target": 22}
    scores = score_trajectory(texts, "countdown", [example, example])
    assert torch.equal(scores, torch.tensor([[0.0, 0.1, 1.0, 1.0], [0.0, 0.1, 1.0, 0.0]]))
    math_texts = [[r"\boxed{2}", "it is 0.5", r"\boxed{1/2}", r"\boxed{\frac12}"]]
    scores = score_trajectory(math_texts, "math500", [{"answer": r"\frac{1}{2}"}])
    assert scores.tolist() == [[reward("math500", t, {"answer": r"\frac{1}{2}"})
                                for t in math_texts[0]]] == [[0.0, 1.0, 1.0, 1.0]]


def noisy_trajectory(solution, T, rng):
    """Full predictions of a fake T-step denoiser: words are revealed in random order and the
    still-masked ones are filled with other words of the solution, as an MDLM's x_pred is."""
    words = solution.split()
    order = list(range(len(words)))
    rng.shuffle(order)
    steps = []
    for s in range(T):
        revealed = set(order[:round(len(words) * (s + 1) / T)])
        steps.append(" ".join(w if i in revealed else rng.choice(words)
                              for i, w in enumerate(words)))
    return steps


def test_score_trajectory_throughput():
    rows = read_jsonl(MATH500)[:4]
    rng = random.Random(0)
    texts = [noisy_trajectory(r["solution"], 128, rng) for r in rows]  # (N=4, T=128)
    calls_before = n_verifier_calls()
    start = time.perf_counter()
    scores = score_trajectory(texts, "math500", [{"answer": r["answer"]} for r in rows])
    seconds = time.perf_counter() - start
    calls = n_verifier_calls() - calls_before
    print(f"\nscore_trajectory: {scores.numel()} steps in {seconds:.2f} s "
          f"({scores.numel() / seconds:.0f} steps/s), {calls} math-verify calls "
          f"({calls / seconds:.0f} calls/s), final-step accuracy {scores[:, -1].mean():.2f}")
    assert scores[:, -1].tolist() == [1.0] * 4  # the last step is the solution itself
