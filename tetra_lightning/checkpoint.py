"""Loading checkpoints of models whose structure was rewritten (decomposed, recomposed) during training.

A compressed checkpoint's ``state_dict`` has keys such as ``net.conv1.first.weight`` that a freshly constructed
dense model does not have. The structural rewrites are therefore recorded as a *history* (a list of plain,
JSON-safe dicts, see :func:`tetra_lightning.decompose.compress_`) and stored in the checkpoint under
``checkpoint["tetra_lightning"]["history"]``. Replaying that history on a fresh dense model with
:func:`tetra_lightning.decompose.restore_structure` rebuilds the factorized modules, after which the weights
load as usual.

Two ways to use it:

* ``class MyModel(CompressibleMixin, pl.LightningModule)``: ``MyModel.load_from_checkpoint(path)`` and
  ``Trainer.fit(model, ckpt_path=path)`` then just work, because the mixin's ``on_load_checkpoint`` replays the
  history before Lightning loads the weights.
* Any ``nn.Module``: ``restore_from_checkpoint(model, path)`` replays the history and loads the weights.

The checkpoint holds only plain Python types and tensors, so ``torch.load(path, weights_only=True)`` reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "CHECKPOINT_KEY",
    "HISTORY_STATE_KEY",
    "CompressibleMixin",
    "applied_history",
    "entry_key",
    "history_from_checkpoint",
    "history_to_tensor",
    "is_prune_entry",
    "qat_from_checkpoint",
    "record_history",
    "replay_history",
    "replay_qat",
    "restore_from_checkpoint",
]

#: Top-level key of a Lightning checkpoint under which the structural history is stored.
CHECKPOINT_KEY = "tetra_lightning"
#: State-dict key under which a spawned DDP worker sends its structural history to the launching process.
HISTORY_STATE_KEY = "_tetra_lightning_history"
# Name of the plain attribute on a module that lists the history entries already applied to it.
_APPLIED_ATTR = "_tetra_applied_history"


def is_prune_entry(entry: Mapping[str, Any]) -> bool:
    """Whether a history entry was written by :func:`~tetra_lightning.prune.prune_` (else by ``compress_``).

    Example:
        >>> is_prune_entry({"kind": "prune", "ops": []}), is_prune_entry({"name": "fc", "method": "svd"})
        (True, False)
    """
    return entry.get("kind") == "prune"


def entry_key(entry: Mapping[str, Any]) -> str:
    """Structural identity of a history entry; measurements such as errors (nan != nan) are left out.

    Example:
        >>> entry_key({"kind": "prune", "ops": [["fc", "out", [1]]], "params_after": 3})
        '{"kind": "prune", "ops": [["fc", "out", [1]]]}'
    """
    if is_prune_entry(entry):
        structural = {"kind": "prune", "ops": entry.get("ops")}
    else:
        structural = {key: entry.get(key) for key in ("name", "method", "spec", "ranks", "skipped")}
    return json.dumps(structural, sort_keys=True, default=str)


def history_to_tensor(history: list[dict[str, Any]]) -> torch.Tensor:
    """Encodes a history as a uint8 tensor (JSON bytes), so it can travel inside a ``state_dict``.

    Example:
        >>> bytes(history_to_tensor([{"kind": "prune"}]).tolist())
        b'[{"kind": "prune"}]'
    """
    return torch.tensor(list(json.dumps(history).encode()), dtype=torch.uint8)


def applied_history(model: nn.Module) -> list[dict[str, Any]]:
    """The structural history already applied to ``model`` (empty for a freshly built model).

    Example:
        >>> applied_history(nn.Linear(2, 2))
        []
    """
    return list(getattr(model, _APPLIED_ATTR, []))


def record_history(model: nn.Module, entries: list[dict[str, Any]]) -> None:
    """Appends history entries that were just applied to ``model`` (kept as a plain attribute).

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> record_history(layer, [{"name": "x", "method": "svd"}])
        >>> len(applied_history(layer))
        1
    """
    object.__setattr__(model, _APPLIED_ATTR, applied_history(model) + [dict(entry) for entry in entries])


def history_from_checkpoint(checkpoint: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Reads the structural history from a loaded checkpoint dict (empty list when there is none).

    Args:
        checkpoint: a dict as returned by ``torch.load`` on a Lightning checkpoint.

    Returns:
        The list of history entries.

    Example:
        >>> history_from_checkpoint({"tetra_lightning": {"history": [{"name": "fc", "method": "svd"}]}})
        [{'name': 'fc', 'method': 'svd'}]
        >>> history_from_checkpoint({"state_dict": {}})
        []
    """
    section = checkpoint.get(CHECKPOINT_KEY) or {}
    return [dict(entry) for entry in section.get("history", [])]


def replay_history(model: nn.Module, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Applies the part of ``history`` that ``model`` does not have yet; idempotent.

    Args:
        model: a fresh dense model, or one that already went through a prefix of ``history``.
        history: the full structural history: entries of :func:`~tetra_lightning.decompose.compress_`,
            ``recompose_`` and :func:`~tetra_lightning.prune.prune_`, in the order they were applied.

    Returns:
        The entries that were replayed now (empty when the model already has the structure).

    Raises:
        ValueError: if the model went through a different history (e.g. it was compressed differently).

    Example:
        >>> replay_history(nn.Linear(4, 4), [])
        []
    """
    applied = applied_history(model)
    if [entry_key(entry) for entry in history[: len(applied)]] != [entry_key(entry) for entry in applied]:
        raise ValueError(
            f"The model already went through {len(applied)} structural rewrites that do not match the first "
            f"entries of the checkpoint's history ({len(history)} entries). Load the checkpoint into a freshly "
            "constructed (dense) model."
        )
    pending = [dict(entry) for entry in history[len(applied) :]]
    decompositions: list[dict[str, Any]] = []
    for entry in [*pending, None]:
        # Consecutive decomposition entries are replayed together (restore_structure re-resolves names);
        # pruning entries in between are replayed where they happened.
        if entry is not None and not is_prune_entry(entry):
            decompositions.append(entry)
            continue
        if decompositions:
            from tetra_lightning.decompose import restore_structure

            restore_structure(model, decompositions)
            decompositions = []
        if entry is not None:
            from tetra_lightning.prune.core import restore_pruned_structure

            restore_pruned_structure(model, [entry])
    if pending:
        record_history(model, pending)
    return pending


def qat_from_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """Reads the quantization-aware-training marker a :class:`~tetra_lightning.QuantizationCallback` wrote.

    Example:
        >>> qat_from_checkpoint({"state_dict": {}}) is None
        True
    """
    section = checkpoint.get(CHECKPOINT_KEY) or {}
    spec = section.get("qat")
    return dict(spec) if spec else None


def replay_qat(model: nn.Module, checkpoint: Mapping[str, Any]) -> bool:
    """Re-creates the fake-quantized (PT2E QAT) network a checkpoint written during QAT holds.

    A checkpoint saved after ``QuantizationCallback(qat_start_epoch=k)`` started fake quantization stores the
    weights and observer buffers of the prepared ``torch.fx.GraphModule``; a freshly constructed float model has
    none of them. This prepares the same submodule again (PT2E ``prepare_qat_pt2e`` on inputs of the recorded
    shapes) so that the checkpoint's state dict loads strictly. Call it after :func:`replay_history`.

    Args:
        model: the freshly constructed model (after its structural history was replayed).
        checkpoint: the loaded checkpoint dict.

    Returns:
        ``True`` when the submodule was prepared now, ``False`` when the checkpoint has no QAT marker or the
        submodule is already prepared or ``model`` has no submodule of the recorded name (e.g. the inner network
        was passed instead of the LightningModule).

    Example:
        >>> replay_qat(nn.Linear(2, 2), {"state_dict": {}})
        False
    """
    spec = qat_from_checkpoint(checkpoint)
    if spec is None:
        return False
    name = str(spec["submodule"])
    try:
        current = model.get_submodule(name)
    except AttributeError:
        return False
    if isinstance(current, torch.fx.GraphModule):
        return False
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    from tetra_lightning.quantize import prepare_int8

    example = tuple(
        torch.zeros(tuple(int(d) for d in item["shape"]), dtype=getattr(torch, str(item["dtype"])))
        for item in spec["inputs"]
    )
    was_training = current.training
    prepared = prepare_int8(current, example, is_qat=True)
    allow_exported_model_train_eval(prepared)  # Lightning switches train/eval around validation
    prepared.train(was_training)
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, prepared)
    return True


def restore_from_checkpoint(
    model: nn.Module,
    checkpoint_or_path: Mapping[str, Any] | str | os.PathLike[str],
    *,
    load_weights: bool = True,
    strict: bool = True,
    state_dict_key: str = "state_dict",
) -> nn.Module:
    """Rebuilds the compressed structure recorded in a checkpoint on ``model`` and loads the weights.

    Works with Lightning checkpoints (weights under ``"state_dict"``) written while
    :class:`~tetra_lightning.callbacks.TensorCompressionCallback` was active, and with any dict that has a
    ``"tetra_lightning": {"history": [...]}`` section. Paths are read with ``torch.load(weights_only=True)``.

    Args:
        model: a freshly constructed dense model of the same architecture (a LightningModule or its inner
            ``nn.Module``, matching the checkpoint's state-dict keys).
        checkpoint_or_path: a loaded checkpoint dict or a path to one.
        load_weights: also load ``checkpoint[state_dict_key]`` into the model.
        strict: passed to ``load_state_dict``.
        state_dict_key: key of the weights in the checkpoint dict.

    Returns:
        The same ``model``, with factorized layers where the checkpoint has them.

    Raises:
        KeyError: if ``load_weights`` and the checkpoint has no ``state_dict_key``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from tetra_lightning.decompose import SVDConfig, compress_
        >>> dense = nn.Sequential(nn.Linear(64, 64))
        >>> history = compress_(dense, SVDConfig(rank=4))
        >>> ckpt = {"state_dict": dense.state_dict(), "tetra_lightning": {"history": history}}
        >>> fresh = restore_from_checkpoint(nn.Sequential(nn.Linear(64, 64)), ckpt)
        >>> all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), dense.state_dict().values()))
        True
    """
    if isinstance(checkpoint_or_path, Mapping):
        checkpoint = checkpoint_or_path
    else:
        checkpoint = torch.load(checkpoint_or_path, map_location="cpu", weights_only=True)
    replay_history(model, history_from_checkpoint(checkpoint))
    replay_qat(model, checkpoint)
    if load_weights:
        if state_dict_key not in checkpoint:
            raise KeyError(
                f"The checkpoint has no {state_dict_key!r} entry (keys: {sorted(checkpoint)}). Pass "
                "`state_dict_key=` naming the weights, or `load_weights=False` to rebuild the structure only."
            )
        model.load_state_dict(checkpoint[state_dict_key], strict=strict)
    return model


class CompressibleMixin:
    """LightningModule mixin that makes checkpoints of compressed and pruned models loadable.

    Put it *before* ``LightningModule`` in the bases. Its ``on_load_checkpoint`` replays the structural history
    stored in the checkpoint (``checkpoint["tetra_lightning"]["history"]``) on the freshly constructed dense
    model before Lightning loads the weights, so ``Model.load_from_checkpoint(path)``,
    ``Trainer.fit(model, ckpt_path=path)``, ``Trainer.validate/test(ckpt_path=...)`` all see the factorized
    modules. Its ``on_save_checkpoint`` writes the history the module carries (e.g. after a manual
    :func:`~tetra_lightning.decompose.compress_` followed by :func:`record_history`). Both call ``super()``, so
    the user's own hooks still run.

    Example:
        >>> import lightning.pytorch as pl
        >>> import torch
        >>> from torch import nn
        >>> from tetra_lightning.decompose import SVDConfig, compress_
        >>> class Model(CompressibleMixin, pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = nn.Linear(64, 64)
        >>> model = Model()
        >>> record_history(model, compress_(model, SVDConfig(rank=4)))
        >>> ckpt = {"state_dict": model.state_dict()}
        >>> model.on_save_checkpoint(ckpt)
        >>> fresh = Model()
        >>> fresh.on_load_checkpoint(ckpt)
        >>> _ = fresh.load_state_dict(ckpt["state_dict"])
        >>> type(fresh.fc).__name__ == type(model.fc).__name__
        True
    """

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        assert isinstance(self, nn.Module)
        replay_history(self, history_from_checkpoint(checkpoint))
        replay_qat(self, checkpoint)
        parent = super()
        if hasattr(parent, "on_load_checkpoint"):
            parent.on_load_checkpoint(checkpoint)  # type: ignore[misc]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        # With ddp_spawn the launching process loads the worker's weights with load_state_dict(strict=False); a
        # structural callback then puts its history into that state dict, replayed here so the shapes fit.
        if HISTORY_STATE_KEY in state_dict:
            blob = state_dict[HISTORY_STATE_KEY]
            replay_history(self, json.loads(bytes(blob.tolist()).decode()))  # type: ignore[arg-type]
            state_dict = {key: value for key, value in state_dict.items() if key != HISTORY_STATE_KEY}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)  # type: ignore[misc]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        assert isinstance(self, nn.Module)
        history = applied_history(self)
        if history:
            section = checkpoint.setdefault(CHECKPOINT_KEY, {})
            section["history"] = history
        parent = super()
        if hasattr(parent, "on_save_checkpoint"):
            parent.on_save_checkpoint(checkpoint)  # type: ignore[misc]
