"""RL learns on the real toy model (ToyMDLM, not a lookup table), and what it learns carries over to
prompts it never trained on.

The default test-bed (toy-digits) needs ~6 minutes of SFT on 2 cores, too long for a test, so this
test builds the same design at test scale: a task the model learns in seconds (copy a 3-digit
number into a box), SFT demonstrations that add 1 to the boxed number for half of the prompts (a
systematic error, drawn once per prompt), a reward that checks the true number. The base copies
but is unsure whether to add the 1; RL must learn not to, on every prompt.

Measured on a 2-core AMD EPYC (seed 0, ~18 s for both tests): held-out greedy accuracy 43% -> 81%
after 24 MDPO updates of the whole model, 43% -> 91% with rank-8 LoRA adapters (lr 3e-3; 90.5% at
1e-3). An earlier version of this test (the same design) measured that the run with the advantages
negated fell to 12%, and with a constant advantage stayed at 45%: a sign or advantage bug does not
reach the margins asserted below.
"""

import copy
import random
import zlib

import pytest
import torch

import config
import eval as evaluation
import lora
import toy
import updates

pytestmark = pytest.mark.slow
LORA_LR = 3e-3  # adapters starting at 0 need a larger step than the full model's 1e-4


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


CFG = config.Config(task="toy-digits", gen_length=12, block_lengths=(12,), steps=6, micro_batch=64,
                    group_size=8, top_c=6, beta=0.0, temperature=0.7)  # pure-Diff, 12 tokens


@pytest.fixture(scope="module")
def noisy_base():
    """(SFT base on the noisy demonstrations, its held-out accuracy, held-out and training
    problems), shared by the tests below: each trains a copy."""
    tok = toy.ToyTokenizer()
    torch.manual_seed(0)
    numbers = list(range(1000))
    random.Random(0).shuffle(numbers)
    held_out = [copy_example(n) for n in numbers[:200]]
    train = [copy_example(n) for n in numbers[200:]]
    model = toy.ToyMDLM(toy.ToyConfig(d_model=64))
    generator, draw = torch.Generator().manual_seed(0), random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(300):  # Eq. 1 on the noisy demonstrations
        updates.sft_update(model, optimizer, draw.sample(train, 64), CFG, tokenizer=tok,
                           mask_id=tok.mask_token_id, generator=generator)
    return model, held_out_accuracy(model, tok, held_out, CFG), held_out, train


def mdpo(model, trainable, lr, tok, train):
    """24 MDPO updates of 8 prompts x G = 8 rollouts (no KL term: no reference needed). Returns the
    rollout reward of each update."""
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    generator, draw, rewards = torch.Generator().manual_seed(0), random.Random(1), []
    for update in range(24):
        stats = updates.mdpo_update(model, None, optimizer, draw.sample(train, 8), CFG,
                                    tokenizer=tok, mask_id=tok.mask_token_id,
                                    generator=generator, update=update)
        rewards.append(stats["reward"])
    return rewards


def test_mdpo_lifts_held_out_accuracy_of_a_noisy_sft_base(tok, noisy_base):
    base_model, base, held_out, train = noisy_base
    model = copy.deepcopy(base_model)
    rewards = mdpo(model, model.parameters(), 1e-4, tok, train)
    after = held_out_accuracy(model, tok, held_out, CFG)
    assert 0.2 <= base <= 0.8, f"the base should be unsure: {base:.3f}"
    assert after >= base + 0.2, f"held-out accuracy {base:.3f} -> {after:.3f}"
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first, f"rollout reward {first:.3f} -> {last:.3f}"


def test_mdpo_with_lora_lifts_held_out_accuracy_too(tok, noisy_base):
    """The same run with rank-8 adapters on a frozen base (lora.py): only the adapters learn."""
    base_model, base, held_out, train = noisy_base
    model = lora.add_adapter(copy.deepcopy(base_model), 8, 16.0, 0.0)
    mdpo(model, [p for p in model.parameters() if p.requires_grad], LORA_LR, tok, train)
    after = held_out_accuracy(model, tok, held_out, CFG)
    assert after >= base + 0.15, f"held-out accuracy {base:.3f} -> {after:.3f} with LoRA"
