"""Which layers a model's ``forward`` reads the weight of instead of calling them.

``F.linear(x, self.qkv.weight)`` (torchvision's Swin), ``F.multi_head_attention_forward(..., self.out_proj.weight)``
(``nn.MultiheadAttention``) and the fused fast path of ``nn.TransformerEncoderLayer`` use a layer's ``weight``
without calling the layer. A factorized layer put there still works, because it rebuilds ``weight`` on access
(:attr:`~tetra_lightning.decompose.FactorizedLayer.weight`), but the parameters drop while the compute does not.
:func:`direct_weight_reads` finds these layers from the source of their parents' ``forward``, so that
:func:`~tetra_lightning.decompose.compress_` records the fact in its history.
"""

from __future__ import annotations

import functools
import inspect
import re

from torch import nn

__all__ = ["direct_weight_reads"]


@functools.lru_cache(maxsize=512)
def _forward_source(cls: type) -> str:
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""


def direct_weight_reads(model: nn.Module, layer_types: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)) -> dict[str, str]:
    """Layers whose parent's ``forward`` reads ``self.<layer>.weight`` / ``.bias``: ``{fqn: reason}``.

    Args:
        model: the model.
        layer_types: the layer classes to look for.

    Returns:
        The fully qualified names of those layers, with the reason to record.

    Example:
        >>> from torchvision.models.swin_transformer import ShiftedWindowAttention
        >>> attention = ShiftedWindowAttention(8, [2, 2], [0, 0], num_heads=2)
        >>> sorted(direct_weight_reads(nn.Sequential(attention)))
        ['0.proj', '0.qkv']
    """
    found: dict[str, str] = {}
    for parent_name, parent in model.named_modules():
        children = [(name, child) for name, child in parent.named_children() if isinstance(child, layer_types)]
        if not children:
            continue
        source = _forward_source(type(parent))
        for child_name, _ in children:
            if re.search(rf"self\.{re.escape(child_name)}\.(weight|bias)\b", source):
                fqn = f"{parent_name}.{child_name}" if parent_name else child_name
                found[fqn] = (
                    f"{type(parent).__name__}.forward reads {child_name}.weight directly: the factorized layer "
                    "rebuilds it on access (fewer parameters, same compute there)"
                )
    return found
