"""train.py: DDP gradients, kill-and-resume, a short MDPO run, bad input.
pytest -q tests/test_train.py"""

import contextlib
import copy
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from argparse import Namespace
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import checkpoint
import config
import eval as evaluation
import lora
import mdpo
import optimise
import rewards
import rollouts
import tasks
import toy
import updates
from conftest import ROOT, run_bounded, spawn_bounded

sys.path.insert(0, str(ROOT))
import train  # noqa: E402


def fake_batches(n, seed=0, b=3, P=5, L=8, V=59, mask_id=1):
    """n MDPO micro-batches (as updates.trajectory_batch makes them) with fixed random content."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        x = torch.randint(5, V, (b, P + L), generator=g)
        mask = torch.rand(b, L, generator=g) < 0.5
        x[:, P:][mask] = mask_id
        batches.append(
            optimise.MicroBatch(
                [x],
                torch.ones(b, P + L, dtype=torch.long),
                torch.randint(5, V, (b, L), generator=g),
                mask,
                torch.randn(b, 1, generator=g),
                P,
            )
        )
    return batches


CFG = config.Config(inner_steps=1, eps=0.2, beta=0.0, loss_norm="token", grad_clip=1e9)
GRPO_CFG = dataclasses.replace(CFG, algo="diffu-grpo", eps=0.5)


def mdpo_backward(wrapped, batches, cfg, before_each=None):
    """mdpo_update's micro-batch loop (inner step 0, no optimiser step) on micro-batches made by
    hand: the forward and backward of each, normalised over these batches' tokens. Returns
    optimise.tally's sums (loss, kl, clipped, tokens)."""
    n_tokens = sum(b.loss_mask.sum().item() for b in batches)
    sums = optimise.new_sums()
    for i, b in enumerate(batches):
        if before_each is not None:
            before_each(b)
        with optimise.micro_step(wrapped, i, len(batches), cfg):
            logp = optimise.policy_logp(wrapped, b, 0, cfg.temperature)  # (b, L)
            old, ref = optimise.fixed_logps(b, 0, logp)
            denom = mdpo.loss_denominators(b.loss_mask, "token", 0, n_tokens, 0)
            loss = mdpo.mdpo_loss(logp, old, ref, b.adv, b.loss_mask, cfg.eps, cfg.beta, denom)
        loss.backward()
        optimise.tally(sums, loss, logp, old, ref, b, mdpo.kl_k2, cfg.eps)
    return sums


# ------------------------------------------------------- every update: DDP == one process
ALGOS = {
    "mdpo": dataclasses.replace(CFG, algo="mdpo", beta=0.05),
    "diffu-grpo": dataclasses.replace(GRPO_CFG, beta=0.05, inner_steps=2, p_mask=0.0),
    "cj-grpo": dataclasses.replace(CFG, algo="cj-grpo", eps=0.5, beta=0.05, inner_steps=2),
    "igpo": dataclasses.replace(CFG, algo="igpo", beta=0.05, inner_steps=2, p_mask=0.0),
    "igpo-token": dataclasses.replace(CFG, algo="igpo", igpo_ratio="token", inner_steps=2,
                                      p_mask=0.0),
    "mdpo-lora": dataclasses.replace(CFG, algo="mdpo", beta=0.05, lora_rank=4, lora_alpha=8.0,
                                     lora_dropout=0.0),
}
UPDATE_CFG = dict(task="toy-arith", group_size=4, gen_length=8, block_lengths=(8,), steps=4,
                  micro_batch=4, temperature=0.7)


def fixed_group(policy, tokenizer, examples, cfg, mask_id, generator, update, record):
    """What rollouts.sample_group returns, made without a model: each example's G completions and
    their trajectories (L // T tokens revealed a step, in an order of their own) are fixed by the
    example's "id" alone, so a rank holding some examples sees what one process holding all sees."""
    G, L, T, P = cfg.group_size, cfg.gen_length, cfg.steps, 5
    prompts, completions, x_bar = [], [], []
    for ex in examples:
        g = torch.Generator().manual_seed(ex["id"])
        prompt = torch.randint(5, 40, (P,), generator=g)
        for _ in range(G):
            completion = torch.randint(5, 40, (L,), generator=g)  # (L,)
            order = torch.randperm(L, generator=g)  # the reveal order
            states = completion.repeat(T, 1)  # (T, L): the state fed to step s
            for s in range(T):
                states[s, order[s * L // T:]] = mask_id
            prompts.append(prompt)
            completions.append(completion)
            x_bar.append(states)
    completions = torch.stack(completions)  # (N, L)
    x_bar = torch.stack(x_bar, 1) if record else None  # (T, N, L)
    x_pred = completions.expand(T, -1, -1).clone() if record else None  # (T, N, L)
    N = len(completions)
    return rollouts.Group(torch.stack(prompts), torch.ones(N, P + L, dtype=torch.long),
                          completions, x_bar, x_pred, [ex for ex in examples for _ in range(G)])


def fixed_rewards(group, cfg):
    """Rewards of a fixed group that depend on the example and the row in its group only: rollout j
    of example i is right when i + j is odd, and its step s scores (i + j + s) % 3 == 0."""
    j = torch.arange(len(group.examples)) % cfg.group_size  # (N,)
    ids = torch.tensor([ex["id"] for ex in group.examples])  # (N,)
    steps = torch.arange(cfg.steps)  # (T,)
    final = ((ids + j) % 2).float()  # (N,)
    trajectory = (((ids + j)[:, None] + steps) % 3 == 0).float()  # (N, T)
    return final, trajectory


def weights_after_one_update(world, rank):
    """The weights after one update of each algorithm (updates.py, SGD with lr 1) on 4 prompts of a
    fixed group, 2 each on 2 DDP ranks (world 2) or all 4 in one process, the rollouts and rewards
    fixed (fixed_group, fixed_rewards): the update's advantages, micro-batches, normalisers over
    ranks, accumulation and step are the real ones."""
    tok, out = toy.ToyTokenizer(), {}
    updates.final_rewards = lambda group, tokenizer, cfg: fixed_rewards(group, cfg)[0]
    rewards.score_trajectory = lambda texts, task, examples, fs: fixed_rewards(
        SimpleNamespace(examples=examples), config.Config(**UPDATE_CFG))[1]
    rollouts.sample_group = fixed_group
    examples = [{"id": i, "prompt": str(i), "answer": "0"} for i in range(4)]
    mine = examples[2 * rank: 2 * rank + 2] if world > 1 else examples
    for name, cfg in ALGOS.items():
        cfg = dataclasses.replace(cfg, **UPDATE_CFG)
        torch.manual_seed(0)
        model = toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32))
        reference = copy.deepcopy(model).requires_grad_(False) if cfg.beta > 0 else None
        if cfg.lora_rank:  # the adapters train, the reference is the base (lora.py)
            model = lora.add_adapter(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
            reference = lora.AdapterOff(model)
        wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
        trainable = [p for p in model.parameters() if p.requires_grad]
        updates.UPDATES[cfg.algo](wrapped, reference, torch.optim.SGD(trainable, lr=1.0),
                                  mine, cfg, tokenizer=tok, mask_id=tok.mask_token_id,
                                  generator=torch.Generator().manual_seed(rank))
        out[name] = {k: v.detach().clone() for k, v in model.named_parameters()}
        del wrapped
    return out


FSDP_VS_DDP = ["--algo", "sft", "--task", "toy-arith", "--max-updates", "3", "--micro-batch",
               "8", "--n-train", "40"]
ONE_THEN_TWO = [*FSDP_VS_DDP[:4], *FSDP_VS_DDP[6:]]  # no --max-updates


def two_process_worker(rank, world, ports, out):
    """What this module checks on 2 gloo processes (started as torchrun would), in one pair of
    processes: every update function's weights (weights{rank}.pt), then train.py's main three
    times: DDP, FSDP2, and the resume on 2 processes of a run one process started (its console in
    resumed{rank}.txt). Each process group meets on a port of its own: a rank that comes back
    to a port before the other rank has closed its last group there can join the old one."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(ports[0])
    patched = [(m, n, getattr(m, n)) for m, n in ((updates, "final_rewards"),
                                                 (rewards, "score_trajectory"),
                                                 (rollouts, "sample_group"))]
    dist.init_process_group("gloo")
    torch.save(weights_after_one_update(world, rank), os.path.join(out, f"weights{rank}.pt"))
    train.distributed.cleanup_distributed()
    for module, name, real in patched:  # train.py's runs below use the real ones
        setattr(module, name, real)
    for name, extra, port in (("ddp", [], ports[1]), ("fsdp", ["--fsdp"], ports[2])):
        os.environ["MASTER_PORT"] = str(port)
        train.main([*FSDP_VS_DDP, "--out", os.path.join(out, name), *extra])
    os.environ["MASTER_PORT"] = str(ports[3])
    with open(os.path.join(out, f"resumed{rank}.txt"), "w") as f, \
            contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        train.main([*ONE_THEN_TWO, "--max-updates", "4", "--out",
                    os.path.join(out, "one-then-two"), "--resume"])


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The folder two_process_worker wrote into, after a one-process run of 2 updates there."""
    out = tmp_path_factory.mktemp("two-processes")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main([*ONE_THEN_TWO, "--max-updates", "2", "--out", str(out / "one-then-two")])
    finally:
        torch.set_num_threads(threads)
    sockets = [socket.socket() for _ in range(4)]  # 4 free ports, one per process group
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    spawn_bounded(two_process_worker, (2, ports, str(out)), nprocs=2, timeout=130)
    return out


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_accumulation(two_processes, monkeypatch):
    """Every algorithm's update function: DDP over 2 ranks, 2 prompts and 2 micro-batches each ==
    1 process with 4 prompts and 4 micro-batches (the update's normalisers shared over ranks)."""
    tmp_path = two_processes
    for module, name in ((updates, "final_rewards"), (rewards, "score_trajectory"),
                         (rollouts, "sample_group")):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after this test
    single = weights_after_one_update(1, 0)
    torch.manual_seed(0)
    init = dict(toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32)).named_parameters())
    for rank in range(2):
        ddp = torch.load(tmp_path / f"weights{rank}.pt")
        for name in ALGOS:
            assert single[name].keys() == ddp[name].keys()
            for k in single[name]:
                torch.testing.assert_close(ddp[name][k], single[name][k], rtol=1e-5, atol=1e-7)
            moved = [k for k, v in single[name].items()
                     if ("lora_B" in k and v.abs().sum() > 0)  # B starts at 0
                     or (k in init and not torch.equal(v, init[k]))]
            assert moved, name


def run_train(*argv, wait=True):
    cmd = [sys.executable, str(ROOT / "train.py"), *map(str, argv)]
    if wait:
        out = run_bounded(cmd, 240)
        assert out.returncode == 0, out.stderr[-3000:]
        return out
    # one thread, as run_bounded's: a run resumed with another thread count sums in another order
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)


def logged_steps(out):
    path = out / "log.jsonl"
    lines = path.read_text().splitlines()[1:] if path.exists() else []
    return [json.loads(line)["step"] for line in lines if line.strip()]


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_weights(tmp_path):
    common = [
        "--algo",
        "sft",
        "--task",
        "toy-arith",
        "--max-updates",
        12,
        "--micro-batch",
        8,
        "--n-train",
        50,
        "--save-every",
        2,
        "--eval-every",
        6,
        "--n-eval",
        8,
    ]
    # run b in its own process, killed mid-way; run a and b's resume here (one thread, as b's)
    proc = run_train(*common, "--out", tmp_path / "b", wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and len(logged_steps(tmp_path / "b")) < 4 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = logged_steps(tmp_path / "b")
    assert 4 <= len(killed_at) < 12, f"the run was not killed mid-way: {killed_at}"
    saved = checkpoint.saved_step(tmp_path / "b" / "last")
    assert 2 <= saved < 12  # the resumed run starts from a checkpoint, not from scratch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main([*map(str, common), "--out", str(tmp_path / "a")])
        train.main([*map(str, common), "--out", str(tmp_path / "b"), "--resume"])
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "a" / "plot.png").stat().st_size > 0 and (
        tmp_path / "a" / "best" / "trainer_state.pt"
    ).exists()
    rows = [
        json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()[1:]
    ]
    # the starting model (update 0), then every 6 updates
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [0, 6, 12]
    assert logged_steps(tmp_path / "b") == list(range(13))  # no step lost or repeated in the log
    a = toy.ToyMDLM.from_pretrained(tmp_path / "a" / "last").state_dict()
    b = toy.ToyMDLM.from_pretrained(tmp_path / "b" / "last").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    init = toy.ToyMDLM.from_pretrained(tmp_path / "a" / "init").state_dict()
    assert not all(torch.equal(a[k], init[k]) for k in a)  # training did change the weights


class PositionLogits(torch.nn.Module):
    """A policy that ignores its input: one free row of logits per position. Every position is
    nearly certain of the reference completion's token, except the two operators inside <answer>,
    where '+' (right) and '-' (wrong) are equally likely: a rollout is correct with probability
    1/4."""

    def __init__(self, tok, example, prompt_len, gen_length):
        super().__init__()
        completion = tok.encode(example["completion"])
        completion += [tok.eos_token_id] * (gen_length - len(completion))
        table = torch.zeros(prompt_len + gen_length, tok.vocab_size)
        table[torch.arange(prompt_len, prompt_len + gen_length), completion] = 12.0
        start = completion.index(tok.ids["<answer>"])
        for i in range(start, start + 8):
            if completion[i] == tok.ids["+"]:
                table[prompt_len + i, tok.ids["+"]] = table[prompt_len + i, tok.ids["-"]] = 12.0
        self.table = torch.nn.Parameter(table)
        self.device = torch.device("cpu")

    def forward(self, x, attention_mask=None):
        return Namespace(logits=self.table[: x.shape[1]].expand(x.shape[0], -1, -1))


def test_short_seeded_mdpo_run_raises_the_reward(tok):
    example = {
        "prompt": "nums 1 2 3 -> 6",
        "numbers": [1, 2, 3],
        "target": 6,
        "completion": "1+2 = 3\n3+3 = 6\n<answer>(1+2)+3</answer>",
    }
    cfg = config.Config(
        task="toy-countdown",
        group_size=8,
        gen_length=40,
        block_lengths=(40, 10),
        steps=20,
        temperature=1.0,
        top_c=4,
        micro_batch=32,
        beta=0.0,
    )
    torch.manual_seed(0)
    model = PositionLogits(tok, example, len(tok.encode(example["prompt"])), cfg.gen_length)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.5)
    gen, curve = torch.Generator().manual_seed(0), []
    for update in range(12):
        stats = updates.mdpo_update(
            model,
            None,
            optimizer,
            [example] * 4,
            cfg,
            tokenizer=tok,
            mask_id=tok.mask_token_id,
            generator=gen,
            update=update,
        )
        curve.append(stats["reward"])
    # binary reward: a rollout is right with probability 1/4 at the start
    assert curve[0] < 0.45 and sum(curve[-3:]) / 3 > 0.9, curve


def test_malformed_training_file_is_a_clear_error(tmp_path, tok):
    (tmp_path / "bad.csv").write_text(',Problem,Solution\n0,"What is 1+1?",2\n1,"What is 2+2?",\n')
    toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32)).save_pretrained(tmp_path / "ck")
    tok.save_pretrained(tmp_path / "ck")
    with pytest.raises(SystemExit, match=r'train.py: error: .*bad.csv:3: missing "Solution"'):
        train.main(
            [
                "--model",
                str(tmp_path / "ck"),
                "--task",
                "math500",
                "--train-file",
                str(tmp_path / "bad.csv"),
                "--out",
                str(tmp_path / "run"),
                "--beta",
                "0",
            ]
        )


@pytest.mark.slow
def test_fsdp_matches_ddp_on_two_gloo_processes(two_processes):
    """Two gloo processes: FSDP2 (fully_shard) and DDP take the same updates; and the two resume a
    checkpoint that one process wrote (the sampling streams start afresh, and they say so)."""
    tmp_path = two_processes
    assert "written by 1 processes, this run has 2" in (tmp_path / "resumed0.txt").read_text()
    assert logged_steps(tmp_path / "one-then-two") == [1, 2, 3, 4]
    assert checkpoint.latest(tmp_path / "one-then-two") == tmp_path / "one-then-two" / "last"
    for name in ("ddp", "fsdp"):
        assert logged_steps(tmp_path / name) == [1, 2, 3]
    ddp = toy.ToyMDLM.from_pretrained(tmp_path / "ddp" / "last").state_dict()
    fsdp = toy.ToyMDLM.from_pretrained(tmp_path / "fsdp" / "last").state_dict()
    init = toy.ToyMDLM.from_pretrained(tmp_path / "ddp" / "init").state_dict()
    for k in ddp:
        torch.testing.assert_close(fsdp[k], ddp[k], rtol=1e-4, atol=1e-5)
    assert not all(torch.equal(ddp[k], init[k]) for k in ddp)


def test_prefilter_keeps_the_over_denoised_prompts_and_caches_them(tmp_path, monkeypatch, tok):
    examples = [{"prompt": str(i), "answer": str(i)} for i in range(4)]
    step_rewards = {
        10: torch.tensor(
            [[0.0, 1, 1, 0], [0, 0, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]]
        ),  # rows 0, 2 over-denoised
        40: torch.tensor([[0.0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
    }  # row 1
    monkeypatch.setattr(
        evaluation,
        "sharded_accuracy",
        lambda m, t, ex, a, mid, rem, block, r, w: (0.0, step_rewards[block]),
    )
    args = config.Config(out=str(tmp_path), block_lengths=(10, 40))
    kept = evaluation.prefilter(None, tok, examples, args, 1, 0, 1)
    assert [ex["prompt"] for ex in kept] == ["0", "1", "2"]  # over-denoised under either block size
    monkeypatch.setattr(evaluation, "sharded_accuracy", None)  # a second call must read the cache
    assert evaluation.prefilter(None, tok, examples, args, 1, 0, 1) == kept
    (tmp_path / "prefilter.jsonl").unlink()
    step_rewards[10][[0, 2]], step_rewards[40][1] = 0.0, 0.0
    monkeypatch.setattr(
        evaluation,
        "sharded_accuracy",
        lambda m, t, ex, a, mid, rem, block, r, w: (0.0, step_rewards[block]),
    )
    with pytest.raises(ValueError, match="kept none of 4 training prompts: use --prefilter none"):
        evaluation.prefilter(None, tok, examples, args, 1, 0, 1)


def test_inner_steps_recompute_old_log_probs_so_the_first_ratio_is_one(tok):
    """mu > 1: the old log-probs come from the training forward itself before the first inner step
    (not from the rollout, whose forward differs), so nothing is clipped at the first step; a policy
    that moved away from them is clipped."""
    torch.manual_seed(0)
    model = toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32))
    b = fake_batches(1)[0]
    cfg = dataclasses.replace(CFG, inner_steps=2)
    n = b.loss_mask.sum().item()
    optimise.fix_log_probs(model, None, [b], cfg, 0.7)
    with torch.no_grad():
        logp = mdpo.token_logp(
            model(b.inputs[0], attention_mask=b.attention_mask).logits[:, b.prompt_len :],
            b.targets,
            0.7,
        )
    assert torch.equal(b.old_logp[0], logp)  # the same forward: ratio exactly 1
    now = optimise.policy_logp(model, b, 0, 0.7)
    old, _ = optimise.fixed_logps(b, 0, now)
    assert mdpo.clip_fraction(now, old, b.adv, b.loss_mask, cfg.eps) == 0  # nothing clipped
    # ratio e^0.5 = 1.65 > 1.2 where A > 0, 0.61 < 0.8 where A < 0: every masked token is clipped
    b.old_logp = [logp - 0.5 * b.adv.sign()]
    old, _ = optimise.fixed_logps(b, 1, now)
    assert mdpo.clip_fraction(now, old, b.adv, b.loss_mask, cfg.eps) * n == n


def test_prompt_order_draws_every_prompt_once_per_epoch():
    n, seed = 7, 3
    drawn = [
        tasks.prompt_order(g, n, seed) for g in range(3 * n)
    ]  # three epochs, batches straddling the ends
    for e in range(3):
        assert sorted(drawn[e * n : (e + 1) * n]) == list(range(n))
    assert drawn[:n] != drawn[n : 2 * n]  # a fresh permutation each epoch
    # as the trainer draws: 2 ranks x 2 prompts per update, 5 updates = 20 prompts, epochs of 7
    got = [
        tasks.prompt_order(pos + rank * 2 + i, n, seed)
        for pos in range(0, 20, 4)
        for rank in range(2)
        for i in range(2)
    ]
    assert [got[:14].count(k) for k in range(n)] == [2] * n


def test_non_finite_loss_skips_the_update_and_logs_it(tmp_path, monkeypatch):
    real = mdpo.masked_diffusion_loss
    monkeypatch.setattr(mdpo, "masked_diffusion_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    train.main(
        [
            "--algo",
            "sft",
            "--task",
            "toy-arith",
            "--max-updates",
            "2",
            "--micro-batch",
            "4",
            "--n-train",
            "8",
            "--n-eval",
            "4",
            "--out",
            str(tmp_path),
        ]
    )
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()[1:]]
    assert [r.get("skipped") for r in rows] == [True, True]
    last = toy.ToyMDLM.from_pretrained(tmp_path / "last").state_dict()
    init = toy.ToyMDLM.from_pretrained(tmp_path / "init").state_dict()
    assert all(torch.equal(last[k], init[k]) for k in last)  # no update was applied


def test_first_update_has_zero_kl_and_nothing_clipped(tmp_path):
    """At the first update the policy is the reference (KL exactly 0) and, with one optimiser step
    per batch of rollouts (mu = 1, the paper's MDPO), the ratio of Eq. 5 is exactly 1: nothing may
    be clipped."""
    torch.manual_seed(0)
    toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32)).save_pretrained(tmp_path / "m")
    toy.ToyTokenizer().save_pretrained(tmp_path / "m")
    for beta in ("0.08", "0"):
        out = tmp_path / f"run{beta}"
        # a random model never answers right: reward the format (d1's 0.1) so that advantages are
        # not all 0
        train.main(
            [
                "--model",
                str(tmp_path / "m"),
                "--task",
                "toy-countdown",
                "--eval-every",
                "0",
                "--max-updates",
                "1",
                "--prompts-per-update",
                "2",
                "--group-size",
                "4",
                "--beta",
                beta,
                "--format-score",
                "0.1",
                "--n-train",
                "8",
                "--out",
                str(out),
            ]
        )
        row = json.loads((out / "log.jsonl").read_text().splitlines()[1])
        assert row["tokens"] > 0 and row["kl"] == 0.0 and row["clip_frac"] == 0.0, row
