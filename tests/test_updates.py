"""The CJ-GRPO and IGPO update functions (updates.py) on a tiny toy model: what they train on, the
first update's ratio and KL, and when IGPO retries a group with hints.
pytest -q tests/test_updates.py"""

import copy
import dataclasses

import torch

import config
import grpo
import optimise
import rewards
import rollouts
import toy
import updates

CFG = config.Config(
    task="toy-arith",
    group_size=4,
    gen_length=16,
    block_lengths=(16,),
    steps=8,
    temperature=1.0,
    micro_batch=8,
    inner_steps=1,
    beta=0.05,
)


def tiny():
    torch.manual_seed(0)
    return toy.ToyMDLM(toy.ToyConfig(n_layers=1, d_model=32))


def capture(monkeypatch):
    """Record the micro-batches an update trains on: what every optimise.prepare call returns (the
    real one still runs)."""
    seen, real = [], optimise.prepare

    def spy(policy, reference, batches, cfg, temperature, has_signal):
        batches = real(policy, reference, batches, cfg, temperature, has_signal)
        seen.append(batches)
        return batches

    monkeypatch.setattr(optimise, "prepare", spy)
    return seen


def test_cj_grpo_trains_every_step_on_the_tokens_it_revealed_and_starts_at_ratio_one(
    tok, monkeypatch
):
    seen = capture(monkeypatch)
    calls = iter(range(10**6))
    monkeypatch.setattr(
        rewards, "reward", lambda task, text, ex, fs=0.0: float(next(calls) % 2)
    )  # mixed groups
    policy = tiny()
    reference = copy.deepcopy(policy).requires_grad_(False)
    cfg = dataclasses.replace(CFG, algo="cj-grpo", eps=0.5)
    examples = toy.make_task("toy-arith", 2, 0, "train")
    stats = updates.cj_grpo_update(
        policy,
        reference,
        torch.optim.SGD(policy.parameters(), lr=0.1),
        examples,
        cfg,
        tokenizer=tok,
        mask_id=tok.mask_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    batches = seen[0]
    N, L, T = 8, cfg.gen_length, cfg.steps
    # LCR reveals every position exactly once, 2 a step: the rows' loss masks cover each token once
    assert sum(b.loss_mask.sum().item() for b in batches) == N * L
    assert sum(len(b.targets) for b in batches) == N * T  # every step of every rollout is a row
    assert all((b.loss_mask.sum(1) == L // T).all() for b in batches)
    # the revealed tokens are [MASK] in the row's input and are scored on the token the step wrote
    # there
    for b in batches:
        x_bar = b.inputs[0][:, b.prompt_len :]
        assert (x_bar[b.loss_mask] == tok.mask_token_id).all() and (
            b.targets[b.loss_mask] != tok.mask_token_id
        ).all()
        assert torch.equal(
            b.denom, torch.full_like(b.denom, T * N * (L // T))
        )  # S * n_s, n_s = 8 rollouts x 2
    # at the first update the policy is the rollout policy and the reference: ratio 1, KL 0, nothing
    # clipped
    assert stats["kl"] == 0.0 and stats["clip_frac"] == 0.0 and stats["tokens"] == N * L


def test_igpo_retries_only_all_wrong_groups_with_hints_in_the_completion(tok, monkeypatch):
    """Group 0 has a correct rollout, group 1 none: only group 1 is sampled again, from canvases
    whose fixed tokens are its reference's; two of its retries are correct and replace its first two
    rows.
    """
    seen = capture(monkeypatch)
    examples = toy.make_task("toy-arith", 2, 0, "train")
    canvases, real_retry = [], rollouts.sample_with_canvas

    def retry(policy, group, rows, canvas, cfg, mask_id, generator, index):
        canvases.append((rows, canvas.clone()))
        return real_retry(policy, group, rows, canvas, cfg, mask_id, generator, index)

    monkeypatch.setattr(rollouts, "sample_with_canvas", retry)
    verdicts = iter(
        [1, 0, 0, 0] + [0, 0, 0, 0] + [1, 0, 1, 0]
    )  # group 0, group 1, group 1's retries

    monkeypatch.setattr(rewards, "reward", lambda task, text, ex, fs=0.0: float(next(verdicts)))
    policy = tiny()
    cfg = dataclasses.replace(
        CFG, algo="igpo", eps=0.2, p_mask=0.0, inner_steps=2, beta=0.0, igpo_entropy_keep=0.5
    )
    stats = updates.igpo_update(
        policy,
        None,
        torch.optim.SGD(policy.parameters(), lr=0.1),
        examples,
        cfg,
        tokenizer=tok,
        mask_id=tok.mask_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(canvases) == 1 and canvases[0][0] == slice(
        4, 8
    )  # only the all-wrong group, all of it
    canvas = canvases[0][1]  # (G, L): the completion part only, the prompt is passed apart
    assert canvas.shape == (4, cfg.gen_length)
    reference = tok.encode(examples[1]["completion"])
    hints = canvas != tok.mask_token_id
    assert hints.any() and all(
        set(canvas[j][hints[j]].tolist()) <= set(reference) for j in range(4)
    )
    assert (
        stats["all_wrong_before_hints"] == 0.5
        and stats["replaced"] == 2.0
        and stats["all_wrong"] == 0.0
    )
    batches = seen[0]
    assert sum(len(b.targets) for b in batches) == 8  # the group size is kept
    # retries 0 and 2 were correct: they are now rows 4 and 5, holding their hints where their
    # canvas had them
    completions = torch.cat([b.targets for b in batches])  # (8, L)
    assert torch.equal(completions[4][hints[0]], canvas[0][hints[0]])
    assert torch.equal(completions[5][hints[2]], canvas[2][hints[2]])
    # the entropy filter keeps half of the hint tokens (max(1, floor(0.5 n))) and every generated
    # one
    mask = torch.cat([b.loss_mask for b in batches])  # (8, L)
    assert mask[:4].all() and mask[6:].all() and not mask[4:6].all()


def test_igpo_leaves_groups_with_a_correct_rollout_alone(tok, monkeypatch):
    calls = []
    monkeypatch.setattr(rollouts, "sample_with_canvas", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(rewards, "reward", lambda task, text, ex, fs=0.0: 1.0)
    policy = tiny()
    cfg = dataclasses.replace(CFG, algo="igpo", eps=0.2, p_mask=0.0, beta=0.0)
    stats = updates.igpo_update(
        policy,
        None,
        torch.optim.SGD(policy.parameters(), lr=0.1),
        toy.make_task("toy-arith", 2, 0, "train"),
        cfg,
        tokenizer=tok,
        mask_id=tok.mask_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    assert calls == [] and stats["replaced"] == 0.0 and stats["all_wrong_before_hints"] == 0.0


def test_igpo_hints_hold_no_special_token_of_the_tokenizer(tok, monkeypatch):
    """The reference solution is tokenised without special tokens: a tokenizer that adds a BOS by
    default must not put it in the hint."""
    class AddsBos(toy.ToyTokenizer):
        def encode(self, text, add_special_tokens=True):
            return ([self.eos_token_id] if add_special_tokens else []) + super().encode(text)

    bos_adding, traces, real_canvas = AddsBos(), [], grpo.hint_canvas

    def canvas(reference_ids, *args, **kwargs):
        traces.append(list(reference_ids))
        return real_canvas(reference_ids, *args, **kwargs)

    monkeypatch.setattr(grpo, "hint_canvas", canvas)
    monkeypatch.setattr(rewards, "reward", lambda task, text, ex, fs=0.0: 0.0)  # all wrong: retry
    policy = tiny()
    cfg = dataclasses.replace(CFG, algo="igpo", p_mask=0.0, beta=0.0)
    updates.igpo_update(policy, None, torch.optim.SGD(policy.parameters(), lr=0.1),
                        toy.make_task("toy-arith", 1, 0, "train"), cfg, tokenizer=bos_adding,
                        mask_id=tok.mask_token_id, generator=torch.Generator().manual_seed(0))
    assert traces and all(bos_adding.eos_token_id not in t for t in traces)
