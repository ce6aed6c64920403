"""QuantizationCallback: int8 post-training quantization at the end of fit, or quantization-aware training."""

from __future__ import annotations

import copy
import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from tetra_lightning.callbacks._checks import check_int
from tetra_lightning.callbacks._staged import StageSchedule, check_schedule_fits
from tetra_lightning.callbacks._surgery import (
    after_rewrite,
    check_strategy,
    install_restore_hook,
    remove_restore_hook,
    replay_from_trainer_ckpt,
)
from tetra_lightning.checkpoint import CHECKPOINT_KEY
from tetra_lightning.quantize import check_mode, convert_int8, export_model, prepare_int8, quantize_
from tetra_lightning.report import count_bytes

__all__ = ["QuantizationCallback"]


class QuantizationCallback(Callback):
    """Produces a deployable quantized copy of the network at the end of ``fit`` (PTQ), optionally after QAT.

    Thin wrapper over :mod:`tetra_lightning.quantize` (see its docstring for the exact PT2E configuration: torchao
    ``X86InductorQuantizer`` with the default x86 config, ``torch.export(strict=True)`` capture, which is what
    avoids "Input partition has more than one output node" on ResNets). The callback acts on one submodule of
    the LightningModule (``submodule``, default: its only child with parameters, e.g. ``self.net``):

    * post-training (``qat_start_epoch=None``): at ``on_fit_end`` the trained float submodule is captured,
      calibrated by running ``pl_module(batch[0])`` on up to ``calibration_batches`` batches of the validation
      loader (the training loader when there is none) and converted. The LightningModule stays float.
    * QAT (``qat_start_epoch=k``, ``mode="int8"``): at the start of epoch ``k`` the submodule is replaced by its
      fake-quantized PT2E version, the optimizers are rebuilt (no stale parameters) and training goes on; at
      ``on_fit_end`` it is converted to int8.
    * ``"int8_weight_only"``, ``"fp16"``, ``"bf16"``: a converted deep copy at ``on_fit_end``.

    The result is :attr:`quantized_model` (rank zero), saved with :meth:`export` as a ``torch.export`` program
    (reload with ``torch.export.load(path).module()``), or automatically when ``export_path`` is given.
    Sizes before and after (``bytes_before``, ``bytes_after``) are kept in :attr:`summary` and written to the
    Trainer's loggers as ``quantization/bytes_before``, ``quantization/bytes_after`` and
    ``quantization/bytes_ratio`` at the end of ``fit``.

    Args:
        mode: ``"int8"``, ``"int8_weight_only"``, ``"fp16"`` or ``"bf16"``.
        qat_start_epoch: epoch at whose start fake quantization begins (``None``: post-training only).
        submodule: attribute name of the network inside the LightningModule.
        calibration_batches: number of calibration batches for PTQ.
        export_path: where :meth:`export` writes at the end of fit (``None``: do not write).

    Raises:
        ValueError: for an unknown ``mode``, a negative ``qat_start_epoch`` or QAT with a mode other than int8.

    Example:
        >>> callback = QuantizationCallback(mode="int8")  # trainer.fit(...); callback.export("model.pt2")
    """

    def __init__(
        self,
        mode: str = "int8",
        qat_start_epoch: int | None = None,
        submodule: str | None = None,
        calibration_batches: int = 8,
        export_path: str | os.PathLike[str] | None = None,
    ) -> None:
        check_mode(mode)
        check_int(
            "qat_start_epoch", qat_start_epoch, 0,
            "Pass e.g. qat_start_epoch=1 to fine-tune with fake quantization from epoch 1.", optional=True,
        )
        if qat_start_epoch is not None and mode != "int8":
            raise ValueError(
                f"`qat_start_epoch` needs mode='int8' (fake quantization of int8), got mode={mode!r}. "
                "Pass qat_start_epoch=None for weight-only modes."
            )
        check_int("calibration_batches", calibration_batches, 1)
        self.mode = mode
        self.qat_start_epoch = qat_start_epoch
        self.submodule = submodule
        self.calibration_batches = calibration_batches
        self.export_path = export_path
        self.quantized_model: nn.Module | None = None
        self.qat_active = False
        self.summary: dict[str, Any] = {}
        self._name: str | None = None
        self._example: Any = None
        self._handle: Any = None

    # ------------------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.qat_start_epoch is not None:  # QAT rewrites the network mid-fit, like the structural callbacks
            check_strategy(trainer, "QuantizationCallback")
            qat = StageSchedule((self.qat_start_epoch,), description=f"qat_start_epoch={self.qat_start_epoch}")
            check_schedule_fits(trainer, qat, "QuantizationCallback", "start QAT")
        self._name = self._resolve(pl_module)
        self._watch(pl_module)
        # A checkpoint written during QAT holds the fake-quantized network: prepare it again before the weights load.
        install_restore_hook(pl_module)
        replay_from_trainer_ckpt(trainer, pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        remove_restore_hook(pl_module)
        self._unwatch()

    def _resolve(self, pl_module: pl.LightningModule) -> str:
        children = {
            name: child for name, child in pl_module.named_children() if any(True for _ in child.parameters())
        }
        if self.submodule is not None:
            if self.submodule not in dict(pl_module.named_children()):
                raise MisconfigurationException(
                    f"QuantizationCallback: `submodule={self.submodule!r}` is not a child of "
                    f"{type(pl_module).__name__} (children with parameters: {sorted(children)})."
                )
            return self.submodule
        if len(children) != 1:
            raise MisconfigurationException(
                f"QuantizationCallback needs `submodule=` naming the network to quantize: "
                f"{type(pl_module).__name__} has {len(children)} children with parameters ({sorted(children)})."
            )
        return next(iter(children))

    def _watch(self, pl_module: pl.LightningModule) -> None:
        # The network's own input (after any preprocessing in the LightningModule) is what torch.export needs.
        def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
            # A batch of one (e.g. the model summary's `example_input_array`) would make torch.export specialize
            # the batch size to 1: wait for a real batch.
            if (
                self._example is None
                and args
                and isinstance(args[0], torch.Tensor)
                and args[0].dim() > 0
                and args[0].shape[0] >= 2
            ):
                self._example = tuple(
                    a[:2].detach().clone() if isinstance(a, torch.Tensor) else a for a in args
                )

        self._handle = pl_module.get_submodule(self._name).register_forward_pre_hook(capture)

    def _unwatch(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.qat_start_epoch is None or self.qat_active:
            return
        if trainer.current_epoch < self.qat_start_epoch:
            return
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        self._ensure_example(trainer, pl_module)
        self._unwatch()
        network = pl_module.get_submodule(self._name)
        prepared = prepare_int8(network, self._example, is_qat=True)
        allow_exported_model_train_eval(prepared)  # Lightning switches train/eval around validation
        prepared.train()
        setattr(pl_module, self._name, prepared)
        after_rewrite(trainer, pl_module)
        self.qat_active = True
        rank_zero_info(
            f"QuantizationCallback: fake quantization of `{self._name}` from epoch {trainer.current_epoch}."
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unwatch()
        if not trainer.is_global_zero:
            return
        self._ensure_example(trainer, pl_module)
        network = pl_module.get_submodule(self._name)
        was_training = pl_module.training
        if self.qat_active:
            quantized = convert_int8(copy.deepcopy(network))
        elif self.mode == "int8":
            float_network = network.eval()
            prepared = prepare_int8(float_network, self._example, is_qat=False)
            setattr(pl_module, self._name, prepared)
            try:
                self._calibrate(trainer, pl_module)
            finally:
                setattr(pl_module, self._name, float_network)
            quantized = convert_int8(prepared)
        else:
            quantized = quantize_(copy.deepcopy(network).eval(), self._example, mode=self.mode)
        pl_module.train(was_training)
        self.quantized_model = quantized
        bytes_before = count_bytes(network)[0]
        bytes_after = count_bytes(quantized)[0]
        self.summary = {"bytes_before": bytes_before, "bytes_after": bytes_after}
        # `pl_module.log` is not allowed in on_fit_end: write straight to the loggers (rank zero only, see above).
        metrics = {
            "quantization/bytes_before": float(bytes_before),
            "quantization/bytes_after": float(bytes_after),
            "quantization/bytes_ratio": bytes_before / max(bytes_after, 1),
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        if self.export_path is not None:
            self.export(self.export_path)

    def _ensure_example(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._example is not None:
            return
        example = getattr(pl_module, "example_input_array", None)
        if example is None:
            raise MisconfigurationException(
                "QuantizationCallback saw no input of the network: set `example_input_array` on the LightningModule."
            )
        example = (example,) if isinstance(example, torch.Tensor) else tuple(example)
        # Two rows keep the exported batch dimension dynamic (torch.export specializes a size of 1).
        self._example = tuple(
            torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == 1 else a for a in example
        )

    def _calibrate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loaders = trainer.val_dataloaders or trainer.train_dataloader
        if loaders is None:
            pl_module(*self._example)
            return
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        device = (
            next(p for p in pl_module.parameters()).device
            if any(True for _ in pl_module.parameters())
            else "cpu"
        )
        with torch.no_grad():
            for index, batch in enumerate(loader):
                if index >= self.calibration_batches:
                    break
                inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
                pl_module(inputs.to(device))

    def export(self, path: str | os.PathLike[str]) -> str:
        """Saves :attr:`quantized_model` as a ``torch.export`` program; reload with ``torch.export.load(path).module()``.

        Raises:
            RuntimeError: before ``fit`` has ended (nothing quantized yet).
        """
        if self.quantized_model is None:
            raise RuntimeError(
                "QuantizationCallback.export: nothing is quantized yet; call it after `trainer.fit`."
            )
        return export_model(self.quantized_model, self._example, path)

    def _example_spec(self) -> list[dict[str, Any]]:
        return [
            {"shape": list(a.shape), "dtype": str(a.dtype).removeprefix("torch.")}
            for a in (self._example or ())
            if isinstance(a, torch.Tensor)
        ]

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.qat_active and self._name is not None:
            section = checkpoint.setdefault(CHECKPOINT_KEY, {})
            section["qat"] = {"submodule": self._name, "inputs": self._example_spec()}

    def state_dict(self) -> dict[str, Any]:
        return {"qat_active": self.qat_active, "summary": dict(self.summary), "example": self._example_spec()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.summary = dict(state_dict.get("summary", {}))
        # The network was prepared again from the checkpoint (see `setup`): QAT goes on, it does not start over.
        self.qat_active = bool(state_dict.get("qat_active", False))
        example = state_dict.get("example") or []
        if self._example is None and example:
            self._example = tuple(
                torch.zeros(tuple(item["shape"]), dtype=getattr(torch, item["dtype"])) for item in example
            )
