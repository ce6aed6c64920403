"""Structural channel pruning on torch-pruning's DependencyGraph, recorded as a replayable history.

:func:`prune_` removes whole output channels (conv filters, linear rows) together with every coupled slice: the
BatchNorm after a conv, the input channels of the layers that read it, and every layer tied to the same residual
stream (torch-pruning follows the autograd graph, so an ``add`` couples all convs feeding and reading it). The
tensors really shrink, so parameters, bytes and MACs go down.

Every pruned slice is recorded as ``[module_name, "out" | "in", removed_indices]`` (``[parameter_name, "param",
removed_indices]`` for parameters outside a layer: class tokens, position embeddings) in a JSON-safe history entry
``{"kind": "prune", ...}``. :func:`restore_pruned_structure` replays those operations on a freshly built dense
model (no example input, no dependency graph needed), after which the pruned ``state_dict`` loads.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    """Names of the layers whose outputs *are* the model's outputs (the classifier head), whatever their type.

    Found on one forward pass: a leaf module whose output tensor is returned unchanged is an output layer;
    otherwise the autograd graph of each output is walked back through parameter-free operations (flatten,
    pooling, activations, reshapes) and through layers holding only per-channel parameters (norms), up to the
    first layers with a weight of two or more dimensions: a conv classifier followed by pooling (SqueezeNet), a
    linear head after a norm. When neither finds a layer, the last ``nn.Linear`` whose ``out_features`` equals the
    output's last dimension is taken.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> output_layers(net, torch.randn(2, 8))
        ['2']
        >>> conv_head = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.AdaptiveAvgPool2d(1),
        ...                           nn.Flatten())
        >>> output_layers(conv_head, torch.randn(2, 3, 8, 8))
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
        with torch.enable_grad():
            output = model(*_as_args(example_inputs))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    outputs = [output] if isinstance(output, torch.Tensor) else list(_tensors(output))
    modules = dict(model.named_modules())
    found: list[str] = []
    for tensor in outputs:
        name = produced.get(id(tensor))
        if name is not None and any(p.dim() >= 2 for p in modules[name].parameters(recurse=False)):
            names = [name]
        else:  # returned by a flatten, a pooling or a norm layer, or by no module: walk back to the layers
            names = _producers_through_autograd(model, [tensor])
        found.extend(n for n in names if n not in found)
    if found:
        return found
    last = outputs[0].shape[-1] if outputs and outputs[0].dim() > 0 else None
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == last]
    return linears[-1:]


def _parameter_source(function: Any, depth: int = 4) -> Any:
    """The parameter behind an autograd input reached through single-input ops (``t()``, views), else None."""
    for _ in range(depth):
        if hasattr(function, "variable"):
            return function.variable
        inputs = [fn for fn, _ in getattr(function, "next_functions", ()) if fn is not None]
        if len(inputs) != 1:
            return None
        function = inputs[0]
    return function.variable if hasattr(function, "variable") else None


def _producers_through_autograd(model: nn.Module, outputs: Sequence[torch.Tensor]) -> list[str]:
    """The layers with a >= 2-D weight first met walking each output's autograd graph backwards."""
    owners: dict[int, tuple[str, nn.Module]] = {}
    for name, module in model.named_modules():
        for parameter in module.parameters(recurse=False):
            owners.setdefault(id(parameter), (name, module))
    found: list[str] = []
    visited: set[int] = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        inputs = [fn for fn, _ in node.next_functions if fn is not None]
        sources = [_parameter_source(fn) for fn in inputs]
        layers = [owners.get(id(source)) for source in sources if source is not None]
        producers = [
            owner for owner in layers
            if owner is not None and any(p.dim() >= 2 for p in owner[1].parameters(recurse=False))
        ]
        if producers:
            found.extend(name for name, _ in producers if name and name not in found)
            continue
        stack.extend(fn for fn, source in zip(inputs, sources, strict=True) if source is None)
    return found


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


@dataclass
class _PruneRun:
    """What one torch-pruning pass did: the recorded operations and what it could not prune."""

    operations: list[list[Any]] = field(default_factory=list)
    parameter_dims: dict[str, int] = field(default_factory=dict)
    unpruned: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, dict[str, int]] = field(default_factory=dict)


def _attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    # torch-pruning keeps embed_dim a multiple of num_heads only for the attention modules it is told about.
    return {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


def _dimension_attributes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Integer attributes a model keeps next to its layers and reads in ``forward``, from the pruned layers.

    torchvision's ``VisionTransformer`` reshapes its patch embedding with ``self.hidden_dim``; torch-pruning's own
    benchmark sets it by hand after pruning.
    """
    attributes: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        if type(module).__name__ == "VisionTransformer" and isinstance(getattr(module, "conv_proj", None), nn.Conv2d):
            if module.hidden_dim != module.conv_proj.out_channels:
                attributes[name] = {"hidden_dim": int(module.conv_proj.out_channels)}
    return attributes


def _set_attributes(model: nn.Module, attributes: Mapping[str, Mapping[str, int]]) -> None:
    modules = dict(model.named_modules())
    for name, values in attributes.items():
        for attribute, value in values.items():
            setattr(modules[name], attribute, int(value))


def _slice(module: nn.Module, direction: str, removed: Sequence[int]) -> None:
    """Removes the output (``"out"``) or input (``"in"``) channels ``removed`` of one layer, in place."""
    from tetra_lightning.prune._torch_pruning import pruner_for

    pruner = pruner_for(module)
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
    operations = [operation for operation in operations if operation[1] != "param"]
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
    verify_forward: bool = False,
) -> _PruneRun:
    """Prunes ``model`` in place at ``pruning_ratio`` and returns the recorded ``[name, direction, removed]`` ops.

    A group of coupled channels whose removal would untie shared parameters (tied weights) is left alone and
    reported in ``untouched``; the holders of a tie pruned consistently share one parameter again afterwards.
    With ``verify_forward``, the model runs one forward after each group is pruned; a group after which the
    forward fails or changes the output shapes (a reshape by a size the module stores, which torch-pruning does
    not follow) is undone and listed in ``unpruned`` with the error.

    Raises:
        RuntimeError: when nothing could be pruned because every channel group reaches an operation torch-pruning
            cannot handle (the reasons are listed).
    """
    from torch_pruning._helpers import to_plain_idxs

    from tetra_lightning.prune._torch_pruning import (
        MAX_GROUP_INDICES,
        WithEmbeddingImportance,
        build_pruner,
        parameter_name,
    )

    names = {id(module): name for name, module in model.named_modules()}
    ties = tied_parameters(model)
    was_training = model.training
    model.eval()  # tracing runs a forward: keep BatchNorm running statistics untouched
    run = _PruneRun()
    expected = _output_shapes(model, example_inputs) if verify_forward else None
    try:
        with torch.enable_grad():  # the dependency graph follows autograd nodes
            pruner = build_pruner(
                model,
                example_inputs,
                MAX_GROUP_INDICES,
                importance=WithEmbeddingImportance(_importance(config.importance), 2 if config.importance == "l2" else 1),
                global_pruning=config.global_pruning,
                pruning_ratio=pruning_ratio,
                max_pruning_ratio=config.max_pruning_ratio,
                ignored_layers=ignored,
                round_to=config.round_to,
                num_heads=_attention_heads(model),
            )
            graph = pruner.DG
            for group in pruner.step(interactive=True):
                seen: set[tuple[str, str]] = set()
                group_operations: list[list[Any]] = []
                group_dims: dict[str, int] = {}
                for dep, idxs in group:
                    removed = sorted(int(i) for i in to_plain_idxs(idxs))
                    if isinstance(dep.target.module, nn.Parameter):  # class tokens, position embeddings
                        name = parameter_name(graph, dep.target.module)
                        if name is not None and (name, "param") not in seen:
                            seen.add((name, "param"))
                            group_operations.append([name, "param", removed])
                            group_dims[name] = int(dep.target.pruning_dim)
                        continue
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
                    group_operations.append([name, direction, removed])
                broken = _untied_by(model, group_operations, ties)
                if broken:
                    if untouched is not None:
                        untouched.append(
                            {
                                "layers": list(
                                    dict.fromkeys(name for name, direction, _ in group_operations if direction != "param")
                                ),
                                "reason": f"pruning them would untie {', '.join(broken)}",
                            }
                        )
                    continue
                before = (_snapshot(model), _graph_state(graph)) if verify_forward else None
                group.prune()
                if before is not None:
                    _set_attributes(model, _dimension_attributes(model))  # as after the loop (ViT's hidden_dim)
                    failure = _forward_failure(model, example_inputs, expected)
                    if failure is not None:
                        _restore_in_place(before[0])
                        _restore_graph_state(graph, before[1])
                        root = next((name for name, direction, _ in group_operations if direction == "out"), None)
                        run.unpruned[root or group_operations[0][0]] = (
                            f"pruning its channel group breaks the forward ({failure}): a size the model stores "
                            "is not one torch-pruning follows; channels kept"
                        )
                        continue
                run.operations.extend(group_operations)
                run.parameter_dims.update(group_dims)
                _retie(model, ties)
            run.unpruned = {**graph.skipped, **run.unpruned}
    finally:
        model.train(was_training)
    run.attributes = _dimension_attributes(model)
    _set_attributes(model, run.attributes)
    if not run.operations and run.unpruned:
        listed = "; ".join(f"{name}: {reason}" for name, reason in list(run.unpruned.items())[:3])
        raise RuntimeError(
            f"prune_ found no channel group of {type(model).__name__} that torch-pruning can prune "
            f"({len(run.unpruned)} group(s) kept: {listed}). Exclude the layers around these operations with "
            "`ignored_layers`, or compress this model with compress_ instead."
        )
    return run


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
    together. The layers producing the model's output keep their outputs (``keep_outputs``, whatever their type:
    a conv classifier too), so the classifier still has all its classes. ``nn.MultiheadAttention`` keeps its
    ``embed_dim`` a multiple of ``num_heads`` (every head loses the same dimensions); class tokens and position
    embeddings lose the pruned channels with the layers they are added to; embeddings, LSTMs and channel-shuffle
    models are handled. Channel groups torch-pruning cannot follow (a channel shuffle, a layer whose weight the
    forward reads directly as Swin's attention does, or a dependency search past a fixed budget) keep their
    channels and are listed with the reason under ``"unpruned"``; the search is bounded, so memory and time stay
    bounded too. The pruned model runs one forward: if it fails (a reshape by a size the model stores, as MaxViT's
    attention does), everything is undone and pruned again with a forward after each group, and the groups that
    break it keep their channels (listed under ``"unpruned"`` with the error). Parameters are replaced by new,
    smaller ones: rebuild any optimizer afterwards.
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
        A one-element history ``[{"kind": "prune", "ops": [[name, "out"|"in"|"param", removed_indices], ...],
        "shapes": {...}, "parameter_dims": {...}, "attributes": {...}, "unpruned": {layer: reason},
        "params_before": int, "params_after": int, "config": {...}, ...}]``, JSON-safe, for
        :func:`restore_pruned_structure`.

    Raises:
        ValueError: for an invalid config, an unknown layer name, or ``importance="taylor"`` without gradients.
        TypeError: for a ``config`` that is not a PruneConfig, or both a config and keyword fields.
        RuntimeError: when no channel group can be pruned because each reaches an operation torch-pruning cannot
            handle or breaks the forward (the message lists them; the model is left unpruned).

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
    snapshot = _snapshot(model)
    run = _run_pruner(model, example_inputs, ratio, config, ignored, untouched)
    if _forward_failure(model, example_inputs) is not None:
        # Some group reaches a reshape by a stored size; prune again, checking the forward after every group.
        _restore_in_place(snapshot)
        untouched.clear()
        run = _run_pruner(model, example_inputs, ratio, config, ignored, untouched, verify_forward=True)
        failure = _forward_failure(model, example_inputs)
        if failure is not None:
            _restore_in_place(snapshot)
            raise RuntimeError(
                f"prune_ pruned {type(model).__name__} into a model whose forward fails ({failure}); the model was "
                "restored unpruned. Some operation reads a size that torch-pruning does not follow (a reshape by a "
                "stored width, as MaxViT's attention does): pass the modules around it in `ignored_layers`, or "
                "compress this model with compress_ instead."
            )
    del snapshot
    operations = run.operations
    if computed_grads:
        model.zero_grad(set_to_none=True)
    touched = list(dict.fromkeys(name for name, direction, _ in operations if direction != "param"))
    entry: dict[str, Any] = {
        "kind": "prune",
        "importance": config.importance,
        "pruning_ratio": float(ratio),
        "global_pruning": config.global_pruning,
        "round_to": config.round_to,
        "ops": operations,
        "shapes": pruned_shapes(model, touched),
        "parameter_dims": run.parameter_dims,
        "parameter_shapes": {name: list(model.get_parameter(name).shape) for name in run.parameter_dims},
        "attributes": run.attributes,
        "unpruned": run.unpruned,
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


def _snapshot(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Each module's attributes, its parameter and buffer dicts copied: pruning replaces parameters, buffers and
    sizes by new objects (torch-pruning never resizes a tensor in place), so this shallow copy is enough to undo it
    without a second copy of the weights (or of a LightningModule's trainer)."""
    return [
        (module, {key: (value.copy() if key in ("_parameters", "_buffers") else value)
                  for key, value in module.__dict__.items() if key != "_modules"})
        for module in model.modules()
    ]


def _restore_in_place(snapshot: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    """Puts the snapshot's attributes back into the same module objects (references to them stay valid)."""
    for module, saved in snapshot:
        module.__dict__.update(saved)


def _output_shapes(model: nn.Module, example_inputs: Any) -> list[tuple[int, ...]]:
    """The shapes of the tensors of one forward of ``model`` (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [tuple(t.shape) for t in _tensors(model(*_as_args(example_inputs)))]
    finally:
        model.train(was_training)


def _forward_failure(
    model: nn.Module, example_inputs: Any, expected: list[tuple[int, ...]] | None = None
) -> str | None:
    """Why one forward of ``model`` fails or changes the output shapes from ``expected``; ``None`` when it works."""
    try:
        shapes = _output_shapes(model, example_inputs)
    except Exception as err:  # noqa: BLE001 - any failure means the pruned graph is inconsistent
        return f"{type(err).__name__}: {err}"
    if expected is not None and shapes != expected:
        return f"the outputs have shapes {shapes} instead of {expected}"
    return None


def _graph_state(graph: Any) -> tuple[dict[Any, Any], dict[Any, Any], list[tuple[Any, Any]]]:
    """What ``Group.prune`` changes in torch-pruning's graph: a pruned parameter replaces its key and node module."""
    return dict(graph.module2node), dict(graph._param_to_name), [(n, n.module) for n in graph.module2node.values()]


def _restore_graph_state(graph: Any, state: tuple[dict[Any, Any], dict[Any, Any], list[tuple[Any, Any]]]) -> None:
    module2node, param_to_name, node_modules = state
    graph.module2node.clear()
    graph.module2node.update(module2node)
    graph._param_to_name.clear()
    graph._param_to_name.update(param_to_name)
    for node, module in node_modules:
        node.module = module


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
    from tetra_lightning.prune._torch_pruning import pruner_for

    check_history(history)
    entries = [(index, entry) for index, entry in enumerate(history) if entry.get("kind") == "prune"]
    # Every operation is checked before any channel goes (pruning keeps module names and types).
    modules = dict(model.named_modules())
    for index, entry in entries:
        for operation in entry.get("ops", []):
            if not (
                isinstance(operation, (list, tuple)) and len(operation) == 3 and operation[1] in ("out", "in", "param")
            ):
                raise ValueError(
                    f"`history[{index}]` holds the operation {operation!r}; each must be [module_name, 'out' | 'in', "
                    "removed_indices] or [parameter_name, 'param', removed_indices]. Pass the history prune_ "
                    "returned unchanged."
                )
            name = operation[0]
            if operation[1] == "param":
                _parameter_holder(model, index, name)
                continue
            if name not in modules:
                raise ValueError(
                    f"`history[{index}]` prunes module {name!r}, which the model does not have. Replay the "
                    "history on a model built like the one that was pruned."
                )
            if pruner_for(modules[name]) is None:
                raise ValueError(
                    f"`history[{index}]`: module {name!r} ({type(modules[name]).__name__}) cannot be pruned. "
                    "Replay the history on a model built like the one that was pruned."
                )
    ties = tied_parameters(model)
    for index, entry in entries:
        dims = entry.get("parameter_dims", {})
        for name, direction, removed in entry.get("ops", []):
            if direction == "param":
                _prune_parameter(model, index, name, int(dims.get(name, -1)), removed)
            else:
                _slice(modules[name], direction, removed)
        _set_attributes(model, entry.get("attributes", {}))
        _retie(model, ties)
        expected = entry.get("shapes", {})
        found = pruned_shapes(model, expected)
        expected_parameters = {name: list(shape) for name, shape in entry.get("parameter_shapes", {}).items()}
        found_parameters = {name: list(model.get_parameter(name).shape) for name in expected_parameters}
        if found != {name: dict(shapes) for name, shapes in expected.items()} or found_parameters != expected_parameters:
            wrong = [name for name in expected if found.get(name) != expected[name]]
            wrong += [name for name in expected_parameters if found_parameters[name] != expected_parameters[name]]
            raise ValueError(
                f"Replaying `history[{index}]` gave shapes that differ from the recorded ones at {wrong[:5]}. "
                "Replay the history on a freshly constructed model of the same architecture."
            )
    return model


def _parameter_holder(model: nn.Module, index: int, name: str) -> tuple[nn.Module, str, nn.Parameter]:
    """The module holding the parameter ``name``, its attribute and the parameter (a ValueError naming the fix)."""
    owner_name, _, attribute = name.rpartition(".")
    try:
        owner = model.get_submodule(owner_name)
        old = getattr(owner, attribute)
    except AttributeError:
        old = None
    if not isinstance(old, nn.Parameter):
        raise ValueError(
            f"`history[{index}]` prunes parameter {name!r}, which the model does not have. Replay the history on a "
            "model built like the one that was pruned."
        )
    return owner, attribute, old


def _prune_parameter(model: nn.Module, index: int, name: str, dim: int, removed: Sequence[int]) -> None:
    owner, attribute, old = _parameter_holder(model, index, name)
    drop = set(int(i) for i in removed)
    keep = torch.tensor([i for i in range(old.shape[dim]) if i not in drop], dtype=torch.long, device=old.device)
    setattr(owner, attribute, nn.Parameter(old.detach().index_select(dim, keep), requires_grad=old.requires_grad))


# prune_ entries: the recorded channel slices, removed again (see restore_pruned_structure).
register_history_kind("prune", restore_pruned_structure, ("kind", "ops"))
