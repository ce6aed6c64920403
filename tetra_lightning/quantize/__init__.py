"""Int8 (torchao PT2E, X86InductorQuantizer) and reduced precision: ``quantize_int8``, ``quantize_``, ``export_model``."""

from __future__ import annotations

from tetra_lightning.quantize.core import (
    IN_PLACE_MODES,
    MODES,
    check_mode,
    convert_int8,
    export_model,
    prepare_int8,
    quantize_,
    quantize_int8,
    restore_qat,
    strip_unused_tensors,
)

__all__ = [
    "IN_PLACE_MODES",
    "MODES",
    "check_mode",
    "convert_int8",
    "export_model",
    "prepare_int8",
    "quantize_",
    "quantize_int8",
    "restore_qat",
    "strip_unused_tensors",
]
