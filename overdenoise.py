"""Over-denoising (Section 3.3, Table 1, Fig. 3): the answer is right at an intermediate step of
the denoising and wrong at the end.

From each sample's step rewards (N, T), r(x_{t-1}) at every step s = 1..T (recorded by
eval.py --trajectory-stats): `overdenoised` (Table 1's "w/ inter. ans", Section 3.3's training-set
filter), `longest_correct_span` and `n_correct_spans` (Fig. 3 left, middle),
`first_correct_fraction` (Fig. 3 right). Steps count from 1: first correct at step s of T gives
s / T (1.0 = last step); the authors count from 0.
"""
import torch


def overdenoised(step_rewards):
    """Correct (reward 1) at some step before the last but wrong at the last.
    (N, T) -> bool (N,)."""
    correct = step_rewards == 1.0  # (N, T)
    return correct[:, :-1].any(1) & ~correct[:, -1]


def longest_correct_span(correct):
    """Most consecutive correct steps of each trajectory (Fig. 3 left). bool (N, T) -> long (N,)."""
    t = torch.arange(correct.shape[1])  # (T,)
    # latest wrong step at or before t
    last_wrong = torch.where(correct, -1, t).cummax(1).values  # (N, T)
    return (t - last_wrong).max(1).values  # run of correct steps ending at t is t - last_wrong


def n_correct_spans(correct):
    """Number of separate runs of correct steps (Fig. 3 middle). bool (N, T) -> long (N,)."""
    # runs start where 0 -> 1
    return correct[:, 0].long() + (correct[:, 1:] & ~correct[:, :-1]).sum(1)


def first_correct_fraction(correct):
    """s / T for the first correct step s = 1..T of each trajectory ever correct (Fig. 3 right).
    bool (N, T) -> float (N',) with N' the rows that have a correct step."""
    ever = correct.any(1)  # (N,)
    return (correct[ever].float().argmax(1) + 1).float() / correct.shape[1]


def mean(v):
    """The mean of a tensor as a float; nan when it is empty."""
    return v.float().mean().item() if len(v) else float("nan")


def overdenoise_stats(step_rewards):
    """Table 1 and Fig. 3 numbers of one setting from its (N, T) step rewards. Span statistics are
    over the over-denoised rows (the samples Fig. 3 analyses); their means are nan when there are
    none."""
    correct, od = step_rewards == 1.0, overdenoised(step_rewards)  # (N, T), (N,)
    longest, spans = longest_correct_span(correct[od]), n_correct_spans(correct[od])  # (N_od,) each
    return {"n": len(correct), "accuracy": mean(correct[:, -1]),
            "any_step_accuracy": mean(correct.any(1)), "overdenoised_rate": mean(od),
            "first_correct_fraction": first_correct_fraction(correct).tolist(),
            "longest_span": longest.tolist(), "n_spans": spans.tolist(),
            "mean_longest_span": mean(longest), "mean_n_spans": mean(spans)}


def overdenoising_report(groups):
    """Markdown of Table 1's numbers and Fig. 3's span means for each setting: {label: stats}."""
    def nan(x):
        return "-" if x != x else f"{x:.2f}"
    lines = ["| Setting | n | Acc. (%) | + w/ inter. ans (%) = over-denoised rate "
             "| mean longest span | mean #spans |",
             "|---|---|---|---|---|---|"]
    for name, st in groups.items():
        lines.append(f'| {name} | {st["n"]} | {100 * st["accuracy"]:.1f} | '
                     f'+{100 * st["overdenoised_rate"]:.1f} | '
                     f'{nan(st["mean_longest_span"])} | {nan(st["mean_n_spans"])} |')
    return ("Over-denoising (correct at an intermediate step, wrong at the end); "
            "spans over over-denoised rows\n\n" + "\n".join(lines) + "\n")
