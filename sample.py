"""The denoising loop of a masked diffusion LM
(Section 2.1, inference; Section 3.1, pure-Diff / semi-AR).

`generate` starts from an all-[MASK] completion and repeats T times:
  1. predict: x_{t-1} ~ p_theta(. | x̄_t), one model forward          -> `predict_masked`,
                                                                        `predict`
  2. remask:  x̄_{t-1} = gamma(x_{t-1}, t), Eq. 7 with Eq. 8, 9 or 10  -> `remask_step` (remask.py)
With record=True it also returns the `Trajectory` MDPO trains on (Eq. 3): every state x̄_t fed to
the model and every full prediction x_{t-1}. pure-Diff is block_length == gen_length; semi-AR
denoises blocks left to right, steps // n_blocks steps each, as LLaDA's generate.py.

Greedy LCR is token-identical to LLaDA's generate.py and rcr-latest to the authors' sampler, exact
ties included (tests/test_sample.py); where the code departs from either: DEVIATIONS.md,
"sample.py". Two optimisations keep that exactness and live in speedups.py: the output layer runs on
the positions a step needs only (`split_output_layer`, `head_on_rows`), and sampling inverts the CDF
instead of drawing Gumbel noise over the vocabulary (`categorical`).

    python sample.py --model out/toy-digits-base/last --prompt "3+5+7+2=?" --task toy-digits \\
        --remasking rcr --show
"""
import argparse
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers

import models
import toy
from speedups import ROWS, categorical, head_on_rows, output_layer_removed, split_output_layer
from remask import (COUNTS, EOSER_GAMMA_MIN, ass_steps, eos_early_rejection, eoser_gamma,
                    low_confidence_scores, random_scores, remask, running_confidence_scores,
                    tokens_per_step, unmask, update_latest, update_running_max)

REMASKING = ("lcr", "rcr", "rcr-latest", "random")
CONFIDENCE = ("model", "sampling")


@dataclass
class Trajectory:
    """One batch of rollouts, generated part only, steps in rollout order s = 0..T-1
    (noisy -> clean).

    x_bar (T, B, L): the state fed to the model at step s (the paper's x̄_t, t = T - s).
    x_pred (T, B, L): its full prediction x_{t-1} (revealed positions keep their token).
    conf (T, B, L): the confidence that ordered the remasking (1 where x_bar was revealed).
    logp (T, B, L): log-probability of the token under the distribution it was drawn from (0 where
    revealed). prompt (B, P); attention_mask (B, P + L) or None.
    """
    x_bar: torch.Tensor
    x_pred: torch.Tensor
    conf: torch.Tensor
    logp: torch.Tensor
    prompt: torch.Tensor
    attention_mask: torch.Tensor | None


@torch.no_grad()
def generate(model, prompt_ids, *, attention_mask=None, gen_length=128, block_length=128, steps=64,
             remasking="lcr", schedule=None, temperature=0.0, top_p=1.0, confidence=None,
             cfg_scale=0.0, eoser_gamma_min=None, eos_id=None, canvas=None, mask_id, record=False,
             generator=None):
    """Denoise gen_length tokens after prompt_ids (B, P), left-padded when attention_mask (B, P)
    is given.

    remasking: "lcr" (Eq. 9, LLaDA), "rcr" (Eq. 10, running max), "rcr-latest" (the authors' RCR
    code), "random" (Eq. 8). schedule: how many tokens each step reveals (remask.COUNTS: Eq. 13's,
    "ass"); None = "linear-official" for rcr-latest, else "linear" (LLaDA). temperature 0 is greedy;
    top_p < 1 samples from the nucleus. confidence: "model" = softmax(logits) (LLaDA) or "sampling"
    = the probability under the tempered nucleus it was drawn from (authors' code); None =
    "sampling" for rcr-latest, else "model". cfg_scale > 0: classifier-free guidance.
    eoser_gamma_min: EOS Early Rejection of the EOS token eos_id (None = off). canvas (B, L): the
    completion to start from, [MASK] where free; its other tokens are fixed (IGPO's hints): never
    remasked, not counted in the schedule. Returns x (B, P + L), and the Trajectory when
    record=True.
    """
    official = remasking == "rcr-latest"
    schedule = schedule or ("linear-official" if official else "linear")
    confidence = confidence or ("sampling" if official else "model")
    check_settings(gen_length, block_length, steps, remasking, schedule, confidence, top_p,
                   eoser_gamma_min, eos_id)
    B, P, L, dev = *prompt_ids.shape, gen_length, prompt_ids.device
    if canvas is None:
        canvas = torch.full((B, L), mask_id, dtype=torch.long, device=dev)  # (B, L)
    x = torch.cat([prompt_ids, canvas], 1)  # (B, P+L)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, L)], 1)  # (B, P+L)
    n_blocks, T = gen_length // block_length, steps
    pos = torch.arange(P + L, device=dev)  # (P+L,)
    free = (pos >= P) & (x == mask_id)  # (B, P+L) the positions to generate
    running = torch.zeros(B, P + L, device=dev)  # (B, P+L) RCR's running confidence
    steps_taken = []
    for b in range(n_blocks):
        in_reach = free & (pos < P + (b + 1) * block_length)  # free, up to this block's end
        k = block_counts(in_reach & (pos >= P + b * block_length), T // n_blocks,
                         schedule)  # per step
        for i in range(T // n_blocks):
            masked = (x == mask_id) & free  # (B, P+L)
            # 1. x_{t-1} ~ p_theta(. | x̄_t). MDPO's rewards read the whole prediction: record=True
            #    predicts every masked position, not only those up to the end of the block.
            need = masked if record else masked & in_reach
            x_pred, conf, logp = predict_masked(model, x, attention_mask, need, P, cfg_scale,
                                                temperature, top_p, confidence, mask_id,
                                                generator)  # (B, P+L) each
            if eoser_gamma_min is not None:  # EOSER: an early EOS ranks low and stays masked
                ramp = "ass" if schedule == "ass" else "linear"
                gamma = eoser_gamma(b * (T // n_blocks) + i, T, eoser_gamma_min, ramp)
                conf = eos_early_rejection(conf, x_pred, eos_id, gamma)
            # 2. x̄_{t-1} = gamma(x_{t-1}, t): reveal k[i] more tokens of the block
            x_next, running = remask_step(remasking, x, x_pred, conf, running, masked, in_reach,
                                          k[i], sum(k[i + 1:]), mask_id, generator)
            if record:
                steps_taken.append((x[:, P:], x_pred[:, P:], conf[:, P:], logp[:, P:]))
            x = x_next
    if not record:
        return x
    x_bar, x_pred, conf, logp = (torch.stack(v) for v in zip(*steps_taken))  # (T, B, L) each
    return x, Trajectory(x_bar, x_pred, conf, logp, prompt_ids, attention_mask)


def block_counts(block, n_steps, schedule):
    """How many tokens each of the block's n_steps reveals: tokens_per_step of its free positions,
    block (B, S) bool. A list of ints when every row has as many free positions (the usual case),
    else a list of (B,) tensors, one count per row (a canvas with hints), which remask.top_n takes
    row by row."""
    n_free = block.sum(1)  # (B,)
    if (n_free == n_free[0]).all():
        return tokens_per_step(int(n_free[0]), n_steps, schedule).tolist()
    rows = torch.stack([tokens_per_step(int(n), n_steps, schedule)
                        for n in n_free.tolist()])  # (B, n_steps)
    return list(rows.to(block.device).T)


def check_settings(gen_length, block_length, steps, remasking, schedule, confidence, top_p,
                   eoser_gamma_min=None, eos_id=None):
    """ValueError naming the setting that `generate` cannot run."""
    for name, value, allowed in (("remasking", remasking, REMASKING),
                                 ("schedule", schedule, COUNTS),
                                 ("confidence", confidence, CONFIDENCE)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if block_length < 1 or gen_length % block_length:
        raise ValueError(f"block_length {block_length} must divide gen_length {gen_length}")
    if steps < 1 or steps % (gen_length // block_length):
        raise ValueError(f"steps {steps} must be a multiple of the number of blocks "
                         f"{gen_length // block_length}")
    if schedule == "ass" and block_length != gen_length:
        raise ValueError("schedule ass decodes one block (block_length = gen_length): "
                         "the reference's multi-block ASS, with blocks of unequal sizes, "
                         "is not implemented here")
    if schedule == "ass" and steps != ass_steps(gen_length):
        raise ValueError(f"schedule ass takes floor(log2 {gen_length}) = "
                         f"{ass_steps(gen_length)} steps, not {steps}")
    if eoser_gamma_min is not None and (eos_id is None or not 0 <= eoser_gamma_min <= 1):
        raise ValueError("EOSER needs the EOS id and a gamma_min in [0, 1], "
                         f"got {eos_id}, {eoser_gamma_min}")


def remask_step(remasking, x, x_pred, conf, running, masked, in_reach, n_reveal, n_still_due,
                mask_id, generator):
    """Eq. 7 with the masking scores of Eq. 8, 9 or 10: the next state x̄_{t-1} (B, S), and RCR's
    running confidence (B, S).

    LCR and random reveal n_reveal of this step's masked positions in reach and keep the rest masked
    (`remask.unmask`, LLaDA's selection). RCR updates the running confidence where it predicted,
    then remasks, among *all* generated positions in reach, the n_still_due with the lowest running
    confidence (`remask.remask`): a token revealed earlier can be masked again.
    """
    if remasking in ("rcr", "rcr-latest"):
        update = update_latest if remasking == "rcr-latest" else update_running_max
        running = update(running, conf, masked & in_reach)
        m = running_confidence_scores(running)  # Eq. 10
        return remask(x, x_pred, m, in_reach, n_still_due, mask_id), running
    m = (low_confidence_scores(conf) if remasking == "lcr"
         else random_scores(conf, generator))  # Eq. 9 / 8
    return unmask(x, x_pred, m, masked & in_reach, n_reveal, mask_id), running


def predict_masked(model, x, attention_mask, need, prompt_len, cfg_scale, temperature, top_p,
                   confidence, mask_id, generator):
    """One forward on x (B, S), then `predict` at the positions need (B, S) bool.

    Returns x_pred (B, S) (x elsewhere), conf (B, S) (1 elsewhere), logp (B, S) (0 elsewhere).
    The rows are predicted a chunk at a time, (rows, V) float32 logits of at most
    CHUNK_ELEMENTS[device type] elements.
    """
    logits_at, V = row_logits(model, x, attention_mask, prompt_len, cfg_scale, mask_id)
    rows = need.flatten().nonzero()[:, 0]  # (n,) flat positions
    x_pred, conf = x.flatten().clone(), torch.ones(x.numel(), device=x.device)  # (B*S,) each
    logp = torch.zeros(x.numel(), device=x.device)  # (B*S,)
    per_chunk = max(ROWS, CHUNK_ELEMENTS.get(x.device.type, CHUNK_ELEMENTS["cpu"]) // V)
    n_chunks = -(-len(rows) // per_chunk)  # equal chunks, each <= the bound
    for chunk in rows.tensor_split(n_chunks) if len(rows) else ():
        logits = logits_at(chunk).float()  # (n_chunk, V), a fresh tensor: `predict` overwrites it
        x_pred[chunk], conf[chunk], logp[chunk] = predict(logits, temperature, mask_id, generator,
                                                          top_p, confidence)
    return x_pred.view_as(x), conf.view_as(x), logp.view_as(x)


def predict(logits, temperature, mask_id, generator=None, top_p=1.0, confidence="model"):
    """Draw x_{t-1} from q = softmax(nucleus(logits / temperature));
    greedy (argmax) at temperature 0.

    logits (n, V) float32, overwritten in place (pass a fresh tensor: this saves a copy of the
    largest tensor of a step). [MASK] is never drawn: a revealed [MASK] could not be told from a
    masked position. Returns tokens (n,), conf (n,) and logp (n,): logp = log q(token), the
    distribution drawn from (temperature 1 when greedy); conf = q(token) for confidence "sampling"
    (the authors' code) or softmax(logits)(token) for "model" (LLaDA). At temperature 0 without
    top-p the two agree.
    """
    logits[:, mask_id] = -torch.inf  # a fill in place: no index tensor copied to the device
    z = logits  # (n, V)
    tempered = temperature > 0 or top_p < 1
    # the model's confidence
    p = F.softmax(z, -1) if confidence == "model" and tempered else None  # (n, V)
    s = z.div_(temperature) if temperature > 0 else z  # (n, V)
    if top_p < 1:
        s = nucleus(s, top_p)
    q = F.softmax(s, -1)  # (n, V)
    tokens = categorical(q, generator) if temperature > 0 else s.argmax(-1)  # (n,)
    q_tok = q.gather(-1, tokens[:, None])[:, 0]  # (n,)
    conf = q_tok if p is None else p.gather(-1, tokens[:, None])[:, 0]  # (n,)
    return tokens, conf, q_tok.log()


def nucleus(logits, top_p):
    """Top-p filter, as the authors' top_p_logits: sort by probability, keep the tokens up to and
    including the first whose cumulative probability exceeds top_p, set the others to -inf.
    (n, V) -> (n, V)."""
    sorted_logits, order = logits.sort(-1, descending=True)  # (n, V) each
    over = F.softmax(sorted_logits, -1).cumsum(-1) > top_p  # (n, V)
    # keep the first one over
    drop = torch.cat([torch.zeros_like(over[..., :1]), over[..., :-1]], -1)
    return logits.masked_fill(torch.zeros_like(drop).scatter_(-1, order, drop), -torch.inf)


# ------------------------------------------------------------------------- classifier-free guidance
def with_unconditional_copy(x, attention_mask, prompt_len, mask_id):
    """LLaDA's classifier-free guidance input: x (B, S) stacked on a copy whose prompt is all
    [MASK]. Returns (x (2B, S), attention mask (2B, S) or None)."""
    x_uncond = x.clone()
    x_uncond[:, :prompt_len] = mask_id
    both_mask = None if attention_mask is None else attention_mask.repeat(2, 1)
    return torch.cat([x, x_uncond]), both_mask


def guided(cond, uncond, cfg_scale):
    """LLaDA's guidance: logits = u + (w + 1) (c - u), with c, u the conditional and
    unconditional logits."""
    return uncond + (cfg_scale + 1) * (cond - uncond)


# ------------------------------------------------------------- one forward, logits on some rows
# logits predicted at once, (rows, V) in float32, with sample.predict's as many again: 16 MiB on a
# CPU (cache-sized), 512 MiB on a GPU (1061 rows of LLaDA's 126,464-token vocabulary: a handful of
# chunks per step, each large enough to keep the GPU busy)
CHUNK_ELEMENTS = {"cpu": 2 ** 22, "cuda": 2 ** 27}


def row_logits(model, x, attention_mask, prompt_len, cfg_scale, mask_id):
    """One forward on x (B, S). Returns (logits_at, V): logits_at(rows) gives the logits (n, V) at
    the flat positions rows (n,) of x, with guidance applied when cfg_scale > 0.

    A step needs the logits of its masked positions only (up to the block's end unless recording): a
    fraction of the (B, S, V) tensor, whose output layer dominates a step of a narrow model with a
    large vocabulary. When the model exposes its output layer (`split_output_layer`), the forward
    stops before that layer and it runs on the requested rows alone; otherwise we index the full
    logits.
    """
    x_in, mask_in = (x, attention_mask) if cfg_scale <= 0 else with_unconditional_copy(
        x, attention_mask, prompt_len, mask_id)
    head = split_output_layer(model)
    if head is None:
        full = models.logits(model, x_in, mask_in).flatten(0, 1)  # (B*S or 2B*S, V)
        V = full.shape[-1]

        def at(rows):
            return full[rows]
    else:
        with output_layer_removed(model, head):
            hidden = models.logits(model, x_in, mask_in).flatten(0, 1)  # (B*S or 2B*S, D)
        V = head.out_features

        def at(rows):
            return head_on_rows(head, hidden, rows)
    if cfg_scale <= 0:
        return at, V
    n = x.numel()  # the unconditional copy's rows follow the conditional ones

    def guided_at(rows):
        return guided(at(rows), at(rows + n), cfg_scale)
    return guided_at, V


# ----------------------------------------------------------------------------- command line
GLYPHS = {"[MASK]": "_", "[EOS]": "·", "\n": "⏎", "<answer>": "‹", "</answer>": "›"}


def show(tokenizer, traj, mask_id, row=0):
    """Print the denoising of one row, one line per step, one character per token (GLYPHS)."""
    T = traj.x_bar.shape[0]
    print("legend: " + ", ".join(f"{g} = {k!r}" if k == "\n" else f"{g} = {k}"
                                 for k, g in GLYPHS.items()))
    for s in range(T):
        state = traj.x_bar[s + 1, row] if s + 1 < T else traj.x_pred[s, row]
        text = "".join(glyph(tokenizer, t, mask_id) for t in state.tolist())
        print(f"step {s + 1:3d}/{T} | {text}")


def glyph(tokenizer, token, mask_id):
    """One token as text for `show`: special tokens (and toy tags) as a single character."""
    if token == mask_id:
        return "_"
    text = tokenizer.decode([token], skip_special_tokens=False)
    return GLYPHS.get(text, "·" if token == tokenizer.eos_token_id else text)


def eoser_gamma_min(on, gamma_min, schedule):
    """EOSER's gamma_min from the flags: None when off, else the given one or the reference's
    default."""
    if not on:
        return None
    return (gamma_min if gamma_min is not None
            else EOSER_GAMMA_MIN["ass" if schedule == "ass" else "linear"])


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Generate with a masked diffusion LM (toy checkpoint or HF model).")
    p.add_argument("--model", required=True, help="toy checkpoint dir (python train.py writes "
                   "out/toy-digits-base/last) or HF name/path")
    p.add_argument("--prompt", required=True,
                   help="prompt text (wrapped in the chat template if the model has one)")
    p.add_argument("--system", default=None, help="optional system prompt for chat models")
    p.add_argument("--gen-length", type=int, default=40, help="tokens to generate (paper: 512)")
    p.add_argument("--block-length", type=int, default=40,
                   help="block size; = gen-length is pure-Diff (paper: 128, 512)")
    p.add_argument("--steps", type=int, default=16,
                   help="denoising steps T over all blocks (paper: 64, 128, 256)")
    p.add_argument("--remasking", default="lcr", choices=REMASKING,
                   help="lcr (Eq. 9, LLaDA), rcr (Eq. 10, paper), rcr-latest (authors' RCR code), "
                        "random (Eq. 8)")
    p.add_argument("--schedule", default=None, choices=COUNTS,
                   help="Eq. 13 token counts (default: linear-official for rcr-latest, else linear "
                        "as LLaDA)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (the paper's evaluation)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus, 1 = off (authors' evaluation: 0.95, applied even at "
                        "temperature 0)")
    p.add_argument("--confidence", default=None, choices=CONFIDENCE,
                   help="what orders the remasking: model = softmax(logits) (LLaDA), sampling = "
                        "probability under the tempered top-p distribution (authors' code); "
                        "default sampling for rcr-latest")
    p.add_argument("--cfg-scale", type=float, default=0.0,
                   help="classifier-free guidance scale (LLaDA; 0 = off)")
    p.add_argument("--eoser", action="store_true",
                   help="EOS Early Rejection: scale the ranking confidence of predicted EOS "
                        "tokens by gamma, from --eoser-gamma-min up to 1 over the steps")
    p.add_argument("--eoser-gamma-min", type=float, default=None,
                   help="EOSER's first gamma (default: the reference's 0.4, or 0.01 with "
                        "--schedule ass)")
    models.add_loading_flags(p)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (temperature > 0)")
    p.add_argument("--show", action="store_true",
                   help="print every denoising step, one character per token")
    p.add_argument("--task", default=None, choices=sorted(toy.TASKS),
                   help="a toy task: also say whether the final answer is right")
    args = p.parse_args(argv)
    n_blocks = args.gen_length // args.block_length if args.block_length > 0 else 0
    for flag, value, ok, allowed in [
            ("--prompt", repr(args.prompt), args.prompt.strip() != "", "a non-empty text"),
            ("--gen-length", args.gen_length, args.gen_length >= 1, ">= 1"),
            ("--block-length", args.block_length,
             args.block_length >= 1 and args.gen_length % args.block_length == 0,
             f"a size that divides --gen-length {args.gen_length}"),
            ("--steps", args.steps, args.steps >= 1 and n_blocks and args.steps % n_blocks == 0,
             f"a positive multiple of the {n_blocks} blocks"),
            ("--temperature", args.temperature, args.temperature >= 0, ">= 0"),
            ("--top-p", args.top_p, 0 < args.top_p <= 1, "in (0, 1]"),
            ("--cfg-scale", args.cfg_scale, args.cfg_scale >= 0, ">= 0"),
            ("--eoser-gamma-min", args.eoser_gamma_min,
             args.eoser_gamma_min is None or 0 <= args.eoser_gamma_min <= 1,
             "in [0, 1]"),
            ("--steps", args.steps,
             args.schedule != "ass" or args.steps == ass_steps(args.gen_length),
             f"floor(log2 --gen-length) = {ass_steps(args.gen_length)} with --schedule ass"),
            ("--block-length", args.block_length,
             args.schedule != "ass" or args.block_length == args.gen_length,
             f"--gen-length {args.gen_length} with --schedule ass (one block)"),
            ("--mask-id", args.mask_id, args.mask_id is None or args.mask_id >= 0, ">= 0")]:
        if not ok:
            p.error(f"{flag} {value}: must be {allowed}")
    return args


def main(argv=None):
    args = parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    try:
        example = toy.example_from_prompt(args.task, args.prompt) if args.task else None
        models.check_model_path(args.model, args.mask_id)
        model, tokenizer = models.load_model(args.model, args.device, dtype, args.trust_remote_code,
                                             args.shifted_logits)
        mask_id = models.resolve_mask_id(tokenizer, model, args.mask_id)
        ids, attn = models.encode_prompts(tokenizer, [args.prompt], args.system)
    except (ValueError, OSError) as e:
        sys.exit(f"sample.py: error: {e}")
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    x, traj = generate(model, ids.to(args.device), attention_mask=attn.to(args.device),
                       gen_length=args.gen_length, block_length=args.block_length,
                       steps=args.steps, remasking=args.remasking, schedule=args.schedule,
                       temperature=args.temperature, top_p=args.top_p,
                       confidence=args.confidence, cfg_scale=args.cfg_scale, mask_id=mask_id,
                       record=True, generator=gen, eos_id=tokenizer.eos_token_id,
                       eoser_gamma_min=eoser_gamma_min(args.eoser, args.eoser_gamma_min,
                                                       args.schedule))
    if args.show:
        show(tokenizer, traj, mask_id)
    completion = x[:, ids.shape[1]:]
    print(models.decode_until_eos(tokenizer, completion)[0])
    if example is not None:
        import rewards
        import tasks
        r = rewards.reward(args.task, tasks.completion_texts(tokenizer, completion)[0], example)
        gold = f", the answer is {example['answer']}" if "answer" in example else ""
        print(f"{args.task} reward {r:g}: {'right' if r == 1 else 'wrong'}{gold}")


if __name__ == "__main__":
    main()
