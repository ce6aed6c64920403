"""Int8 and reduced-precision deployment of trained models.

Which path, and why (torch 2.14 + torchao 0.18, CPU):

* :func:`quantize_int8` (static int8 of every ``Conv2d`` and ``Linear``, weights per channel, activations per tensor,
  as a new module):
  torchao's PT2E flow, the maintained successor of ``torch.ao.quantization`` FX. The model is captured with
  ``torch.export.export(model, args, strict=True, dynamic_shapes=<batch dim Dim.AUTO>).module()``, annotated
  with ``X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=...))``, prepared
  with ``prepare_pt2e`` (or ``prepare_qat_pt2e`` for QAT), calibrated and converted with ``convert_pt2e``.
  **``strict=True`` matters**: with ``strict=False`` (the default of ``torch.export.export`` since 2.9) the
  annotation of a torchvision ResNet-18 fails with ``ValueError: Input partition has more than one output node``
  (the non-strict trace keeps in-place ``relu_`` / ``add_`` nodes that the quantizer's partition matcher rejects).
  The converted module keeps dead copies of the float weights; :func:`quantize_int8` deletes them, so the artifact
  holds int8 weights only (about 4x smaller). Its ops are ``quantized_decomposed`` q/dq pairs around float
  kernels: small on disk, and fast only once lowered (``torch.compile`` with Inductor fuses them into int8
  kernels on x86).
* :func:`quantize_` changes a model in place. ``mode="int8_weight_only"``: torchao
  ``quantize_(model, Int8WeightOnlyConfig())``, ``nn.Linear`` only (torchao
  does not quantize convs on CPU).
* ``mode="fp16"`` / ``"bf16"``: the parameters are cast; hooks cast floating inputs to that dtype and outputs
  back to float32, so callers keep feeding float32.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tetra_lightning.checkpoint import register_checkpoint_section

__all__ = [
    "MODES",
    "convert_int8",
    "export_model",
    "IN_PLACE_MODES",
    "prepare_int8",
    "quantize_",
    "quantize_int8",
    "restore_qat",
    "strip_unused_tensors",
]

#: Modes accepted by :func:`quantize_`.
MODES = ("int8", "int8_weight_only", "fp16", "bf16")

Calibration = Iterable[Any] | Callable[[nn.Module], None] | None


def check_mode(mode: str) -> None:
    """Raises ``ValueError`` for a mode :func:`quantize_` does not know.

    Example:
        >>> check_mode("int8")
    """
    if mode not in MODES:
        raise ValueError(
            f"`mode` must be one of {', '.join(map(repr, MODES))}, got {mode!r}. Pass mode='int8' for static int8 "
            "of convs and linears, or 'int8_weight_only' / 'fp16' / 'bf16' for weight-only options."
        )


def _args(example_inputs: Any) -> tuple[Any, ...]:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _dynamic_batch(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        {0: torch.export.Dim.AUTO} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in args
    )


def _require_torchao() -> None:
    try:
        import torchao  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "int8 quantization needs torchao: `pip install torchao` (tested with torchao 0.18.0)."
        ) from error


def prepare_int8(model: nn.Module, example_inputs: Any, is_qat: bool = False) -> torch.fx.GraphModule:
    """Captures ``model`` with ``torch.export`` and inserts observers (PTQ) or fake-quant modules (QAT).

    Args:
        model: the float model (left unchanged).
        example_inputs: a tensor or a tuple of positional inputs; the batch dimension stays dynamic.
        is_qat: prepare for quantization-aware training (``prepare_qat_pt2e``) instead of calibration.

    Returns:
        The prepared ``GraphModule``: run calibration batches through it (PTQ) or train it (QAT), then
        :func:`convert_int8`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
        >>> prepared = prepare_int8(net.eval(), torch.randn(2, 3, 8, 8))
        >>> prepared(torch.randn(5, 3, 8, 8)).shape
        torch.Size([5, 4])
    """
    _require_torchao()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    args = _args(example_inputs)
    was_training = model.training
    model.train(is_qat)
    try:
        captured = torch.export.export(model, args, dynamic_shapes=_dynamic_batch(args), strict=True).module()
    finally:
        model.train(was_training)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=is_qat))
    prepare = prepare_qat_pt2e if is_qat else prepare_pt2e
    return prepare(captured, quantizer)


def restore_qat(model: nn.Module, spec: dict[str, Any]) -> bool:
    """Prepares ``model``'s submodule for QAT again, as a checkpoint's ``"qat"`` section records it.

    Registered as the replay of the ``"qat"`` checkpoint section (see
    :func:`~tetra_lightning.checkpoint.replay_qat`): the recorded submodule is captured and prepared with
    ``prepare_qat_pt2e`` on zero inputs of the recorded shapes, so the fake-quantized weights and observer buffers
    of the checkpoint load strictly.

    Args:
        model: the freshly constructed model (after its structural history was replayed).
        spec: ``{"submodule": name, "inputs": [{"shape": [...], "dtype": "float32"}, ...]}``.

    Returns:
        ``True`` when the submodule was prepared now, ``False`` when it is already prepared or ``model`` has no
        submodule of that name.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4))
        >>> restore_qat(net, {"submodule": "0", "inputs": [{"shape": [2, 4], "dtype": "float32"}]})
        True
        >>> type(net[0]).__name__
        'GraphModule'
    """
    name = str(spec["submodule"])
    try:
        current = model.get_submodule(name)
    except AttributeError:
        return False
    if isinstance(current, torch.fx.GraphModule):
        return False
    from torchao.quantization.pt2e import allow_exported_model_train_eval

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


def convert_int8(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Converts a calibrated / QAT-trained module from :func:`prepare_int8` to int8 (eval mode, float weights removed).

    Example:
        >>> net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
        >>> prepared = prepare_int8(net, torch.randn(2, 16))
        >>> _ = prepared(torch.randn(8, 16))
        >>> converted = convert_int8(prepared)
        >>> sorted({str(t.dtype) for t in converted.state_dict().values() if t.dim() == 2})
        ['torch.int8']
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    return strip_unused_tensors(converted)


def strip_unused_tensors(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Deletes the parameters and buffers that no ``get_attr`` node reads (the float copies ``convert_pt2e`` keeps).

    Example:
        >>> gm = torch.fx.symbolic_trace(nn.Linear(2, 2))
        >>> gm.register_buffer("unused", torch.zeros(100))
        >>> "unused" in dict(strip_unused_tensors(gm).named_buffers())
        False
    """
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    names = [name for name, _ in graph_module.named_parameters()] + [
        n for n, _ in graph_module.named_buffers()
    ]
    for name in names:
        if name in used:
            continue
        owner_name, _, attribute = name.rpartition(".")
        owner = graph_module.get_submodule(owner_name) if owner_name else graph_module
        delattr(owner, attribute)
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module


def _calibrate(
    model: nn.Module, calibration: Calibration, example_inputs: Any, max_batches: int | None
) -> int:
    if calibration is None:
        model(*_args(example_inputs))
        return 1
    if callable(calibration):
        calibration(model)
        return -1
    seen = 0
    with torch.no_grad():
        for batch in calibration:
            if max_batches is not None and seen >= max_batches:
                break
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(*_args(inputs))
            seen += 1
    return seen


def _cast_hooks(model: nn.Module, dtype: torch.dtype) -> None:
    def cast_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
        )

    def cast_output(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            return output.float()
        return output

    model.register_forward_pre_hook(cast_inputs)
    model.register_forward_hook(cast_output)


def quantize_int8(
    model: nn.Module,
    example_inputs: Any,
    calibration: Calibration = None,
    *,
    max_calibration_batches: int | None = None,
) -> torch.fx.GraphModule:
    """Static int8 of every ``Conv2d`` and ``Linear`` (PT2E, see the module docstring), as a new module.

    ``model`` is left unchanged: the result is a captured ``GraphModule`` (no trailing underscore: it is not an
    in-place transformation, unlike :func:`quantize_`).

    Args:
        model: a trained float model.
        example_inputs: a tensor or tuple of positional inputs (batch dimension dynamic in the result).
        calibration: an iterable of batches (tensors, or tuples whose first item is the input, e.g. a
            ``DataLoader``), or a callable ``calibration(prepared_model)``; default: ``example_inputs``.
        max_calibration_batches: stop calibrating after this many batches.

    Returns:
        The int8 ``GraphModule``, in eval mode, holding int8 weights only.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)).eval()
        >>> x = torch.randn(16, 3, 8, 8)
        >>> q = quantize_int8(net, x, calibration=[x])
        >>> float((q(x) - net(x)).abs().max()) < 0.05, type(net[0]).__name__
        (True, 'Conv2d')
    """
    prepared = prepare_int8(model, example_inputs, is_qat=False)
    _calibrate(prepared, calibration, example_inputs, max_calibration_batches)
    return convert_int8(prepared)


def _int8_weight_only_(model: nn.Module) -> None:
    _require_torchao()
    from torchao.quantization import Int8WeightOnlyConfig
    from torchao.quantization import quantize_ as torchao_quantize_

    torchao_quantize_(model, Int8WeightOnlyConfig())


def _cast_(dtype: torch.dtype) -> Callable[[nn.Module], None]:
    def cast(model: nn.Module) -> None:
        model.to(dtype)
        _cast_hooks(model, dtype)

    return cast


#: The in-place modes of :func:`quantize_`, each a ``transform(model)`` that changes the model in place.
IN_PLACE_MODES: dict[str, Callable[[nn.Module], None]] = {
    "int8_weight_only": _int8_weight_only_,
    "fp16": _cast_(torch.float16),
    "bf16": _cast_(torch.bfloat16),
}


def quantize_(
    model: nn.Module,
    example_inputs: Any,
    mode: str = "int8",
    calibration: Calibration = None,
    *,
    max_calibration_batches: int | None = None,
) -> nn.Module:
    """Quantizes or casts ``model`` in place for deployment (like torchao's ``quantize_``) and returns it.

    Args:
        model: a trained float model, changed in place and put in eval mode.
        example_inputs: a tensor or tuple of positional inputs.
        mode: ``"int8_weight_only"`` (torchao, Linear only), ``"fp16"`` or ``"bf16"``. ``"int8"`` (static PT2E
            int8) cannot change a module in place: it returns a new ``GraphModule``, is deprecated here and
            forwards to :func:`quantize_int8`.
        calibration: for ``"int8"`` only, see :func:`quantize_int8`.
        max_calibration_batches: for ``"int8"`` only, see :func:`quantize_int8`.

    Returns:
        ``model`` itself (for the deprecated ``"int8"``: the new int8 ``GraphModule``).

    Raises:
        ValueError: for an unknown ``mode``.

    Warns:
        DeprecationWarning: for ``mode="int8"``; call :func:`quantize_int8` instead.

    Example:
        >>> net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> x = torch.randn(8, 16)
        >>> reference = net(x)
        >>> half = quantize_(net, x, mode="bf16")
        >>> half is net, net[0].weight.dtype, float((net(x) - reference).abs().max()) < 0.05
        (True, torch.bfloat16, True)
    """
    check_mode(mode)
    if mode == "int8":
        warnings.warn(
            "quantize_(model, ..., mode='int8') returns a new GraphModule and leaves `model` unchanged; call "
            "quantize_int8(model, example_inputs, calibration) instead (quantize_ is for in-place modes).",
            DeprecationWarning,
            stacklevel=2,
        )
        return quantize_int8(model, example_inputs, calibration, max_calibration_batches=max_calibration_batches)
    model.eval()
    IN_PLACE_MODES[mode](model)
    return model


def export_model(model: nn.Module, example_inputs: Any, path: str | os.PathLike[str]) -> str:
    """Saves ``model`` as a ``torch.export`` program (batch dimension dynamic) with ``torch.export.save``.

    Reload with ``torch.export.load(path).module()``.

    Args:
        model: any exportable module, e.g. the result of :func:`quantize_`.
        example_inputs: a tensor or tuple of positional inputs.
        path: the ``.pt2`` file to write.

    Returns:
        ``str(path)``.

    Example:
        >>> import tempfile
        >>> net = nn.Linear(4, 2).eval()
        >>> path = export_model(net, torch.randn(3, 4), tempfile.mkdtemp() + "/m.pt2")
        >>> x = torch.randn(5, 4)
        >>> torch.equal(torch.export.load(path).module()(x), net(x))
        True
    """
    args = _args(example_inputs)
    if isinstance(model, nn.Module) and not isinstance(model, torch.fx.GraphModule):
        model = copy.copy(model)
    program = torch.export.export(model, args, dynamic_shapes=_dynamic_batch(args), strict=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return str(path)


register_checkpoint_section("qat", restore_qat)
