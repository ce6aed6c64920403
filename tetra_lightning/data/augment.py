"""Batched image augmentation with tensor ops, on whatever device the batch lives on.

Random crop with zero padding and horizontal flip, the standard CIFAR recipe, done for a whole uint8 batch in a
single gather instead of per image, then conversion to normalised float.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["crop_flip", "normalize_images", "random_crop_flip", "sample_crop_flip"]


def sample_crop_flip(
    batch_size: int, pad: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw random crop offsets and flip decisions for a batch (on the CPU, so seeds mean the same everywhere).

    Args:
        batch_size: number of images.
        pad: padding on each side; offsets are drawn uniformly from ``[0, 2 * pad]``.
        flip: draw flips with probability 1/2; ``False`` gives no flip at all.
        generator: optional seeded CPU generator.

    Returns:
        ``(offsets, flip_mask)``: int64 ``(batch_size, 2)`` row/column offsets and bool ``(batch_size,)``.

    Example:
        >>> import torch
        >>> offsets, flips = sample_crop_flip(3, pad=4, generator=torch.Generator().manual_seed(0))
        >>> offsets.shape, flips.dtype, bool((offsets >= 0).all() and (offsets <= 8).all())
        (torch.Size([3, 2]), torch.bool, True)
    """
    offsets = torch.randint(0, 2 * pad + 1, (batch_size, 2), generator=generator)
    if flip:
        flip_mask = torch.rand(batch_size, generator=generator) < 0.5
    else:
        flip_mask = torch.zeros(batch_size, dtype=torch.bool)
    return offsets, flip_mask


def crop_flip(images: Tensor, offsets: Tensor, flip_mask: Tensor, pad: int = 4) -> Tensor:
    """Zero-pad, crop back to the input size at ``offsets``, and mirror the images where ``flip_mask`` is set.

    Args:
        images: ``(N, C, H, W)`` batch, any dtype and device.
        offsets: ``(N, 2)`` integer row/column offsets into the padded image, each in ``[0, 2 * pad]``
            (``(pad, pad)`` is the identity crop).
        flip_mask: ``(N,)`` bool, True to flip left-right.
        pad: padding on each side.

    Returns:
        A new ``(N, C, H, W)`` tensor of the same dtype and device.

    Raises:
        ValueError: if ``images`` is not 4-D or ``offsets``/``flip_mask`` do not match the batch.

    Example:
        >>> import torch
        >>> x = torch.arange(4, dtype=torch.uint8).reshape(1, 1, 2, 2)
        >>> crop_flip(x, torch.tensor([[0, 0]]), torch.tensor([True]), pad=0).flatten().tolist()
        [1, 0, 3, 2]
    """
    if images.dim() != 4:
        raise ValueError(f"`images` must be a (N, C, H, W) batch, got shape {tuple(images.shape)}.")
    n, channels, height, width = images.shape
    if offsets.shape != (n, 2) or flip_mask.shape != (n,):
        raise ValueError(
            f"`offsets` must be ({n}, 2) and `flip_mask` ({n},), got {tuple(offsets.shape)} and "
            f"{tuple(flip_mask.shape)}."
        )
    device = images.device
    offsets = offsets.to(device)
    flip_mask = flip_mask.to(device)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad)) if pad > 0 else images
    rows = offsets[:, 0, None] + torch.arange(height, device=device)  # (N, H)
    cols = torch.arange(width, device=device).expand(n, width)
    # mirroring = reading the crop's columns right to left
    cols = torch.where(flip_mask[:, None], cols.flip(1), cols) + offsets[:, 1, None]  # (N, W)
    batch_index = torch.arange(n, device=device)[:, None, None, None]
    channel_index = torch.arange(channels, device=device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip(
    images: Tensor, pad: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """Random crop (zero padding ``pad``) and random horizontal flip of a batch, in one gather.

    Args:
        images: ``(N, C, H, W)`` batch, any dtype and device (uint8 is cheapest).
        pad: padding on each side; 0 disables the crop.
        flip: flip each image with probability 1/2.
        generator: optional seeded CPU generator (the parameters are drawn on the CPU).

    Returns:
        The augmented batch, same shape, dtype and device.

    Example:
        >>> import torch
        >>> x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
        >>> y = random_crop_flip(x, generator=torch.Generator().manual_seed(0))
        >>> y.shape, y.dtype
        (torch.Size([8, 3, 32, 32]), torch.uint8)
    """
    offsets, flip_mask = sample_crop_flip(images.shape[0], pad=pad, flip=flip, generator=generator)
    return crop_flip(images, offsets, flip_mask, pad=pad)


def normalize_images(
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    scale: float = 255.0,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(images / scale - mean) / std`` per channel, as float.

    Args:
        images: ``(N, C, H, W)`` batch (typically uint8).
        mean: per-channel mean in ``[0, 1]`` units.
        std: per-channel standard deviation in ``[0, 1]`` units.
        scale: value of a full-intensity pixel (255 for uint8).
        channels_last: return the result in ``torch.channels_last`` memory format.
        dtype: floating dtype of the result.

    Returns:
        The normalised batch.

    Example:
        >>> import torch
        >>> x = torch.full((1, 1, 1, 1), 255, dtype=torch.uint8)
        >>> normalize_images(x, mean=[0.5], std=[0.25]).item()
        2.0
    """
    shape = (1, -1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=dtype, device=images.device).view(shape) * scale
    std_t = torch.as_tensor(std, dtype=dtype, device=images.device).view(shape) * scale
    out = (images.to(dtype) - mean_t) / std_t
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
