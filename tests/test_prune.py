from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.helpers.models import TinyResNet
from tetra_lightning.decompose import TuckerConfig, compress_
from tetra_lightning.prune import (
    PruneConfig,
    output_layers,
    prune_,
    replay_history,
    restore_pruned_structure,
)
from tetra_lightning.report import count_macs, count_parameters

X = torch.randn(2, 3, 16, 16)


def test_uniform_pruning_shrinks_params_and_macs_by_about_four() -> None:
    model = TinyResNet()
    dense, dense_macs = count_parameters(model), count_macs(model, X)
    history = prune_(model, X, pruning_ratio=0.5)
    # Half of the channels on both sides of every conv: ~4x fewer weights and MACs (head and stem inputs kept).
    assert 3.6 <= dense / count_parameters(model) <= 4.2
    assert 3.6 <= dense_macs / count_macs(model, X) <= 4.2
    assert model.fc.out_features == 10 and model.fc.in_features == 32
    assert model.conv1.out_channels == 8 and model.conv1.in_channels == 3
    assert history[0]["kind"] == "prune" and history[0]["params_after"] == count_parameters(model)
    assert model.eval()(X).shape == (2, 10)


def test_replay_on_a_fresh_model_gives_identical_outputs() -> None:
    model = TinyResNet()
    history = json.loads(json.dumps(prune_(model, X, pruning_ratio=0.4, importance="l2", round_to=4)))
    fresh = restore_pruned_structure(TinyResNet(seed=1), history)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.eval()(X), model.eval()(X))
    assert all(m.out_channels % 4 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    with pytest.raises(ValueError, match="differ from the recorded ones"):
        restore_pruned_structure(TinyResNet(widths=(16, 32, 48)), history)


@pytest.mark.parametrize("importance", ["l1", "bn_scale", "taylor"])
def test_importances_keep_the_most_important_channels(importance: str) -> None:
    model = TinyResNet()
    with torch.no_grad():  # make channel 3 of the stem group clearly the most important
        model.conv1.weight[3] *= 50
        model.bn1.weight[3] = 50.0
    loss_fn = (lambda m: m(X).square().sum()) if importance == "taylor" else None
    history = prune_(model, X, pruning_ratio=0.5, importance=importance, loss_fn=loss_fn)
    removed = dict(((name, d), idx) for name, d, idx in history[0]["ops"])[("conv1", "out")]
    assert 3 not in removed and len(removed) == 8
    assert all(p.grad is None for p in model.parameters())


def test_global_pruning_and_target_params_ratio() -> None:
    model = TinyResNet()
    dense = count_parameters(model)
    prune_(model, X, target_params_ratio=4.5)
    assert 4.5 <= dense / count_parameters(model) <= 5.2
    glob = TinyResNet()
    prune_(glob, X, pruning_ratio=0.5, global_pruning=True)
    assert count_parameters(glob) < 0.5 * dense
    assert glob.eval()(X).shape == (2, 10)


def test_factorized_layers_are_pruned_and_mixed_history_replays() -> None:
    model = TinyResNet()
    history = compress_(model, TuckerConfig(rank=0.5))
    history += prune_(model, X, pruning_ratio=0.5)
    fresh = TinyResNet()
    assert len(replay_history(fresh, json.loads(json.dumps(history)))) == len(history)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.eval()(X), model.eval()(X))
    assert replay_history(fresh, history) == []  # idempotent


def test_output_layer_is_kept_and_ignored_layers() -> None:
    assert output_layers(TinyResNet(), X) == ["fc"]
    model = TinyResNet()
    prune_(model, X, pruning_ratio=0.5, ignored_layers=["conv1"])
    assert model.conv1.out_channels == 16  # and the whole residual group tied to it
    assert model.fc.in_features == 64 // 2 and model.fc.out_features == 10


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pruning_ratio": 0.0}, ValueError, r"`pruning_ratio` must be in \(0, 1\).*got 0.0"),
        ({"pruning_ratio": 1.2}, ValueError, r"`pruning_ratio` must be in \(0, 1\).*got 1.2"),
        ({"pruning_ratio": "half"}, TypeError, r"`pruning_ratio` must be a float in \(0, 1\), got str"),
        (
            {"importance": "random"},
            ValueError,
            r"`importance` must be one of 'l1', 'l2', 'bn_scale', 'taylor'",
        ),
        ({"round_to": 0}, ValueError, r"`round_to` must be None or an int >= 1"),
        ({"target_params_ratio": 0.5}, ValueError, r"`target_params_ratio` must be > 1"),
        ({"importance": "taylor"}, ValueError, r"has no gradients. Pass `loss_fn="),
        ({"ignored_layers": ["nope"]}, ValueError, r"`ignored_layers` names 'nope'"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        prune_(TinyResNet(), X, **kwargs)


def test_prune_config_and_keywords_prune_the_same_channels() -> None:
    config = PruneConfig(pruning_ratio=0.4, importance="l2", round_to=4, ignored_layers=("conv1",))
    by_config, by_keywords, by_module = TinyResNet(), TinyResNet(), TinyResNet()
    history = prune_(by_config, X, config)
    again = prune_(by_keywords, X, pruning_ratio=0.4, importance="l2", round_to=4, ignored_layers=["conv1"])
    with_module = prune_(by_module, X, pruning_ratio=0.4, importance="l2", round_to=4,
                         ignored_layers=[by_module.conv1])  # modules become names
    assert history[0]["ops"] == again[0]["ops"] == with_module[0]["ops"]
    assert history[0]["config"] == config.to_dict() == with_module[0]["config"]
    assert PruneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert by_config.conv1.out_channels == 16 and count_parameters(by_config) == count_parameters(by_keywords)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: PruneConfig(max_pruning_ratio=1.5), ValueError, r"`max_pruning_ratio` must be in \(0, 1\], got 1.5"),
        (lambda: PruneConfig(ignored_layers="fc"), TypeError, r"`ignored_layers` must be a sequence of module names"),
        (lambda: PruneConfig(global_pruning=1), TypeError, r"`global_pruning` must be a bool, got 1"),
        (lambda: PruneConfig(target_params_ratio="4"), TypeError, r"`target_params_ratio` must be a number > 1"),
        (lambda: PruneConfig.from_dict({"ratio": 0.5}), ValueError, r"Unknown PruneConfig field\(s\) \['ratio'\]"),
        (lambda: prune_(TinyResNet(), X, 0.5), TypeError, r"`config` must be a PruneConfig, got float 0.5"),
        (lambda: prune_(TinyResNet(), X, PruneConfig(), round_to=4), TypeError,
         r"Pass either `config` or its fields as keywords, not both"),
        (lambda: prune_(TinyResNet(), X, pruning_rate=0.5), TypeError,
         r"prune_ got unknown keyword argument\(s\) \['pruning_rate'\]"),
        (lambda: prune_(TinyResNet(), X, ignored_layers=[nn.Linear(2, 2)]), ValueError,
         r"`ignored_layers` holds a Linear that is not a submodule of the model"),
    ],
)
def test_prune_config_bad_inputs(make, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


class _StoredWidthNet(nn.Module):
    """Reshapes by a stored width (as MaxViT's attention reshapes by its head size): torch-pruning cannot follow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3)
        self.conv2 = nn.Conv2d(16, 16, 3)
        self.head = nn.Linear(16, 4)
        self.width = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3))
        return self.head(x.reshape(x.shape[0], self.width))


def test_a_group_whose_pruning_breaks_the_forward_keeps_its_channels_with_the_reason() -> None:
    torch.manual_seed(0)
    net = _StoredWidthNet()
    x = torch.randn(1, 3, 8, 8)
    history = prune_(net, x, pruning_ratio=0.5)
    assert net.conv1.out_channels == 8 and net.conv2.in_channels == 8  # the group before the reshape is pruned
    assert net.conv2.out_channels == 16 and net.head.in_features == 16  # the one reaching it is kept
    assert "breaks the forward" in history[0]["unpruned"]["conv2"]
    assert net(x).shape == (1, 4)
    rebuilt = restore_pruned_structure(_StoredWidthNet(), history)
    rebuilt.load_state_dict(net.state_dict())
    assert torch.equal(rebuilt(x), net(x))


def test_a_model_whose_only_group_breaks_the_forward_is_left_unpruned_with_an_error_naming_the_fix() -> None:
    torch.manual_seed(0)
    net = _StoredWidthNet()
    x = torch.randn(1, 3, 8, 8)
    expected = net(x)
    params = list(net.parameters())
    with pytest.raises(RuntimeError, match="breaks the forward.*ignored_layers"):
        prune_(net, x, pruning_ratio=0.5, ignored_layers=["conv1"])
    assert net.conv2.out_channels == 16 and net.head.in_features == 16
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]  # an optimizer's references stay valid
    assert torch.equal(net(x), expected)
