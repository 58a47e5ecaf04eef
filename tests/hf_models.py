"""Tiny Hugging Face models for tests, built offline: a character-level tokenizer with a chat
template and chosen special-token ids, a model that ships its own code (`auto_map`, loaded with
trust_remote_code) written by this project, and a tiny random LLaDA built from LLaDA-8B-Instruct's
own code (tests/test_llada.py, opt-in).
"""
import json
import shutil
import string
from pathlib import Path

import tokenizers
import torch
import transformers

# Llama-3's chat format, as LLaDA-8B-Instruct's tokenizer writes a conversation
LLAMA3_CHAT = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim "
    "+ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# LLaDA-8B-Instruct's special tokens and their ids (its tokenizer.json and config.json)
LLADA_SPECIALS = {
    "<|startoftext|>": 126080,
    "<|endoftext|>": 126081,
    "<|mdm_mask|>": 126336,
    "<|start_header_id|>": 126346,
    "<|end_header_id|>": 126347,
    "<|eot_id|>": 126348,
}


def char_tokenizer(vocab_size, specials, bos, eos, mask, chat_template=None):
    """A PreTrainedTokenizerFast of one token per printable character (ids 1..100, 0 unknown),
    `specials` {token: id} at their own ids and unused filler tokens elsewhere; eos is also the
    padding, as in LLaDA's tokenizer."""
    vocab = {f"<unused{i}>": i for i in range(vocab_size)}
    inverse = {i: t for t, i in vocab.items()}
    for i, ch in enumerate(["<unk>"] + sorted(set(string.printable))):
        vocab.pop(inverse[i])
        vocab[ch] = i
    for token, i in specials.items():
        vocab.pop(inverse[i])
        vocab[token] = i
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), "isolated")
    tok.decoder = tokenizers.decoders.Fuse()
    tok.add_special_tokens(list(specials))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                                bos_token=bos, eos_token=eos, pad_token=eos,
                                                mask_token=mask)
    fast.chat_template = chat_template
    return fast


# ------------------------------------------------------------------ a model with its own code
REMOTE_CONFIG = '''"""A tiny bidirectional transformer shipped as remote code (mdpo-ref's tests)."""
from transformers import PretrainedConfig


class TinyRemoteConfig(PretrainedConfig):
    model_type = "mdpo-tiny-remote"

    def __init__(self, vocab_size=200, d_model=32, n_layers=2, n_heads=2, **kwargs):
        self.vocab_size, self.d_model = vocab_size, d_model
        self.n_layers, self.n_heads = n_layers, n_heads
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
'''
REMOTE_MODEL = '''"""A tiny bidirectional transformer, shipped as remote code (mdpo-ref's tests)."""
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteBlock(nn.TransformerEncoderLayer):
    pass


class TinyRemoteModel(PreTrainedModel):
    config_class = TinyRemoteConfig
    _no_split_modules = ["TinyRemoteBlock"]

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(
            TinyRemoteBlock(config.d_model, config.n_heads, 2 * config.d_model, dropout=0.0,
                            batch_first=True)
            for _ in range(config.n_layers))
        self.head = nn.Linear(config.d_model, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, **kwargs):
        x = self.embed(input_ids)
        padding = None if attention_mask is None else ~attention_mask.bool()
        for block in self.blocks:
            x = block(x, src_key_padding_mask=padding)
        return MaskedLMOutput(logits=self.head(x))
'''
REMOTE_SPECIALS = {"<bos>": 101, "<eos>": 102, "<mask>": 103}


def remote_code_model(path):
    """Save a tiny random model whose code ships with it: configuration_tiny_remote.py,
    modeling_tiny_remote.py and an `auto_map` in config.json, as LLaDA and Dream ship theirs.
    Loads only with trust_remote_code=True."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "configuration_tiny_remote.py").write_text(REMOTE_CONFIG)
    (path / "modeling_tiny_remote.py").write_text(REMOTE_MODEL)
    (path / "config.json").write_text(json.dumps({
        "model_type": "mdpo-tiny-remote", "vocab_size": 104, "mask_token_id": 103,
        "architectures": ["TinyRemoteModel"],
        "auto_map": {"AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
                     "AutoModel": "modeling_tiny_remote.TinyRemoteModel"}}))
    config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=True)
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config, trust_remote_code=True).save_pretrained(path)
    char_tokenizer(104, REMOTE_SPECIALS, "<bos>", "<eos>", "<mask>").save_pretrained(path)
    return path


# ------------------------------------------------------------------ LLaDA from its own code
def tiny_llada(code_dir, path, d_model=64, n_layers=2, n_heads=4, mlp_hidden_size=128):
    """A tiny random LLaDA: LLaDA-8B-Instruct's own configuration_llada.py and modeling_llada.py
    from code_dir, its config.json with the sizes shrunk (the vocabulary and special ids kept), and
    a character tokenizer with LLaDA's special ids and chat format. Saved at path like a hub model.
    """
    code_dir, path = Path(code_dir), Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in ("configuration_llada.py", "modeling_llada.py"):
        shutil.copy(code_dir / name, path / name)
    config = json.loads((code_dir / "config.json").read_text())
    config.update(d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_heads,
                  mlp_hidden_size=mlp_hidden_size, max_sequence_length=512)
    (path / "config.json").write_text(json.dumps(config))
    auto = transformers.AutoConfig.from_pretrained(path, trust_remote_code=True)
    torch.manual_seed(0)
    transformers.AutoModel.from_config(auto, trust_remote_code=True).save_pretrained(path)
    char_tokenizer(config["vocab_size"], LLADA_SPECIALS, "<|startoftext|>", "<|endoftext|>",
                   "<|mdm_mask|>", LLAMA3_CHAT).save_pretrained(path)
    return path
