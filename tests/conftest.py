"""Shared test helpers: the repo root on sys.path, the shared data folder, a small toy model."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

import toy  # noqa: E402


class NoMaskPrediction(torch.nn.Module):
    """Wraps a model so that it never predicts [MASK], as a trained MDLM never does."""

    def __init__(self, model, mask_id):
        super().__init__()
        self.model, self.mask_id, self.config = model, mask_id, model.config

    def forward(self, input_ids, attention_mask=None):
        out = self.model(input_ids, attention_mask=attention_mask)
        out.logits[..., self.mask_id] = -1e9
        return out


@pytest.fixture
def tok():
    return toy.ToyTokenizer()


@pytest.fixture
def peaked_model(tok):
    """A random toy model with large weights, so its confidences are spread out (not all ~1/V)."""
    torch.manual_seed(0)
    model = toy.ToyMDLM(toy.ToyConfig(n_layers=2, d_model=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return NoMaskPrediction(model, tok.mask_token_id).eval()
