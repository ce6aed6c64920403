"""``nn.MultiheadAttention`` with its query, key, value and output projections as four separate layers.

``nn.MultiheadAttention`` keeps q, k and v in one fused ``in_proj_weight`` and reads ``out_proj.weight`` directly
in ``forward``, so no factorized layer can replace any of them. :class:`FactorizedMultiheadAttention` computes the
same function (same signature, same masks, same outputs) from four modules ``q_proj``, ``k_proj``, ``v_proj``,
``out_proj`` that it *calls*, so each can then be an ``nn.Linear`` or any factorized layer. :func:`split_attention`
builds it from an ``nn.MultiheadAttention`` exactly; the rewrite is recorded as a history entry of kind
``"attention"`` (registered here), replayed on a fresh model before the weights load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tetra_lightning.checkpoint import register_history_kind

__all__ = [
    "ATTENTION_KIND",
    "FactorizedMultiheadAttention",
    "attention_unsupported",
    "restore_attention",
    "split_attention",
]

#: History kind of the entries written when an ``nn.MultiheadAttention`` is split.
ATTENTION_KIND = "attention"


def attention_unsupported(module: nn.MultiheadAttention) -> str | None:
    """Why ``module`` cannot be split (None when it can).

    Example:
        >>> attention_unsupported(nn.MultiheadAttention(8, 2)) is None
        True
        >>> attention_unsupported(nn.MultiheadAttention(8, 2, add_bias_kv=True))
        'nn.MultiheadAttention with add_bias_kv=True is left fused'
    """
    if module.bias_k is not None or module.bias_v is not None:
        return "nn.MultiheadAttention with add_bias_kv=True is left fused"
    if module.add_zero_attn:
        return "nn.MultiheadAttention with add_zero_attn=True is left fused"
    return None


def _float_mask(mask: Tensor | None, dtype: torch.dtype, name: str) -> Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise TypeError(f"`{name}` must be a bool or float tensor, got {mask.dtype}.")
    return mask.to(dtype)


class FactorizedMultiheadAttention(nn.Module):
    """Multi-head attention computed from four projection layers that may be factorized.

    ``forward`` takes and returns exactly what ``nn.MultiheadAttention.forward`` does (``key_padding_mask``,
    ``need_weights``, ``attn_mask`` as bool or float, 2-D or 3-D, ``average_attn_weights``, ``is_causal``,
    ``batch_first``, unbatched inputs). The projections are called as modules; ``_qkv_same_embed_dim`` is
    ``False``, so PyTorch's fused fast paths (which read the fused weights) are not taken.

    Args:
        embed_dim: model width ``E``.
        num_heads: heads (must divide ``E``).
        dropout: dropout on the attention weights (training only).
        bias: whether the projections have biases.
        kdim: features of ``key`` (default ``E``).
        vdim: features of ``value`` (default ``E``).
        batch_first: inputs and outputs are ``(N, L, E)`` instead of ``(L, N, E)``.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> fused = nn.MultiheadAttention(16, 4, batch_first=True).eval()
        >>> split = split_attention(fused)
        >>> x = torch.randn(2, 5, 16)
        >>> bool(torch.allclose(split(x, x, x)[0], fused(x, x, x)[0], atol=1e-5))
        True
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        if int(embed_dim) % int(num_heads):
            raise ValueError(f"`embed_dim`={embed_dim} must be divisible by `num_heads`={num_heads}.")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.kdim = int(kdim) if kdim is not None else self.embed_dim
        self.vdim = int(vdim) if vdim is not None else self.embed_dim
        self.head_dim = self.embed_dim // self.num_heads
        self.dropout, self.batch_first, self.has_bias = float(dropout), bool(batch_first), bool(bias)
        self.q_proj: nn.Module = nn.Linear(self.embed_dim, self.embed_dim, bias=bias)
        self.k_proj: nn.Module = nn.Linear(self.kdim, self.embed_dim, bias=bias)
        self.v_proj: nn.Module = nn.Linear(self.vdim, self.embed_dim, bias=bias)
        self.out_proj: nn.Module = nn.Linear(self.embed_dim, self.embed_dim, bias=bias)

    # Attributes code written against nn.MultiheadAttention reads.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    bias_k = None
    bias_v = None
    add_zero_attn = False

    @property
    def in_proj_bias(self) -> Tensor | None:
        """The q, k, v biases concatenated (as ``nn.MultiheadAttention`` has them), or None without biases."""
        biases = [getattr(p, "bias", None) for p in (self.q_proj, self.k_proj, self.v_proj)]
        return None if any(b is None for b in biases) else torch.cat(biases)  # type: ignore[arg-type]

    def spec(self) -> dict[str, Any]:
        """JSON-safe constructor arguments (the projections are recorded as their own history entries)."""
        return {
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "bias": self.has_bias,
            "kdim": self.kdim,
            "vdim": self.vdim,
            "batch_first": self.batch_first,
        }

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. You may use the Transformer module method "
                "`generate_square_subsequent_mask` to create this mask."
            )
        target_len, batch, _ = query.shape
        source_len = key.shape[0]
        heads, head_dim = self.num_heads, self.head_dim
        q = self.q_proj(query).reshape(target_len, batch, heads, head_dim).permute(1, 2, 0, 3)
        k = self.k_proj(key).reshape(source_len, batch, heads, head_dim).permute(1, 2, 0, 3)
        v = self.v_proj(value).reshape(source_len, batch, heads, head_dim).permute(1, 2, 0, 3)
        mask = _float_mask(attn_mask, q.dtype, "attn_mask")
        if mask is not None:
            mask = mask.reshape(1, 1, target_len, source_len) if mask.dim() == 2 else mask.reshape(
                batch, heads, target_len, source_len
            )
        padding = _float_mask(key_padding_mask, q.dtype, "key_padding_mask")
        if padding is not None:
            padding = padding.reshape(batch, 1, 1, source_len)
            mask = padding if mask is None else mask + padding
        dropout = self.dropout if self.training else 0.0
        weights: Tensor | None = None
        if need_weights:
            scores = (q * math.sqrt(1.0 / head_dim)) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(dim=-1)
            attended = F.dropout(weights, p=dropout) if dropout > 0.0 else weights
            output = attended @ v
        else:
            output = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        output = self.out_proj(output.permute(2, 0, 1, 3).reshape(target_len, batch, self.embed_dim))
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if not batched:
            output = output.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, weights


def split_attention(module: nn.MultiheadAttention) -> FactorizedMultiheadAttention:
    """The :class:`FactorizedMultiheadAttention` computing what ``module`` computes (weights copied exactly).

    Raises:
        TypeError: for a module that is not an ``nn.MultiheadAttention``.
        ValueError: for one that cannot be split (see :func:`attention_unsupported`).

    Example:
        >>> split = split_attention(nn.MultiheadAttention(8, 2, kdim=4, vdim=6))
        >>> split.k_proj.in_features, split.v_proj.in_features, split.out_proj.out_features
        (4, 6, 8)
    """
    if not isinstance(module, nn.MultiheadAttention):
        raise TypeError(f"`module` must be an nn.MultiheadAttention, got {type(module).__name__}.")
    reason = attention_unsupported(module)
    if reason is not None:
        raise ValueError(f"`module` cannot be split: {reason}. Exclude it with `filter_fn`.")
    reference = module.out_proj.weight
    split = FactorizedMultiheadAttention(
        module.embed_dim,
        module.num_heads,
        dropout=module.dropout,
        bias=module.in_proj_bias is not None,
        kdim=module.kdim,
        vdim=module.vdim,
        batch_first=module.batch_first,
    ).to(device=reference.device, dtype=reference.dtype)
    embed = module.embed_dim
    if module._qkv_same_embed_dim:
        weights = list(module.in_proj_weight.detach().split(embed))
    else:
        weights = [module.q_proj_weight.detach(), module.k_proj_weight.detach(), module.v_proj_weight.detach()]
    biases = list(module.in_proj_bias.detach().split(embed)) if module.in_proj_bias is not None else [None] * 3
    with torch.no_grad():
        for projection, weight, bias in zip((split.q_proj, split.k_proj, split.v_proj), weights, biases, strict=True):
            projection.weight.copy_(weight)
            if bias is not None:
                projection.bias.copy_(bias)
        split.out_proj.weight.copy_(module.out_proj.weight)
        if module.out_proj.bias is not None and split.out_proj.bias is not None:
            split.out_proj.bias.copy_(module.out_proj.bias)
    split.train(module.training)
    trainable = any(p.requires_grad for p in module.parameters())
    split.requires_grad_(trainable)
    return split


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def restore_attention(model: nn.Module, history: Sequence[Mapping[str, Any]]) -> nn.Module:
    """Replays ``{"kind": "attention"}`` entries: each named ``nn.MultiheadAttention`` becomes a (dense)
    :class:`FactorizedMultiheadAttention` with the recorded geometry (weights are loaded afterwards).

    Raises:
        ValueError: for an entry naming a module the model lacks or that is no ``nn.MultiheadAttention``.

    Example:
        >>> model = nn.Sequential(nn.MultiheadAttention(8, 2))
        >>> entry = {"kind": "attention", "name": "0", "spec": split_attention(model[0]).spec()}
        >>> type(restore_attention(model, [entry])[0]).__name__
        'FactorizedMultiheadAttention'
    """
    for index, entry in enumerate(history):
        if entry.get("kind") != ATTENTION_KIND or "skipped" in entry:
            continue
        name = entry.get("name")
        try:
            old = model.get_submodule(name) if name else None
        except AttributeError:
            old = None
        if not isinstance(old, nn.MultiheadAttention):
            raise ValueError(
                f"`history[{index}]` splits {name!r}, which is not an nn.MultiheadAttention of the model (found "
                f"{type(old).__name__}). Replay the history on a model built like the one that was compressed."
            )
        new = FactorizedMultiheadAttention(**dict(entry["spec"]))
        new.to(device=old.out_proj.weight.device, dtype=old.out_proj.weight.dtype)
        new.train(old.training)
        _set_submodule(model, name, new)
    return model


# compress_ entries of nn.MultiheadAttention split into four projections (see restore_attention).
register_history_kind(ATTENTION_KIND, restore_attention, ("kind", "name", "spec"))
