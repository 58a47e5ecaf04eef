"""The denoising loop of a masked diffusion LM (Section 2.1 inference, Section 3.1 pure-Diff / semi-AR).

`generate` starts from an all-[MASK] completion and, for T steps, (1) predicts every masked token
with one model forward, x_{t-1} ~ p_theta(. | x_bar_t), and (2) remasks part of the prediction with
remask.py (Eq. 7 with the scores of Eq. 8, 9 or 10). With `record=True` it also returns the
`Trajectory` that MDPO trains on: the state fed to the model and the full prediction at every step.

pure-Diff is block_length == gen_length; semi-AR is a smaller block that divides gen_length, the
blocks being denoised left to right with steps // n_blocks steps each (as in LLaDA's generate.py).

Where the code differs from LLaDA's generate.py (greedy LCR is token-identical to it):
1. Confidences are a float32 softmax even for a bf16 model (LLaDA takes the softmax in the model dtype).
2. Positions beyond the current block are still predicted (LLaDA predicts them too and discards them);
   we keep those predictions in `x_pred`, since that full sequence is what an intermediate reward scores.
3. Sampling is Gumbel-max, argmax(logits / temperature + g), in float64: the same distribution as
   LLaDA's exp(logits) / (-log u)^temperature, without overflowing exp.
4. The [MASK] token itself is never predicted (its logit is set to -inf): a revealed [MASK] would be
   indistinguishable from a masked position. A trained model never predicts it, so nothing else changes.

Command line (a toy checkpoint or any HF masked diffusion LM):
    python sample.py --model out/toy-base --prompt "nums 3 5 7 -> 22" --remasking rcr --show
"""
import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

from remask import (low_confidence_scores, random_scores, remask, running_confidence_scores,
                    tokens_per_step, update_latest, update_running_max)

REMASKING = ("lcr", "rcr", "rcr-latest", "random")


@dataclass
class Trajectory:
    """One batch of rollouts, generation region only, steps in rollout order s = 0..T-1 (noisy -> clean).

    x_bar (T, B, L): state fed to the model at step s.  x_pred (T, B, L): its full prediction x_{t-1}.
    conf (T, B, L): probability of each predicted token (1 where x_bar was already revealed).
    logp (T, B, L): its log-probability under the sampling distribution (0 where already revealed).
    prompt (B, P); attention_mask (B, P + L) or None.
    """
    x_bar: torch.Tensor
    x_pred: torch.Tensor
    conf: torch.Tensor
    logp: torch.Tensor
    prompt: torch.Tensor
    attention_mask: torch.Tensor | None


def predict(logits, temperature, mask_id, generator=None):
    """Draw x_{t-1} from p_theta(. | x_bar_t): greedy at temperature 0, else Gumbel-max. [MASK] is never drawn.

    logits (B, L, V) -> tokens (B, L), conf = softmax(logits) at the token (B, L) (LLaDA's confidence),
    logp = log softmax(logits / temperature) at the token (B, L) (temperature 0 scores at temperature 1).
    """
    logits = logits.float().index_fill(-1, torch.tensor([mask_id], device=logits.device), -torch.inf)  # (B, L, V)
    if temperature > 0:
        u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=logits.device)
        tokens = (logits.double() / temperature - torch.log(-torch.log(u))).argmax(-1)  # (B, L)
    else:
        tokens = logits.argmax(-1)  # (B, L)
    conf = F.softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]  # (B, L)
    logp = F.log_softmax(logits / (temperature if temperature > 0 else 1.0), -1).gather(-1, tokens[..., None])[..., 0]
    return tokens, conf, logp


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


@torch.no_grad()
def generate(model, prompt_ids, *, attention_mask=None, gen_length=128, block_length=128, steps=64,
             remasking="lcr", schedule="linear", temperature=0.0, cfg_scale=0.0, mask_id,
             record=False, generator=None, top_p=1.0, confidence=None):  # COMPAT-TEMP
    """Denoise gen_length tokens after prompt_ids (B, P), left-padded when attention_mask (B, P) is given.

    Returns x (B, P + gen_length), and the Trajectory as well when record=True.
    """
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if gen_length % block_length:
        raise ValueError(f"block_length {block_length} must divide gen_length {gen_length}")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps {steps} must be a multiple of the number of blocks {n_blocks}")
    B, P, L, dev = *prompt_ids.shape, gen_length, prompt_ids.device
    x = torch.cat([prompt_ids, torch.full((B, L), mask_id, dtype=torch.long, device=dev)], 1)  # (B, P+L)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(B, L, dtype=attention_mask.dtype, device=dev)], 1)
    k = tokens_per_step(block_length, steps // n_blocks, schedule).tolist()  # tokens revealed per step
    running = torch.zeros(B, L, dtype=torch.float64, device=dev)  # RCR running confidence
    update = update_latest if remasking == "rcr-latest" else update_running_max
    pos = torch.arange(L, device=dev)  # (L,)
    rec = []
    for b in range(n_blocks):
        in_reach = (pos < (b + 1) * block_length).expand(B, L)  # (B, L) up to the end of this block
        for i, n_reveal in enumerate(k):
            x_bar = x[:, P:]  # (B, L)
            masked = x_bar == mask_id  # (B, L)
            logits = model_logits(model, x, attention_mask, P, cfg_scale, mask_id)[:, P:]  # (B, L, V)
            tokens, conf, logp = predict(logits, temperature, mask_id, generator)  # (B, L) each
            x_pred = torch.where(masked, tokens, x_bar)  # (B, L)
            if remasking in ("rcr", "rcr-latest"):
                running = update(running, conf, masked & in_reach)
                m, candidates = running_confidence_scores(running), in_reach
                n_keep = b * block_length + sum(k[: i + 1])  # everything revealed so far, up to this block
            else:
                m = low_confidence_scores(conf) if remasking == "lcr" else random_scores(conf, generator)
                candidates, n_keep = masked & in_reach, n_reveal
            x = torch.cat([x[:, :P], remask(x_bar, x_pred, m, candidates, n_keep, mask_id)], 1)
            if record:
                rec.append((x_bar, x_pred, torch.where(masked, conf, 1.0), torch.where(masked, logp, 0.0)))
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


def main():
    p = argparse.ArgumentParser(description="Generate with a masked diffusion LM (toy checkpoint or HF model).")
    p.add_argument("--model", required=True, help="toy checkpoint dir (train.py writes out/toy-base) or HF name/path")
    p.add_argument("--prompt", required=True, help="prompt text (wrapped in the chat template for instruct models)")
    p.add_argument("--system", default=None, help="optional system prompt for chat models")
    p.add_argument("--gen-length", type=int, default=40, help="tokens to generate (paper: 512)")
    p.add_argument("--block-length", type=int, default=40, help="block size; = gen-length is pure-Diff (paper: 128 or 512)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps T over all blocks (paper: 64/128/256)")
    p.add_argument("--remasking", default="lcr", choices=REMASKING,
                   help="lcr (Eq. 9, LLaDA), rcr (Eq. 10, paper), rcr-latest (official code's RCR), random (Eq. 8)")
    p.add_argument("--schedule", default="linear", help="Eq. 13 schedule: linear cosine square cubic exp sqrt log")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (paper's evaluation)")
    p.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance scale (LLaDA; 0 = off)")
    p.add_argument("--mask-id", type=int, default=None, help="[MASK] id if the tokenizer does not say (LLaDA: 126336)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (needed for LLaDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--seed", type=int, default=0, help="seed for temperature > 0")
    p.add_argument("--show", action="store_true", help="print every denoising step ('_' = [MASK])")
    args = p.parse_args()
    transformers.utils.logging.disable_progress_bar()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, tokenizer = load_model(args.model, args.device, dtype, args.trust_remote_code)
    mask_id = resolve_mask_id(tokenizer, model, args.mask_id)
    ids, attn = encode_prompts(tokenizer, [args.prompt], args.system)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    x, traj = generate(model, ids.to(args.device), attention_mask=attn.to(args.device), gen_length=args.gen_length,
                       block_length=args.block_length, steps=args.steps, remasking=args.remasking,
                       schedule=args.schedule, temperature=args.temperature, cfg_scale=args.cfg_scale,
                       mask_id=mask_id, record=True, generator=gen)
    if args.show:
        show(tokenizer, traj, mask_id)
    print(decode_completions(tokenizer, x[:, ids.shape[1]:])[0])


if __name__ == "__main__":
    main()
