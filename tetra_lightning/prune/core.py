"""Structural channel pruning on torch-pruning's DependencyGraph, recorded as a replayable history.

:func:`prune_` removes whole output channels (conv filters, linear rows) together with every coupled slice: the
BatchNorm after a conv, the input channels of the layers that read it, and every layer tied to the same residual
stream (torch-pruning follows the autograd graph, so an ``add`` couples all convs feeding and reading it). The
tensors really shrink, so parameters, bytes and MACs go down.

Every pruned slice is recorded as ``[module_name, "out" | "in", removed_indices]`` in a JSON-safe history entry
``{"kind": "prune", ...}``. :func:`restore_pruned_structure` replays those operations on a freshly built dense
model (no example input, no dependency graph needed), after which the pruned ``state_dict`` loads.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tetra_lightning.checkpoint import register_history_kind

__all__ = ["IMPORTANCES", "output_layers", "prune_", "pruned_shapes", "restore_pruned_structure"]

#: Channel-importance criteria accepted by :func:`prune_`.
IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")

FilterFn = Callable[[nn.Module, str], bool]
LossFn = Callable[[nn.Module], torch.Tensor]


def _check_ratio(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"`{name}` must be a float in (0, 1), got {type(value).__name__} {value!r}.")
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"`{name}` must be in (0, 1) (the fraction of channels removed), got {value}. "
            f"Pass e.g. {name}=0.5 to remove half of the channels of every prunable layer."
        )
    return float(value)


def check_prune_arguments(
    pruning_ratio: float,
    importance: str,
    round_to: int | None = None,
    target_params_ratio: float | None = None,
) -> None:
    """Validates the arguments shared by :func:`prune_` and the pruning callback.

    Raises:
        ValueError: for a ratio outside (0, 1), an unknown importance, ``round_to < 1`` or
            ``target_params_ratio <= 1``.
        TypeError: for arguments of the wrong type.

    Example:
        >>> check_prune_arguments(0.5, "l1")
        >>> check_prune_arguments(1.5, "l1")
        Traceback (most recent call last):
        ...
        ValueError: `pruning_ratio` must be in (0, 1) (the fraction of channels removed), got 1.5. ...
    """
    _check_ratio("pruning_ratio", pruning_ratio)
    if importance not in IMPORTANCES:
        raise ValueError(
            f"`importance` must be one of {', '.join(map(repr, IMPORTANCES))}, got {importance!r}. "
            "Pass e.g. importance='l1' to rank channels by the L1 norm of their weights."
        )
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"`round_to` must be None or an int >= 1, got {round_to!r}. Pass e.g. round_to=8.")
    if target_params_ratio is not None:
        if isinstance(target_params_ratio, bool) or not isinstance(target_params_ratio, (int, float)):
            raise TypeError(f"`target_params_ratio` must be a number > 1, got {target_params_ratio!r}.")
        if not math.isfinite(target_params_ratio) or target_params_ratio <= 1:
            raise ValueError(
                f"`target_params_ratio` must be > 1 (dense params / pruned params), got {target_params_ratio}. "
                "Pass e.g. target_params_ratio=4.5."
            )


def _importance(name: str) -> Any:
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupTaylorImportance()


def _as_args(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    return (example_inputs,)


def output_layers(model: nn.Module, example_inputs: Any) -> list[str]:
    """Names of the leaf modules whose output *is* the model's output (the classifier head).

    Found by identity of the output tensors on one forward pass; when no module output is returned unchanged,
    the last ``nn.Linear`` whose ``out_features`` equals the output's last dimension is taken.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> output_layers(net, torch.randn(2, 8))
        ['2']
    """
    produced: dict[int, str] = {}
    handles = []
    for name, module in model.named_modules():
        if name and not list(module.children()):

            def hook(mod: nn.Module, inputs: Any, output: Any, name: str = name) -> None:
                if isinstance(output, torch.Tensor):
                    produced[id(output)] = name

            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            output = model(*_as_args(example_inputs))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    outputs = [output] if isinstance(output, torch.Tensor) else list(_tensors(output))
    names = [produced[id(t)] for t in outputs if id(t) in produced]
    if names:
        return names
    last = outputs[0].shape[-1] if outputs and outputs[0].dim() > 0 else None
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == last]
    return linears[-1:]


def _tensors(value: Any) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def pruned_shapes(model: nn.Module, names: Iterable[str]) -> dict[str, dict[str, list[int]]]:
    """Shapes of the direct parameters and buffers of the named modules (to check a replay against).

    Example:
        >>> pruned_shapes(nn.Sequential(nn.Linear(4, 2)), ["0"])
        {'0': {'weight': [2, 4], 'bias': [2]}}
    """
    modules = dict(model.named_modules())
    shapes: dict[str, dict[str, list[int]]] = {}
    for name in names:
        module = modules[name]
        tensors = {
            **dict(module.named_parameters(recurse=False)),
            **dict(module.named_buffers(recurse=False)),
        }
        shapes[name] = {key: list(t.shape) for key, t in tensors.items() if t is not None and t.dim() > 0}
    return shapes


def _resolve_ignored(
    model: nn.Module,
    example_inputs: Any,
    ignored_layers: Sequence[str | nn.Module] | None,
    keep_outputs: bool,
    filter_fn: FilterFn | None,
) -> list[nn.Module]:
    modules = dict(model.named_modules())
    ignored: list[nn.Module] = []
    for item in ignored_layers or ():
        if isinstance(item, nn.Module):
            ignored.append(item)
        elif item in modules:
            ignored.append(modules[item])
        else:
            candidates = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
            raise ValueError(
                f"`ignored_layers` names {item!r}, which the model does not have. Prunable layers: "
                f"{', '.join(candidates[:20])}{' ...' if len(candidates) > 20 else ''}."
            )
    if keep_outputs:
        ignored.extend(modules[name] for name in output_layers(model, example_inputs))
    if filter_fn is not None:
        ignored.extend(
            module
            for name, module in modules.items()
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
            and not filter_fn(module, name)
        )
    return ignored


def _run_pruner(
    model: nn.Module,
    example_inputs: Any,
    pruning_ratio: float,
    importance: str,
    global_pruning: bool,
    ignored: list[nn.Module],
    round_to: int | None,
    max_pruning_ratio: float,
) -> list[list[Any]]:
    """Prunes ``model`` in place and returns the recorded ``[name, direction, removed]`` operations."""
    import torch_pruning as tp
    from torch_pruning._helpers import to_plain_idxs

    names = {id(module): name for name, module in model.named_modules()}
    was_training = model.training
    model.eval()  # tracing runs a forward: keep BatchNorm running statistics untouched
    try:
        with torch.enable_grad():  # the dependency graph follows autograd nodes
            pruner = tp.pruner.BasePruner(
                model,
                example_inputs,
                importance=_importance(importance),
                global_pruning=global_pruning,
                pruning_ratio=pruning_ratio,
                max_pruning_ratio=max_pruning_ratio,
                ignored_layers=ignored,
                round_to=round_to,
            )
            graph = pruner.DG
            operations: list[list[Any]] = []
            for group in pruner.step(interactive=True):
                seen: set[tuple[str, str]] = set()
                for dep, idxs in group:
                    name = names.get(id(dep.target.module))
                    if name is None:  # element-wise / reshape nodes: nothing to store
                        continue
                    if graph.is_out_channel_pruning_fn(dep.handler):
                        direction = "out"
                    elif graph.is_in_channel_pruning_fn(dep.handler):
                        direction = "in"
                    else:
                        continue
                    if (name, direction) in seen:
                        continue
                    seen.add((name, direction))
                    operations.append([name, direction, sorted(int(i) for i in to_plain_idxs(idxs))])
                group.prune()
    finally:
        model.train(was_training)
    return operations


def prune_(
    model: nn.Module,
    example_inputs: Any,
    pruning_ratio: float = 0.5,
    importance: str = "l1",
    global_pruning: bool = False,
    ignored_layers: Sequence[str | nn.Module] | None = None,
    round_to: int | None = None,
    *,
    target_params_ratio: float | None = None,
    max_pruning_ratio: float = 0.9,
    keep_outputs: bool = True,
    filter_fn: FilterFn | None = None,
    loss_fn: LossFn | None = None,
) -> list[dict[str, Any]]:
    """Removes a fraction of the channels of every prunable layer of ``model``, in place.

    Built on torch-pruning's ``BasePruner``: groups of coupled channels (conv -> BN -> next conv's inputs,
    residual adds, the Conv2d chains of factorized layers) are ranked by ``importance`` and pruned together. The
    layers producing the model's output keep their outputs (``keep_outputs``), so the classifier still has all
    its classes. Parameters are replaced by new, smaller ones: rebuild any optimizer afterwards.

    Args:
        model: the model, modified in place (any mode; its training flag is restored).
        example_inputs: a tensor or a tuple of positional inputs for one forward pass.
        pruning_ratio: fraction of channels removed from each group (uniform) or in total (``global_pruning``),
            in (0, 1). Ignored when ``target_params_ratio`` is given.
        importance: ``"l1"``, ``"l2"`` (weight magnitude), ``"bn_scale"`` (|gamma| of the BatchNorm) or
            ``"taylor"`` (|weight * grad|, needs gradients: pass ``loss_fn`` or call ``backward()`` before).
        global_pruning: rank channels across all layers instead of per layer.
        ignored_layers: modules (or their names) whose output channels are never pruned.
        round_to: keep channel counts multiples of this number (e.g. 8, for fast kernels).
        target_params_ratio: dense params / pruned params to reach; the channel ratio is found by bisection on
            copies of the model.
        max_pruning_ratio: no layer loses more than this fraction of its channels.
        keep_outputs: keep the output channels of the layers that produce the model's output.
        filter_fn: ``filter_fn(module, fqn) -> bool``; conv / linear layers it rejects are ignored.
        loss_fn: ``loss_fn(model) -> loss``, run once to compute gradients for ``importance="taylor"``.

    Returns:
        A one-element history ``[{"kind": "prune", "ops": [[name, "out"|"in", removed_indices], ...],
        "shapes": {...}, "params_before": int, "params_after": int, ...}]``, JSON-safe, for
        :func:`restore_pruned_structure`.

    Raises:
        ValueError: for a ratio outside (0, 1), an unknown ``importance``, an unknown layer name, or
            ``importance="taylor"`` without gradients.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(16, 4))
        >>> history = prune_(net, torch.randn(1, 3, 8, 8), pruning_ratio=0.5)
        >>> net[0].out_channels, net[2].out_channels, net[5].out_features
        (8, 8, 4)
    """
    check_prune_arguments(pruning_ratio, importance, round_to, target_params_ratio)
    if not (isinstance(max_pruning_ratio, (int, float)) and 0.0 < max_pruning_ratio <= 1.0):
        raise ValueError(f"`max_pruning_ratio` must be in (0, 1], got {max_pruning_ratio!r}. Pass e.g. 0.9.")
    computed_grads = False
    if importance == "taylor":
        if loss_fn is not None:
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss_fn(model).backward()
            computed_grads = True
        elif not any(p.grad is not None for p in model.parameters()):
            raise ValueError(
                "`importance='taylor'` ranks channels by |weight * grad| but the model has no gradients. "
                "Pass `loss_fn=lambda model: ...` returning a loss, or call `loss.backward()` before `prune_`."
            )
    params_before = sum(p.numel() for p in model.parameters())
    ratio = pruning_ratio
    if target_params_ratio is not None:
        ratio = _solve_ratio(
            model,
            example_inputs,
            target_params_ratio,
            importance,
            global_pruning,
            ignored_layers,
            round_to,
            max_pruning_ratio,
            keep_outputs,
            filter_fn,
        )
    ignored = _resolve_ignored(model, example_inputs, ignored_layers, keep_outputs, filter_fn)
    operations = _run_pruner(
        model, example_inputs, ratio, importance, global_pruning, ignored, round_to, max_pruning_ratio
    )
    if computed_grads:
        model.zero_grad(set_to_none=True)
    touched = list(dict.fromkeys(name for name, _, _ in operations))
    entry: dict[str, Any] = {
        "kind": "prune",
        "importance": importance,
        "pruning_ratio": float(ratio),
        "global_pruning": bool(global_pruning),
        "round_to": round_to,
        "ops": operations,
        "shapes": pruned_shapes(model, touched),
        "params_before": int(params_before),
        "params_after": int(sum(p.numel() for p in model.parameters())),
    }
    return [entry]


def _solve_ratio(
    model: nn.Module,
    example_inputs: Any,
    target_params_ratio: float,
    importance: str,
    global_pruning: bool,
    ignored_layers: Sequence[str | nn.Module] | None,
    round_to: int | None,
    max_pruning_ratio: float,
    keep_outputs: bool,
    filter_fn: FilterFn | None,
    iterations: int = 8,
) -> float:
    """Bisection on the channel ratio so that dense / pruned parameters reaches ``target_params_ratio``."""
    dense = sum(p.numel() for p in model.parameters())
    names = [
        name
        for item in ignored_layers or ()
        for name, module in model.named_modules()
        if (item is module if isinstance(item, nn.Module) else item == name)
    ]
    low, high = 0.0, max_pruning_ratio
    for _ in range(iterations):
        middle = (low + high) / 2
        trial = copy.deepcopy(model)
        ignored = _resolve_ignored(trial, example_inputs, names, keep_outputs, filter_fn)
        _run_pruner(
            trial, example_inputs, middle, importance, global_pruning, ignored, round_to, max_pruning_ratio
        )
        reached = dense / max(1, sum(p.numel() for p in trial.parameters()))
        if reached < target_params_ratio:
            low = middle
        else:
            high = middle
    return high


def restore_pruned_structure(model: nn.Module, history: Sequence[Mapping[str, Any]]) -> nn.Module:
    """Replays the ``{"kind": "prune"}`` entries of a history on a freshly built model (structure only).

    Each recorded ``[module_name, "out"|"in", removed_indices]`` operation is applied with torch-pruning's
    per-layer pruning functions, in order; the resulting shapes are checked against the recorded ones. Entries
    of other kinds are skipped. Afterwards ``model.load_state_dict(pruned.state_dict())`` succeeds.

    Args:
        model: a model with the original (or an earlier) structure, modified in place.
        history: entries from :func:`prune_` (possibly after a JSON round trip).

    Returns:
        ``model``.

    Raises:
        ValueError: when a named module is missing, its type cannot be pruned, or the shapes differ from the
            recorded ones (the history belongs to another architecture).

    Example:
        >>> import json
        >>> make = lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
        >>> net = make()
        >>> history = json.loads(json.dumps(prune_(net, torch.randn(1, 8), pruning_ratio=0.25)))
        >>> fresh = restore_pruned_structure(make(), history)
        >>> fresh.load_state_dict(net.state_dict())
        <All keys matched successfully>
    """
    from torch_pruning import ops
    from torch_pruning.pruner.function import PrunerBox

    for index, entry in enumerate(history):
        if entry.get("kind") != "prune":
            continue
        modules = dict(model.named_modules())
        for name, direction, removed in entry.get("ops", []):
            if name not in modules:
                raise ValueError(
                    f"`history[{index}]` prunes module {name!r}, which the model does not have. Replay the "
                    "history on a model built like the one that was pruned."
                )
            module = modules[name]
            pruner = PrunerBox.get(ops.module2type(module))
            if pruner is None:
                raise ValueError(
                    f"`history[{index}]`: module {name!r} ({type(module).__name__}) cannot be pruned."
                )
            function = pruner.prune_out_channels if direction == "out" else pruner.prune_in_channels
            function(module, list(removed))
        expected = entry.get("shapes", {})
        found = pruned_shapes(model, expected)
        if found != {name: dict(shapes) for name, shapes in expected.items()}:
            wrong = [name for name in expected if found.get(name) != expected[name]]
            raise ValueError(
                f"Replaying `history[{index}]` gave shapes that differ from the recorded ones at {wrong[:5]}. "
                "Replay the history on a freshly constructed model of the same architecture."
            )
    return model


# prune_ entries: the recorded channel slices, removed again (see restore_pruned_structure).
register_history_kind("prune", restore_pruned_structure, ("kind", "ops"))
