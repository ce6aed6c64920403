"""Int8 (torchao PT2E, X86InductorQuantizer) and reduced-precision deployment: ``quantize_`` and ``export_model``."""

from __future__ import annotations

from tetra_lightning.quantize.core import (
    MODES,
    check_mode,
    convert_int8,
    export_model,
    prepare_int8,
    quantize_,
    restore_qat,
    strip_unused_tensors,
)

__all__ = [
    "MODES",
    "check_mode",
    "convert_int8",
    "export_model",
    "prepare_int8",
    "quantize_",
    "restore_qat",
    "strip_unused_tensors",
]
