"""Loading a masked diffusion LM and talking to it: the model and tokenizer, the [MASK] id,
prompts in, completions out. Used by sample.py, train.py and eval.py alike.

    load_model("out/toy-digits-base/last")                   # a toy checkpoint (toy.py)
    load_model("GSAI-ML/LLaDA-8B-Instruct", trust_remote_code=True)
"""
import json
from pathlib import Path

import torch
import transformers

import lora
import toy


# the help of the flags that say how to load a model (sample.py, eval.py, train.py)
LOADING_HELP = {
    "mask_id": "[MASK] id if the tokenizer does not say (LLaDA: 126336)",
    "trust_remote_code": "allow the model's own code (needed for LLaDA)",
    "shifted_logits": "the model predicts token i from position i - 1 (Dream-style, adapted from "
                      "an AR LM); read from the model's config when it says so",
}


def add_loading_flags(parser):
    """--mask-id, --trust-remote-code and --shifted-logits on an argparse parser."""
    parser.add_argument("--mask-id", type=int, default=None, help=LOADING_HELP["mask_id"])
    parser.add_argument("--trust-remote-code", action="store_true",
                        help=LOADING_HELP["trust_remote_code"])
    parser.add_argument("--shifted-logits", action="store_true",
                        help=LOADING_HELP["shifted_logits"])


def check_model_path(name_or_path, mask_id=None):
    """Fail at once, naming the path, for a --model that cannot load.

    A directory must hold config.json (else we name the checkpoints below it); a file is not a
    model; --mask-id must lie inside the vocabulary. A name of one or two parts that is not a local
    path ("GSAI-ML/LLaDA-8B-Instruct") is taken for a hub id and left to transformers.
    """
    path = Path(name_or_path)
    if path.is_file():
        raise ValueError(f"--model {name_or_path}: is a file; "
                         "give the directory that holds config.json")
    if path.is_dir() and lora.is_adapter(path):  # a LoRA checkpoint: its base must load
        return check_model_path(lora.base_of(path), mask_id)
    if path.is_dir():
        if not (path / "config.json").exists():
            below = sorted(str(c.parent)
                           for c in [*path.glob("*/config.json"), *path.glob("*/*/config.json")])
            hint = f"; checkpoints below it: {', '.join(below[:4])}" if below else ""
            raise ValueError(f"--model {name_or_path}: not a model directory "
                             f"(no config.json){hint}")
        vocab = json.loads((path / "config.json").read_text()).get("vocab_size")
        if mask_id is not None and vocab is not None and not 0 <= mask_id < vocab:
            raise ValueError(f"--mask-id {mask_id}: outside the vocabulary of {name_or_path} "
                             f"(0..{vocab - 1})")
        return
    hub_id = len(path.parts) <= 2 and not name_or_path.startswith((".", "/", "~"))
    if not hub_id or len(path.parts) == 2 and Path(path.parts[0]).is_dir():
        raise ValueError(f"--model {name_or_path}: no such model directory")


def load_model(name_or_path, device="cpu", dtype=torch.float32, trust_remote_code=False,
               shifted_logits=None):
    """(model, tokenizer), the model in eval mode on `device` in `dtype`: a toy checkpoint or any HF
    masked diffusion LM.

    An encoder with a masked-LM head (ModernBERT chat models, BERT) loads through
    AutoModelForMaskedLM. LLaDA-8B-Instruct and Dream ship their own modelling code: they load only
    with trust_remote_code=True, and register AutoModel only, so we fall back to AutoModel when
    AutoModelForMaskedLM does not know them. A LoRA checkpoint of train.py (adapter_config.json)
    loads as its base with the adapter merged in. The weights are read in the checkpoint's own dtype
    (bf16 for LLaDA-8B-Instruct: 16 GB on the host, not 32) and cast on `device`. shifted_logits:
    True for a model that predicts token i from position i - 1 (`uses_shifted_logits`); it is
    written into the model's config, so a checkpoint saved from it remembers it.
    """
    check_model_path(str(name_or_path))
    if lora.is_adapter(name_or_path):  # train.py --lora-rank's checkpoint: its base + the adapter
        base, _ = load_model(lora.base_of(name_or_path), "cpu", dtype, trust_remote_code,
                             shifted_logits)
        model, tokenizer = lora.merged(base, name_or_path), load_tokenizer(name_or_path)
    elif (Path(name_or_path) / "toy_tokenizer.json").exists():
        model = toy.ToyMDLM.from_pretrained(name_or_path, dtype=dtype)
        tokenizer = toy.ToyTokenizer.from_pretrained(name_or_path)
    else:
        tokenizer = load_tokenizer(name_or_path, trust_remote_code)
        model = load_hf_model(name_or_path, trust_remote_code)
        enable_memory_efficient_attention()
    if shifted_logits:
        model.config.shifted_logits = True
    model = model.to(device=device, dtype=dtype).eval()
    if torch.device(device).type == "cpu":
        own_memory(model)
    return model, tokenizer


def own_memory(model):
    """Give each parameter memory of its own. transformers leaves weights read on a CPU in a
    copy-on-write map of the checkpoint's safetensors file, file pages the kernel may drop and
    reread: tools/memory.py --validate, which follows the process's resident memory, could not see
    them (on a GPU, the move to the device copies them anyway)."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()


def load_tokenizer(name_or_path, trust_remote_code=False):
    """The tokenizer of a toy checkpoint or of a transformers checkpoint (no weights are read)."""
    if (Path(name_or_path) / "toy_tokenizer.json").exists():
        return toy.ToyTokenizer.from_pretrained(name_or_path)
    try:
        return transformers.AutoTokenizer.from_pretrained(name_or_path,
                                                          trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise remote_code_error(name_or_path, trust_remote_code, e)


def read_config(name_or_path, trust_remote_code=False):
    """The model's config as a dict, without its weights: config.json of a local directory, or the
    hub's through transformers."""
    local = Path(name_or_path) / "config.json"
    if local.exists():
        return json.loads(local.read_text())
    try:
        return transformers.AutoConfig.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code).to_dict()
    except ValueError as e:
        raise remote_code_error(name_or_path, trust_remote_code, e)


def remote_code_error(name_or_path, trust_remote_code, e):
    """transformers' refusal of a model's own code, as one line naming the flag."""
    if not trust_remote_code and "trust_remote_code" in str(e):
        return ValueError(f"{name_or_path} ships its own model code: pass --trust-remote-code")
    return e


def load_hf_model(name_or_path, trust_remote_code):
    """The model of a transformers checkpoint (a local directory or a hub name), on the host in the
    checkpoint's dtype."""
    try:
        config = transformers.AutoConfig.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise remote_code_error(name_or_path, trust_remote_code, e)
    masked_lm = type(config) in transformers.AutoModelForMaskedLM._model_mapping
    auto = transformers.AutoModelForMaskedLM if masked_lm else transformers.AutoModel
    return auto.from_pretrained(name_or_path, dtype="auto", trust_remote_code=trust_remote_code)


def enable_memory_efficient_attention():
    """Switch torch's memory-efficient attention kernel back on. LLaDA's model code switches it off
    for the whole process when it builds the model ("super slow", its comment says). The flash
    kernel takes no mask, so without it a batch with a left-padded prompt falls to the math kernel,
    which keeps the (b, heads, S, S) attention probabilities of every layer for the backward."""
    torch.backends.cuda.enable_mem_efficient_sdp(True)


SHIFTED_MODEL_TYPES = ("Dream",)  # model_type of checkpoints trained with shifted logits


def uses_shifted_logits(model):
    """True for a model adapted from an autoregressive LM that kept its next-token head (Dream-7B):
    the logits at position i - 1 predict token i. The model's config says so (`shifted_logits`, set
    by load_model's flag, or a model_type in SHIFTED_MODEL_TYPES)."""
    # DDP keeps the model in .module
    config = getattr(getattr(model, "module", model), "config", None)
    flag = getattr(config, "shifted_logits", None)
    return (bool(flag) if flag is not None
            else getattr(config, "model_type", "") in SHIFTED_MODEL_TYPES)


def logits(model, x, attention_mask=None):
    """The model's logits (B, S, V) for the input x (B, S), position i predicting token i: what the
    sampler, every RL log-prob and the SFT loss read. A model with shifted logits has its logits
    moved one position right here (position 0 keeps its own, as Dream does)."""
    out = model(x, attention_mask=attention_mask).logits  # (B, S, V)
    if uses_shifted_logits(model):
        out = torch.cat([out[:, :1], out[:, :-1]], 1)  # (B, S, V) position i <- logits of i - 1
    return out


def resolve_mask_id(tokenizer, model, mask_id=None):
    """The [MASK] id: the flag if given, else the tokenizer's, else the model config's."""
    candidates = (mask_id, getattr(tokenizer, "mask_token_id", None),
                  getattr(model.config, "mask_token_id", None))
    for candidate in candidates:
        if candidate is not None:
            return int(candidate)
    raise ValueError("cannot tell the [MASK] token id of this model: pass --mask-id "
                     "(LLaDA-8B-Instruct uses 126336)")


def encode_prompts(tokenizer, texts, system=None):
    """Token ids of a batch of prompts, left-padded -> (ids (B, P), attention_mask (B, P)).

    A tokenizer with a chat template wraps each text as one user turn (after a system turn, if
    given).
    """
    rows = []
    for text in texts:
        if getattr(tokenizer, "chat_template", None):
            system_turn = [{"role": "system", "content": system}] if system else []
            messages = system_turn + [{"role": "user", "content": text}]
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                 tokenize=False)
        rows.append(tokenizer.encode(text, add_special_tokens=False))
    P = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (P - len(r)) + r for r in rows])  # (B, P)
    attention_mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])  # (B, P)
    return ids, attention_mask


def decode_until_eos(tokenizer, ids):
    """Text of each row of generated ids (B, L), cut at the first EOS (for reading, not for
    rewards)."""
    out = []
    for row in ids.tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        out.append(tokenizer.decode(row, skip_special_tokens=True))
    return out
