"""Sampling the group of an RL update: G rollouts of each prompt with sample.generate on this rank,
in Section 3.4's mixture of block sizes; with their trajectories (MDPO, CJ-GRPO) or without (d1,
IGPO); and IGPO's second try of a group, with hints of the reference solution written into the
canvas.
"""
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import distributed
import models
import sample
import tasks


@dataclass
class Group:
    """G rollouts of each prompt, the G of a prompt in contiguous rows (N = prompts * G).

    prompt_ids (N, P) left-padded; attention_mask (N, P + L); completions (N, L); x_bar, x_pred
    (T, N, L) the recorded trajectory (None without record); examples: the N examples, one per
    row."""
    prompt_ids: torch.Tensor
    attention_mask: torch.Tensor
    completions: torch.Tensor
    x_bar: torch.Tensor | None
    x_pred: torch.Tensor | None
    examples: list


# What orders the remasking of a rollout at temperature > 0: the probability of the drawn token
# under the tempered distribution it was drawn from, as the MDPO authors' code (LLaDA orders by the
# untempered softmax: "model"). sample.CONFIDENCE lists both.
CONFIDENCE = "sampling"


def sample_group(policy, tokenizer, examples, cfg, mask_id, generator, update, record):
    """G rollouts of each example at cfg.temperature with CONFIDENCE, cfg.remasking, cfg.schedule
    and EOSER when cfg.eoser. Block sizes alternate over groups (Section 3.4's mixture of semi-AR
    and pure-Diff), shifted by the update index."""
    model = policy.module if isinstance(policy, DDP) else policy
    G, device = cfg.group_size, next(model.parameters()).device
    ids, attn = models.encode_prompts(tokenizer,
                                      tasks.prompt_texts(cfg.task, examples))  # (n, P) each
    ids, attn = (ids.repeat_interleave(G, 0).to(device),
                 attn.repeat_interleave(G, 0).to(device))  # (N, P)
    N, P, L = len(ids), ids.shape[1], cfg.gen_length
    sizes = cfg.block_lengths
    block_of_row = torch.tensor([sizes[(update + n // G) % len(sizes)] for n in range(N)])  # (N,)
    x = torch.empty(N, P + L, dtype=torch.long, device=device)  # (N, P+L)
    x_bar = (torch.empty(cfg.steps, N, L, dtype=torch.long, device=device)
             if record else None)  # (T, N, L)
    x_pred = torch.empty_like(x_bar) if record else None  # (T, N, L)
    # every rank runs the same sizes in the same order: FSDP's gathers are collectives
    for block in sizes:
        rows = (block_of_row == block).nonzero()[:, 0].to(device)
        if not len(rows):
            continue
        with distributed.autocast(cfg.precision, device):
            out = sample.generate(model, ids[rows], attention_mask=attn[rows], gen_length=L,
                                  block_length=block, steps=cfg.steps, remasking=cfg.remasking,
                                  schedule=cfg.schedule, temperature=cfg.temperature,
                                  confidence=CONFIDENCE, mask_id=mask_id, record=record,
                                  generator=generator, eos_id=tokenizer.eos_token_id,
                                  eoser_gamma_min=cfg.eoser_gamma_min if cfg.eoser else None)
        if record:
            x[rows], (x_bar[:, rows], x_pred[:, rows]) = out[0], (out[1].x_bar, out[1].x_pred)
        else:
            x[rows] = out
    full_attn = torch.cat([attn, attn.new_ones(N, L)], 1)  # (N, P+L)
    expanded = [ex for ex in examples for _ in range(G)]
    return Group(ids, full_attn, x[:, P:], x_bar, x_pred, expanded)


def sample_with_canvas(policy, group, rows, canvas, cfg, mask_id, generator, index):
    """IGPO's retry of the group's rows (G of them) from canvases (G, L) that hold hint tokens:
    generate fills the [MASK] positions and never touches the hints. The block size is the group's
    own (the index `sample_group` gave it). Returns the completions (G, L)."""
    model = policy.module if isinstance(policy, DDP) else policy
    device, P = group.prompt_ids.device, group.prompt_ids.shape[1]
    block = cfg.block_lengths[index % len(cfg.block_lengths)]
    with distributed.autocast(cfg.precision, device):
        x = sample.generate(model, group.prompt_ids[rows],
                            attention_mask=group.attention_mask[rows, :P],
                            gen_length=cfg.gen_length, block_length=block, steps=cfg.steps,
                            remasking=cfg.remasking, schedule=cfg.schedule,
                            temperature=cfg.temperature, confidence=CONFIDENCE,
                            canvas=canvas.to(device), mask_id=mask_id, generator=generator)
    return x[:, P:]  # (G, L)
