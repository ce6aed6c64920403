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

Without either, ``Model.load_from_checkpoint(path)`` fails inside torch ("Missing key(s)", "Unexpected key(s)",
"size mismatch"): nothing of this library runs there. :func:`check_checkpoint_fits` tells that case apart from a
checkpoint of another architecture and names the fix; the structural callbacks warn at the first checkpoint of a
module without the mixin.

The checkpoint holds only plain Python types and tensors, so ``torch.load(path, weights_only=True)`` reads it.

This module knows no transformation itself: each core registers how its entries are identified and replayed
(:func:`register_history_kind`: ``"decompose"`` by :mod:`tetra_lightning.decompose`, ``"prune"`` by
:mod:`tetra_lightning.prune`) and how a checkpoint section is rebuilt (:func:`register_checkpoint_section`:
``"qat"`` by :mod:`tetra_lightning.quantize`). A checkpoint may be loaded in a process that never imported the
core that wrote it, so the built-in kinds name their provider package (:data:`BUILTIN_PROVIDERS`), imported by
name on first use, the way entry points are; a new kind only has to register itself.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "BUILTIN_PROVIDERS",
    "CHECKPOINT_KEY",
    "DEFAULT_KIND",
    "HISTORY_STATE_KEY",
    "CompressibleMixin",
    "HistoryKind",
    "applied_history",
    "check_checkpoint_fits",
    "check_history",
    "entry_key",
    "entry_kind",
    "history_from_checkpoint",
    "history_to_tensor",
    "history_kind",
    "is_prune_entry",
    "qat_from_checkpoint",
    "record_history",
    "register_checkpoint_section",
    "register_history_kind",
    "replay_history",
    "replay_qat",
    "replay_sections",
    "restore_from_checkpoint",
]

#: Top-level key of a Lightning checkpoint under which the structural history is stored.
CHECKPOINT_KEY = "tetra_lightning"
#: State-dict key under which a spawned DDP worker sends its structural history to the launching process.
HISTORY_STATE_KEY = "_tetra_lightning_history"
# Name of the plain attribute on a module that lists the history entries already applied to it.
_APPLIED_ATTR = "_tetra_applied_history"
#: Kind of the history entries without a ``"kind"`` key (``compress_``, ``recompose_``, ``shrink_``).
DEFAULT_KIND = "decompose"
#: Package that registers each built-in history kind and checkpoint section when it is imported.
BUILTIN_PROVIDERS: dict[str, str] = {
    "decompose": "tetra_lightning.decompose",
    "prune": "tetra_lightning.prune",
    "qat": "tetra_lightning.quantize",
}

SectionReplay = Callable[[nn.Module, Mapping[str, Any]], bool]


@dataclass(frozen=True)
class HistoryKind:
    """How the history entries of one kind are identified and replayed.

    Attributes:
        name: the kind, ``entry["kind"]`` (entries without the key are of kind :data:`DEFAULT_KIND`).
        replay: ``replay(model, entries)`` rebuilds the structure of consecutive entries of this kind on
            ``model`` in place (no data, no example input).
        key_fields: the entry's keys that identify the rewrite; measurements (errors, counts) are left out.

    Example:
        >>> kind = history_kind("prune")
        >>> kind.key_fields
        ('kind', 'ops')
    """

    name: str
    replay: Callable[[nn.Module, Sequence[Mapping[str, Any]]], Any]
    key_fields: tuple[str, ...]


_HISTORY_KINDS: dict[str, HistoryKind] = {}
_SECTIONS: dict[str, SectionReplay] = {}


def register_history_kind(
    name: str, replay: Callable[[nn.Module, Sequence[Mapping[str, Any]]], Any], key_fields: Sequence[str]
) -> HistoryKind:
    """Registers how history entries of kind ``name`` are replayed (called by the core that writes them).

    Args:
        name: the value of ``entry["kind"]`` (:data:`DEFAULT_KIND` for entries without one).
        replay: ``replay(model, entries)``, rebuilding the structure of consecutive entries of this kind.
        key_fields: keys that identify an entry (see :func:`entry_key`).

    Returns:
        The registered :class:`HistoryKind` (registering the same name again replaces it).

    Raises:
        TypeError: if ``replay`` is not callable.

    Example:
        >>> from torch import nn
        >>> kind = register_history_kind("noop", lambda model, entries: model, ["kind", "layer"])
        >>> replay_history(nn.Linear(2, 2), [{"kind": "noop", "layer": "fc"}])
        [{'kind': 'noop', 'layer': 'fc'}]
    """
    if not callable(replay):
        raise TypeError(f"`replay` must be callable as replay(model, entries), got {replay!r}.")
    kind = HistoryKind(str(name), replay, tuple(key_fields))
    _HISTORY_KINDS[kind.name] = kind
    return kind


def register_checkpoint_section(name: str, replay: SectionReplay) -> None:
    """Registers how ``checkpoint["tetra_lightning"][name]`` is rebuilt on a fresh model after the history.

    Args:
        name: the section's key.
        replay: ``replay(model, section) -> bool``, True when it changed the model.

    Raises:
        TypeError: if ``replay`` is not callable.

    Example:
        >>> register_checkpoint_section("note", lambda model, section: False)
    """
    if not callable(replay):
        raise TypeError(f"`replay` must be callable as replay(model, section), got {replay!r}.")
    _SECTIONS[str(name)] = replay


def _load_provider(name: str) -> None:
    provider = BUILTIN_PROVIDERS.get(name)
    if provider is not None and name not in _HISTORY_KINDS and name not in _SECTIONS:
        importlib.import_module(provider)


def history_kind(name: str) -> HistoryKind:
    """The registered :class:`HistoryKind` named ``name`` (a built-in kind's provider is imported first).

    Raises:
        ValueError: for a kind that no imported module registered.

    Example:
        >>> history_kind("decompose").key_fields
        ('name', 'method', 'spec', 'ranks', 'skipped')
    """
    _load_provider(name)
    if name not in _HISTORY_KINDS:
        raise ValueError(
            f"No replay is registered for history entries of kind {name!r} (registered: {sorted(_HISTORY_KINDS)}). "
            "Import the module that wrote them (it calls `register_history_kind`) before loading the checkpoint."
        )
    return _HISTORY_KINDS[name]


def entry_kind(entry: Mapping[str, Any]) -> str:
    """The kind of a history entry: ``entry["kind"]``, or :data:`DEFAULT_KIND` for decomposition entries.

    Example:
        >>> entry_kind({"kind": "prune"}), entry_kind({"name": "fc", "method": "svd"})
        ('prune', 'decompose')
    """
    return str(entry.get("kind", DEFAULT_KIND))


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
    structural = {key: entry.get(key) for key in history_kind(entry_kind(entry)).key_fields}
    return json.dumps(structural, sort_keys=True, default=str)


def check_history(history: Any, argument: str = "history") -> None:
    """Raises ``TypeError`` unless ``history`` is a list (or tuple) of history entries (dicts).

    Example:
        >>> check_history([{"name": "fc", "method": "svd"}])
        >>> check_history(None)
        Traceback (most recent call last):
        ...
        TypeError: `history` must be a list of history entries (dicts) as compress_ / prune_ return it, got None. ...
    """
    if not isinstance(history, (list, tuple)) or not all(isinstance(entry, Mapping) for entry in history):
        raise TypeError(
            f"`{argument}` must be a list of history entries (dicts) as compress_ / prune_ return it, got "
            f"{history!r:.80}. Pass [] for a model without rewrites, or history_from_checkpoint(checkpoint) for the "
            "history a checkpoint holds."
        )


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
            ``recompose_``, :func:`~tetra_lightning.prune.prune_` or any registered kind, in the order they were
            applied.

    Returns:
        The entries that were replayed now (empty when the model already has the structure).

    Raises:
        ValueError: if the model went through a different history (e.g. it was compressed differently), or for
            an entry of a kind nothing registered.

    Example:
        >>> replay_history(nn.Linear(4, 4), [])
        []
    """
    check_history(history)
    applied = applied_history(model)
    if [entry_key(entry) for entry in history[: len(applied)]] != [entry_key(entry) for entry in applied]:
        raise ValueError(
            f"The model already went through {len(applied)} structural rewrites that do not match the first "
            f"entries of the checkpoint's history ({len(history)} entries). Load the checkpoint into a freshly "
            "constructed (dense) model."
        )
    pending = [dict(entry) for entry in history[len(applied) :]]
    # Consecutive entries of one kind are replayed together, each run where it happened in the history.
    run: list[dict[str, Any]] = []
    for entry in [*pending, None]:
        if run and (entry is None or entry_kind(entry) != entry_kind(run[0])):
            history_kind(entry_kind(run[0])).replay(model, run)
            run = []
        if entry is not None:
            run.append(entry)
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


def replay_sections(model: nn.Module, checkpoint: Mapping[str, Any]) -> list[str]:
    """Rebuilds every registered section of ``checkpoint["tetra_lightning"]`` on ``model`` (after the history).

    Args:
        model: the freshly constructed model (after :func:`replay_history`).
        checkpoint: the loaded checkpoint dict.

    Returns:
        The names of the sections that changed the model.

    Example:
        >>> replay_sections(nn.Linear(2, 2), {"state_dict": {}})
        []
    """
    section = checkpoint.get(CHECKPOINT_KEY) or {}
    changed = []
    for name, value in section.items():
        if name == "history" or not value:
            continue
        _load_provider(name)
        replay = _SECTIONS.get(name)
        if replay is not None and replay(model, dict(value)):
            changed.append(name)
    return changed


def replay_qat(model: nn.Module, checkpoint: Mapping[str, Any]) -> bool:
    """Re-creates the fake-quantized (PT2E QAT) network a checkpoint written during QAT holds.

    A checkpoint saved after ``QuantizationCallback(qat_start_epoch=k)`` started fake quantization stores the
    weights and observer buffers of the prepared ``torch.fx.GraphModule``; a freshly constructed float model has
    none of them. The ``"qat"`` section's replay (registered by :mod:`tetra_lightning.quantize`) prepares the same
    submodule again on inputs of the recorded shapes, so that the state dict loads strictly. Call it after
    :func:`replay_history`.

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
    _load_provider("qat")
    return bool(_SECTIONS["qat"](model, spec))


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
        RuntimeError: when the weights do not fit even after the replay (another architecture); the message
            lists the keys that differ (see :func:`check_checkpoint_fits`).

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
    checkpoint = _load(checkpoint_or_path)
    replay_history(model, history_from_checkpoint(checkpoint))
    replay_sections(model, checkpoint)
    if load_weights:
        if state_dict_key not in checkpoint:
            raise KeyError(
                f"The checkpoint has no {state_dict_key!r} entry (keys: {sorted(checkpoint)}). Pass "
                "`state_dict_key=` naming the weights, or `load_weights=False` to rebuild the structure only."
            )
        try:
            model.load_state_dict(checkpoint[state_dict_key], strict=strict)
        except RuntimeError as error:  # torch's missing / unexpected keys: say why and what to do
            try:
                check_checkpoint_fits(model, checkpoint, state_dict_key=state_dict_key)
            except RuntimeError as explained:
                raise explained from error
            raise
    return model


def _load(checkpoint_or_path: Mapping[str, Any] | str | os.PathLike[str]) -> Mapping[str, Any]:
    if isinstance(checkpoint_or_path, Mapping):
        return checkpoint_or_path
    return torch.load(checkpoint_or_path, map_location="cpu", weights_only=True)


def _describe(entry: Mapping[str, Any]) -> str:
    kind = entry_kind(entry)
    if kind == DEFAULT_KIND:
        return f"{entry.get('method')} {entry.get('name')!r}"
    return str(kind)


def check_checkpoint_fits(
    model: nn.Module,
    checkpoint_or_path: Mapping[str, Any] | str | os.PathLike[str],
    *,
    state_dict_key: str = "state_dict",
) -> None:
    """Raises a ``RuntimeError`` that names the fix when the checkpoint's weights do not fit ``model``.

    ``Model.load_from_checkpoint(path)`` on a module without :class:`CompressibleMixin` fails inside torch with
    "Missing key(s)" / "Unexpected key(s)" / "size mismatch" when the checkpoint was written after a structural
    rewrite: nothing of this library runs there to rebuild the structure first. This check, independent of
    Lightning, tells that case (the checkpoint holds a history the model has not been through) from a checkpoint
    of another architecture, and says what to do; :func:`restore_from_checkpoint` runs it before loading.

    Args:
        model: the module the weights are meant for (a LightningModule or a plain ``nn.Module``).
        checkpoint_or_path: a loaded checkpoint dict or a path to one.
        state_dict_key: key of the weights in the checkpoint dict.

    Raises:
        RuntimeError: when the keys or shapes differ; the message lists them and, for a checkpoint with a
            structural history the model has not been through, names :class:`CompressibleMixin` and
            :func:`restore_from_checkpoint`.
        KeyError: if the checkpoint has no ``state_dict_key``.

    Example:
        >>> from torch import nn
        >>> dense = nn.Sequential(nn.Linear(4, 4))
        >>> pruned = {"state_dict": {"0.weight": torch.zeros(2, 4), "0.bias": torch.zeros(2)},
        ...           "tetra_lightning": {"history": [{"kind": "prune", "ops": [["0", "out", [2, 3]]]}]}}
        >>> check_checkpoint_fits(dense, pruned)
        Traceback (most recent call last):
        ...
        RuntimeError: The checkpoint holds 1 structural rewrite (prune) that Sequential has not been through: ...
        >>> check_checkpoint_fits(restore_from_checkpoint(nn.Sequential(nn.Linear(4, 4)), pruned), pruned)
    """
    checkpoint = _load(checkpoint_or_path)
    if state_dict_key not in checkpoint:
        raise KeyError(f"The checkpoint has no {state_dict_key!r} entry (keys: {sorted(checkpoint)}).")
    weights = {key: value for key, value in checkpoint[state_dict_key].items() if key != HISTORY_STATE_KEY}
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    resized = sorted(
        key
        for key in set(own) & set(weights)
        if isinstance(weights[key], torch.Tensor)
        and isinstance(own[key], torch.Tensor)
        and not nn.parameter.is_lazy(own[key])
        and tuple(own[key].shape) != tuple(weights[key].shape)
    )
    if not (missing or unexpected or resized):
        return
    differences = "; ".join(
        f"{label} {keys[:4]}{' ...' if len(keys) > 4 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", resized))
        if keys
    )
    owner = type(model).__name__
    history = history_from_checkpoint(checkpoint)
    pending = history[len(applied_history(model)) :]
    if pending:
        kinds = ", ".join(dict.fromkeys(_describe(entry) for entry in pending[:6]))
        raise RuntimeError(
            f"The checkpoint holds {len(pending)} structural rewrite{'s' if len(pending) > 1 else ''} ({kinds}) "
            f"that {owner} has not been through: its weights do not fit the freshly built model ({differences}). "
            f"Rebuild the structure first: give the class the mixin (`class {owner}(CompressibleMixin, "
            f"LightningModule)`, then `{owner}.load_from_checkpoint(path)` and `Trainer.fit(ckpt_path=...)` work), "
            f"or call `restore_from_checkpoint({owner}(...), path)` for any nn.Module."
        )
    raise RuntimeError(
        f"The checkpoint's weights do not fit {owner} ({differences}) and no structural history explains it: the "
        "checkpoint was written for another architecture (or for the inner network rather than the "
        "LightningModule). Build the model the checkpoint was written from."
    )


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
        replay_sections(self, checkpoint)
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
