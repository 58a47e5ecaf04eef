"""LLaDA's generate() (ML-GSAI/LLaDA, generate.py), transcribed as plainly as it is written there:
the independent reference that tests/test_sample.py compares sample.generate with (greedy LCR, token
for token) and that tools/bench.py times.

Low-confidence remasking, pure-Diff or semi-AR blocks, no classifier-free guidance, no attention
mask. Every step runs the full forward, takes the argmax over the whole vocabulary (at temperature >
0 of the logits with float64 Gumbel noise) and the softmax of every position, and keeps the per-step
counts of each row's block. The softmax is in the model's dtype (DEVIATIONS.md, sample.py item 1;
one version of generate.py takes it in float64): for a float32 model, as in the tests, float32.
"""

import torch
import torch.nn.functional as F


def add_gumbel_noise(logits, temperature):
    """LLaDA's Gumbel-max input: exp(logits) / (-log u)^temperature in float64, u ~ U(0, 1) from
    torch's global generator; its argmax is a draw from softmax(logits / temperature). Temperature
    0: the logits.
    """
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)  # (B, S, V)
    noise = torch.rand_like(logits, dtype=torch.float64)  # (B, S, V)
    return logits.exp() / (-torch.log(noise)) ** temperature


def get_num_transfer_tokens(block_mask_index, steps):
    """Tokens revealed at each of a block's steps, per row: its masked count split evenly, the
    remainder going to the first steps. (B, block) bool -> (B, steps) long."""
    mask_num = block_mask_index.sum(dim=1, keepdim=True)  # (B, 1)
    counts = torch.zeros(mask_num.size(0), steps, dtype=torch.long, device=block_mask_index.device)
    counts += mask_num // steps  # (B, steps)
    for j in range(mask_num.size(0)):
        counts[j, : int(mask_num[j] % steps)] += 1
    return counts


@torch.no_grad()
def llada_generate(model, prompt, *, steps, gen_length, block_length, temperature=0.0, mask_id):
    """Denoise gen_length tokens after prompt (B, P) in steps // n_blocks steps per block; returns
    x (B, P + L). Each step reveals, in every row, the masked positions of highest softmax
    probability of their predicted token, up to the end of the current block."""
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)  # (B, P+L)
    x[:, :P] = prompt
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for num_block in range(num_blocks):
        start, end = P + num_block * block_length, P + (num_block + 1) * block_length
        # tokens revealed at each of the block's steps, (B, T/n)
        num_transfer_tokens = get_num_transfer_tokens(x[:, start:end] == mask_id, steps_per_block)
        for i in range(steps_per_block):
            mask_index = x == mask_id  # (B, P+L)
            logits = model(x).logits  # (B, P+L, V)
            x0 = torch.argmax(add_gumbel_noise(logits, temperature), dim=-1)  # (B, P+L)
            p = F.softmax(logits, dim=-1)  # (B, P+L, V)
            x0_p = torch.gather(p, dim=-1, index=x0.unsqueeze(-1)).squeeze(-1)  # (B, P+L)
            x0_p[:, end:] = -torch.inf  # nothing after the current block
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -torch.inf)  # (B, P+L)
            for j in range(B):
                _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j, i]))
                x[j, select_index] = x0[j, select_index]
    return x
