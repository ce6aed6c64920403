"""The history registry of tetra_lightning.checkpoint: kinds registered by the cores, replayed in order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers.models import TinyResNet
from tetra_lightning.checkpoint import (
    BUILTIN_PROVIDERS,
    entry_key,
    history_kind,
    register_history_kind,
    replay_history,
)
from tetra_lightning.decompose import TuckerConfig, compress_
from tetra_lightning.prune import prune_

X = torch.randn(2, 3, 16, 16)


def test_a_registered_kind_is_replayed_in_history_order() -> None:
    calls: list[tuple[str, list[str]]] = []

    def replay(model: nn.Module, entries: list[dict]) -> None:
        calls.append(("widen", [entry["layer"] for entry in entries]))
        for entry in entries:
            setattr(model, entry["layer"], nn.Linear(2, 8))

    register_history_kind("test-widen", replay, ("kind", "layer"))
    model = nn.Sequential(nn.Linear(4, 4))
    history = [
        {"name": "0", "method": "svd", "spec": {"class": "SVDLinear", "in_features": 4, "out_features": 4,
                                                 "rank": 2, "bias": True}, "ranks": [2]},
        {"kind": "test-widen", "layer": "a", "params_after": 1},
        {"kind": "test-widen", "layer": "b", "params_after": 2},
    ]
    assert len(replay_history(model, history)) == 3
    assert calls == [("widen", ["a", "b"])]  # consecutive entries of one kind in one call, after the SVD
    assert type(model[0]).__name__ == "SVDLinear" and model.b.out_features == 8
    # measurements are not part of an entry's identity
    assert entry_key(history[1]) == entry_key({**history[1], "params_after": 99})
    assert replay_history(model, history) == []


def test_unknown_kind_names_the_fix() -> None:
    with pytest.raises(ValueError, match=r"No replay is registered for history entries of kind 'distill'.*Import"):
        replay_history(nn.Linear(2, 2), [{"kind": "distill"}])


def test_builtin_providers_register_their_kinds() -> None:
    assert history_kind("decompose").replay.__module__ == "tetra_lightning.decompose.core"
    assert history_kind("prune").replay.__module__ == "tetra_lightning.prune.core"
    assert set(BUILTIN_PROVIDERS) == {"decompose", "prune", "qat"}


def test_a_fresh_process_restores_with_the_checkpoint_module_alone(tmp_path: Path) -> None:
    """Loading must not depend on which cores the loading process happened to import."""
    torch.manual_seed(0)
    model = TinyResNet()
    history = compress_(model, TuckerConfig(rank=0.5)) + prune_(model, X, pruning_ratio=0.5)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "tetra_lightning": {"history": json.loads(json.dumps(history))}},
               path)
    torch.save(X, tmp_path / "x.pt")
    torch.save(model.eval()(X), tmp_path / "y.pt")
    code = (
        "import sys, torch\n"
        "from tetra_lightning.checkpoint import restore_from_checkpoint\n"
        "from tests.helpers.models import TinyResNet\n"
        "assert 'tetra_lightning.prune' not in sys.modules and 'tetra_lightning.decompose' not in sys.modules\n"
        f"model = restore_from_checkpoint(TinyResNet(seed=1), {str(path)!r}).eval()\n"
        f"x, y = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'y.pt')!r})\n"
        f"saved = torch.load({str(path)!r})['state_dict']\n"
        "print(all(torch.equal(v, saved[k]) for k, v in model.state_dict().items()), float((model(x) - y).abs().max()))\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    same_weights, output_error = out.stdout.split()
    assert same_weights == "True" and float(output_error) < 1e-5
