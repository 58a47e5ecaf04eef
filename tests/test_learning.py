"""RL learns on the real toy model (ToyMDLM, not a lookup table), and what it learns carries over to
prompts it never trained on.

The default test-bed (toy-digits) needs ~6 minutes of SFT on 2 cores, too long for a test, so this
test builds the same design at test scale: a task the model learns in seconds (copy a 3-digit
number into a box), SFT demonstrations that add 1 to the boxed number for half of the prompts (a
systematic error, drawn once per prompt), a reward that checks the true number. The base copies
but is unsure whether to add the 1; RL must learn not to, on every prompt.

Measured on a 2-core AMD EPYC (seed 0, ~40 s): held-out greedy accuracy 43% -> 80% after 24 MDPO
updates (47.5% -> 82% with one torch thread). With one thread, the same run with the advantages
negated fell to 12%, and with a constant advantage stayed at 45%: a sign or advantage bug does not
reach the margin asserted below.
"""

import random
import zlib

import pytest
import torch

import config
import eval as evaluation
import toy
import updates

pytestmark = pytest.mark.slow


def copy_example(n):
    """'472=?' -> '\\boxed{472}'; for half of the prompts the demonstration says 473."""
    prompt = f"{n:03d}=?"
    noisy = random.Random(zlib.crc32(f"copy-noise-{prompt}".encode())).random() < 0.5
    shown = n + 1 if noisy else n
    return {"prompt": prompt, "answer": str(n), "completion": f"\\boxed{{{shown}}}"}


def held_out_accuracy(model, tok, examples, cfg):
    rows = evaluation.evaluate(model, tok, examples, "toy-digits", gen_length=cfg.gen_length,
                               block_length=cfg.gen_length, steps=cfg.steps,
                               mask_id=tok.mask_token_id, batch_size=len(examples),
                               progress=False)
    return sum(r["correct"] for r in rows) / len(rows)


def test_mdpo_lifts_held_out_accuracy_of_a_noisy_sft_base(tok):
    torch.manual_seed(0)
    numbers = list(range(1000))
    random.Random(0).shuffle(numbers)
    held_out = [copy_example(n) for n in numbers[:200]]
    train = [copy_example(n) for n in numbers[200:]]
    # pure-Diff over 12 tokens in 6 steps; no KL term (no reference model needed)
    cfg = config.Config(task="toy-digits", gen_length=12, block_lengths=(12,), steps=6,
                        micro_batch=64, group_size=8, top_c=6, beta=0.0, temperature=0.7)
    model = toy.ToyMDLM(toy.ToyConfig(d_model=64))
    generator, draw = torch.Generator().manual_seed(0), random.Random(0)
    kwargs = {"tokenizer": tok, "mask_id": tok.mask_token_id, "generator": generator}

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(300):  # Eq. 1 on the noisy demonstrations
        updates.sft_update(model, optimizer, draw.sample(train, 64), cfg, **kwargs)
    base = held_out_accuracy(model, tok, held_out, cfg)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    rewards = []
    for update in range(24):  # 8 prompts x G = 8 rollouts per update
        stats = updates.mdpo_update(model, None, optimizer, draw.sample(train, 8), cfg,
                                    update=update, **kwargs)
        rewards.append(stats["reward"])
    after = held_out_accuracy(model, tok, held_out, cfg)

    assert 0.2 <= base <= 0.8, f"the base should be unsure: {base:.3f}"
    assert after >= base + 0.2, f"held-out accuracy {base:.3f} -> {after:.3f}"
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first, f"rollout reward {first:.3f} -> {last:.3f}"
