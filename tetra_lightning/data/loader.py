"""An in-memory batch iterator: the whole dataset is one tensor on the training device.

Per-image Python transforms and worker processes dominate the step time of small-image training on a fast GPU;
here a batch is one gather from a device-resident tensor plus batched tensor ops, so the loader costs a few
kernel launches per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["BatchTransform", "InMemoryBatchLoader"]

#: ``transform(images, generator) -> images``: called on every batch; ``generator`` is a seeded CPU generator.
BatchTransform = Callable[[Tensor, torch.Generator], Tensor]


class InMemoryBatchLoader:
    """Iterate over ``(x, y)`` batches of tensors that already live on the target device.

    Each ``iter()`` is one epoch. With ``shuffle=True`` the order of epoch ``e`` is a permutation drawn from a CPU
    generator seeded with ``(seed, e)``, so runs are reproducible on CPU and CUDA alike. Under data parallelism
    every rank draws the same permutation and keeps every ``world_size``-th sample starting at ``rank``.

    Args:
        x: inputs, first dimension = samples.
        y: targets, same first dimension as ``x``.
        batch_size: samples per batch, > 0.
        shuffle: draw a new order every epoch.
        drop_last: skip the last incomplete batch (keeps shapes static, e.g. for ``torch.compile``).
        transform: optional ``transform(x_batch, generator) -> x_batch`` applied to every batch.
        seed: base seed of the shuffling and of the generator handed to ``transform``.
        rank: this process's rank.
        world_size: number of processes sharing the data.

    Raises:
        ValueError: for a non-positive ``batch_size``, mismatched lengths, or a bad ``rank``/``world_size``.

    Example:
        >>> import torch
        >>> loader = InMemoryBatchLoader(torch.arange(10.0), torch.arange(10), batch_size=4, drop_last=True)
        >>> len(loader), [b[1].tolist() for b in loader]
        (2, [[0, 1, 2, 3], [4, 5, 6, 7]])
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        transform: BatchTransform | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}. Pass e.g. `batch_size=256`.")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"`x` and `y` must have the same number of samples, got {x.shape[0]} and {y.shape[0]}."
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"`rank` must be in [0, world_size), got rank={rank}, world_size={world_size}.")
        self.x = x
        self.y = y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.transform = transform
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return self.x.shape[0] // self.world_size if self.world_size > 1 else self.x.shape[0]

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        n = self.x.shape[0]
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            # equal share per rank so every rank runs the same number of steps
            order = order[: self.num_samples * self.world_size][self.rank :: self.world_size]
        order = order.to(self.x.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            xb = self.x[index]
            yb = self.y[index]
            if self.transform is not None:
                xb = self.transform(xb, generator)
            yield xb, yb
