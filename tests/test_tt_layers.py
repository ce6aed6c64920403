from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tetra_lightning.decompose import FactorizedLayer
from tetra_lightning.lowrank import (
    TTEmbedding,
    TTGRUCell,
    TTLSTMCell,
    tt_conv2d,
    tt_embedding_from,
    tt_linear,
)


def test_tt_linear_from_shape_matches_dense_from_cores():
    torch.manual_seed(0)
    layer = tt_linear(256, 128, ranks=6)
    with torch.no_grad():
        layer.bias.normal_()
    dense = layer.to_dense()
    x = torch.randn(7, 3, 256)
    assert layer.ranks == (6, 6) and math.prod(layer.in_modes) == 256
    assert torch.allclose(layer(x), dense(x), atol=1e-5)
    assert sum(p.numel() for p in layer.parameters()) < 0.06 * sum(p.numel() for p in dense.parameters())


def test_tt_conv_from_shape_matches_dense_from_cores():
    torch.manual_seed(0)
    conv = tt_conv2d(16, 32, 3, ranks=(5, 4), stride=2, padding=1)
    dense = conv.to_dense()
    x = torch.randn(2, 16, 9, 9)
    assert torch.allclose(conv(x), dense(x), atol=1e-5)


def _output_variance(layer: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(layer(x).var())


@pytest.mark.parametrize("ranks", [2, 8, 16])
def test_khrulkov_init_keeps_output_variance_of_kaiming(ranks):
    torch.manual_seed(0)
    x = torch.randn(512, 512)
    reference = nn.Linear(512, 256, bias=False)
    nn.init.kaiming_normal_(reference.weight, nonlinearity="relu")
    target = _output_variance(reference, x)
    values = [_output_variance(tt_linear(512, 256, ranks=ranks, bias=False), x) for _ in range(4)]
    mean = sum(values) / len(values)
    assert target / 2 < mean < 2 * target, (mean, target)

    images = torch.randn(16, 16, 12, 12)
    conv_reference = nn.Conv2d(16, 32, 3, bias=False)
    nn.init.kaiming_normal_(conv_reference.weight, nonlinearity="relu")
    conv_target = _output_variance(conv_reference, images)
    conv_values = [_output_variance(tt_conv2d(16, 32, 3, ranks=ranks, bias=False), images) for _ in range(4)]
    assert conv_target / 2 < sum(conv_values) / 4 < 2 * conv_target


def test_tt_embedding_matches_dense_table_and_round_trips_indices():
    torch.manual_seed(0)
    emb = TTEmbedding(1000, 64, rank=8)  # prod(voc_modes) = 1000, but 997 would be padded
    table = emb.dense_weight()
    assert table.shape == (1000, 64)
    for shape in [(), (5,), (3, 4), (2, 3, 7)]:
        indices = torch.randint(0, 1000, shape)
        out = emb(indices)
        assert out.shape == (*shape, 64)
        assert torch.allclose(out, table[indices], atol=1e-6)
    assert emb(torch.zeros(0, dtype=torch.long)).shape == (0, 64)
    padded = TTEmbedding(997, 60, rank=4)
    assert math.prod(padded.voc_modes) >= 997
    last = torch.tensor([0, 996])
    assert torch.allclose(padded(last), padded.dense_weight()[last], atol=1e-6)
    assert padded.to_dense().weight.shape == (997, 60)


def test_tt_embedding_rejects_out_of_range_and_float_indices():
    emb = TTEmbedding(100, 16, rank=4)
    with pytest.raises(IndexError, match=r"indices must be in \[0, 99\].*got values in \[0, 100\]"):
        emb(torch.tensor([0, 100]))
    with pytest.raises(IndexError, match=r"got values in \[-1, 3\]"):
        emb(torch.tensor([-1, 3]))
    with pytest.raises(TypeError, match="integer indices"):
        emb(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"prod\(voc_modes\) must be >= num_embeddings"):
        TTEmbedding(100, 16, voc_modes=(5, 5), emb_modes=(4, 4))
    with pytest.raises(ValueError, match="`ranks` of TTEmbedding must be one int >= 1"):
        TTEmbedding(100, 16, voc_modes=(10, 10), emb_modes=(4, 4), rank=(2, 2))
    with pytest.raises(TypeError, match="must be an nn.Embedding"):
        tt_embedding_from(nn.Linear(2, 2), ranks=2)


def test_tt_embedding_from_dense_is_exact_at_full_rank_and_spec_round_trips():
    torch.manual_seed(0)
    dense = nn.Embedding(90, 16)
    full = tt_embedding_from(dense, ranks=100, voc_modes=(10, 9), emb_modes=(4, 4))
    assert full.ranks == (36,) and full.rel_error < 1e-5
    low = tt_embedding_from(dense, ranks=4, voc_modes=(10, 9), emb_modes=(4, 4))
    assert 0.1 < low.rel_error < 1.0
    clone = FactorizedLayer.from_spec(low.spec())
    clone.load_state_dict(low.state_dict())
    indices = torch.arange(90)
    assert torch.equal(clone(indices), low(indices))


def test_tt_gru_cell_matches_dense_reference():
    torch.manual_seed(0)
    cell = TTGRUCell(64, 32, ranks=4)
    reference = nn.GRUCell(64, 32)
    with torch.no_grad():
        reference.weight_ih.copy_(cell.input_map.dense_weight())
        reference.bias_ih.copy_(cell.input_map.bias)
        reference.weight_hh.copy_(cell.hidden_map.weight)
        reference.bias_hh.copy_(cell.hidden_map.bias)
    x, h = torch.randn(5, 64), torch.randn(5, 32)
    assert torch.allclose(cell(x, h), reference(x, h), atol=1e-5)
    assert torch.allclose(cell(x), reference(x), atol=1e-5)
    sequence = torch.randn(6, 3, 64)
    state = None
    for step in sequence:  # a short unrolled sequence: gradients reach the TT cores
        state = cell(step, state)
    state.sum().backward()
    assert all(core.grad is not None and core.grad.abs().sum() > 0 for core in cell.input_map.cores)


def test_tt_lstm_cell_matches_dense_reference():
    torch.manual_seed(0)
    cell = TTLSTMCell(48, 16, ranks=(4, 4), in_modes=(4, 4, 3), out_modes=(4, 4, 4))
    reference = nn.LSTMCell(48, 16)
    with torch.no_grad():
        reference.weight_ih.copy_(cell.input_map.dense_weight())
        reference.bias_ih.copy_(cell.input_map.bias)
        reference.weight_hh.copy_(cell.hidden_map.weight)
        reference.bias_hh.copy_(cell.hidden_map.bias)
    x, h, c = torch.randn(5, 48), torch.randn(5, 16), torch.randn(5, 16)
    for ours, theirs in zip(cell(x, (h, c)), reference(x, (h, c)), strict=True):
        assert torch.allclose(ours, theirs, atol=1e-5)
    weight_ih = cell.input_map.dense_weight().detach()
    assert 0.5 / (3 * 16) < float(weight_ih.var()) < 2.0 / (3 * 16)  # PyTorch's U(-1/sqrt(h), 1/sqrt(h)) variance


def test_tt_linear_errors():
    with pytest.raises(ValueError, match="must equal the sizes"):
        tt_linear(64, 32, ranks=2, in_modes=(4, 4), out_modes=(4, 4))
    with pytest.raises(ValueError, match="`ranks` of tt_linear must be one int >= 1"):
        tt_linear(64, 32, ranks=0)
    with pytest.raises(TypeError, match="`ranks` of tt_conv2d must be an int or a sequence"):
        tt_conv2d(8, 8, 3, ranks=2.5)  # type: ignore[arg-type]
