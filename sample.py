"""The denoising loop of a masked diffusion LM (Section 2.1 inference, Section 3.1 pure-Diff / semi-AR).

`generate` starts from an all-[MASK] completion and, for T steps, (1) predicts the masked tokens
with one model forward, x_{t-1} ~ p_theta(. | x_bar_t), and (2) remasks part of the prediction with
remask.py (Eq. 7 with the scores of Eq. 8, 9 or 10). With `record=True` it also returns the
`Trajectory` that MDPO trains on: the state fed to the model and the full prediction at every step.

Paper -> code
  Section 2.1, step 1: x_{t-1} ~ p_theta(. | x_bar_t)   -> `predict` (+ `nucleus`, `row_logits`)
  Section 2.1, step 2: x_bar_{t-1} = gamma(x_{t-1}, t)  -> remask.py, Eq. 7-10 and 13, called from `generate`
  Eq. 3: the trajectory {x_bar_t, x_{t-1}, log p_theta}  -> `Trajectory`

pure-Diff is block_length == gen_length; semi-AR is a smaller block that divides gen_length, the
blocks being denoised left to right with steps // n_blocks steps each (as in LLaDA's generate.py).

Where the code differs from LLaDA's generate.py (greedy LCR is token-identical to it, ties included,
on CPU: see remask.py, item 1) and from the official MDPO code (src/mdlm_generation_utils.py):
1. Confidences are a float32 softmax even for a bf16 model (LLaDA takes the softmax in the model dtype).
2. A step predicts only the positions it uses: the masked ones up to the end of the current block, and
   with record=True every masked position, whose predictions `x_pred` keeps because that full sequence
   is what an intermediate reward scores. LLaDA predicts every position and discards the rest. When the
   model ends in a plain Linear output layer, that layer runs on those rows only, a few at a time
   (`row_logits`), which gives the same logits as the full forward (the parity tests check it on CPU).
3. Sampling inverts the cumulative distribution of q at one float64 uniform per row (`categorical`), on
   the needed rows only: the same distribution as LLaDA's Gumbel-max, to the same float64 resolution,
   without its float64 noise tensor over the full vocabulary (a random number per logit costs more than
   the output layer that makes the logits, on CPU).
4. The [MASK] token itself is never predicted (its logit is set to -inf): a revealed [MASK] would be
   indistinguishable from a masked position. A trained model never predicts it, so nothing else changes.
5. Confidence at temperature > 0 (or top_p < 1): LLaDA orders tokens by softmax(logits)
   (confidence="model"), the official code by the probability of the token under the distribution it
   samples from, softmax(logits / temperature) renormalised over the top-p nucleus ("sampling").
   The default is "sampling" for rcr-latest and "model" otherwise; at temperature 0 without top-p they agree.
6. top_p < 1 keeps the official code's nucleus (`nucleus`), which it applies even at temperature 0 (its
   evaluation uses 0.95): the argmax is unchanged but the confidences are renormalised over the nucleus.
7. rcr-latest is the official RCR: latest confidence (remask.py, item 3), "sampling" confidence, and
   the official token counts (schedule "linear-official"; pass schedule="linear" for LLaDA's counts).
   The official RCR gives the prompt a confidence of 1.0 instead of excluding it, so when generated
   confidences reach exactly 1.0 it can remask prompt tokens and then rewrite them with the model's
   prediction (a bug). We never touch the prompt.
8. A [MASK] inside the prompt is left alone here; LLaDA's generate.py fills it like a generated one.

Command line (a toy checkpoint or any HF masked diffusion LM):
    python sample.py --model out/toy-countdown-base/last --prompt "nums 3 5 7 -> 22" --remasking rcr --show
"""
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

from remask import (COUNTS, low_confidence_scores, random_scores, remask, running_confidence_scores,
                    tokens_per_step, unmask, update_latest, update_running_max)

REMASKING = ("lcr", "rcr", "rcr-latest", "random")
CONFIDENCE = ("model", "sampling")
ROWS = 16  # fewest rows per output-layer matmul (shorter chunks are padded: see `row_logits`)
CHUNK_ELEMENTS = 2 ** 22  # logits computed at once, about (rows, V) <= 16 MiB in float32, at least ROWS rows


@dataclass
class Trajectory:
    """One batch of rollouts, generation region only, steps in rollout order s = 0..T-1 (noisy -> clean).

    x_bar (T, B, L): state fed to the model at step s.  x_pred (T, B, L): its full prediction x_{t-1}.
    conf (T, B, L): the confidence that ordered the remasking (see `generate`; 1 where x_bar was revealed).
    logp (T, B, L): log-probability of the token under the distribution it was drawn from (0 where revealed).
    prompt (B, P); attention_mask (B, P + L) or None.
    """
    x_bar: torch.Tensor
    x_pred: torch.Tensor
    conf: torch.Tensor
    logp: torch.Tensor
    prompt: torch.Tensor
    attention_mask: torch.Tensor | None


def nucleus(logits, top_p):
    """Top-p filter as the official code's top_p_logits: sort by probability, keep the tokens up to and
    including the first whose cumulative probability exceeds top_p, set the others to -inf. (n, V) -> (n, V)."""
    sorted_logits, order = logits.sort(-1, descending=True)  # (n, V) each
    over = F.softmax(sorted_logits, -1).cumsum(-1) > top_p  # (n, V)
    drop = torch.cat([torch.zeros_like(over[..., :1]), over[..., :-1]], -1)  # (n, V) shifted: keep the first over
    return logits.masked_fill(torch.zeros_like(drop).scatter_(-1, order, drop), -torch.inf)


def categorical(q, generator=None, block=256):
    """One draw from each row of q (n, V), nonnegative weights, by inverting the cumulative distribution at one
    float64 uniform per row, in two levels: a block of `block` tokens by the block masses, then a token in it.

    Exact up to float64 resolution, like LLaDA's float64 Gumbel-max (a mass below ~1e-16 of the row's total is
    never drawn), and up to the float32 block sums (relative error ~1e-7). A zero weight is never drawn.
    Only (n, V / block) and (n, block) tensors are float64. Returns (n,) long.
    """
    n, V = q.shape
    main = V // block * block
    masses = q[:, :main].reshape(n, -1, block).sum(-1)  # (n, V // block)
    if main < V:
        masses = torch.cat([masses, q[:, main:].sum(-1, keepdim=True)], 1)  # (n, blocks)
    masses = masses.double()
    cum = masses.cumsum(-1)  # (n, blocks)
    total = cum[:, -1:]  # (n, 1)
    u = torch.rand(n, 1, generator=generator, dtype=torch.float64, device=q.device) * total  # (n, 1)
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # strictly below the total
    b = torch.searchsorted(cum, u, right=True)  # (n, 1) the block holding u: cum[b - 1] <= u < cum[b]
    idx = b * block + torch.arange(block, device=q.device)  # (n, block)
    inner = q.gather(1, idx.clamp(max=V - 1)).double().masked_fill(idx >= V, 0).cumsum(-1)  # (n, block)
    # where u falls in the block, rescaled onto the float64 sums inside it and kept strictly below their total
    mass = masses.gather(1, b)  # (n, 1), > 0 since cum[b] > cum[b - 1]
    v = ((u - cum.gather(1, b) + mass) / mass).clamp(0, 1) * inner[:, -1:]  # (n, 1)
    v = torch.minimum(v, torch.nextafter(inner[:, -1:], torch.zeros_like(v)))
    return idx.gather(1, torch.searchsorted(inner, v, right=True))[:, 0]  # first token whose cumsum exceeds v


def predict(logits, temperature, mask_id, generator=None, top_p=1.0, confidence="model"):
    """Draw x_{t-1} from q = softmax(nucleus(logits / temperature)): greedy at temperature 0, where q uses
    temperature 1; [MASK] is never drawn.

    logits (..., V) -> tokens (...), conf (...), logp (...) with logp = log q(token), the distribution
    drawn from, and conf = q(token) for confidence="sampling" or softmax(logits)(token) for "model" (LLaDA).
    """
    return predict_(logits.float().clone(), temperature, mask_id, generator, top_p, confidence)


def predict_(logits, temperature, mask_id, generator=None, top_p=1.0, confidence="model"):
    """`predict` that overwrites logits (..., V), which must be float32: it saves a copy of the largest tensor."""
    z = logits.index_fill_(-1, torch.tensor([mask_id], device=logits.device), -torch.inf)  # (..., V)
    p = F.softmax(z, -1) if confidence == "model" and (temperature > 0 or top_p < 1) else None  # (..., V)
    s = z.div_(temperature) if temperature > 0 else z  # (..., V)
    if top_p < 1:
        s = nucleus(s, top_p)
    q = F.softmax(s, -1)  # (..., V)
    if temperature > 0:
        tokens = categorical(q.reshape(-1, q.shape[-1]), generator).view(q.shape[:-1])  # (...)
    else:
        tokens = s.argmax(-1)  # (...)
    q_tok = q.gather(-1, tokens[..., None])[..., 0]  # (...)
    conf = q_tok if p is None else p.gather(-1, tokens[..., None])[..., 0]  # (...)
    return tokens, conf, q_tok.log()


def model_logits(model, x, attention_mask, prompt_len, cfg_scale, mask_id):
    """One forward. With cfg_scale > 0, classifier-free guidance as in LLaDA: a second, unconditional
    copy has its prompt masked, and logits = u + (cfg_scale + 1) * (c - u)."""
    if cfg_scale <= 0:
        return model(x, attention_mask=attention_mask).logits  # (B, P+L, V)
    x_uncond = x.clone()
    x_uncond[:, :prompt_len] = mask_id
    both_mask = None if attention_mask is None else attention_mask.repeat(2, 1)
    cond, uncond = model(torch.cat([x, x_uncond]), attention_mask=both_mask).logits.chunk(2)  # (B, P+L, V) each
    return uncond + (cfg_scale + 1) * (cond - uncond)


def output_layer(model):
    """The model's last layer, hidden -> V logits, if it is a plain nn.Linear (HF get_output_embeddings), else None."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, torch.nn.Linear) else None


def hidden_states(model, head, x, attention_mask):
    """One forward that stops at `head`: returns its input (B, S, H) at every position, or None if the
    model's logits are not head(hidden) exactly (it scales or casts them after the layer, say).

    A forward pre-hook passes only the first position on to `head`, so the model computes logits there
    alone, and comparing them with our own head(h) there checks that nothing happens after the layer.
    """
    seen = []

    def first_position_only(module, args):
        seen.append(args[0])
        return (args[0][:, :1],)

    handle = head.register_forward_pre_hook(first_position_only)
    try:
        logits = model(x, attention_mask=attention_mask).logits  # (B, 1, V)
    except RuntimeError:  # the model needs logits for every position (it reshapes them, say)
        return None
    finally:
        handle.remove()
    if len(seen) != 1 or seen[0].shape[:-1] != x.shape:
        return None
    return seen[0] if torch.equal(logits, head(seen[0][:, :1]).to(logits.dtype)) else None


def row_logits(model, head, x, attention_mask, prompt_len, cfg_scale, mask_id):
    """One forward on x (B, S); returns (logits_at, chunk, head): logits_at(rows) gives the logits (n, V)
    at the flat positions rows (n,) of x, n <= chunk, and head is None when the model turned out not to allow
    computing only those (then logits_at indexes the full logits).

    With an output layer `head`, the forward stops before it and logits_at applies it to the requested rows,
    padded to at least ROWS: a BLAS gives a row the same bits in a matmul of many rows as in the full one,
    but not always in one of a handful of rows (with torch 2.13 on an x86 CPU, 1-3, 5-7 and 9-11 rows differ).
    """
    both, both_mask = x, attention_mask
    if cfg_scale > 0:
        x_uncond = x.clone()
        x_uncond[:, :prompt_len] = mask_id
        both = torch.cat([x, x_uncond])  # (2B, S)
        both_mask = None if attention_mask is None else attention_mask.repeat(2, 1)
    h = None if head is None else hidden_states(model, head, both, both_mask)  # (B or 2B, S, H)
    if h is None:
        full = model_logits(model, x, attention_mask, prompt_len, cfg_scale, mask_id).flatten(0, 1)  # (B*S, V)
        return (lambda rows: full[rows]), max(ROWS, CHUNK_ELEMENTS // full.shape[-1]), None
    h, n_cond = h.flatten(0, 1), x.numel()  # (B*S or 2B*S, H)

    def logits_at(rows):
        padded = torch.cat([rows, rows[:1].expand(max(ROWS - len(rows), 0))])  # (>= ROWS,)
        cond = head(h[padded])  # (>= ROWS, V)
        if cfg_scale > 0:
            uncond = head(h[padded + n_cond])  # (>= ROWS, V)
            cond = uncond + (cfg_scale + 1) * (cond - uncond)
        return cond[: len(rows)]
    return logits_at, max(ROWS, CHUNK_ELEMENTS // head.out_features), head


def predict_rows(logits_at, chunk_rows, x, need, temperature, top_p, confidence, mask_id, generator):
    """x_{t-1} at the positions need (B, S) bool, chunk_rows at a time: x_pred (B, S) (x elsewhere),
    conf (B, S) (1 elsewhere) and logp (B, S) (0 elsewhere), as `predict` gives them."""
    rows = need.flatten().nonzero()[:, 0]  # (n,) flat positions
    x_pred, conf = x.flatten().clone(), torch.ones(x.numel(), device=x.device)  # (B*S,) each
    logp = torch.zeros(x.numel(), device=x.device)  # (B*S,)
    n_chunks = -(-len(rows) // chunk_rows)  # chunks of equal size, at most chunk_rows each
    for chunk in rows.tensor_split(n_chunks) if n_chunks else ():
        logits = logits_at(chunk).float()  # (<= chunk_rows, V), a fresh tensor we may overwrite
        x_pred[chunk], conf[chunk], logp[chunk] = predict_(logits, temperature, mask_id, generator, top_p, confidence)
    return x_pred.view_as(x), conf.view_as(x), logp.view_as(x)


@torch.no_grad()
def generate(model, prompt_ids, *, attention_mask=None, gen_length=128, block_length=128, steps=64,
             remasking="lcr", schedule=None, temperature=0.0, top_p=1.0, confidence=None, cfg_scale=0.0,
             mask_id, record=False, generator=None):
    """Denoise gen_length tokens after prompt_ids (B, P), left-padded when attention_mask (B, P) is given.

    schedule: how many tokens each step reveals (remask.COUNTS); None = "linear-official" for rcr-latest,
    else "linear" (LLaDA). temperature 0 is greedy; top_p < 1 samples from the nucleus (official code).
    confidence: "model" (LLaDA) or "sampling" (official code), see item 5 above; None = "sampling" for
    rcr-latest, else "model". Returns x (B, P + gen_length), and the Trajectory as well when record=True.
    """
    official = remasking == "rcr-latest"
    schedule = schedule or ("linear-official" if official else "linear")
    confidence = confidence or ("sampling" if official else "model")
    for name, value, allowed in (("remasking", remasking, REMASKING), ("schedule", schedule, COUNTS),
                                 ("confidence", confidence, CONFIDENCE)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if gen_length % block_length:
        raise ValueError(f"block_length {block_length} must divide gen_length {gen_length}")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps {steps} must be a multiple of the number of blocks {n_blocks}")
    B, P, L, dev = *prompt_ids.shape, gen_length, prompt_ids.device
    x = torch.cat([prompt_ids, torch.full((B, L), mask_id, dtype=torch.long, device=dev)], 1)  # (B, S = P+L)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(B, L, dtype=attention_mask.dtype, device=dev)], 1)
    k = tokens_per_step(block_length, steps // n_blocks, schedule).tolist()  # tokens revealed per step
    pos = torch.arange(P + L, device=dev)  # (S,)
    generated = (pos >= P).expand(B, P + L)  # (B, S)
    # We work on full rows (prompt + generation) because LLaDA's and the official top-k do: see remask.py.
    running = torch.zeros(B, P + L, device=dev)  # (B, S) RCR running confidence
    update = update_latest if official else update_running_max
    head, rec = output_layer(model), []
    for b in range(n_blocks):
        in_reach = generated & (pos < P + (b + 1) * block_length)  # (B, S) generated, up to this block's end
        for i in range(len(k)):
            masked = (x == mask_id) & generated  # (B, S)
            logits_at, chunk_rows, head = row_logits(model, head, x, attention_mask, P, cfg_scale, mask_id)
            x_pred, conf, logp = predict_rows(logits_at, chunk_rows, x, masked if record else masked & in_reach,
                                              temperature, top_p, confidence, mask_id, generator)  # (B, S) each
            if remasking in ("rcr", "rcr-latest"):  # reveal everything in reach, remask what is still due
                running = update(running, conf, masked & in_reach)
                x_next = remask(x, x_pred, running_confidence_scores(running), in_reach, sum(k[i + 1:]), mask_id)
            else:
                m = low_confidence_scores(conf) if remasking == "lcr" else random_scores(conf, generator)
                x_next = unmask(x, x_pred, m, masked & in_reach, k[i], mask_id)
            if record:
                rec.append((x[:, P:], x_pred[:, P:], conf[:, P:], logp[:, P:]))
            x = x_next
    if not record:
        return x
    x_bars, x_preds, confs, logps = (torch.stack(v) for v in zip(*rec))  # (T, B, L) each
    return x, Trajectory(x_bars, x_preds, confs, logps, prompt_ids, attention_mask)


def resolve_mask_id(tokenizer, model, mask_id=None):
    """The [MASK] id: the flag if given, else the tokenizer's, else the model config's."""
    for candidate in (mask_id, getattr(tokenizer, "mask_token_id", None), getattr(model.config, "mask_token_id", None)):
        if candidate is not None:
            return int(candidate)
    raise ValueError("cannot tell the [MASK] token id of this model: pass --mask-id "
                     "(LLaDA-8B-Instruct uses 126336)")


def check_model_path(name_or_path, mask_id=None):
    """Fail at once, naming the path, for a --model that cannot load: a local path that does not exist, or a
    directory that holds no model (naming the checkpoints below it); and for a --mask-id outside its vocabulary.
    A name whose first part is not a local directory is taken for a hub id ("GSAI-ML/LLaDA-8B-Instruct") and
    left to transformers."""
    path = Path(name_or_path)
    if path.is_dir():
        if (path / "config.json").exists():
            vocab = json.loads((path / "config.json").read_text()).get("vocab_size")
            if mask_id is not None and vocab is not None and not 0 <= mask_id < vocab:
                raise ValueError(f"--mask-id {mask_id}: outside the vocabulary of {name_or_path} (0..{vocab - 1})")
            return
        below = sorted(str(c.parent) for c in path.glob("*/config.json")) + sorted(
            str(c.parent) for c in path.glob("*/*/config.json"))
        hint = f"; checkpoints below it: {', '.join(below[:4])}" if below else ""
        raise ValueError(f"--model {name_or_path}: not a model directory (no config.json){hint}")
    looks_local = name_or_path.startswith((".", "/", "~")) or path.parts[0] != name_or_path and Path(path.parts[0]).is_dir()
    if looks_local or len(path.parts) > 2 or path.exists():
        raise ValueError(f"--model {name_or_path}: no such model directory")


def load_model(name_or_path, device="cpu", dtype=torch.float32, trust_remote_code=False):
    """(model, tokenizer) in eval mode: a toy checkpoint (toy.py) or any HF masked diffusion LM.

    LLaDA-8B-Instruct ships its own modelling code: it loads only with trust_remote_code=True.
    """
    import toy
    check_model_path(str(name_or_path))
    if (Path(name_or_path) / "toy_tokenizer.json").exists():
        model = toy.ToyMDLM.from_pretrained(name_or_path, dtype=dtype)
        return model.to(device).eval(), toy.ToyTokenizer.from_pretrained(name_or_path)
    kw = dict(trust_remote_code=trust_remote_code)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path, **kw)
        config = transformers.AutoConfig.from_pretrained(name_or_path, **kw)
    except ValueError as e:
        if not trust_remote_code and "trust_remote_code" in str(e):
            raise ValueError(f"{name_or_path} ships its own model code: pass --trust-remote-code") from e
        raise
    auto = (transformers.AutoModelForMaskedLM if type(config) in transformers.AutoModelForMaskedLM._model_mapping
            else transformers.AutoModel)  # LLaDA registers only AutoModel
    model = auto.from_pretrained(name_or_path, dtype=dtype, **kw)
    return model.to(device).eval(), tokenizer


def encode_prompts(tokenizer, texts, system=None):
    """Token ids of a batch of prompts, left-padded -> (ids (B, P), attention_mask (B, P)).

    An instruct tokenizer's chat template wraps each text (with the system prompt, if given)."""
    rows = []
    for text in texts:
        if getattr(tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        rows.append(tokenizer.encode(text, add_special_tokens=False))
    P = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (P - len(r)) + r for r in rows])  # (B, P)
    attention_mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])  # (B, P)
    return ids, attention_mask


def decode_completions(tokenizer, ids):
    """Text of each row of generated ids (B, L), cut at the first [EOS]."""
    out = []
    for row in ids.tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        out.append(tokenizer.decode(row, skip_special_tokens=True))
    return out


def show(tokenizer, traj, mask_id, row=0):
    """Print the denoising process of one row step by step; '_' stands for [MASK]."""
    for s in range(traj.x_bar.shape[0]):
        state = traj.x_bar[s + 1, row] if s + 1 < traj.x_bar.shape[0] else traj.x_pred[s, row]
        text = "".join("_" if t == mask_id else tokenizer.decode([t], skip_special_tokens=False) for t in state.tolist())
        print(f"step {s + 1:3d}/{traj.x_bar.shape[0]} | " + text.replace("\n", "⏎").replace("[EOS]", "·"))


def main(argv=None):
    p = argparse.ArgumentParser(description="Generate with a masked diffusion LM (toy checkpoint or HF model).")
    p.add_argument("--model", required=True, help="toy checkpoint dir (python train.py writes "
                   "out/toy-countdown-base/last) or HF name/path")
    p.add_argument("--prompt", required=True, help="prompt text (wrapped in the chat template for instruct models)")
    p.add_argument("--system", default=None, help="optional system prompt for chat models")
    p.add_argument("--gen-length", type=int, default=40, help="tokens to generate (paper: 512)")
    p.add_argument("--block-length", type=int, default=40, help="block size; = gen-length is pure-Diff (paper: 128 or 512)")
    p.add_argument("--steps", type=int, default=16, help="denoising steps T over all blocks (paper: 64/128/256)")
    p.add_argument("--remasking", default="lcr", choices=REMASKING,
                   help="lcr (Eq. 9, LLaDA), rcr (Eq. 10, paper), rcr-latest (official code's RCR), random (Eq. 8)")
    p.add_argument("--schedule", default=None, choices=COUNTS,
                   help="Eq. 13 token counts (default: linear-official for rcr-latest, else linear as in LLaDA)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (paper's evaluation)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling, 1 = off (official evaluation: 0.95, applied even at temperature 0)")
    p.add_argument("--confidence", default=None, choices=CONFIDENCE,
                   help="what orders remasking: model = softmax(logits) (LLaDA), sampling = probability under "
                        "the tempered top-p distribution (official code); default sampling for rcr-latest, else model")
    p.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance scale (LLaDA; 0 = off)")
    p.add_argument("--mask-id", type=int, default=None, help="[MASK] id if the tokenizer does not say (LLaDA: 126336)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (needed for LLaDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--seed", type=int, default=0, help="seed for temperature > 0")
    p.add_argument("--show", action="store_true", help="print every denoising step ('_' = [MASK])")
    args = p.parse_args(argv)
    n_blocks = args.gen_length // args.block_length if args.block_length > 0 else 0
    for flag, value, ok, allowed in [
            ("--prompt", repr(args.prompt), args.prompt.strip() != "", "a non-empty text"),
            ("--gen-length", args.gen_length, args.gen_length >= 1, ">= 1"),
            ("--block-length", args.block_length, args.block_length >= 1 and args.gen_length % args.block_length == 0,
             f"a size that divides --gen-length {args.gen_length}"),
            ("--steps", args.steps, args.steps >= 1 and n_blocks and args.steps % n_blocks == 0,
             f"a positive multiple of the {n_blocks} blocks"),
            ("--temperature", args.temperature, args.temperature >= 0, ">= 0"),
            ("--top-p", args.top_p, 0 < args.top_p <= 1, "in (0, 1]"),
            ("--cfg-scale", args.cfg_scale, args.cfg_scale >= 0, ">= 0"),
            ("--mask-id", args.mask_id, args.mask_id is None or args.mask_id >= 0, ">= 0")]:
        if not ok:
            p.error(f"{flag} {value}: must be {allowed}")
    transformers.utils.logging.disable_progress_bar()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    try:
        check_model_path(args.model, args.mask_id)
        model, tokenizer = load_model(args.model, args.device, dtype, args.trust_remote_code)
        mask_id = resolve_mask_id(tokenizer, model, args.mask_id)
        ids, attn = encode_prompts(tokenizer, [args.prompt], args.system)
    except (ValueError, OSError) as e:
        sys.exit(f"sample.py: error: {e}")
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    x, traj = generate(model, ids.to(args.device), attention_mask=attn.to(args.device), gen_length=args.gen_length,
                       block_length=args.block_length, steps=args.steps, remasking=args.remasking,
                       schedule=args.schedule, temperature=args.temperature, top_p=args.top_p,
                       confidence=args.confidence, cfg_scale=args.cfg_scale, mask_id=mask_id, record=True,
                       generator=gen)
    if args.show:
        show(tokenizer, traj, mask_id)
    print(decode_completions(tokenizer, x[:, ids.shape[1]:])[0])


if __name__ == "__main__":
    main()
