"""prune_ on the architectures torch-pruning's plain graph could not handle: channel shuffles, conv classifiers, ViT
class tokens and position embeddings, attention heads, multi-layer LSTMs and embeddings, weights read directly,
and dependency searches that grew without bound (Swin)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tetra_lightning.models import LSTMTextClassifier, TransformerTextClassifier
from tetra_lightning.prune import output_layers, prune_, restore_pruned_structure
from tetra_lightning.prune._torch_pruning import MAX_NODE_EXPANSIONS, BoundedDependencyGraph


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _prune_and_replay(make, x: torch.Tensor, ratio: float = 0.3) -> tuple[nn.Module, dict]:
    """Prunes a fresh model, checks the output shape and that the history replays to identical outputs."""
    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():
        shape = model(x).shape
    entry = prune_(model, x, pruning_ratio=ratio)[0]
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == shape and torch.isfinite(out).all()
    torch.manual_seed(1)
    fresh = restore_pruned_structure(make(), json.loads(json.dumps([entry]))).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), out)
    return model, entry


def test_torch_pruning_internals_used_by_the_adapter_exist() -> None:
    import torch_pruning as tp
    from torch_pruning.dependency import index_mapping, shape_infer
    from torch_pruning.dependency.group import Group
    from torch_pruning.pruner import function

    for name in ("_trace", "_build_dependency", "_detect_unwrapped_parameters", "register_customized_layer"):
        assert callable(getattr(tp.DependencyGraph, name)), name
    for name in ("update_concat_index_mapping", "update_split_index_mapping", "update_reshape_index_mapping",
                 "update_unbind_index_mapping", "update_expand_index_mapping", "update_slice_index_mapping"):
        assert callable(getattr(index_mapping, name)), name
    assert callable(shape_infer.init_shape_information) and callable(Group.has_pruning_op)
    assert callable(tp.pruner.BasePruner._downstream_node_as_root_if_attention)
    assert hasattr(function, "PrunerBox") and hasattr(tp.dependency, "DependencyGraph")
    view = torch.randn(2, 4, 3, 3, requires_grad=True).view(2, 2, 2, 3, 3).grad_fn
    assert tuple(view._saved_self_sym_sizes) == (2, 4, 3, 3) and tuple(view._input_metadata[0].shape) == (2, 2, 2, 3, 3)


def test_channel_shuffle_keeps_shuffled_channels_and_prunes_the_rest() -> None:
    from torchvision.models import ShuffleNetV2

    def make() -> nn.Module:
        return ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 128], num_classes=10)

    model, entry = _prune_and_replay(make, torch.randn(2, 3, 32, 32))
    assert _params(model) < 0.85 * _params(make())  # failed with ZeroDivisionError before
    assert any("channel shuffle" in reason for reason in entry["unpruned"].values())
    assert model.stage2[0].branch2[0].out_channels < 8  # a branch's inner channels are pruned


def test_conv_classifier_keeps_its_classes() -> None:
    def make() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(),
            nn.Conv2d(32, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    assert output_layers(make(), torch.randn(2, 3, 12, 12)) == ["4"]
    model, _ = _prune_and_replay(make, torch.randn(2, 3, 12, 12))
    assert model[4].out_channels == 10 and model[2].out_channels < 32


def test_vision_transformer_class_token_position_embedding_and_heads() -> None:
    from torchvision.models import VisionTransformer

    def make() -> nn.Module:
        return VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                 mlp_dim=64, num_classes=10)

    model, entry = _prune_and_replay(make, torch.randn(2, 3, 16, 16))
    hidden = model.conv_proj.out_channels
    assert hidden < 32 and hidden % 2 == 0 and model.hidden_dim == hidden
    assert model.class_token.shape == (1, 1, hidden) and model.encoder.pos_embedding.shape[-1] == hidden
    attention = model.encoder.layers[0].self_attention
    assert attention.embed_dim == hidden and attention.head_dim * 2 == hidden
    assert entry["parameter_dims"] == {"class_token": 2, "encoder.pos_embedding": 2}
    assert entry["attributes"] == {"": {"hidden_dim": hidden}}


def test_transformer_encoder_embed_dim_stays_a_multiple_of_the_heads() -> None:
    def make() -> nn.Module:
        return TransformerTextClassifier(vocab_size=50, d_model=32, nhead=4, num_layers=2, dim_feedforward=64)

    model, _ = _prune_and_replay(make, torch.randint(0, 50, (2, 8)))
    embed = model.encoder.layers[0].self_attn.embed_dim
    assert embed < 32 and embed % 4 == 0 and model.embedding.embedding_dim == embed
    assert model.positions.shape[-1] == embed and model.head.out_features == 10


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_multi_layer_recurrent_classifiers_and_their_embeddings(rnn: str) -> None:
    class GRUClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding, self.gru, self.head = nn.Embedding(50, 16), nn.GRU(16, 32, 2, batch_first=True), nn.Linear(32, 10)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.gru(self.embedding(tokens))[0][:, -1])

    def make() -> nn.Module:
        if rnn == "lstm":
            return LSTMTextClassifier(vocab_size=50, embedding_dim=16, hidden_size=32, num_layers=2)
        return GRUClassifier()

    model, entry = _prune_and_replay(make, torch.randint(0, 50, (2, 8)))
    recurrent = model.lstm if rnn == "lstm" else model.gru
    assert recurrent.hidden_size < 32 and model.head.in_features == recurrent.hidden_size
    assert model.embedding.embedding_dim == recurrent.input_size < 16
    assert tuple(recurrent.weight_ih_l1.shape) == (recurrent.weight_hh_l1.shape[0], recurrent.hidden_size)


def test_a_graph_nothing_can_be_pruned_in_fails_with_the_reasons() -> None:
    model = LSTMTextClassifier(vocab_size=50, embedding_dim=16, hidden_size=32, bidirectional=True)
    with pytest.raises(RuntimeError, match=r"prune_ found no channel group of LSTMTextClassifier.*lstm is "
                       r"bidirectional: its two directions share output channels"):
        prune_(model, torch.randint(0, 50, (2, 8)), pruning_ratio=0.3)


def test_layers_whose_weight_is_read_directly_keep_their_channels() -> None:
    class Reads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.read = nn.Linear(8, 32), nn.Linear(32, 32)
            self.mid, self.head = nn.Linear(32, 32), nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.linear(torch.relu(self.inner(x)), self.read.weight, self.read.bias)
            return self.head(torch.relu(self.mid(x)))

    model, entry = _prune_and_replay(Reads, torch.randn(2, 8))
    assert model.inner.out_features == 32 and model.read.in_features == 32  # torch-pruning cannot see `read`
    assert "reads 'read''s weight directly" in entry["unpruned"]["inner"]
    assert model.mid.out_features < 32 and model.head.in_features == model.mid.out_features


def test_swin_search_is_bounded_and_the_mlps_are_pruned() -> None:
    from torchvision.models import SwinTransformer

    def make() -> nn.Module:
        return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[2, 2],
                               num_classes=10)

    model, entry = _prune_and_replay(make, torch.randn(2, 3, 16, 16))
    assert entry["unpruned"] and _params(model) < _params(make())
    assert model.features[1][0].mlp[0].out_features < 64  # MLP hidden channels pruned, the residual stream kept


def test_bounded_graph_stops_a_search_that_revisits_a_node(monkeypatch: pytest.MonkeyPatch) -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    graph = BoundedDependencyGraph().build_dependency(net, torch.randn(1, 4))
    graph.max_group_indices = 3  # the hidden layer's group collects 8 x 3 indices: its search must stop
    roots = [graph._module2name[group[0].dep.target.module] for group in graph.get_all_groups()]
    assert "0" not in roots and "grew without bound" in graph.skipped["0"]
    assert MAX_NODE_EXPANSIONS >= 4
