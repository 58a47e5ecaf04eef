"""The sampler's two optimisations (sample.py), each exact: what it saves and why it changes no bit.

1. The output layer on the rows a step needs (`split_output_layer`, `head_on_rows`): a denoising
   step needs the logits of its masked positions only, and for a narrow model with a large
   vocabulary the output layer over all B x S positions dominates the step.
2. Inverse-CDF sampling (`categorical`) instead of Gumbel noise over the whole vocabulary.

Neither is needed to follow Section 2.1: `sample.generate` reads the same without them
(tests/test_sample.py checks the greedy tokens against LLaDA's loop; tools/bench.py times both).
"""
import contextlib

import torch

import models

ROWS = 16  # fewest rows per output-layer matmul (`head_on_rows`)
# model_type of the models whose logits are exactly their output layer (a plain nn.Linear, the
# model's get_output_embeddings()) applied to that layer's input, with nothing after it: toy.py's,
# LLaDA's (unless its config scales the logits) and ModernBERT's. tests/test_sample.py and
# tests/test_llada.py check it. Any other model runs its output layer on every position.
ROW_HEAD_MODEL_TYPES = ("mdpo-toy", "llada", "modernbert")


# ------------------------------------------------------------------- the output layer on some rows
def split_output_layer(model):
    """The model's output layer (hidden -> V logits, an nn.Linear) when its model type is in
    ROW_HEAD_MODEL_TYPES and it can swap that layer (HF's get_ / set_output_embeddings), else None.
    A wrapper that changes the logits (no such methods), a model with shifted logits (models.logits
    moves them) or with scaled logits (LLaDA's scale_logits) runs in full."""
    config = getattr(model, "config", None)
    if (getattr(config, "model_type", None) not in ROW_HEAD_MODEL_TYPES
            or not hasattr(model, "set_output_embeddings")
            or getattr(config, "scale_logits", False) or models.uses_shifted_logits(model)):
        return None
    head = model.get_output_embeddings()
    return head if isinstance(head, torch.nn.Linear) else None


@contextlib.contextmanager
def output_layer_removed(model, head):
    """Inside the block the model's output layer is the identity, so its "logits" are the layer's
    input (B, S, D): the forward stops before the (B, S, V) product. HF's set_output_embeddings
    puts the layer back after."""
    model.set_output_embeddings(torch.nn.Identity())
    try:
        yield
    finally:
        model.set_output_embeddings(head)


def head_on_rows(head, hidden, rows):
    """head(hidden[rows]) -> (n, V), bit-identical to the same rows of head(hidden) over all rows.

    Exactness: a BLAS computes a row of a matmul with the same bits whatever the other rows, except
    for very few rows (with torch 2.13 on an x86 CPU, 1-3, 5-7 and 9-11 rows take other kernels). We
    pad the request to at least ROWS rows with copies of its first row and drop them after.
    """
    padded = torch.cat([rows, rows[:1].expand(max(ROWS - len(rows), 0))])  # (>= ROWS,)
    return head(hidden[padded])[: len(rows)]  # (n, V)


# ----------------------------------------------------------------------------- exact sampling
def categorical(q, generator=None, block=256):
    """One draw from each row of q (n, V) (nonnegative weights) by inverting its CDF at one float64
    uniform per row, in two levels: first a block of `block` tokens by the block masses, then a
    token in it.

    Saves: LLaDA draws Gumbel noise in float64 for every logit, which on CPU costs more than the
    output layer itself. Exact: the same distribution as Gumbel-max up to float64 resolution (a mass
    below ~1e-16 of the row's total is never drawn) and the float32 block sums (relative error
    ~1e-7); a zero weight is never drawn. Only (n, V / block) and (n, block) tensors are float64.
    Returns (n,) long.
    """
    n, V = q.shape
    main = V // block * block
    masses = q[:, :main].reshape(n, -1, block).sum(-1)  # (n, V // block)
    if main < V:
        masses = torch.cat([masses, q[:, main:].sum(-1, keepdim=True)], 1)  # (n, blocks)
    masses = masses.double()
    cum = masses.cumsum(-1)  # (n, blocks)
    total = cum[:, -1:]  # (n, 1)
    u = torch.rand(n, 1, generator=generator, dtype=torch.float64,
                   device=q.device) * total  # (n, 1)
    u = below(u, total)
    b = torch.searchsorted(cum, u, right=True)  # (n, 1): the block with cum[b - 1] <= u < cum[b]
    idx = b * block + torch.arange(block, device=q.device)  # (n, block) the tokens of that block
    inner = (q.gather(1, idx.clamp(max=V - 1)).double()
             .masked_fill(idx >= V, 0).cumsum(-1))  # (n, block)
    mass = masses.gather(1, b)  # (n, 1), > 0 since cum[b] > cum[b - 1]
    # where u falls inside the block, rescaled onto the float64 sums of its tokens
    v = below(((u - cum.gather(1, b) + mass) / mass).clamp(0, 1) * inner[:, -1:],
              inner[:, -1:])  # (n, 1)
    # first token whose cumsum > v
    return idx.gather(1, torch.searchsorted(inner, v, right=True))[:, 0]


def below(u, total):
    """u clamped strictly below total (float rounding can reach it; searchsorted would then
    overrun)."""
    return torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
