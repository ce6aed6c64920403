"""Functional compression core: decompose one layer, compress a model in place, replay, recompose."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tetra_lightning.checkpoint import DEFAULT_KIND, check_history, register_history_kind
from tetra_lightning.decompose.attention import FactorizedMultiheadAttention
from tetra_lightning.decompose.base import FactorizedLayer
from tetra_lightning.decompose.configs import DecompositionConfig, TTConfig
from tetra_lightning.decompose.conv1d import FactorizedConv1d
from tetra_lightning.decompose.embedding import (
    embedding_unsupported,
    tt_embedding_from_config,
    tt_embedding_kwargs,
    tt_embedding_params,
)
from tetra_lightning.decompose.methods import DENSE_LAYERS, build_layer
from tetra_lightning.decompose.ranks import check_method, factorized_param_count, layer_shape, resolve_ranks
from tetra_lightning.decompose.recurrent import FactorizedRNN
from tetra_lightning.decompose.unfuse import FUSED_MODULES, unfuse_
from tetra_lightning.decompose.weight_reads import direct_weight_reads
from tetra_lightning.report import tied_parameters

FilterFn = Callable[[nn.Module, str], bool]

HISTORY_KEYS = ("name", "method", "spec", "ranks", "params_before", "params_after", "rel_error")


def _count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _decompose(layer: nn.Module, config: DecompositionConfig, ranks: tuple[int, ...]) -> FactorizedLayer:
    dense = layer.to_dense() if isinstance(layer, FactorizedLayer) else layer
    with torch.no_grad():
        module = build_layer(dense, ranks, config)
    module.train(layer.training)
    trainable = any(parameter.requires_grad for parameter in layer.parameters())
    module.requires_grad_(trainable)
    return module


def decompose_layer(layer: nn.Module, config: DecompositionConfig) -> FactorizedLayer:
    """Factorize one layer (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``, or an existing ``FactorizedLayer``).

    A ``FactorizedLayer`` is first recomposed to its dense weight and decomposed again with ``config``
    (iterative compression: pass a lower rank than it has). The result has the layer's device, dtype,
    training mode and ``requires_grad``.

    Args:
        layer: the layer to factorize.
        config: ``SVDConfig``, ``TuckerConfig``, ``CPConfig`` or ``TTConfig``.

    Returns:
        The factorized layer; ``rel_error`` holds the relative weight error.

    Raises:
        TypeError: for an unsupported layer (e.g. ``nn.LSTM``: :func:`compress_` splits it first) or a method
            that does not apply to it (TT on a grouped conv).
        ValueError: for a rank above the layer's full rank.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import TuckerConfig, decompose_layer
        >>> conv = torch.nn.Conv2d(16, 32, 3, padding=1)
        >>> layer = decompose_layer(conv, TuckerConfig(rank=0.3))
        >>> layer.ranks, sum(p.numel() for p in layer.parameters()) < 0.35 * sum(p.numel() for p in conv.parameters())
        ((14, 7), True)
    """
    ranks = resolve_ranks(layer, config)
    return _decompose(layer, config, ranks)


# --------------------------------------------------------------------------------------------------------
# Dense specs (for recompose_ entries)
# --------------------------------------------------------------------------------------------------------


def dense_spec(layer: nn.Linear | nn.Conv1d | nn.Conv2d) -> dict[str, Any]:
    """JSON-safe spec of a dense ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` (``{"class": "Linear" | ..., ...}``)."""
    if isinstance(layer, nn.Linear):
        return {
            "class": "Linear",
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "bias": layer.bias is not None,
        }
    return {
        "class": "Conv1d" if isinstance(layer, nn.Conv1d) else "Conv2d",
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "kernel_size": list(layer.kernel_size),
        "stride": list(layer.stride),
        "padding": layer.padding if isinstance(layer.padding, str) else list(layer.padding),
        "dilation": list(layer.dilation),
        "groups": layer.groups,
        "padding_mode": layer.padding_mode,
        "bias": layer.bias is not None,
    }


def module_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Build a dense or factorized layer from a spec in a history entry (weights freshly initialised)."""
    kwargs = {key: value for key, value in spec.items() if key != "class"}
    if spec.get("class") == "Linear":
        return nn.Linear(**kwargs)
    if spec.get("class") in ("Conv1d", "Conv2d"):
        for key in ("kernel_size", "stride", "dilation"):
            kwargs[key] = tuple(kwargs[key])
        if not isinstance(kwargs["padding"], str):
            kwargs["padding"] = tuple(kwargs["padding"])
        return (nn.Conv1d if spec["class"] == "Conv1d" else nn.Conv2d)(**kwargs)
    return FactorizedLayer.from_spec(dict(spec))


# --------------------------------------------------------------------------------------------------------
# In-place model surgery
# --------------------------------------------------------------------------------------------------------


def _aliases(model: nn.Module, name: str) -> list[str]:
    """The other names under which the module at ``name`` is registered (the same object, not a copy)."""
    target = model.get_submodule(name)
    return [
        other for other, module in model.named_modules(remove_duplicate=False) if module is target and other != name
    ]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    # Every name of the old module gets the new one: an alias left pointing at the old layer would keep it dense.
    for path in [name, *_aliases(model, name)]:
        parent_name, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module)


def _match_placement(new: nn.Module, old: nn.Module) -> nn.Module:
    reference = next(old.parameters(), None)
    if reference is not None:
        new.to(device=reference.device, dtype=reference.dtype)
    new.train(old.training)
    return new


def _candidates(
    model: nn.Module, filter_fn: FilterFn | None, embeddings: bool = False
) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """The layers to factorize, and the conv layers of types compress_ does not factorize (to skip with a reason)."""
    factorized_prefixes: list[str] = []
    found: list[tuple[str, nn.Module]] = []
    unsupported: list[tuple[str, nn.Module]] = []
    kinds = (*DENSE_LAYERS, nn.Embedding) if embeddings else DENSE_LAYERS
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in factorized_prefixes):
            continue
        if isinstance(module, FactorizedLayer):
            factorized_prefixes.append(name)
            continue
        if name and isinstance(module, kinds) and not isinstance(module, nn.modules.lazy.LazyModuleMixin):
            if filter_fn is None or filter_fn(module, name):
                found.append((name, module))
        elif name and isinstance(module, nn.modules.conv._ConvNd):
            if filter_fn is None or filter_fn(module, name):
                unsupported.append((name, module))
    return found, unsupported


def _layers_of(module: nn.Module) -> list[str]:
    """Relative names of the dense and factorized layers of ``module`` (not the factors inside the latter)."""
    names, factorized = [], []
    for name, child in module.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in factorized):
            continue
        if isinstance(child, FactorizedLayer):
            factorized.append(name)
        if isinstance(child, (*DENSE_LAYERS, FactorizedLayer)):
            names.append(name)
    return names


def _expand_fused(
    model: nn.Module, config: Mapping[str, DecompositionConfig]
) -> tuple[list[dict[str, Any]], dict[str, DecompositionConfig]]:
    """Splits the fused modules a mapping names; a named fused or split module gives its config to its layers."""
    known = dict(model.named_modules())
    fused = [name for name in config if isinstance(known.get(name), FUSED_MODULES)]
    entries = unfuse_(model, names=fused) if fused else []
    for entry in entries:
        if "skipped" in entry:
            raise TypeError(f"`config` names {entry['name']!r}, which cannot be compressed: {entry['skipped']}.")
    known = dict(model.named_modules())
    expanded: dict[str, DecompositionConfig] = {}
    for name, layer_config in config.items():
        module = known[name]
        if isinstance(module, (FactorizedMultiheadAttention, FactorizedRNN)):
            expanded.update({f"{name}.{child}": layer_config for child in _layers_of(module)})
        else:
            expanded[name] = layer_config
    return entries, expanded


def _unsupported_reason(module: nn.Module, embeddings: bool) -> str:
    kinds = "nn.Linear, nn.Conv1d, nn.Conv2d" + (", nn.Embedding" if embeddings else "")
    return (
        f"compress_ does not factorize {type(module).__name__} layers (it factorizes {kinds}); exclude them with "
        "`filter_fn` to silence this"
    )


def _skip(
    name: str, config: DecompositionConfig, module: nn.Module, reason: str, params: int | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "method": config.method,
        "skipped": reason,
        "params_before": _count(module) if params is None else params,
    }


def _ties_leaving(name: str, ties: list[list[str]]) -> tuple[list[str], list[str]]:
    """The parameters of the module ``name`` that modules outside it also hold, and those outside names."""
    inside: list[str] = []
    outside: list[str] = []
    for group in ties:
        held = [p for p in group if p.startswith(name + ".")]
        others = [p for p in group if not p.startswith(name + ".")]
        if held and others:
            inside.extend(held)
            outside.extend(others)
    return inside, outside


def _check_model(model: Any, function: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"`model` must be an nn.Module, got {type(model).__name__} {model!r:.60}. Pass the module itself, e.g. "
            f"{function}(model, ...) with model = MyNet(), not its name or path."
        )


def compress_(
    model: nn.Module,
    config: DecompositionConfig | Mapping[str, DecompositionConfig],
    filter_fn: FilterFn | None = None,
) -> list[dict[str, Any]]:
    """Replace layers of ``model`` by factorized layers, in place.

    With one config, every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` that is not inside a ``FactorizedLayer``
    and that ``filter_fn(module, fqn)`` accepts is factorized (every method applies to linear layers; Tucker and
    CP there are the low-rank products they reduce to; grouped and depthwise convs are factorized per group);
    with a mapping ``fqn -> config`` only the named modules are (they may be ``FactorizedLayer``s: iterative
    compression). Fused modules are split first (:func:`~tetra_lightning.decompose.unfuse.unfuse_`):
    ``nn.MultiheadAttention`` into q/k/v/output projections and ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` into
    per-layer cells with input and hidden maps, which are then factorized like any linear layer; a mapping may
    name the fused module itself. Layers that cannot or should not be factorized are left alone and recorded
    with a ``"skipped"`` reason: TT on grouped convs, ranks above the full rank (with a warning), factorizations
    that would not reduce the parameter count (a depthwise conv under SVD or Tucker), conv layers of other types
    (``nn.ConvTranspose2d``, ``nn.Conv3d``, ..., with a warning), and layers whose parameters other modules share
    (tied weights, with a warning and ``"tied_with"``: factorizing one of them would untie them). A module
    registered under several names is factorized once and every name points at the new layer (``"aliases"``);
    each parameter counts once in the history. A layer whose weight the forward reads directly
    (``F.linear(x, layer.weight)``) is factorized too, since factorized layers rebuild ``weight`` on access; its
    entry carries a ``"note"`` saying so.

    With a :class:`~tetra_lightning.decompose.TTConfig` (one for all layers, or named in the mapping), every
    ``nn.Embedding`` also becomes a :class:`~tetra_lightning.lowrank.TTEmbedding` (``in_modes`` factorize the
    vocabulary, ``out_modes`` the embedding dimension; see :mod:`tetra_lightning.decompose.embedding`). Other
    methods leave embeddings alone; embeddings with ``padding_idx``, ``max_norm`` or sparse gradients are skipped.

    Args:
        model: the model, modified in place.
        config: one config for all layers, or a mapping from module name to config.
        filter_fn: optional ``(module, fqn) -> bool`` selecting the layers.

    Returns:
        The history, a JSON-safe list with one dict per considered layer: replaced layers have
        ``{"name", "method", "spec", "ranks", "params_before", "params_after", "rel_error", "config"}``,
        skipped ones ``{"name", "method", "skipped", "params_before"}``, split fused modules
        ``{"kind": "attention" | "recurrent", "name", "spec", ...}`` before their layers' entries. Replay it with
        :func:`~tetra_lightning.checkpoint.replay_history` (or :func:`restore_structure` for histories without
        split modules).

    Raises:
        ValueError: for a mapping naming a missing module or a tied one, or holding a rank that does not fit
            its layer.
        TypeError: for a mapping naming a module that cannot be factorized, a config of the wrong type, or a
            ``model`` that is not an ``nn.Module``.

    Example:
        >>> import json, torch
        >>> from tetra_lightning.decompose import SVDConfig, compress_
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        >>> history = compress_(model, SVDConfig(rank=0.25))
        >>> [entry["ranks"] for entry in history if "skipped" not in entry]
        [[8], [2]]
        >>> _ = json.dumps(history)
    """
    _check_model(model, "compress_")
    history: list[dict[str, Any]] = []
    unsupported: dict[str, nn.Module] = {}
    embeddings = isinstance(config, TTConfig)
    if isinstance(config, DecompositionConfig):
        history.extend(unfuse_(model, filter_fn))
        found, skipped_kinds = _candidates(model, filter_fn, embeddings)
        unsupported = dict(skipped_kinds)
        order = {name: index for index, (name, _) in enumerate(model.named_modules())}
        ordered = sorted(found + skipped_kinds, key=lambda item: order[item[0]])
        plan = [(name, module, config, False) for name, module in ordered]
    elif isinstance(config, Mapping):
        plan = []
        known = dict(model.named_modules())
        for name in config:
            if name not in known or not name:
                close = [n for n in known if n and (n.endswith(name.split(".")[-1]))][:5]
                raise ValueError(
                    f"`config` names module {name!r}, which is not a submodule of the model. Similar names: "
                    f"{close}. Use names from `model.named_modules()`."
                )
        split, config = _expand_fused(model, config)
        history.extend(split)
        known = dict(model.named_modules())
        for name, layer_config in config.items():
            if not isinstance(layer_config, DecompositionConfig):
                raise TypeError(
                    f"`config[{name!r}]` must be a DecompositionConfig, got {type(layer_config).__name__}."
                )
            module = known[name]
            if filter_fn is None or filter_fn(module, name):
                plan.append((name, module, layer_config, True))
    else:
        raise TypeError(
            f"`config` must be a DecompositionConfig or a mapping from module name to config, got "
            f"{type(config).__name__}. Pass e.g. TuckerConfig(rank=0.25)."
        )

    readers = direct_weight_reads(model)
    ties = tied_parameters(model)
    counted: set[str] = set()  # tied parameters already in a skipped entry's count: each tensor counts once
    for name, module, layer_config, explicit in plan:
        if name in unsupported:
            history.append(_skip(name, layer_config, module, _unsupported_reason(module, embeddings)))
            continue
        held, others = _ties_leaving(name, ties)
        if held:
            reason = (
                f"it shares {', '.join(map(repr, held))} with {', '.join(map(repr, others))} (tied weights): "
                "factorizing it alone would untie them"
            )
            if explicit:
                raise ValueError(
                    f"module {name!r} shares {', '.join(map(repr, held))} with {', '.join(map(repr, others))} (tied "
                    f"weights); factorizing it alone would untie them. Leave {name!r} out of `config`, or untie the "
                    "weights first (give each module its own nn.Parameter)."
                )
            warnings.warn(f"compress_ skips {name!r}: {reason}.", UserWarning, stacklevel=2)
            fresh = sum(p.numel() for n, p in module.named_parameters() if f"{name}.{n}" not in counted)
            counted.update(others)
            entry = _skip(name, layer_config, module, reason, params=fresh)
            entry["tied_with"] = others
            history.append(entry)
            continue
        aliases = _aliases(model, name)
        if isinstance(module, nn.Embedding):
            history.append(_compress_embedding(model, name, module, layer_config, explicit))
            if aliases and "skipped" not in history[-1]:
                history[-1]["aliases"] = aliases
            continue
        try:
            shape = layer_shape(module)
        except ValueError as error:  # grouped conv
            if explicit:
                raise
            warnings.warn(f"compress_ skips {name!r}: {error}", UserWarning, stacklevel=2)
            history.append(_skip(name, layer_config, module, str(error)))
            continue
        try:
            check_method(shape, layer_config)
        except TypeError as error:
            if explicit:
                raise
            history.append(_skip(name, layer_config, module, str(error)))
            continue
        try:
            ranks = resolve_ranks(module, layer_config)
        except ValueError as error:
            if explicit:
                raise ValueError(f"module {name!r}: {error}") from error
            warnings.warn(f"compress_ skips {name!r}: {error}", UserWarning, stacklevel=2)
            history.append(_skip(name, layer_config, module, str(error)))
            continue
        params_before = _count(module)
        params_after = factorized_param_count(module, layer_config, ranks, layer_config)
        if params_after >= params_before:
            history.append(
                _skip(
                    name, layer_config, module,
                    f"no parameter reduction: {params_after} factorized >= {params_before} now",
                )
            )
            continue
        new = _decompose(module, layer_config, ranks)
        _set_submodule(model, name, new)
        entry = {
            "name": name,
            "method": layer_config.method,
            "spec": new.spec(),
            "ranks": list(new.ranks),
            "params_before": params_before,
            "params_after": _count(new),
            "rel_error": float(new.rel_error),
            "config": layer_config.to_dict(),
            **({"aliases": aliases} if aliases else {}),
        }
        if name in readers:
            entry["note"] = readers[name]
        history.append(entry)
    if unsupported:
        listed = ", ".join(f"{name!r} ({type(module).__name__})" for name, module in unsupported.items())
        warnings.warn(
            f"compress_ skips {len(unsupported)} layer(s) of types it does not factorize: {listed}. They stay as "
            "they are (see the 'skipped' reasons in the history); exclude them with `filter_fn` to silence this.",
            UserWarning,
            stacklevel=2,
        )
    return history


def _compress_embedding(
    model: nn.Module, name: str, module: nn.Embedding, config: DecompositionConfig, explicit: bool
) -> dict[str, Any]:
    reason = embedding_unsupported(module, config)
    if reason is not None:
        if explicit:
            raise TypeError(f"module {name!r} (nn.Embedding): {reason}.")
        return _skip(name, config, module, reason)
    assert isinstance(config, TTConfig)
    try:
        kwargs = tt_embedding_kwargs(module, config)
        params_after = tt_embedding_params(module, config, kwargs["rank"])
    except ValueError as error:
        if explicit:
            raise ValueError(f"module {name!r}: {error}") from error
        warnings.warn(f"compress_ skips {name!r}: {error}", UserWarning, stacklevel=3)
        return _skip(name, config, module, str(error))
    params_before = _count(module)
    if params_after >= params_before:
        return _skip(name, config, module, f"no parameter reduction: {params_after} factorized >= {params_before} now")
    with torch.no_grad():
        new = tt_embedding_from_config(module, config)
    _set_submodule(model, name, new)
    return {
        "name": name,
        "method": config.method,
        "spec": new.spec(),
        "ranks": list(new.ranks),
        "params_before": params_before,
        "params_after": _count(new),
        "rel_error": float(new.rel_error),
        "config": config.to_dict(),
    }


def restore_structure(model: nn.Module, history: Sequence[Mapping[str, Any]]) -> nn.Module:
    """Replay a history from :func:`compress_` / :func:`recompose_` on a fresh model (structure only).

    Each replaced layer is rebuilt from its spec (no decomposition is run), so that
    ``model.load_state_dict(compressed_model.state_dict())`` then succeeds; every name under which the module
    is registered (aliases) gets the new layer. Skipped entries are ignored. The whole history is checked against
    the model before any module is replaced: each named module must be of the layer type the entry was made from
    (``nn.Linear``, ``nn.Conv2d``, ...) with the same sizes, and each spec complete with positive ranks.

    Args:
        model: a model with the original (or an earlier) structure, modified in place.
        history: the entries, in the order they were produced (possibly after a JSON round trip).

    Returns:
        ``model``.

    Raises:
        ValueError: for an entry without ``"name"``/``"spec"``, naming a module the model lacks or one of another
            type or size, or with an incomplete spec or a rank that is not positive; nothing is replaced then.
        TypeError: for a ``model`` that is not an ``nn.Module`` or a ``history`` that is not a list of dicts.

    Example:
        >>> import json, torch
        >>> from tetra_lightning.decompose import SVDConfig, compress_, restore_structure
        >>> make = lambda: torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        >>> model = make()
        >>> history = json.loads(json.dumps(compress_(model, SVDConfig(rank=0.25))))
        >>> fresh = restore_structure(make(), history)
        >>> fresh.load_state_dict(model.state_dict())
        <All keys matched successfully>
    """
    _check_model(model, "restore_structure")
    check_history(history)
    # First every entry is checked against the structure the model has at that point (the entries before it
    # applied), so that a history of another model fails before any module is replaced.
    known = dict(model.named_modules())
    planned: list[tuple[str, nn.Module]] = []
    for index, entry in enumerate(history):
        if "skipped" in entry:
            continue
        if "name" not in entry or "spec" not in entry:
            raise ValueError(
                f"`history[{index}]` lacks 'name' or 'spec' (keys: {sorted(entry)}). Pass the list returned by "
                "compress_ / recompose_."
            )
        name = entry["name"]
        if name not in known or not name:
            raise ValueError(
                f"`history[{index}]` names module {name!r}, which the model does not have. Replay the history on "
                "a model built like the one that was compressed."
            )
        try:
            new = module_from_spec(entry["spec"])
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`history[{index}]` (module {name!r}): {error} Pass the history compress_ / recompose_ returned "
                "(or the one stored in the checkpoint) unchanged."
            ) from error
        _check_fits(index, name, known[name], new)
        planned.append((name, new))
        known = {key: value for key, value in known.items() if key != name and not key.startswith(name + ".")}
        known.update({f"{name}.{sub}" if sub else name: value for sub, value in new.named_modules()})
    for name, new in planned:
        old = model.get_submodule(name)
        _set_submodule(model, name, _match_placement(new, old))
    return model


# Attributes that fix how a layer maps its input to its output; the dense layer and the factorized layer that
# replaces it have the same values (a factorized layer stores ``has_bias`` where a dense one has ``bias``).
_GEOMETRY = (
    "in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
    "padding_mode", "num_embeddings", "embedding_dim",
)


def _dense_type(module: nn.Module) -> str:
    """The torch.nn layer type ``module`` is or stands for (a factorized layer: the dense layer it replaces)."""
    if isinstance(module, FactorizedConv1d):
        return "Conv1d"
    if isinstance(module, FactorizedLayer):
        if hasattr(module, "in_features"):
            return "Linear"
        if hasattr(module, "num_embeddings"):
            return "Embedding"
        return f"Conv{len(getattr(module, 'kernel_size', (0, 0)))}d"
    for cls in type(module).__mro__:
        if cls.__module__.startswith("torch.nn"):
            return cls.__name__
    return type(module).__name__


def _geometry(module: nn.Module) -> dict[str, Any]:
    found = {}
    for key in _GEOMETRY:
        if hasattr(module, key):
            value = getattr(module, key)
            found[key] = list(value) if isinstance(value, (tuple, list)) else value
    if isinstance(module, FactorizedConv1d):  # its inner conv has the (1, k) geometry of the Conv1d's (k,)
        found.update({key: found[key][1:] for key in ("kernel_size", "stride", "padding", "dilation")
                      if isinstance(found.get(key), list)})
    if isinstance(module, FactorizedLayer):
        if hasattr(module, "has_bias"):
            found["bias"] = bool(module.has_bias)
    elif hasattr(module, "bias") and (module.bias is None or isinstance(module.bias, torch.Tensor)):
        found["bias"] = module.bias is not None
    return found


def _check_fits(index: int, name: str, old: nn.Module, new: nn.Module) -> None:
    """Raises ``ValueError`` unless ``new`` (built from ``history[index]``) can replace ``old`` at ``name``."""
    fix = "Replay the history on a model built like the one that was compressed (same layer types and sizes)."
    described = f"a {type(new).__name__}" + (
        f" made from a {_dense_type(new)}" if isinstance(new, FactorizedLayer) else ""
    )
    if _dense_type(old) != _dense_type(new):
        raise ValueError(
            f"`history[{index}]` replaces {name!r} by {described}, but the model's {name!r} is a "
            f"{_dense_type(old)}. {fix}"
        )
    have, want = _geometry(old), _geometry(new)
    differ = [key for key in want if key in have and have[key] != want[key]]
    if differ:
        details = ", ".join(f"{key}={have[key]} in the model, {want[key]} in the history" for key in differ)
        raise ValueError(f"`history[{index}]` replaces {name!r} by {described}, but they differ: {details}. {fix}")


def recompose_(model: nn.Module, filter_fn: FilterFn | None = None) -> list[dict[str, Any]]:
    """Merge every ``FactorizedLayer`` of ``model`` back into one dense layer, in place.

    Args:
        model: the model, modified in place.
        filter_fn: optional ``(module, fqn) -> bool`` selecting the factorized layers to merge.

    Returns:
        History entries with ``"method": "dense"`` (``"from"`` holds the factorization that was merged), which
        :func:`restore_structure` replays like any other entry.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import SVDConfig, compress_, recompose_
        >>> model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        >>> _ = compress_(model, SVDConfig(rank=0.5))
        >>> [entry["spec"]["class"] for entry in recompose_(model)]
        ['Linear', 'Linear']
        >>> type(model[0]).__name__
        'Linear'
    """
    _check_model(model, "recompose_")
    history: list[dict[str, Any]] = []
    targets: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(name.startswith(outer + ".") for outer, _ in targets):
            continue  # the inner layer of a factorized layer (FactorizedConv1d) goes with it
        if name and isinstance(module, FactorizedLayer) and (filter_fn is None or filter_fn(module, name)):
            targets.append((name, module))
    for name, module in targets:
        with torch.no_grad():
            dense = module.to_dense()
        dense.train(module.training)
        dense.requires_grad_(any(parameter.requires_grad for parameter in module.parameters()))
        _set_submodule(model, name, dense)
        history.append(
            {
                "name": name,
                "method": "dense",
                "from": module.method,
                "spec": dense_spec(dense),
                "ranks": [],
                "params_before": _count(module),
                "params_after": _count(dense),
                "rel_error": 0.0,  # merging the factors is exact
            }
        )
    return history


# compress_, recompose_ and shrink_ entries: named layers rebuilt from their specs (see restore_structure).
register_history_kind(DEFAULT_KIND, restore_structure, ("name", "method", "spec", "ranks", "skipped"))
