"""A tiny masked diffusion LM and three toy tasks, so every part of mdpo-ref runs on 2 CPU cores.

What is here:
- `ToyTokenizer`: character-level, with [PAD], [MASK], [EOS] and the two tags `<answer>`,
  `</answer>` as single tokens. No chat template (prompts are used as they are).
- `ToyConfig`, `ToyMDLM`: a small bidirectional transformer (no causal mask) that is a
  `transformers.PreTrainedModel`, so `save_pretrained` / `from_pretrained` work and
  `model(input_ids, attention_mask=...).logits` has the same interface as LLaDA.
- `make_task`: deterministic toy problems scored by the same reward functions as the real tasks
  (rewards.py):
    toy-digits     "3+5+7+2=?"                ->  "3+5=8\n8+7=15\n15+2=17\n\\boxed{17}"
    toy-countdown  "nums 3 5 7 -> 22"         ->  "3*5 = 15\n15+7 = 22\n<answer>(3*5)+7</answer>"
    toy-arith      "a=3+4;b=a*2;b-5=?"        ->  "a = 7\nb = 14\nb-5 = 9\n\\boxed{9}"
  toy-digits is the default test-bed: its SFT demonstrations carry a systematic error half of the
  time (`_digits_example`), so the base is unsure and RL has a skill to sharpen that carries across
  prompts (results/RESULTS.md). toy-countdown mirrors the paper's Countdown and toy-arith its math,
  but a 0.4M-parameter model cannot learn their skills, so RL only memorises there. Completions are
  20-36 tokens, so the number of blocks and steps matters as it does for LLaDA.

Positions are counted from the first non-pad token (position id = cumsum(attention_mask) - 1), so a
left-padded row in a batch gives exactly what it gives alone.
"""
import json
import random
import re
import zlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

SPECIALS = ["[PAD]", "[MASK]", "[EOS]", "<answer>", "</answer>"]
CHARS = list("0123456789+-*/()=,.;:?> \n\\{}abcdefghijklmnopqrstuvwxyz")


class ToyTokenizer:
    """Characters plus a few multi-character special tokens; ids are fixed by SPECIALS + CHARS."""

    def __init__(self):
        self.vocab = SPECIALS + CHARS
        self.ids = {tok: i for i, tok in enumerate(self.vocab)}
        self.pad_token_id, self.mask_token_id, self.eos_token_id = 0, 1, 2
        self.vocab_size = len(self.vocab)

    def encode(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            for tag in ("<answer>", "</answer>"):
                if text.startswith(tag, i):
                    ids.append(self.ids[tag])
                    i += len(tag)
                    break
            else:
                if text[i] not in self.ids:
                    raise ValueError(f"toy tokenizer: character {text[i]!r} at offset {i} "
                                     "is not in the vocabulary")
                ids.append(self.ids[text[i]])
                i += 1
        return ids

    def decode(self, ids, skip_special_tokens=True):
        ids = ids.tolist() if torch.is_tensor(ids) else ids
        specials = {self.pad_token_id, self.mask_token_id, self.eos_token_id}
        skip = specials if skip_special_tokens else set()
        return "".join(self.vocab[i] for i in ids if i not in skip)

    def batch_decode(self, rows, skip_special_tokens=True):
        return [self.decode(r, skip_special_tokens) for r in rows]

    def save_pretrained(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "toy_tokenizer.json").write_text(json.dumps({"vocab": self.vocab}))

    @classmethod
    def from_pretrained(cls, path):
        tok = cls()
        saved = json.loads((Path(path) / "toy_tokenizer.json").read_text())["vocab"]
        if saved != tok.vocab:
            raise ValueError(f"{path}/toy_tokenizer.json: "
                             "vocabulary differs from this version of toy.py")
        return tok


class ToyConfig(PretrainedConfig):
    model_type = "mdpo-toy"

    def __init__(self, vocab_size=len(SPECIALS) + len(CHARS), d_model=128, n_layers=2, n_heads=4,
                 max_len=128, mask_token_id=1, **kwargs):
        self.vocab_size, self.d_model, self.n_layers = vocab_size, d_model, n_layers
        self.n_heads, self.max_len, self.mask_token_id = n_heads, max_len, mask_token_id
        # the output layer has its own weights: transformers would otherwise tie it to the
        # embedding (its default) once it can find both
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


class Block(nn.Module):
    """Pre-LN transformer block with full (bidirectional) self-attention."""

    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, key_mask):  # x (B, L, D), key_mask (B, 1, 1, L) bool or None
        B, L, D = x.shape
        qkv = self.qkv(self.ln1(x)).view(B, L, 3, self.h, D // self.h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, h, L, D/h)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, h, L, D/h)
        x = x + self.proj(a.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.ln2(x))


class ToyMDLM(PreTrainedModel):
    """Mask predictor p_theta(x_0 | x_bar_t): embeddings -> n_layers blocks -> logits over the
    vocabulary."""

    config_class = ToyConfig
    base_model_prefix = "toy"
    _no_split_modules = ["Block"]  # the unit FSDP shards (train.py --fsdp), as in HF models

    def __init__(self, config):
        super().__init__(config)
        self.tok = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(config.max_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config.d_model, config.n_heads)
                                    for _ in range(config.n_layers))
        self.ln = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.tok

    def get_output_embeddings(self):
        return self.head

    def set_output_embeddings(self, head):
        self.head = head

    def forward(self, input_ids, attention_mask=None, **kwargs):
        """logits (B, L, V) of the mask predictor for input_ids (B, L)."""
        if attention_mask is None:
            pos = torch.arange(input_ids.shape[1], device=input_ids.device)
            pos = pos.expand_as(input_ids)  # (B, L)
            key_mask = None
        else:
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
            key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        if input_ids.shape[1] > self.config.max_len:
            raise ValueError(f"toy model: sequence of {input_ids.shape[1]} tokens "
                             f"> max_len {self.config.max_len}")
        x = self.tok(input_ids) + self.pos(pos)  # (B, L, D)
        for block in self.blocks:
            x = block(x, key_mask)
        return MaskedLMOutput(logits=self.head(self.ln(x)))  # (B, L, V)


def save_fresh(path, seed):
    """A randomly initialised toy model (seeded) and its tokenizer, saved to path."""
    torch.manual_seed(seed)
    ToyMDLM(ToyConfig()).save_pretrained(path)
    ToyTokenizer().save_pretrained(path)


def _countdown_example(rng):
    """Three numbers 1..9 and a target made by ((a o b) o c); every intermediate an integer in
    1..99 (9,907 distinct prompts). Numbers up to 12 would give 22.9k, but the toy base then solves
    4-8% of them instead of ~20%."""
    while True:
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        o1, o2 = rng.choice("+-*/"), rng.choice("+-*/")
        first = _apply(a, o1, b)
        second = None if first is None else _apply(first, o2, c)
        if second is not None:
            break
    nums = [a, b, c]
    rng.shuffle(nums)
    prompt = f"nums {' '.join(map(str, nums))} -> {second}"
    completion = (f"{a}{o1}{b} = {first}\n{first}{o2}{c} = {second}\n"
                  f"<answer>({a}{o1}{b}){o2}{c}</answer>")
    return {"prompt": prompt, "numbers": nums, "target": second, "completion": completion}


def _apply(x, op, y):
    r = {"+": x + y, "-": x - y, "*": x * y, "/": x // y if x % y == 0 else None}[op]
    return r if r is not None and 1 <= r <= 99 else None


def _arith_example(rng):
    """Two assignments and a final operation; the answer is boxed like a MATH solution."""
    x, y, k, z = rng.randint(1, 9), rng.randint(1, 9), rng.randint(2, 4), rng.randint(1, 9)
    o1, o3 = rng.choice("+-"), rng.choice("+-")
    a = x + y if o1 == "+" else x - y
    b = a * k
    ans = b + z if o3 == "+" else b - z
    prompt = f"a={x}{o1}{y};b=a*{k};b{o3}{z}=?"
    completion = f"a = {a}\nb = {b}\nb{o3}{z} = {ans}\n\\boxed{{{ans}}}"
    return {"prompt": prompt, "answer": str(ans), "completion": completion}


NOISE_SHARE = 0.5  # toy-digits: the share of SFT demonstrations with the systematic error


def _digits_example(rng):
    """The running sum of four digits 0..9 (10,000 prompts). The reference solution is exact; the
    SFT demonstration (`completion`) is, for half of the prompts, off by one in its last line and
    its box: a systematic error, drawn once per prompt (from its hash, so every base sees the same
    demonstrations).

    Why: SFT on these demonstrations gives a base that computes the sum but is unsure of the last
    step (greedy right about half the time, 8 samples nearly always hold a right one), and what RL
    must learn, not to add the 1, carries over to every new prompt. The reward checks the true sum.
    """
    digits = [rng.randint(0, 9) for _ in range(4)]
    sums = [sum(digits[:i + 1]) for i in range(4)]  # running sums
    lines = [f"{sums[i]}+{digits[i + 1]}=" for i in range(3)]  # '3+5=', '8+7=', '15+2='
    prompt = "+".join(map(str, digits)) + "=?"
    noise_rng = random.Random(zlib.crc32(f"toy-digits-noise-{prompt}".encode()))
    noisy = noise_rng.random() < NOISE_SHARE
    final = sums[3] + 1 if noisy else sums[3]
    solution = ("\n".join(line + str(v) for line, v in zip(lines, sums[1:]))
                + f"\n\\boxed{{{sums[3]}}}")
    shown = ("\n".join(line + str(v) for line, v in zip(lines, sums[1:3] + [final]))
             + f"\n\\boxed{{{final}}}")
    return {"prompt": prompt, "answer": str(sums[3]), "completion": shown, "solution": solution}


TASKS = {"toy-digits": _digits_example, "toy-countdown": _countdown_example,
         "toy-arith": _arith_example}


def example_from_prompt(task, prompt):
    """The example dict a toy prompt stands for (what its reward needs), e.g. for
    sample.py --task."""
    if task == "toy-countdown":
        found = re.fullmatch(r"nums ((?:\d+ )+)-> (\d+)", prompt.strip())
        if found:
            numbers = [int(n) for n in found[1].split()]
            return {"prompt": prompt, "numbers": numbers, "target": int(found[2])}
    elif task == "toy-digits":
        found = re.fullmatch(r"(\d)\+(\d)\+(\d)\+(\d)=\?", prompt.strip())
        if found:
            return {"prompt": prompt, "answer": str(sum(int(d) for d in found.groups()))}
    elif task == "toy-arith":
        found = re.fullmatch(r"a=(\d)([+-])(\d);b=a\*(\d);b([+-])(\d)=\?", prompt.strip())
        if found:
            x, o1, y, k, o3, z = found.groups()
            b = (int(x) + int(y) if o1 == "+" else int(x) - int(y)) * int(k)
            return {"prompt": prompt, "answer": str(b + int(z) if o3 == "+" else b - int(z))}
    else:
        raise ValueError(f"unknown toy task {task!r}; choose from {sorted(TASKS)}")
    example_prompt = TASKS[task](random.Random(0))["prompt"]
    raise ValueError(f"{prompt!r} is not a {task} prompt (e.g. {example_prompt!r})")
SPLITS = ("test", "val", "train")  # indexed by min(crc32(prompt) % 5, 2)


def make_task(name, n, seed=0, split="train"):
    """n distinct examples of toy task `name` from `split` ("train", "val" or "test"), the same for
    the same seed.

    A hash of the prompt decides the split (crc32 mod 5: 0 test, 1 val, 2-4 train), so the three
    never share a problem whatever the seeds: hyperparameters are chosen on "val", results reported
    on "test"."""
    if name not in TASKS:
        raise ValueError(f"unknown toy task {name!r}; choose from {sorted(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    rng, seen, out = random.Random(f"{name}-{split}-{seed}"), set(), []
    for _ in range(50 * n + 10_000):
        ex = TASKS[name](rng)
        ex_split = SPLITS[min(zlib.crc32(ex["prompt"].encode()) % 5, 2)]
        if ex["prompt"] not in seen and ex_split == split:
            seen.add(ex["prompt"])
            out.append(ex)
            if len(out) == n:
                return out
    raise ValueError(f"{name}: could not draw {n} distinct {split} problems (found {len(out)})")
