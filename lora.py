"""LoRA (peft): MDPO and the other algorithms on one GPU. The base model stays frozen in the compute
dtype (bf16 on CUDA), with no fp32 master copy and no optimiser state; only low-rank adapters on
the transformer blocks' linear layers train (their weights in fp32, AdamW over them alone). The
reference model is the base itself, the adapter switched off: no second copy of the model.

    python train.py --lora-rank 4                            # the toy, MDPO with adapters
    python lora.py OUT/last merged/                           # an adapter + its base -> one model

What train.py and checkpoint.py do with it:
  build       the base loads in the compute dtype, `add_adapter` wraps it, `AdapterOff` is the
              reference; the update functions see a model like any other
  OUT/last    the adapter (adapter_model.safetensors, adapter_config.json naming its base's path)
              and the tokenizer; dcp/ holds the adapter and AdamW's state only (the frozen base is
              --model's, not saved again). sample.py and eval.py load it as the base + the adapter
              merged (models.load_model), and `merge` writes that as a plain model directory.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

import distributed


def target_modules(model, names=None):
    """The full names of the linear layers that get adapters: inside the transformer blocks (the
    modules in _no_split_modules: the attention's q, k, v and output projections and the MLP's),
    never the embeddings or the output layer; `names` (a list of name endings, --lora-targets)
    narrows them."""
    blocks = distributed.blocks(model)
    inside = {id(m) for block in blocks for m in block.modules()}
    out = [name for name, m in model.named_modules()
           if isinstance(m, torch.nn.Linear) and id(m) in inside
           and (not names or any(name == n or name.endswith("." + n) for n in names))]
    if not out:
        raise ValueError(f"--lora-targets {','.join(names or [])}: no linear layer of the "
                         "model's transformer blocks matches")
    return out


def add_adapter(model, rank, alpha, dropout, names=None):
    """The model with LoRA adapters of rank r on target_modules (scaling alpha / r), its own weights
    frozen: a peft.PeftModel. The adapters start at zero (B = 0), so the model computes what the
    base computes until the first step."""
    import peft  # here, not at the top: its import takes seconds, and only LoRA runs need it
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                             target_modules=target_modules(model, names))
    wrapped = peft.get_peft_model(model, config)
    base = getattr(model, "name_or_path", "")
    if base and Path(base).exists():  # the export finds its base wherever it is run from
        wrapped.peft_config["default"].base_model_name_or_path = str(Path(base).resolve())
    return wrapped


class AdapterOff(torch.nn.Module):
    """The frozen reference of a LoRA policy: its forward is the policy's with the adapter switched
    off (peft's disable_adapter), i.e. the base model; it holds no weights of its own."""

    def __init__(self, policy):
        super().__init__()
        self.policy = [policy]  # a list: not registered as a submodule (no second parameter set)
        self.config = policy.config

    def forward(self, *args, **kwargs):
        with self.policy[0].disable_adapter():
            return self.policy[0](*args, **kwargs)


def is_adapter(path):
    return (Path(path) / "adapter_config.json").exists()


def is_lora_model(model):
    """True for a model add_adapter wrapped (a peft.PeftModel; peft marks it with peft_config)."""
    return hasattr(model, "peft_config")


def base_of(path):
    """The base model an adapter directory was trained on (its adapter_config.json)."""
    return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]


def merged(base_model, path):
    """base_model with the adapter of directory `path` merged into its weights: a plain model."""
    import peft
    return peft.PeftModel.from_pretrained(base_model, str(path)).merge_and_unload()


def main(argv=None):
    p = argparse.ArgumentParser(description="Merge a LoRA adapter (a train.py --lora-rank "
                                            "checkpoint) into its base: one plain model directory "
                                            "that any masked diffusion LM code loads.")
    p.add_argument("adapter", help="the adapter's directory, e.g. OUT/last or OUT/best")
    p.add_argument("out", help="the directory to write the merged model and tokenizer to")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="the base ships its own model code (LLaDA)")
    args = p.parse_args(argv)
    import models  # here: models imports this file
    if not is_adapter(args.adapter):
        sys.exit(f"lora.py: error: {args.adapter}: no adapter_config.json (not a --lora-rank "
                 "checkpoint)")
    model, tokenizer = models.load_model(args.adapter, trust_remote_code=args.trust_remote_code)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"{args.out}: {base_of(args.adapter)} + the adapter of {args.adapter}, merged")


if __name__ == "__main__":
    main()
