"""The one module that touches torch-pruning's internals: its ``DependencyGraph``, groups and index mappings.

:func:`~tetra_lightning.prune.prune_` runs torch-pruning's ``BasePruner`` on a :class:`BoundedDependencyGraph`,
a ``DependencyGraph`` that differs from the library's in three ways, each one a torchvision model the plain
graph cannot prune:

* **Bounded group search.** torch-pruning collects a group by following dependencies with index mappings; a node
  reached again with *different* indices is expanded again. Through the reshapes and permutes of window
  attention (Swin) the index lists grow on every visit, and the search ran past 20 GB without end. Here a group
  whose search expands one node more than :data:`MAX_NODE_EXPANSIONS` times, or collects more indices than a
  budget scaled to the model (at most :data:`MAX_GROUP_INDICES`), is abandoned and left unpruned, with the reason
  recorded.
* **Opaque operations.** A reshape whose index mapping torch-pruning cannot compute (the channel shuffle of
  ShuffleNetV2 divides by zero there) and an operation that reads a layer's weight without calling the layer
  (Swin's ``F.linear(x, self.qkv.weight)``: torch-pruning never sees ``qkv``) would be pruned wrongly or not at
  all. Such nodes are marked opaque and every group that reaches one keeps its channels (the layers around a
  channel shuffle keep their outputs, the block internals are still pruned).
* **Recurrent layers.** A multi-layer ``nn.LSTM`` / ``nn.GRU`` runs as many autograd nodes; they are folded into
  the module's node and pruned by :class:`RecurrentPruner` (every layer's hidden units), not by torch-pruning's
  single-layer LSTM pruner.
* **Recorded reasons.** Every group left unpruned is reported as ``{root layer: reason}`` in :attr:`skipped`.

The pruner itself is a ``BasePruner`` that keeps attention groups at their own root (see :class:`_Pruner`).

torch-pruning's ``BasePruner`` builds its graph itself (``dependency.DependencyGraph()``); :func:`build_pruner`
swaps the class in for the duration of the constructor only. ``tests/test_prune_zoo.py`` asserts that every
internal used here still exists.
"""

from __future__ import annotations

import contextlib
import typing
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers, ops
from torch_pruning.dependency import index_mapping, shape_infer
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.dependency.group import Group
from torch_pruning.dependency.node import Node
from torch_pruning.pruner import function

__all__ = [
    "MAX_GROUP_INDICES",
    "MAX_NODE_EXPANSIONS",
    "RECURRENT_PRUNERS",
    "BoundedDependencyGraph",
    "RecurrentPruner",
    "build_pruner",
    "parameter_name",
    "pruner_for",
    "recurrent_unsupported",
]

#: Largest number of (layer, index) pairs one dependency group may collect before its search is abandoned.
MAX_GROUP_INDICES = 2_000_000
#: Below the cap, a group may collect this many times the channels of all prunable layers of the model (a legal
#: group visits each layer's channels a few times; a ViT-B/16 residual group collects about 0.8 of the total).
GROUP_INDICES_PER_CHANNEL = 8
_MIN_GROUP_INDICES = 1_000_000
#: A group search reaching one node again with new indices more often than this is growing without bound (the
#: torchvision zoo needs at most 3; Swin's window attention reached thousands).
MAX_NODE_EXPANSIONS = 16

_INDEX_MAPPINGS: dict[Any, Any] = {
    ops.OPTYPE.CONCAT: index_mapping.update_concat_index_mapping,
    ops.OPTYPE.SPLIT: index_mapping.update_split_index_mapping,
    ops.OPTYPE.RESHAPE: index_mapping.update_reshape_index_mapping,
    ops.OPTYPE.UNBIND: index_mapping.update_unbind_index_mapping,
    ops.OPTYPE.EXPAND: index_mapping.update_expand_index_mapping,
    ops.OPTYPE.SLICE: index_mapping.update_slice_index_mapping,
}


class _SearchTooLarge(RuntimeError):
    """The dependency search of one group collected more than its budget of indices."""

    def __init__(self, group: Group) -> None:
        super().__init__("dependency search too large")
        self.group = group


class BoundedDependencyGraph(tp.DependencyGraph):
    """torch-pruning's ``DependencyGraph`` with a bounded group search and opaque operations (see the module).

    Attributes:
        opaque: graph nodes whose channels must not be pruned, with the reason.
        skipped: root layer name -> why its group keeps its channels.
        max_group_indices: the search budget of one group.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> graph = BoundedDependencyGraph().build_dependency(net, torch.randn(1, 4))
        >>> len(list(graph.get_all_groups())), graph.skipped
        (2, {})
    """

    def __init__(self, max_group_indices: int = MAX_GROUP_INDICES) -> None:
        super().__init__()
        self.opaque: dict[Any, str] = {}
        self.skipped: dict[str, str] = {}
        self.max_group_indices = int(max_group_indices)

    # -- building ---------------------------------------------------------------------------------------------
    def build_dependency(  # type: ignore[override]
        self,
        model: nn.Module,
        example_inputs: Any,
        forward_fn: Any = None,
        output_transform: Any = None,
        unwrapped_parameters: Any = None,
        customized_pruners: Any = None,
        ignored_layers: Any = None,
        ignored_params: Any = None,
        verbose: bool = True,
    ) -> BoundedDependencyGraph:
        """``DependencyGraph.build_dependency``, with index mappings that may fail per node (the node is opaque)."""
        self.verbose = verbose
        self.model = model
        self._module2name = {module: name for (name, module) in model.named_modules()}
        customized_pruners = {**RECURRENT_PRUNERS, **(customized_pruners or {})}
        if customized_pruners is not None:
            for customized_type, customized_pruner in customized_pruners.items():
                self.register_customized_layer(customized_type, customized_pruner)
        if ignored_layers is not None:
            self.IGNORED_LAYERS_IN_TRACING.extend(ignored_layers)
        self.ignored_params = ignored_params if ignored_params is not None else []
        for layer_type_or_instance in self.CUSTOMIZED_PRUNERS:
            for module in self.model.modules():
                if module is layer_type_or_instance or (
                    not isinstance(layer_type_or_instance, nn.Module) and isinstance(module, layer_type_or_instance)
                ):
                    self.IGNORED_LAYERS_IN_TRACING.extend(sub for sub in module.modules() if sub is not module)
        with warnings.catch_warnings():
            # torch-pruning warns about every unwrapped parameter; prune_ records them in its history instead.
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            self._param_to_name, self.unwrapped_parameters = self._detect_unwrapped_parameters(unwrapped_parameters)
        self.module2node = self._trace(model, example_inputs, forward_fn, output_transform=output_transform)
        self._merge_recurrent_nodes()
        self._build_dependency(self.module2node)
        shape_infer.init_shape_information(self)
        channels = 0
        for module in self.module2node:
            pruner = self.get_pruner_of_module(module) if isinstance(module, nn.Module) else None
            count = pruner.get_out_channels(module) if pruner is not None else None
            channels += int(count or 0)
        self.max_group_indices = min(
            self.max_group_indices, max(_MIN_GROUP_INDICES, GROUP_INDICES_PER_CHANNEL * channels)
        )
        self._mark_direct_weight_reads()
        self._mark_channel_splits()
        self._update_index_mapping()
        return self

    def _mark_channel_splits(self) -> None:
        """Views that split the channel dimension of a feature map into groups, or merge it back, are opaque.

        A channel shuffle is ``(b, c, h, w) -> (b, g, c // g, h, w)``, a transpose, and the inverse view.
        torch-pruning maps indices through a reshape as a flatten or its inverse; neither fits, and the
        inverse-flatten mapping these views would get multiplies the indices at every pass of the search.
        """
        for node in list(self.module2node.values()):
            if node.type != ops.OPTYPE.RESHAPE:
                continue
            grad_fn = node.grad_fn
            sizes = getattr(grad_fn, "_saved_self_sym_sizes", None) or getattr(grad_fn, "_saved_self_sizes", None)
            metadata = getattr(grad_fn, "_input_metadata", None)
            if sizes is None or not metadata:
                continue
            before, after = [int(v) for v in sizes], [int(v) for v in metadata[0].shape]
            splits = _splits_channels(before, after)
            if splits or _splits_channels(after, before):
                self.opaque[node] = (
                    f"a feature map of shape {tuple(before)} is viewed as {tuple(after)} (a channel shuffle), which "
                    "torch-pruning cannot map"
                )

    def _update_index_mapping(self) -> None:
        for node in list(self.module2node.values()):
            update = _INDEX_MAPPINGS.get(node.type)
            if update is None or node in self.opaque:
                continue
            if node.type == ops.OPTYPE.EXPAND and torch.__version__ < "1.8":
                continue
            try:
                update(self, node)
            except (ArithmeticError, IndexError, ValueError) as error:
                self.opaque[node] = (
                    f"torch-pruning cannot map channel indices through {node.grad_fn.name()} "
                    f"({type(error).__name__}: {error}; e.g. a channel shuffle)"
                )

    def _mark_direct_weight_reads(self) -> None:
        """Nodes using the weight of a prunable layer that was never called as a module are opaque."""
        registered = tuple(ops.type2class(t) for t in self.REGISTERED_PRUNERS) + tuple(
            t for t in self.CUSTOMIZED_PRUNERS if isinstance(t, type)
        )
        covered: set[int] = set()
        for module in self.module2node:
            if isinstance(module, nn.Module):
                covered.update(id(p) for p in module.parameters())
        owners: dict[int, str] = {}
        for name, module in self.model.named_modules():
            if isinstance(module, registered) and module not in self.module2node:
                for parameter in module.parameters(recurse=False):
                    if id(parameter) not in covered:
                        owners[id(parameter)] = name
        if not owners:
            return
        for node in list(self.module2node.values()):
            for function_, _ in getattr(node.grad_fn, "next_functions", ()) or ():
                variable = getattr(function_, "variable", None)
                if variable is not None and id(variable) in owners:
                    reason = (
                        f"the forward reads {owners[id(variable)]!r}'s weight directly (e.g. F.linear(x, "
                        "layer.weight)), so torch-pruning cannot see that layer"
                    )
                    self.opaque[node] = reason
                    if not node.inputs:  # a transform of the weight alone (``weight.t()``): the op using it too
                        for following in node.outputs:
                            self.opaque.setdefault(following, reason)

    def _trace(self, model: nn.Module, example_inputs: Any, forward_fn: Any, output_transform: Any) -> Any:
        """torch-pruning's trace, also recording where each recurrent module's inputs end and outputs start."""
        self._recurrent_bounds: dict[nn.Module, tuple[set[Any], set[Any]]] = {}

        def hook(module: nn.Module, inputs: Any, outputs: Any) -> None:
            starts = {t.grad_fn for t in _flat_tensors(outputs) if t.grad_fn is not None}
            stops = {t.grad_fn for t in _flat_tensors(inputs) if t.grad_fn is not None}
            self._recurrent_bounds[module] = (starts, stops)

        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.RNNBase)]
        try:
            return super()._trace(model, example_inputs, forward_fn, output_transform)
        finally:
            for handle in handles:
                handle.remove()

    def _merge_recurrent_nodes(self) -> None:
        """Folds the autograd nodes inside an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` into the module's node.

        A multi-layer RNN runs as one autograd node per layer (LSTM) or as a web of per-step matmuls and gates
        (GRU on CPU); torch-pruning sees only the node of the module's first output and takes the rest for
        element-wise operations, coupling the hidden size to the input size. Everything between the module's
        inputs and its outputs becomes one node here.
        """
        by_grad_fn = {node.grad_fn: node for node in self.module2node.values() if node.grad_fn is not None}
        for module, (starts, stops) in getattr(self, "_recurrent_bounds", {}).items():
            inside: set[Any] = set()
            stack = list(starts)
            while stack:
                grad_fn = stack.pop()
                if grad_fn in inside or grad_fn in stops or hasattr(grad_fn, "variable"):
                    continue
                inside.add(grad_fn)
                stack.extend(fn for fn, _ in getattr(grad_fn, "next_functions", ()) or () if fn is not None)
            parts = {by_grad_fn[fn] for fn in inside if fn in by_grad_fn}
            node = self.module2node.get(module)
            if node is None:  # the model reads h_n, not the output sequence torch-pruning hooks
                if not parts:
                    continue
                node = Node(module=module, grad_fn=next(iter(parts)).grad_fn, name=self._module2name.get(module))
                node.type = ops.OPTYPE.CUSTOMIZED
                self.module2node[module] = node
            merged = parts | {node}
            inputs = _unique(i for part in merged for i in part.inputs if i not in merged)
            outputs = _unique(o for part in merged for o in part.outputs if o not in merged)
            for other in inputs:
                other.outputs = _unique(node if o in merged else o for o in other.outputs)
            for other in outputs:
                other.inputs = _unique(node if i in merged else i for i in other.inputs)
            node.inputs, node.outputs = inputs, outputs
            for part in merged - {node}:
                self.module2node.pop(part.module, None)
            reason = recurrent_unsupported(module)
            if reason is not None:
                self.opaque[node] = f"{self._module2name.get(module, 'a recurrent layer')} is {reason}"

    # -- groups -----------------------------------------------------------------------------------------------
    def get_pruning_group(self, module: Any, pruning_fn: Any, idxs: Any) -> Group:  # type: ignore[override]
        """``DependencyGraph.get_pruning_group`` that stops after :attr:`max_group_indices` collected indices.

        Raises:
            ValueError: when ``module`` is not in the graph (as torch-pruning does).
        """
        if module not in self.module2node:
            raise ValueError(f"Module {module} is not in the dependency graph.")
        if isinstance(module, ops.TORCH_CONV) and module.groups == module.out_channels and module.out_channels > 1:
            pruning_fn = function.prune_depthwise_conv_out_channels
        if isinstance(idxs, int):
            idxs = [idxs]
        idxs = [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
        self._update_index_mapping()
        group = Group()
        root_node = self.module2node[module]
        group.add_dep(dep=Dependency(pruning_fn, pruning_fn, source=root_node, target=root_node), idxs=idxs)
        visited: set[Any] = set()
        expansions: dict[Any, int] = {}
        collected = len(idxs)
        stack = [(group[0].dep, idxs)]
        while stack:
            dep, current = stack.pop(-1)
            node, handler = dep.target, dep.handler
            visited.add(node)
            expansions[node] = expansions.get(node, 0) + 1
            if expansions[node] > MAX_NODE_EXPANSIONS:
                raise _SearchTooLarge(group)
            for new_dep in node.dependencies:
                if not new_dep.is_triggered_by(handler):
                    continue
                new_indices = current
                for mapping in new_dep.index_mapping:
                    if mapping is not None:
                        new_indices = mapping(new_indices)
                if len(new_indices) == 0:
                    continue
                if new_dep.target in visited and group.has_pruning_op(new_dep, new_indices):
                    continue
                group.add_dep(new_dep, new_indices)
                collected += len(new_indices)
                if collected > self.max_group_indices:
                    raise _SearchTooLarge(group)
                stack.append((new_dep, new_indices))
        merged = Group()
        for dep, item_idxs in group.items:
            if isinstance(dep.target.module, nn.Parameter) and any(
                dep.target.module is ignored for ignored in self.ignored_params
            ):
                continue
            merged.add_and_merge(dep, item_idxs)
        merged._DG = self
        for index in range(len(merged)):
            hybrid = merged[index].idxs
            item = _helpers.GroupItem(merged[index].dep, _helpers.to_plain_idxs(hybrid))
            item.root_idxs = _helpers.to_root_idxs(hybrid)
            merged[index] = item
        return merged

    def get_all_groups(  # type: ignore[override]
        self,
        ignored_layers: typing.Sequence[nn.Module] = (),
        root_module_types: typing.Sequence[type] = (ops.TORCH_CONV, ops.TORCH_LINEAR),
    ) -> Iterator[Group]:
        """``DependencyGraph.get_all_groups`` without the groups that reach an opaque node or grow too large."""
        visited_layers: set[Any] = set()
        ignored = list(ignored_layers) + list(self.IGNORED_LAYERS_IN_TRACING)
        ignored_ids = {id(layer) for layer in ignored}
        for module in list(self.module2node.keys()):
            if id(module) in ignored_ids or not isinstance(module, tuple(root_module_types)):
                continue
            pruner = self.get_pruner_of_module(module)
            if pruner is None or pruner.get_out_channels(module) is None or id(module) in visited_layers:
                continue
            name = self._module2name.get(module, repr(module))
            try:
                group = self.get_pruning_group(
                    module, pruner.prune_out_channels, list(range(pruner.get_out_channels(module)))
                )
            except _SearchTooLarge as error:
                for dep, _ in error.group:
                    if self.is_out_channel_pruning_fn(dep.handler):
                        visited_layers.add(id(dep.target.module))
                self.skipped[name] = (
                    "the dependency search of its channel group grew without bound (index mappings through "
                    "reshapes/permutes torch-pruning cannot follow) and was stopped; its channels are kept"
                )
                continue
            except (ArithmeticError, IndexError) as error:
                # An index mapping that does not fit the channels it receives (a split after a channel shuffle).
                self.skipped[name] = (
                    f"torch-pruning cannot map its channel indices ({type(error).__name__}: {error}); its channels "
                    "are kept"
                )
                continue
            prunable = True
            reasons = [self.opaque[dep.target] for dep, _ in group if dep.target in self.opaque]
            for dep, _ in group:
                if self.is_out_channel_pruning_fn(dep.handler):
                    visited_layers.add(id(dep.target.module))
                    if id(dep.target.module) in ignored_ids:
                        prunable = False
            if reasons:
                self.skipped[name] = f"its channel group reaches an operation where {reasons[0]}; channels kept"
                continue
            if prunable:
                yield group


def _flat_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, nn.utils.rnn.PackedSequence):
        return [value.data]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _flat_tensors(item)]
    return []


def _unique(items: Any) -> list[Any]:
    found: list[Any] = []
    for item in items:
        if not any(item is other for other in found):
            found.append(item)
    return found


def recurrent_unsupported(module: nn.Module) -> str | None:
    """Why the hidden units of a recurrent module cannot be pruned (None when they can).

    Example:
        >>> recurrent_unsupported(nn.LSTM(4, 8, num_layers=2)) is None, recurrent_unsupported(nn.GRU(4, 8, bidirectional=True))
        (True, 'bidirectional: its two directions share output channels; its sizes are kept')
    """
    if getattr(module, "bidirectional", False):
        return "bidirectional: its two directions share output channels; its sizes are kept"
    if getattr(module, "proj_size", 0):
        return "an LSTM with proj_size: its sizes are kept"
    return None


_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


class RecurrentPruner(function.BasePruningFunc):
    """Prunes hidden units of every layer of a unidirectional ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``.

    torch-pruning's own LSTM pruner handles one layer only. Output channels are the hidden units (the same
    ones removed in every layer, so ``hidden_size`` stays one number); input channels are the features of the
    first layer's input.

    Example:
        >>> lstm = nn.LSTM(6, 8, num_layers=2)
        >>> _ = RecurrentPruner().prune_out_channels(lstm, [0, 5])
        >>> lstm.hidden_size, tuple(lstm.weight_ih_l1.shape), tuple(lstm.weight_hh_l0.shape)
        (6, (24, 6), (24, 6))
    """

    def prune_out_channels(self, layer: nn.Module, idxs: typing.Sequence[int]) -> nn.Module:
        hidden = layer.hidden_size
        keep = torch.tensor(sorted(set(range(hidden)) - {int(i) for i in idxs}), dtype=torch.long)
        rows = torch.cat([keep + gate * hidden for gate in range(_GATES[layer.mode])])
        for index in range(layer.num_layers):
            weight_ih = f"weight_ih_l{index}"
            self._select(layer, weight_ih, rows, 0)
            if index > 0:
                self._select(layer, weight_ih, keep, 1)
            self._select(layer, f"weight_hh_l{index}", rows, 0)
            self._select(layer, f"weight_hh_l{index}", keep, 1)
            if layer.bias:
                self._select(layer, f"bias_ih_l{index}", rows, 0)
                self._select(layer, f"bias_hh_l{index}", rows, 0)
        layer.hidden_size = int(keep.numel())
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: typing.Sequence[int]) -> nn.Module:
        keep = torch.tensor(sorted(set(range(layer.input_size)) - {int(i) for i in idxs}), dtype=torch.long)
        for suffix in ("", "_reverse") if layer.bidirectional else ("",):
            self._select(layer, "weight_ih_l0" + suffix, keep, 1)
        layer.input_size = int(keep.numel())
        return layer

    def _select(self, layer: nn.Module, name: str, keep: torch.Tensor, dim: int) -> None:
        weight = getattr(layer, name)
        setattr(layer, name, self._prune_parameter_and_grad(weight, keep.tolist(), dim))

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.hidden_size)

    def get_in_channels(self, layer: nn.Module) -> int:
        return int(layer.input_size)


class WithEmbeddingImportance:
    """An importance that also scores groups holding only embeddings and recurrent layers.

    torch-pruning's importances read conv, linear and norm weights; a group such as "embedding dimension ->
    LSTM input" has none of them, scores nothing and is never pruned. Such a group is scored by the ``p``-norm
    of the embedding's columns and of the first recurrent layer's input columns.

    Example:
        >>> importance = WithEmbeddingImportance(tp.importance.GroupMagnitudeImportance(p=1), p=1)
        >>> importance.p
        1
    """

    def __init__(self, base: Any, p: int = 1) -> None:
        self.base = base
        self.p = p

    def __call__(self, group: Group) -> torch.Tensor | None:
        scores = self.base(group)
        if scores is not None and len(scores) > 0:
            return scores
        total = torch.zeros(len(group[0].idxs), dtype=torch.float32)
        found = False
        for item in group:
            layer, handler, idxs = item.dep.target.module, item.dep.handler, list(item.idxs)
            if isinstance(layer, nn.Embedding):
                local = layer.weight.detach()[:, idxs].abs().pow(self.p).sum(0)
            elif isinstance(layer, nn.RNNBase) and handler == RECURRENT_PRUNERS[type(layer)].prune_in_channels:
                local = layer.weight_ih_l0.detach()[:, idxs].abs().pow(self.p).sum(0)
            else:
                continue
            roots = item.root_idxs if item.root_idxs is not None else list(range(len(idxs)))
            total.index_add_(0, torch.tensor(roots, dtype=torch.long), local.float().cpu())
            found = True
        return total if found else scores


#: The pruners prune_ registers for recurrent layers (torch-pruning's LSTM pruner assumes one layer).
RECURRENT_PRUNERS: dict[type, RecurrentPruner] = {cls: RecurrentPruner() for cls in (nn.LSTM, nn.GRU, nn.RNN)}


def pruner_for(module: nn.Module) -> Any:
    """The torch-pruning pruning functions that apply to ``module`` (None when it cannot be pruned).

    Example:
        >>> type(pruner_for(nn.LSTM(2, 2))).__name__, type(pruner_for(nn.Linear(2, 2))).__name__
        ('RecurrentPruner', 'LinearPruner')
    """
    if type(module) in RECURRENT_PRUNERS:
        return RECURRENT_PRUNERS[type(module)]
    return function.PrunerBox.get(ops.module2type(module))


def _splits_channels(before: list[int], after: list[int]) -> bool:
    """Whether ``after`` is ``before`` (4-D) with its channel dimension split in two (``c = g * (c // g)``)."""
    return (
        len(before) == 4
        and len(after) == 5
        and after[0] == before[0]
        and after[1] * after[2] == before[1]
        and after[1] > 1
        and after[2] > 1
        and after[3:] == before[2:]
    )


@contextlib.contextmanager
def _graph_class(cls: type) -> Iterator[None]:
    # BasePruner.__init__ builds its graph as `dependency.DependencyGraph()`; swap the class for that call only.
    original = tp.dependency.DependencyGraph
    tp.dependency.DependencyGraph = cls
    try:
        yield
    finally:
        tp.dependency.DependencyGraph = original


def build_pruner(model: nn.Module, example_inputs: Any, max_group_indices: int, **kwargs: Any) -> Any:
    """torch-pruning's ``BasePruner`` on a :class:`BoundedDependencyGraph` (``kwargs`` are BasePruner's).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> pruner = build_pruner(net, torch.randn(1, 4), 1000, importance=tp.importance.GroupMagnitudeImportance(),
        ...                       pruning_ratio=0.5, ignored_layers=[net[2]])
        >>> isinstance(pruner.DG, BoundedDependencyGraph), pruner.DG.max_group_indices
        (True, 1000)
    """

    class _Graph(BoundedDependencyGraph):
        def __init__(self) -> None:
            super().__init__(max_group_indices)

    roots = list(kwargs.pop("root_module_types", (ops.TORCH_CONV, ops.TORCH_LINEAR)))
    roots += [cls for cls in (*RECURRENT_PRUNERS, nn.Embedding) if cls not in roots]
    with _graph_class(_Graph):
        return _Pruner(model, example_inputs, root_module_types=roots, **kwargs)


class _Pruner(tp.pruner.BasePruner):
    """``BasePruner`` that keeps an attention group's own root.

    BasePruner re-roots a group holding an ``nn.MultiheadAttention`` at a downstream layer's *input* channels (a
    workaround for timm's ``qkv`` + ``unbind``), then ranks local groups in scopes named after the root layer: the
    downstream layer's own group has the same name and replaces the residual stream's group, which is then never
    pruned (a TransformerEncoder kept its ``d_model``). The attention modules given here are
    ``nn.MultiheadAttention`` only, whose index mappings need no re-rooting.
    """

    def _downstream_node_as_root_if_attention(self, group: Group) -> Group:
        return group


def parameter_name(graph: tp.DependencyGraph, parameter: nn.Parameter) -> str | None:
    """The dotted name of an unwrapped parameter in the graph's model (None if unknown)."""
    return graph._param_to_name.get(parameter)
