"""compress_ turns nn.Embedding into TTEmbedding under a TTConfig; checkpoints of such models replay."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tetra_lightning.checkpoint import restore_from_checkpoint
from tetra_lightning.decompose import SVDConfig, TTConfig, compress_, restore_structure
from tetra_lightning.lowrank import TTEmbedding


class Bag(nn.Module):
    def __init__(self, vocabulary: int = 1000, dim: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(tokens).mean(1))


def _low_rank_table(vocabulary: int, dim: int) -> torch.Tensor:
    # A table that is exactly a TT of bond rank 4 over (10, 10, 10) x (4, 4, 4).
    cores = [torch.randn(1, 10, 4, 4), torch.randn(4, 10, 4, 4), torch.randn(4, 10, 4, 1)]
    full = torch.einsum("ipqj,jrsk,ktul->prtqsu", cores[0], cores[1], cores[2]).reshape(1000, 64)
    return full[:vocabulary, :dim]


def test_tt_config_turns_embeddings_into_tt_embeddings_that_match() -> None:
    torch.manual_seed(0)
    model = Bag()
    with torch.no_grad():
        model.embedding.weight.copy_(_low_rank_table(1000, 64))
    tokens = torch.randint(0, 1000, (8, 5))
    reference = model(tokens)
    history = compress_(model, TTConfig(rank=4, in_modes=(10, 10, 10), out_modes=(4, 4, 4)),
                        filter_fn=lambda module, name: name == "embedding")
    entry = next(e for e in history if e["name"] == "embedding")
    assert isinstance(model.embedding, TTEmbedding)
    assert entry["ranks"] == [4, 4] and entry["spec"]["class"] == "TTEmbedding"
    assert entry["params_after"] == 10 * 4 * 4 + 4 * 10 * 4 * 4 + 4 * 10 * 4 == 960
    assert entry["params_before"] == 64000
    assert entry["rel_error"] < 1e-4
    torch.testing.assert_close(model(tokens), reference, atol=1e-3, rtol=1e-3)
    # The history is JSON-safe and replays on a fresh model: the state dict then loads strictly.
    fresh = restore_structure(Bag(), json.loads(json.dumps(history)))
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(tokens), model(tokens))


def test_float_rank_keeps_that_fraction_of_the_table() -> None:
    model = Bag(vocabulary=5000, dim=128)
    history = compress_(model, TTConfig(rank=0.02))
    entry = next(e for e in history if e["name"] == "embedding")
    assert isinstance(model.embedding, TTEmbedding)
    assert 0.01 * 5000 * 128 < entry["params_after"] <= 0.02 * 5000 * 128
    # the linear head was compressed by the same config, or skipped with a reason
    head = next(e for e in history if e["name"] == "head")
    assert "skipped" in head or head["method"] == "tt"
    out = model.embedding(torch.tensor([[0, 4999]]))
    assert out.shape == (1, 2, 128)


def test_checkpoint_of_a_tt_embedding_model_restores() -> None:
    model = Bag()
    history = compress_(model, TTConfig(rank=8), filter_fn=lambda module, name: name == "embedding")
    checkpoint = {"state_dict": model.state_dict(), "tetra_lightning": {"history": history}}
    fresh = restore_from_checkpoint(Bag(), checkpoint)
    tokens = torch.randint(0, 1000, (3, 7))
    torch.testing.assert_close(fresh(tokens), model(tokens))


def test_other_methods_and_unsupported_embeddings_are_left_alone() -> None:
    model = Bag()
    compress_(model, SVDConfig(rank=0.25))
    assert isinstance(model.embedding, nn.Embedding)  # SVD does not touch embeddings
    padded = Bag()
    padded.embedding = nn.Embedding(1000, 64, padding_idx=0)
    history = compress_(padded, TTConfig(rank=4), filter_fn=lambda module, name: name == "embedding")
    assert isinstance(padded.embedding, nn.Embedding)
    assert "padding_idx" in history[0]["skipped"]


def test_explicit_mapping_errors_name_the_problem() -> None:
    with pytest.raises(TypeError, match="only TTConfig turns an nn.Embedding"):
        compress_(Bag(), {"embedding": SVDConfig(rank=4)})
    with pytest.raises(TypeError, match="energy= is not supported"):
        compress_(Bag(), {"embedding": TTConfig(energy=0.9)})
    with pytest.raises(ValueError, match="module 'embedding': rank=1e-05 keeps"):
        compress_(Bag(), {"embedding": TTConfig(rank=1e-5)})
    with pytest.raises(ValueError, match="does not fit"):
        compress_(Bag(), {"embedding": TTConfig(rank=4, in_modes=(10, 10), out_modes=(8, 4))})
