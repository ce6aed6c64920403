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
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tetra_lightning.checkpoint import check_history, register_history_kind
from tetra_lightning.prune.config import PruneConfig
from tetra_lightning.report import tied_parameters

__all__ = ["output_layers", "prune_", "pruned_shapes", "restore_pruned_structure"]

FilterFn = Callable[[nn.Module, str], bool]
LossFn = Callable[[nn.Module], torch.Tensor]


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
    model: nn.Module, example_inputs: Any, config: PruneConfig, filter_fn: FilterFn | None
) -> list[nn.Module]:
    modules = dict(model.named_modules())
    ignored: list[nn.Module] = []
    for item in config.ignored_layers:
        if item in modules:
            ignored.append(modules[item])
        else:
            candidates = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
            raise ValueError(
                f"`ignored_layers` names {item!r}, which the model does not have. Prunable layers: "
                f"{', '.join(candidates[:20])}{' ...' if len(candidates) > 20 else ''}."
            )
    if config.keep_outputs:
        ignored.extend(modules[name] for name in output_layers(model, example_inputs))
    if filter_fn is not None:
        ignored.extend(
            module
            for name, module in modules.items()
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
            and not filter_fn(module, name)
        )
    return ignored


def _slice(module: nn.Module, direction: str, removed: Sequence[int]) -> None:
    """Removes the output (``"out"``) or input (``"in"``) channels ``removed`` of one layer, in place."""
    from torch_pruning import ops
    from torch_pruning.pruner.function import PrunerBox

    pruner = PrunerBox.get(ops.module2type(module))
    function = pruner.prune_out_channels if direction == "out" else pruner.prune_in_channels
    function(module, list(removed))


def _holder(model: nn.Module, parameter_name: str) -> tuple[nn.Module, str]:
    module_name, _, attribute = parameter_name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attribute


def _untied_by(model: nn.Module, operations: list[list[Any]], ties: list[list[str]]) -> list[str]:
    """The tied parameters (``"'a.weight' = 'b.weight'"``) that ``operations`` would turn into different tensors.

    The operations are tried on a copy of the modules holding the touched ties: the tie survives when every
    holder ends with the same values (the same slices of the one tensor, e.g. an embedding's columns and the
    tied output layer's inputs removed together).
    """
    touched = {name for name, _, _ in operations}
    affected = [group for group in ties if any(p.rpartition(".")[0] in touched for p in group)]
    if not affected:
        return []
    holders = sorted({p.rpartition(".")[0] for group in affected for p in group})
    copies = copy.deepcopy({name: model.get_submodule(name) for name in holders})  # keeps the ties among them
    for name, direction, removed in operations:
        if name in copies:
            _slice(copies[name], direction, removed)
    broken = []
    for group in affected:
        tensors = [getattr(copies[p.rpartition(".")[0]], p.rpartition(".")[2]) for p in group]
        if any(t.shape != tensors[0].shape or not torch.equal(t, tensors[0]) for t in tensors[1:]):
            broken.append(" = ".join(map(repr, group)))
    return broken


def _retie(model: nn.Module, ties: list[list[str]]) -> None:
    """Makes the holders of each tie share one parameter again where pruning left them equal copies."""
    for group in ties:
        holders = [_holder(model, name) for name in group]
        first = getattr(*holders[0])
        tensors = [getattr(module, attribute) for module, attribute in holders]
        if all(t.shape == first.shape and torch.equal(t, first) for t in tensors):
            for module, attribute in holders[1:]:
                setattr(module, attribute, first)


def _run_pruner(
    model: nn.Module,
    example_inputs: Any,
    pruning_ratio: float,
    config: PruneConfig,
    ignored: list[nn.Module],
    untouched: list[dict[str, Any]] | None = None,
) -> list[list[Any]]:
    """Prunes ``model`` in place at ``pruning_ratio`` and returns the recorded ``[name, direction, removed]`` ops.

    A group of coupled channels whose removal would untie shared parameters (tied weights) is left alone and
    reported in ``untouched``; the holders of a tie pruned consistently share one parameter again afterwards.
    """
    import torch_pruning as tp
    from torch_pruning._helpers import to_plain_idxs

    names = {id(module): name for name, module in model.named_modules()}
    ties = tied_parameters(model)
    was_training = model.training
    model.eval()  # tracing runs a forward: keep BatchNorm running statistics untouched
    try:
        with torch.enable_grad():  # the dependency graph follows autograd nodes
            pruner = tp.pruner.BasePruner(
                model,
                example_inputs,
                importance=_importance(config.importance),
                global_pruning=config.global_pruning,
                pruning_ratio=pruning_ratio,
                max_pruning_ratio=config.max_pruning_ratio,
                ignored_layers=ignored,
                round_to=config.round_to,
            )
            graph = pruner.DG
            operations: list[list[Any]] = []
            for group in pruner.step(interactive=True):
                seen: set[tuple[str, str]] = set()
                group_operations: list[list[Any]] = []
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
                    group_operations.append([name, direction, sorted(int(i) for i in to_plain_idxs(idxs))])
                broken = _untied_by(model, group_operations, ties)
                if broken:
                    if untouched is not None:
                        untouched.append(
                            {
                                "layers": list(dict.fromkeys(name for name, _, _ in group_operations)),
                                "reason": f"pruning them would untie {', '.join(broken)}",
                            }
                        )
                    continue
                group.prune()
                operations.extend(group_operations)
                _retie(model, ties)
    finally:
        model.train(was_training)
    return operations


def _layer_names(model: nn.Module, layers: Sequence[str | nn.Module]) -> list[str]:
    names = {id(module): name for name, module in model.named_modules()}
    resolved = []
    for item in layers:
        if isinstance(item, nn.Module):
            if id(item) not in names:
                raise ValueError(
                    f"`ignored_layers` holds a {type(item).__name__} that is not a submodule of the model. Pass "
                    "the model's own modules, or their names."
                )
            resolved.append(names[id(item)])
        else:
            resolved.append(item)
    return resolved


def _config_of(model: nn.Module, config: PruneConfig | None, options: dict[str, Any]) -> PruneConfig:
    if config is not None and not isinstance(config, PruneConfig):
        raise TypeError(
            f"`config` must be a PruneConfig, got {type(config).__name__} {config!r}. Pass e.g. "
            "PruneConfig(pruning_ratio=0.5), or the fields as keywords: prune_(model, x, pruning_ratio=0.5)."
        )
    if config is not None and options:
        raise TypeError(
            f"Pass either `config` or its fields as keywords, not both (got config and {sorted(options)}). Use "
            "config.replace(...) to change a field."
        )
    if config is not None:
        return config
    if options.get("ignored_layers") is not None:
        options["ignored_layers"] = _layer_names(model, options["ignored_layers"])
    else:
        options.pop("ignored_layers", None)
    unknown = sorted(set(options) - set(PruneConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(
            f"prune_ got unknown keyword argument(s) {unknown}; the options are the PruneConfig fields "
            f"{sorted(PruneConfig.__dataclass_fields__)} and `filter_fn`, `loss_fn`."
        )
    return PruneConfig(**options)


def prune_(
    model: nn.Module,
    example_inputs: Any,
    config: PruneConfig | None = None,
    *,
    filter_fn: FilterFn | None = None,
    loss_fn: LossFn | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Removes a fraction of the channels of every prunable layer of ``model``, in place.

    Built on torch-pruning's ``BasePruner``: groups of coupled channels (conv -> BN -> next conv's inputs,
    residual adds, the Conv2d chains of factorized layers) are ranked by ``config.importance`` and pruned
    together. The layers producing the model's output keep their outputs (``keep_outputs``), so the classifier
    still has all its classes. Parameters are replaced by new, smaller ones: rebuild any optimizer afterwards.
    Tied weights stay tied: a group that removes the same slices from every module sharing a parameter (an
    embedding and the output layer tied to it) is pruned and the modules share the smaller parameter; a group
    that would untie them is left alone, with a warning and a reason in the entry's ``"untouched"``.

    Args:
        model: the model, modified in place (any mode; its training flag is restored).
        example_inputs: a tensor or a tuple of positional inputs for one forward pass.
        config: what to prune (see :class:`~tetra_lightning.prune.PruneConfig`); default ``PruneConfig()``.
        filter_fn: ``filter_fn(module, fqn) -> bool``; conv / linear layers it rejects are ignored.
        loss_fn: ``loss_fn(model) -> loss``, run once to compute gradients for ``importance="taylor"``.
        **options: instead of ``config``, its fields as keywords (``prune_(model, x, pruning_ratio=0.5)``);
            ``ignored_layers`` may then also hold the modules themselves.

    Returns:
        A one-element history ``[{"kind": "prune", "ops": [[name, "out"|"in", removed_indices], ...],
        "shapes": {...}, "params_before": int, "params_after": int, "config": {...}, ...}]``, JSON-safe, for
        :func:`restore_pruned_structure`.

    Raises:
        ValueError: for an invalid config, an unknown layer name, or ``importance="taylor"`` without gradients.
        TypeError: for a ``config`` that is not a PruneConfig, or both a config and keyword fields.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(16, 4))
        >>> history = prune_(net, torch.randn(1, 3, 8, 8), PruneConfig(pruning_ratio=0.5))
        >>> net[0].out_channels, net[2].out_channels, net[5].out_features
        (8, 8, 4)
    """
    config = _config_of(model, config, options)
    computed_grads = False
    if config.importance == "taylor":
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
    ratio = config.pruning_ratio
    if config.target_params_ratio is not None:
        ratio = _solve_ratio(model, example_inputs, config, filter_fn)
    ignored = _resolve_ignored(model, example_inputs, config, filter_fn)
    untouched: list[dict[str, Any]] = []
    operations = _run_pruner(model, example_inputs, ratio, config, ignored, untouched)
    if computed_grads:
        model.zero_grad(set_to_none=True)
    touched = list(dict.fromkeys(name for name, _, _ in operations))
    entry: dict[str, Any] = {
        "kind": "prune",
        "importance": config.importance,
        "pruning_ratio": float(ratio),
        "global_pruning": config.global_pruning,
        "round_to": config.round_to,
        "ops": operations,
        "shapes": pruned_shapes(model, touched),
        "params_before": int(params_before),
        "params_after": int(sum(p.numel() for p in model.parameters())),
        "config": config.to_dict(),
    }
    if untouched:
        entry["untouched"] = untouched
        untied = (item["reason"].removeprefix("pruning them would untie ") for item in untouched)
        reasons = ", ".join(dict.fromkeys(untied))
        warnings.warn(
            f"prune_ left {len(untouched)} groups of coupled channels unpruned: pruning them would untie {reasons} "
            "(tied weights; see the entry's 'untouched'). Give each module its own nn.Parameter to prune them.",
            UserWarning,
            stacklevel=2,
        )
    return [entry]


def _solve_ratio(
    model: nn.Module, example_inputs: Any, config: PruneConfig, filter_fn: FilterFn | None, iterations: int = 8
) -> float:
    """Bisection on the channel ratio so that dense / pruned parameters reaches ``config.target_params_ratio``."""
    assert config.target_params_ratio is not None
    dense = sum(p.numel() for p in model.parameters())
    low, high = 0.0, config.max_pruning_ratio
    for _ in range(iterations):
        middle = (low + high) / 2
        trial = copy.deepcopy(model)
        ignored = _resolve_ignored(trial, example_inputs, config, filter_fn)
        _run_pruner(trial, example_inputs, middle, config, ignored)
        reached = dense / max(1, sum(p.numel() for p in trial.parameters()))
        if reached < config.target_params_ratio:
            low = middle
        else:
            high = middle
    return high


def restore_pruned_structure(model: nn.Module, history: Sequence[Mapping[str, Any]]) -> nn.Module:
    """Replays the ``{"kind": "prune"}`` entries of a history on a freshly built model (structure only).

    Each recorded ``[module_name, "out"|"in", removed_indices]`` operation is applied with torch-pruning's
    per-layer pruning functions, in order; the resulting shapes are checked against the recorded ones, and
    parameters the fresh model shares between modules (tied weights) are shared again. Entries of other kinds
    are skipped. Afterwards ``model.load_state_dict(pruned.state_dict())`` succeeds.

    Args:
        model: a model with the original (or an earlier) structure, modified in place.
        history: entries from :func:`prune_` (possibly after a JSON round trip).

    Returns:
        ``model``.

    Raises:
        ValueError: when a named module is missing or its type cannot be pruned (checked for every operation
            before any channel is removed), or the shapes differ from the recorded ones (the history belongs to
            another architecture).
        TypeError: for a ``history`` that is not a list of dicts.

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

    check_history(history)
    entries = [(index, entry) for index, entry in enumerate(history) if entry.get("kind") == "prune"]
    # Every operation is checked before any channel goes (pruning keeps module names and types).
    modules = dict(model.named_modules())
    for index, entry in entries:
        for operation in entry.get("ops", []):
            if not (isinstance(operation, (list, tuple)) and len(operation) == 3 and operation[1] in ("out", "in")):
                raise ValueError(
                    f"`history[{index}]` holds the operation {operation!r}; each must be [module_name, 'out' | 'in', "
                    "removed_indices]. Pass the history prune_ returned unchanged."
                )
            name = operation[0]
            if name not in modules:
                raise ValueError(
                    f"`history[{index}]` prunes module {name!r}, which the model does not have. Replay the "
                    "history on a model built like the one that was pruned."
                )
            if PrunerBox.get(ops.module2type(modules[name])) is None:
                raise ValueError(
                    f"`history[{index}]`: module {name!r} ({type(modules[name]).__name__}) cannot be pruned. "
                    "Replay the history on a model built like the one that was pruned."
                )
    ties = tied_parameters(model)
    for index, entry in entries:
        for name, direction, removed in entry.get("ops", []):
            _slice(modules[name], direction, removed)
        _retie(model, ties)
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
