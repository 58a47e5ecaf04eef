"""Estimator lab: the log-likelihood estimates of RL methods for masked diffusion LMs against the
exact log-likelihood of the trajectory a rollout took.

    python tools/estimators.py            # results/estimators.md and results/estimators.png
    python tools/estimators.py --quick    # a small preview under out/estimators/

The policy gradient needs log pi(completion | prompt), which a masked diffusion LM has in no closed
form. A recorded rollout has an exact one: step s draws tokens from q = softmax(logits(x̄_s) /
temperature) ([MASK] excluded) and reveals some; the sum over steps of log q(token) at the revealed
positions (`recorded_logp`, from Trajectory.logp) is the likelihood of the tokens given the order
they were revealed in (LCR's choice of positions is not scored). Recomputed with grad
(`cj_grpo_terms`), `mdpo.token_logp`'s softmax keeps [MASK]: the two agree when the model gives
[MASK] no mass, as a trained base does (the report prints the largest difference). Each estimator
returns (N,) estimates with grad and its cost in forwards per rollout:
    d1: one forward, prompt masked w.p. 0.15 (or 0), completion all [MASK]  -> `d1_one_step`
    MDPO, Eq. 4: log p(x_{t-1}^i | x̄_t) at every masked i, every step      -> `mdpo_terms`
    CJ-GRPO: log p of the tokens each step revealed (the exact value)      -> `cj_grpo_terms`
    Eq. 1's ELBO: mask w.p. tau ~ U(0, 1), (1/tau) log p of the masked, K  -> `elbo`
All are scored at the rollout temperature (`mdpo.token_logp`): like for like with the exact value.
Each is compared with the exact value (bias, spread, Pearson r) and by the cosine of its REINFORCE
gradient sum_n A_n grad est_n with the exact one (`policy_gradient`), A the group-relative advantage
of the final reward (`grpo.reward_minus_group_mean`). A first run trains the toy base (train.py's
SFT, a few minutes on 2 cores); with it, the full run takes about 2 minutes, --quick under 20 s.
"""
import argparse
import functools
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root: train.py, sample.py, ...

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import config  # noqa: E402
import distributed  # noqa: E402
import grpo  # noqa: E402
import mdpo  # noqa: E402
import models  # noqa: E402
import rewards  # noqa: E402
import rollouts  # noqa: E402
import sample  # noqa: E402
import tasks  # noqa: E402
import toy  # noqa: E402
import train  # noqa: E402

TASK = "toy-digits"
RL = config.Config()  # the rollouts of train.py: L = 40, T = 16, temperature 0.7, G = 8, LCR
CHUNK = 64  # rollouts per forward with grad: bounds T steps' graphs (full run: ~1.7 GB peak RSS)
D1, D1_INTACT = "d1 one-step (p = 0.15)", "d1 one-step (p = 0)"  # p = 0: the prompt left intact
MDPO = "MDPO per-step terms (Eq. 4)"
EXACT = "CJ-GRPO revealed tokens"  # the estimator that recomputes the exact value, with grad


# ----------------------------------------------------------------------------- rollouts
def recorded_logp(traj, completions, mask_id):
    """The exact log-likelihood of each recorded trajectory, from the sampler's own numbers: the sum
    over steps s and positions i revealed at s (`grpo.revealed_per_step`) of traj.logp[s, i], the
    log-probability of the token under the distribution it was drawn from.

    traj: sample.Trajectory, x_bar and logp (T, N, L); completions: (N, L) the final state.
    Returns (N,).
    """
    revealed = grpo.revealed_per_step(traj.x_bar, completions, mask_id)  # (T, N, L)
    return torch.where(revealed, traj.logp, torch.zeros_like(traj.logp)).sum((0, 2))  # (N,)


def sample_rollouts(model, tok, examples, block_length, generator):
    """G = RL.group_size rollouts of each example (a prompt's G in adjacent rows) as train.py's
    (rollouts.sample_group: LCR, "sampling" confidence, RL's temperature), recorded.
    Returns (rollouts.Group, exact log-likelihood (N,), final reward (N,))."""
    G, mask_id = RL.group_size, models.resolve_mask_id(tok, model)
    ids, attn = models.encode_prompts(tok, tasks.prompt_texts(TASK, examples))  # (n, P) each
    ids, attn = ids.repeat_interleave(G, 0), attn.repeat_interleave(G, 0)  # (N, P) each
    x, traj = sample.generate(model, ids, attention_mask=attn, gen_length=RL.gen_length,
                              block_length=block_length, steps=RL.steps, remasking=RL.remasking,
                              temperature=RL.temperature, confidence="sampling", mask_id=mask_id,
                              record=True, generator=generator)  # (N, P+L), Trajectory
    completions = x[:, ids.shape[1]:]  # (N, L)
    group = rollouts.Group(ids, traj.attention_mask, completions, traj.x_bar, traj.x_pred,
                           [ex for ex in examples for _ in range(G)])
    texts = tasks.completion_texts(tok, completions)
    R = torch.tensor([rewards.reward(TASK, t, ex) for t, ex in zip(texts, group.examples)])  # (N,)
    return group, recorded_logp(traj, completions, mask_id), R


def subset(group, rows):
    """The rollouts rows (n,) of a rollouts.Group, as a Group."""
    return rollouts.Group(group.prompt_ids[rows], group.attention_mask[rows],
                          group.completions[rows], group.x_bar[:, rows], group.x_pred[:, rows],
                          [group.examples[i] for i in rows.tolist()])


# ----------------------------------------------------------------------------- the estimators
def completion_logp(model, x, group, targets, temperature):
    """log p_theta(targets^i | x) at every completion position: one forward on x (N, P + L), with
    grad, scored under softmax(logits / temperature) (as optimise.policy_logp). Returns (N, L)."""
    P = group.prompt_ids.shape[1]
    logits = models.logits(model, x, group.attention_mask)[:, P:]  # (N, L, V)
    return mdpo.token_logp(logits, targets, temperature)  # (N, L)


def masked_sum(values, mask):
    """Each row's sum of values (N, L) where mask (N, L) is True. Returns (N,)."""
    return torch.where(mask, values, torch.zeros_like(values)).sum(1)  # (N,)


def d1_one_step(model, group, generator, *, mask_id, eos_id, temperature, p_mask=0.15):
    """d1's mean-field estimate: one forward on the prompt masked w.p. p_mask
    (`grpo.perturbed_input`) and the completion all [MASK]; the sum of log p(token) over the
    completion up to and including its first EOS (`grpo.completion_mask`).
    Returns ((N,) with grad, 1 forward)."""
    P = group.prompt_ids.shape[1]
    x = grpo.perturbed_input(group.prompt_ids, group.completions, group.attention_mask[:, :P],
                             mask_id, p_mask, generator)  # (N, P+L)
    logp = completion_logp(model, x, group, group.completions, temperature)  # (N, L)
    return masked_sum(logp, grpo.completion_mask(group.completions, eos_id)), 1


def step_terms(model, group, chosen, temperature):
    """sum over steps s of log p(x_pred[s]^i | x̄_s) at the positions chosen[s] (T, N, L) bool: one
    forward per step on [prompt; x̄_s], the rows updates.trajectory_batch builds.
    Returns ((N,) with grad, T forwards)."""
    total = 0
    for s in range(len(chosen)):
        x = torch.cat([group.prompt_ids, group.x_bar[s]], 1)  # (N, P+L)
        logp = completion_logp(model, x, group, group.x_pred[s], temperature)  # (N, L)
        total = total + masked_sum(logp, chosen[s])  # (N,)
    return total, len(chosen)


def mdpo_terms(model, group, generator, *, mask_id, temperature):
    """MDPO's per-step terms (Eq. 4's log-probs, as its update reads them): every position masked
    in x̄_t scored on the full prediction x_{t-1}, revealed or not, summed over all T steps."""
    return step_terms(model, group, group.x_bar == mask_id, temperature)


def cj_grpo_terms(model, group, generator, *, mask_id, temperature):
    """CJ-GRPO's terms: at each step, the tokens that step revealed (`grpo.revealed_per_step`),
    summed over steps. This is the exact log-likelihood recomputed with a fresh forward."""
    revealed = grpo.revealed_per_step(group.x_bar, group.completions, mask_id)  # (T, N, L)
    return step_terms(model, group, revealed, temperature)


def elbo(model, group, generator, *, k, mask_id, temperature):
    """Eq. 1's bound as an estimate, K Monte Carlo draws: log p(y) >= E_tau[(1/tau) sum over the
    masked i of log p(y^i | y_tau)], y the completion, y_tau it with each token masked w.p. tau
    (`mdpo.sft_noise`: tau ~ U(0, 1) per row, floored at 1e-3; the prompt is never masked).
    Returns ((N,) with grad, K forwards)."""
    P = group.prompt_ids.shape[1]
    x0 = torch.cat([group.prompt_ids, group.completions], 1)  # (N, P+L)
    maskable = torch.zeros_like(x0, dtype=torch.bool)  # (N, P+L)
    maskable[:, P:] = True
    total = 0
    for _ in range(k):
        # (N, P+L), (N, P+L), (N, 1)
        x_tau, masked, p_mask = mdpo.sft_noise(x0, maskable, mask_id, generator)
        logp = completion_logp(model, x_tau, group, group.completions, temperature)  # (N, L)
        total = total + masked_sum(logp / p_mask, masked[:, P:])  # (N,)
    return total / k, k


def estimators(mask_id, eos_id, ks=(1, 4, 16)):
    """name -> estimator(model, group, generator) -> ((N,) with grad, forwards per rollout)."""
    kw = dict(mask_id=mask_id, temperature=RL.temperature)
    out = {D1: functools.partial(d1_one_step, eos_id=eos_id, **kw),
           D1_INTACT: functools.partial(d1_one_step, eos_id=eos_id, p_mask=0.0, **kw),
           MDPO: functools.partial(mdpo_terms, **kw),
           EXACT: functools.partial(cj_grpo_terms, **kw)}
    for k in ks:
        out[f"ELBO (Eq. 1), K = {k}"] = functools.partial(elbo, k=k, **kw)
    return out


# ----------------------------------------------------------------------------- comparing them
def policy_gradient(model, est, adv):
    """REINFORCE's sum_n A_n grad est_n, every parameter's gradient flattened into one vector.
    est: (N,) with grad; adv: (N,). Returns (n_params,)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((adv * est).sum(), params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for p, g in zip(params, grads)])  # (n_params,)


def run_estimators(model, group, adv, named, generator, bar):
    """Every estimator on the rollouts, CHUNK rows at a time (whole groups: CHUNK is a multiple of
    G). Returns {name: (estimates (N,), gradient (n_params,), forwards per rollout)}."""
    out = {}
    for name, estimate in named.items():
        values, grad = [], 0
        for rows in torch.arange(len(adv)).split(CHUNK):
            est, forwards = estimate(model, subset(group, rows), generator)  # (n,)
            grad = grad + policy_gradient(model, est, adv[rows])  # (n_params,)
            values.append(est.detach())
            bar.update(1)
        out[name] = (torch.cat(values), grad, forwards)
    return out


def compare(est, exact, grad, exact_grad):
    """bias and spread: mean and std of est - exact (N,); r: Pearson's correlation of est with
    exact; cos: the cosine between the two policy gradients (n_params,)."""
    diff = est - exact  # (N,)
    return {"bias": diff.mean().item(), "spread": diff.std().item(),
            "r": torch.corrcoef(torch.stack([est, exact]))[0, 1].item(),
            "cos": F.cosine_similarity(grad, exact_grad, dim=0).item()}


# ----------------------------------------------------------------------------- the report
def machine():
    """CPU model, OS, cores and torch threads, in words."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.exists() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line]
    cpu = names[0] if names else (platform.processor() or platform.machine())
    return (f"{cpu}, {platform.platform()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
            f"torch thread(s), torch {torch.__version__}")


def table(m):
    """The markdown table of one block length's measurements m (see `measure`)."""
    lines = ["| estimator | forwards / rollout | bias (nats) | spread (nats) | Pearson r | "
             "gradient cosine |", "|---|---|---|---|---|---|"]
    for name, s in m["rows"].items():
        lines.append(f"| {name} | {m['forwards'][name]} | {s['bias']:+.2f} | {s['spread']:.2f} | "
                     f"{s['r']:.3f} | {s['cos']:.3f} |")
    return lines


def preamble(command, seconds, base, n_prompts, seed):
    """The report's opening: command, machine, setting, and what each column means."""
    return [
        "# Log-likelihood estimators vs the exact trajectory log-likelihood", "",
        f"Command: `{command}`. Machine: {machine()}. Wall time: {seconds:.0f} s.", "",
        f"Base: `{os.path.relpath(base, ROOT)}` (train.py's SFT of the toy, Eq. 1). Rollouts: "
        f"{n_prompts} {TASK} val problems x G = {RL.group_size}, L = {RL.gen_length}, "
        f"T = {RL.steps}, temperature {RL.temperature}, {RL.remasking.upper()} with the sampling "
        f"confidence (train.py's rollouts), seed {seed}.", "",
        "Exact: the sum over steps of log q(token) at the positions each step revealed, q the "
        "tempered distribution the sampler drew the token from (sample.Trajectory.logp); LCR's "
        "choice of positions is not scored. Recomputed with a fresh forward, the softmax also "
        "holds [MASK], which the sampler excludes: the two agree when the model gives [MASK] no "
        "mass (the check above each table). Every estimator is scored at the rollout temperature "
        f"{RL.temperature}, log softmax(logits / {RL.temperature}), the distribution the sampler "
        "drew from, so the comparison is like for like (d1 and the ELBO are usually scored at "
        "temperature 1).", "",
        "Bias, spread: mean and std over rollouts of estimate - exact. Pearson r: with the exact "
        "value, across rollouts. Gradient cosine: between sum_n A_n grad(estimate_n) and the same "
        "with the exact value (the exact trajectory's REINFORCE gradient), every parameter "
        "flattened into one vector; A_n = r_n - its group's mean reward (d1). "
        f"{EXACT} recomputes the exact value with a fresh forward: its cosine is 1 by "
        "construction, and its bias checks the recomputation against the sampler's numbers.", ""]


def report(measured, command, seconds, base, n_prompts, seed):
    """results/estimators.md: the setting, one table per block length, what the numbers show."""
    lines = preamble(command, seconds, base, n_prompts, seed)
    for block, m in measured.items():
        kind = "pure-Diff" if block == RL.gen_length else "semi-AR"
        lines += [f"## Block length {block} ({kind})", "",
                  f"Exact log-likelihood: mean {m['exact'].mean():.2f}, std "
                  f"{m['exact'].std():.2f} nats per rollout. Mean reward {m['reward']:.2f}; "
                  f"{m['signal']} of {m['groups']} groups have unequal rewards (a non-zero "
                  f"advantage). Recomputed vs recorded: at most {m['check']:.1e} nats apart. "
                  f"MDPO's terms per rollout: {m['terms']:.0f} on average (the exact value "
                  f"has L = {RL.gen_length}).", "",
                  *table(m), ""]
    lines += ["## What the numbers show", "", lessons(measured), ""]
    return "\n".join(lines)


def lessons(measured):
    """The closing paragraph, every claim read off the numbers it names; "a / b" pairs are the
    block lengths in the order of the tables."""
    def each(name, key):
        return " / ".join(f"{m['rows'][name][key]:.2f}" for m in measured.values())

    first = next(iter(measured.values()))
    others = [n for n in first["rows"] if n != EXACT]
    bias = [m["rows"][n]["bias"] for m in measured.values() for n in others]
    r = [m["rows"][n]["r"] for m in measured.values() for n in others]
    check = max(m["check"] for m in measured.values())
    elbos = [n for n in others if n.startswith("ELBO")]
    terms = " / ".join(f"{m['terms']:.0f}" for m in measured.values())
    return (
        f"CJ-GRPO's revealed-token terms are the exact value: recomputed with a fresh forward they "
        f"are at most {check:.0e} nats from the sampler's, so their gradient is the exact "
        f"REINFORCE gradient, at {first['forwards'][EXACT]} forwards per rollout. No other "
        f"estimator tracks the exact value rollout by rollout: biases from {min(bias):.1f} to "
        f"{max(bias):.1f} nats, Pearson r at most {max(r):.2f}. d1's one-step estimate (one "
        f"forward): bias {each(D1, 'bias')}, r {each(D1, 'r')}, gradient cosine "
        f"{each(D1, 'cos')}. With the prompt left intact (p = 0) the same forward gives bias "
        f"{each(D1_INTACT, 'bias')}, r {each(D1_INTACT, 'r')}, cosine {each(D1_INTACT, 'cos')}: "
        f"on this task a masked prompt digit leaves every later sum undetermined. MDPO's Eq. 4 "
        f"terms also score the predictions a step draws and does not reveal, so they sum "
        f"{terms} terms per rollout where the exact value sums {RL.gen_length} "
        f"(bias {each(MDPO, 'bias')}); weighted by one final-reward advantage for every step, "
        f"their gradient has cosine {each(MDPO, 'cos')} with the exact one (MDPO's update gives "
        f"each step its own advantage instead). The ELBO's gradient cosine goes "
        f"{' -> '.join(each(n, 'cos') for n in elbos)} and its spread "
        f"{' -> '.join(each(n, 'spread') for n in elbos)} from K = 1 to K = 16; one draw with a "
        f"small tau weighs its masked tokens by 1 / tau (up to 1000). Per forward: d1 with the "
        f"prompt intact reaches cosine {each(D1_INTACT, 'cos')} with 1, the ELBO "
        f"{each(elbos[-1], 'cos')} with {first['forwards'][elbos[-1]]}.")


def plot(measured, path):
    """One panel per estimator: estimate vs exact per rollout, a colour per block length, y = x."""
    names = list(next(iter(measured.values()))["estimates"])
    cols, rows = 4, -(-len(names) // 4)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for block, m in measured.items():
            ax.scatter(m["exact"], m["estimates"][name], s=6, alpha=0.5, label=f"block {block}")
        lo = min(min(m["exact"].min(), m["estimates"][name].min()) for m in measured.values())
        hi = max(max(m["exact"].max(), m["estimates"][name].max()) for m in measured.values())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
        ax.set_xscale("symlog")  # near-zero values and outliers in the hundreds on one axis
        ax.set_yscale("symlog")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("exact log-likelihood (nats, symlog)")
        ax.set_ylabel("estimate (nats, symlog)")
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def ensure_base(path):
    """The toy base: `path` if given, else out/toy-digits-base/last, trained first by train.py's SFT
    (as tools/reproduce.py does, a few minutes on 2 cores) when missing."""
    if path is not None:
        return Path(path)
    last = ROOT / "out" / f"{TASK}-base" / "last"
    if not (last / "config.json").exists():
        train.main(["--algo", "sft", "--task", TASK, "--out", str(last.parent)])
    return last


def measure(model, tok, examples, block_length, named, generator, bar):
    """Rollouts at one block length and every estimator on them -> the numbers of the report."""
    group, exact, R = sample_rollouts(model, tok, examples, block_length, generator)
    adv = grpo.reward_minus_group_mean(R, RL.group_size)  # (N,)
    bar.update(1)
    results = run_estimators(model, group, adv, named, generator, bar)
    exact_grad = results[EXACT][1]  # (n_params,)
    groups = R.view(-1, RL.group_size)  # (n, G)
    return {"exact": exact, "reward": R.mean().item(), "groups": len(groups),
            "signal": int((groups != groups[:, :1]).any(1).sum()),
            "check": (results[EXACT][0] - exact).abs().max().item(),
            "terms": (group.x_bar == models.resolve_mask_id(tok, model)).sum((0, 2)).float()
            .mean().item(),
            "estimates": {name: est for name, (est, _, _) in results.items()},
            "forwards": {name: forwards for name, (_, _, forwards) in results.items()},
            "rows": {name: compare(est, exact, grad, exact_grad)
                     for name, (est, grad, _) in results.items()}}


def parse(argv):
    """The command line: --base, --prompts, --seed, --quick."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=None,
                   help="the toy base checkpoint (default: out/toy-digits-base/last, trained "
                        "with train.py --algo sft when missing)")
    p.add_argument("--prompts", type=int, default=None,
                   help=f"{TASK} val problems, G = {RL.group_size} rollouts each "
                        "(default 32; --quick 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the rollouts and the estimators")
    p.add_argument("--quick", action="store_true",
                   help="a preview: 4 problems, block length 40 only, written under "
                        "out/estimators/ (never over results/)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    t0 = time.time()
    n_prompts = args.prompts or (4 if args.quick else 32)
    out = ROOT / "out" / "estimators" if args.quick else ROOT / "results"
    # pure-Diff (block 40) first, then semi-AR (10)
    blocks = (RL.gen_length,) if args.quick else tuple(sorted(RL.block_lengths, reverse=True))
    base = ensure_base(args.base)
    model, tok = models.load_model(str(base))
    named = estimators(models.resolve_mask_id(tok, model), tok.eos_token_id)
    examples = toy.make_task(TASK, n_prompts, 0, "val")
    generator = torch.Generator().manual_seed(args.seed)
    n_chunks = -(-n_prompts * RL.group_size // CHUNK)
    measured = {}
    with distributed.progress(total=len(blocks) * (1 + n_chunks * len(named)),
                              desc="estimators") as bar:
        for block in blocks:
            measured[block] = measure(model, tok, examples, block, named, generator, bar)
    command = " ".join(["python tools/estimators.py", *(sys.argv[1:] if argv is None else argv)])
    out.mkdir(parents=True, exist_ok=True)
    plot(measured, out / "estimators.png")
    text = report(measured, command, time.time() - t0, base, n_prompts, args.seed)
    (out / "estimators.md").write_text(text)
    print(text)
    print(f"results: {out / 'estimators.md'}, {out / 'estimators.png'}")


if __name__ == "__main__":
    # a model this small runs fastest on one thread; two contend with any other work on 2 cores
    torch.set_num_threads(1)
    main()
