"""Factorized layers that stand in for nn.Linear/Conv wherever the originals run: weights read directly, Tucker/CP on
Linear, grouped/depthwise convs per group, Conv1d, split nn.MultiheadAttention and nn.LSTM/GRU/RNN, and the
allocation over all of them."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from tetra_lightning.checkpoint import replay_history
from tetra_lightning.decompose import (
    CPConfig,
    FactorizedLayer,
    FactorizedMultiheadAttention,
    FactorizedRNN,
    SVDConfig,
    TTConfig,
    TuckerConfig,
    compress_,
    decompose_layer,
    direct_weight_reads,
    recompose_,
    split_attention,
    split_recurrent,
    unfuse_,
)
from tetra_lightning.decompose.allocation import allocate_ranks, choose_method, layer_error_curve
from tetra_lightning.decompose.attention import restore_attention
from tetra_lightning.decompose.recurrent import restore_recurrent

ALL = [SVDConfig, TuckerConfig, CPConfig, TTConfig]


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class ReadsWeight(nn.Module):
    """Reads its layers' weights instead of calling them, as torchvision's Swin attention does."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, dim=-1)
        return F.linear(torch.softmax(q @ k.transpose(-2, -1), -1) @ v, self.proj.weight, self.proj.bias)


@pytest.mark.parametrize("config_class", ALL, ids=lambda c: c.method)
def test_layers_read_directly_keep_working_and_train(config_class) -> None:
    torch.manual_seed(0)
    model, x = ReadsWeight(), torch.randn(2, 5, 16)
    history = compress_(model, config_class(rank=0.5))
    assert all(isinstance(m, FactorizedLayer) for m in (model.qkv, model.proj))
    assert {entry["name"] for entry in history if "note" in entry} == {"qkv", "proj"}
    assert "reads qkv.weight directly" in history[0]["note"]
    out = model(x)  # a model with a plain factorized module here raised AttributeError: no attribute 'weight'
    assert out.shape == (2, 5, 16)
    out.square().sum().backward()  # the rebuilt weight is differentiable: the factors get gradients
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_weight_on_access_equals_the_dense_weight() -> None:
    dense = nn.Linear(12, 8)
    layer = decompose_layer(dense, SVDConfig(rank=8))
    assert torch.allclose(layer.weight, dense.weight, atol=1e-5) and torch.equal(layer.bias, dense.bias)
    assert direct_weight_reads(nn.Sequential(ReadsWeight()))["0.qkv"].startswith("ReadsWeight.forward reads")


@pytest.mark.parametrize("config_class", [TuckerConfig, CPConfig], ids=lambda c: c.method)
def test_tucker_and_cp_on_linear_are_low_rank_products(config_class) -> None:
    torch.manual_seed(0)
    dense, x = nn.Linear(24, 16), torch.randn(3, 24)
    full = decompose_layer(dense, config_class(rank=16))
    assert (full(x) - dense(x)).abs().max() < 1e-4
    quarter = decompose_layer(dense, config_class(rank=0.25))
    # A matrix's Tucker-2 uses equal ranks; its CP is the truncated SVD (same parameters as SVD at that rank).
    ranks = quarter.ranks
    assert (len(ranks) == 2 and ranks[0] == ranks[1]) or ranks == decompose_layer(dense, SVDConfig(rank=0.25)).ranks
    svd_error = decompose_layer(dense, SVDConfig(rank=ranks[0])).rel_error
    assert quarter.rel_error == pytest.approx(svd_error, rel=1e-3)


@pytest.mark.parametrize("config_class", [SVDConfig, TuckerConfig, CPConfig], ids=lambda c: c.method)
def test_grouped_conv_is_factorized_per_group(config_class) -> None:
    torch.manual_seed(0)
    dense, x = nn.Conv2d(8, 12, 3, padding=1, groups=4), torch.randn(2, 8, 6, 6)
    rank = {SVDConfig: 3, TuckerConfig: (3, 2), CPConfig: 18}[config_class]
    extra = {"n_iter_max": 300} if config_class is CPConfig else {}
    layer = decompose_layer(dense, config_class(rank=rank, **extra))
    assert layer.groups == 4 and layer.weight.shape == dense.weight.shape
    tolerance = 0.05 if config_class is CPConfig else 1e-4
    assert (layer(x) - dense(x)).abs().max() < tolerance * dense(x).abs().max()
    back = layer.to_dense()
    assert back.groups == 4 and torch.allclose(back(x), layer(x), atol=1e-5)


def test_depthwise_conv_only_cp_saves_parameters() -> None:
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16))
    reasons = {cls.method: compress_(nn.Sequential(nn.Conv2d(16, 16, 3, groups=16)), cls(rank=0.25))[0].get("skipped")
               for cls in ALL}
    assert reasons["svd"].startswith("no parameter reduction: 176 factorized >= 160")
    assert reasons["tucker"].startswith("no parameter reduction")
    assert "has no grouped form (groups=16)" in reasons["tt"]
    history = compress_(model, CPConfig(rank=0.25))
    assert "skipped" not in history[0] and _params(model) == 16 * 8 + 16  # rank 1: 1 + 3 + 3 + 1 per channel


@pytest.mark.parametrize("config_class", ALL, ids=lambda c: c.method)
def test_conv1d(config_class) -> None:
    torch.manual_seed(0)

    def make() -> nn.Module:
        return nn.Sequential(nn.Conv1d(8, 16, 5, padding=2, stride=2))

    model, x = make(), torch.randn(2, 8, 20)
    reference = model(x)
    # CP needs its generic bound (16 * 8 * 5 / 16 = 40) to fit a random kernel; the others reach it from the energy.
    full_config = CPConfig(rank=40, n_iter_max=300) if config_class is CPConfig else config_class(energy=1.0)
    full = decompose_layer(model[0], full_config)
    assert type(full).__name__ == "FactorizedConv1d" and full.method == config_class.method
    tolerance = 0.05 if config_class is CPConfig else 1e-4
    assert (full(x) - reference).abs().max() < tolerance * reference.abs().max()
    history = compress_(model, config_class(rank=0.5))
    assert type(model[0]).__name__ == "FactorizedConv1d" and _params(model) < 0.6 * _params(make())
    fresh = make()
    replay_history(fresh, json.loads(json.dumps(history)))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), model(x))
    dense_again = recompose_(model)
    assert isinstance(model[0], nn.Conv1d) and dense_again[0]["spec"]["class"] == "Conv1d"
    assert torch.allclose(model(x), fresh(x), atol=1e-5)


# -- nn.MultiheadAttention ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_attention_equals_the_fused_module(batch_first: bool) -> None:
    torch.manual_seed(0)
    fused = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    split = split_attention(fused)
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)  # 3 sequences of 5 tokens
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    for kwargs in (
        {},
        {"key_padding_mask": pad},
        {"attn_mask": causal, "is_causal": True},
        {"attn_mask": causal.isinf(), "key_padding_mask": pad, "need_weights": False},
        {"attn_mask": torch.randn(3 * 4, 5, 5), "average_attn_weights": False},
    ):
        out, weights = split(x, x, x, **kwargs)
        ref, ref_weights = fused(x, x, x, **kwargs)
        assert torch.allclose(out, ref, atol=1e-5), kwargs
        assert (weights is None) == (ref_weights is None)
        if weights is not None:
            assert torch.allclose(weights, ref_weights, atol=1e-5)
    unbatched = torch.randn(5, 16)
    assert torch.allclose(split(unbatched, unbatched, unbatched)[0], fused(unbatched, unbatched, unbatched)[0], atol=1e-5)
    with pytest.raises(RuntimeError, match="Need attn_mask if specifying the is_causal hint"):
        split(x, x, x, is_causal=True)


def test_split_attention_with_separate_key_and_value_sizes() -> None:
    torch.manual_seed(0)
    fused = nn.MultiheadAttention(12, 3, kdim=6, vdim=10, batch_first=True).eval()
    q, k, v = torch.randn(2, 4, 12), torch.randn(2, 7, 6), torch.randn(2, 7, 10)
    assert torch.allclose(split_attention(fused)(q, k, v)[0], fused(q, k, v)[0], atol=1e-5)


def test_transformer_encoder_is_compressed_and_replays() -> None:
    torch.manual_seed(0)

    def make() -> nn.Module:
        layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True, dropout=0.0)
        return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()

    model, x = make(), torch.randn(2, 6, 32)
    reference = model(x)
    split = unfuse_(model)
    assert [entry["kind"] for entry in split] == ["attention", "attention"]
    assert torch.allclose(model(x), reference, atol=1e-5)  # the split alone changes nothing
    history = split + compress_(model, SVDConfig(rank=0.25))
    assert isinstance(model.layers[0].self_attn, FactorizedMultiheadAttention)
    assert isinstance(model.layers[0].self_attn.out_proj, FactorizedLayer)
    with torch.no_grad():
        assert model(x).shape == reference.shape  # eval + no_grad: the fused fast path is not taken
    fresh = make()
    replay_history(fresh, json.loads(json.dumps(history)))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), model(x))


# -- nn.LSTM / nn.GRU / nn.RNN ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.LSTM(6, 8, num_layers=2, batch_first=True),
        lambda: nn.LSTM(6, 8, num_layers=2, bidirectional=True),
        lambda: nn.GRU(6, 8, num_layers=2, batch_first=True, bidirectional=True),
        lambda: nn.RNN(6, 8, nonlinearity="relu"),
    ],
    ids=["lstm", "lstm-bidirectional", "gru-bidirectional", "rnn-relu"],
)
def test_split_recurrent_equals_the_fused_module(make) -> None:
    torch.manual_seed(0)
    fused = make().eval()
    split = split_recurrent(fused)
    x = torch.randn(3, 5, 6)
    out, state = split(x)
    ref, ref_state = fused(x)
    assert torch.allclose(out, ref, atol=1e-5)
    for a, b in zip(state if isinstance(state, tuple) else (state,), ref_state if isinstance(ref_state, tuple) else (ref_state,), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    hx = tuple(s.clone().normal_() for s in ref_state) if isinstance(ref_state, tuple) else ref_state.clone().normal_()
    assert torch.allclose(split(x, hx)[0], fused(x, hx)[0], atol=1e-5)
    packed = pack_padded_sequence(x if fused.batch_first else x.transpose(0, 1), torch.tensor([5, 2, 4]),
                                  batch_first=fused.batch_first, enforce_sorted=False)
    out, state = split(packed)
    ref, ref_state = fused(packed)
    assert torch.allclose(out.data, ref.data, atol=1e-5) and torch.equal(out.unsorted_indices, ref.unsorted_indices)
    assert torch.allclose(state[0] if isinstance(state, tuple) else state,
                          ref_state[0] if isinstance(ref_state, tuple) else ref_state, atol=1e-5)
    single = torch.randn(5, 6)
    assert torch.allclose(split(single)[0], fused(single)[0], atol=1e-5)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_recurrent_tt_cells_are_exact_at_full_rank(mode: str) -> None:
    torch.manual_seed(0)
    cls = nn.LSTM if mode == "LSTM" else nn.GRU
    fused = cls(16, 16, num_layers=2, batch_first=True)
    x = torch.randn(2, 7, 16)
    split = split_recurrent(fused)
    for cell in split.cells:  # the TT-LSTM / TT-GRU cells at full bond ranks
        cell.input_map = decompose_layer(cell.input_map, TTConfig(energy=1.0))
        cell.hidden_map = decompose_layer(cell.hidden_map, TTConfig(energy=1.0))
    assert type(split.cells[0].input_map).__name__ == "TTLinear"
    assert torch.allclose(split(x)[0], fused(x)[0], atol=1e-5)
    model = nn.Sequential(cls(16, 16, num_layers=2, batch_first=True))
    history = compress_(model, TTConfig(rank=0.25))
    assert isinstance(model[0], FactorizedRNN) and history[0]["kind"] == "recurrent"
    assert _params(model) < 0.5 * _params(fused)
    fresh = nn.Sequential(cls(16, 16, num_layers=2, batch_first=True))
    replay_history(fresh, json.loads(json.dumps(history)))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x)[0], model(x)[0])


def test_fused_modules_that_stay_fused_are_recorded() -> None:
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2, add_bias_kv=True), "lstm": nn.LSTM(4, 8, proj_size=2)})
    entries = unfuse_(model)
    assert {entry["name"]: entry["skipped"] for entry in entries} == {
        "attn": "nn.MultiheadAttention with add_bias_kv=True is left fused",
        "lstm": "nn.LSTM with proj_size=2 is left fused",
    }
    assert isinstance(model["attn"], nn.MultiheadAttention) and replay_history(nn.ModuleDict(), []) == []


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: split_attention(nn.MultiheadAttention(8, 2, add_zero_attn=True)), ValueError,
         r"`module` cannot be split: nn.MultiheadAttention with add_zero_attn=True is left fused"),
        (lambda: split_attention(nn.Linear(2, 2)), TypeError, r"`module` must be an nn.MultiheadAttention, got Linear"),
        (lambda: split_recurrent(nn.LSTM(4, 8, proj_size=2)), ValueError, r"proj_size=2 is left fused"),
        (lambda: split_recurrent(nn.Linear(2, 2)), TypeError, r"`module` must be an nn.LSTM, nn.GRU or nn.RNN"),
        (lambda: FactorizedMultiheadAttention(10, 3), ValueError, r"`embed_dim`=10 must be divisible by `num_heads`=3"),
        (lambda: FactorizedRNN("QRNN", 4, 4), ValueError, r"`mode` must be one of"),
        (lambda: restore_attention(nn.Sequential(nn.Linear(2, 2)), [{"kind": "attention", "name": "0", "spec": {}}]),
         ValueError, r"`history\[0\]` splits '0', which is not an nn.MultiheadAttention of the model \(found Linear\)"),
        (lambda: restore_recurrent(nn.Sequential(), [{"kind": "recurrent", "name": "rnn", "spec": {}}]),
         ValueError, r"`history\[0\]` splits 'rnn', which is not an nn.LSTM / nn.GRU / nn.RNN"),
        (lambda: compress_(nn.ModuleDict({"a": nn.MultiheadAttention(8, 2, add_bias_kv=True)}), {"a": SVDConfig()}),
         TypeError, r"`config` names 'a', which cannot be compressed: nn.MultiheadAttention with add_bias_kv=True"),
    ],
)
def test_bad_inputs(make, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


# -- allocation --------------------------------------------------------------------------------------------------


def test_error_curves_cover_grouped_conv1d_and_linear_tucker() -> None:
    torch.manual_seed(0)
    grouped = nn.Conv2d(16, 16, 3, groups=4)
    svd = layer_error_curve(grouped, "svd")
    # Per-group SVD at the full group rank (4) is exact but has more parameters than the layer: not listed.
    assert [o.ranks for o in svd] == [(1,), (2,), (3,)] and svd[0].error > svd[1].error > svd[2].error > 0
    measured = decompose_layer(grouped, SVDConfig(rank=2)).rel_error ** 2
    assert svd[1].error == pytest.approx(measured, rel=1e-4)  # Eckart-Young per group: exact
    tucker = layer_error_curve(nn.Linear(32, 32), "tucker")
    assert all(o.ranks[0] == o.ranks[1] for o in tucker)
    tt = layer_error_curve(nn.Conv1d(16, 32, 3), "tt")
    # The TT-SVD bound is never below the error TT-SVD reaches.
    for option in tt[:3]:
        error = decompose_layer(nn.Conv1d(16, 32, 3), TTConfig(rank=option.ranks)).rel_error ** 2
        assert option.error >= error - 1e-6 or option.error == pytest.approx(error, rel=1e-3)


def test_auto_allocation_reaches_four_times_on_split_attention_and_lstm() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({
        "attn": nn.MultiheadAttention(64, 4, batch_first=True),
        "lstm": nn.LSTM(64, 64, batch_first=True),
        "grouped": nn.Conv2d(64, 64, 3, groups=8),
    })
    dense = _params(model)
    unfuse_(model)
    plan = allocate_ranks(model, dense / 4, "auto")
    assert plan.reachable and dense / plan.total_planned >= 3.9
    modules = dict(model.named_modules())
    chosen = {name: choose_method(modules[name], option.params, ("svd", "tucker", "cp", "tt"))[0]
              for name, option in plan.choices.items()}
    assert {"attn.q_proj", "lstm.cells.0.hidden_map", "grouped"} <= set(chosen)
    compress_(model, {name: config for name, config in chosen.items() if config is not None})
    assert dense / _params(model) >= 3.5
