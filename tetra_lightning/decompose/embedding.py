"""``TTEmbedding``, and ``nn.Embedding`` -> ``TTEmbedding`` for :func:`~tetra_lightning.decompose.compress_`.

The vocabulary plays the role of a linear layer's input and the embedding dimension that of its output, so a
:class:`~tetra_lightning.decompose.TTConfig`'s ``in_modes`` factorize the vocabulary (their product may exceed
``num_embeddings``: padding rows are never looked up) and ``out_modes`` the embedding dimension. The rank spec
means what it means for a TT linear layer: the bond ranks (an int for every bond, capped at each bond's maximum),
or a float fraction of the table's parameters to keep (the largest uniform bond rank that fits). ``energy=`` is
not supported for embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tetra_lightning.decompose._linalg import tt_svd, tt_to_tensor
from tetra_lightning.decompose.base import FactorizedLayer, relative_error
from tetra_lightning.decompose.configs import TTConfig
from tetra_lightning.decompose.tt import RankArg, bond_ranks, factorize, khrulkov_init_, tt_bounds_linear

__all__ = [
    "TTEmbedding",
    "embedding_unsupported",
    "tt_embedding_from_config",
    "tt_embedding_kwargs",
    "tt_embedding_params",
]


def _vocabulary_modes(num_embeddings: int, n_modes: int) -> tuple[int, ...]:
    """Balanced modes whose product is at least ``num_embeddings`` (the vocabulary is padded, as in Khrulkov)."""
    modes = [max(1, math.ceil(num_embeddings ** (1.0 / n_modes) - 1e-9))] * n_modes
    for index in reversed(range(n_modes)):
        while modes[index] > 1 and math.prod(modes) // modes[index] * (modes[index] - 1) >= num_embeddings:
            modes[index] -= 1
    return tuple(modes)


class TTEmbedding(FactorizedLayer):
    """``nn.Embedding`` stand-in whose ``(V, E)`` table is a TT-matrix over factorized vocabulary and embedding.

    ``W[(v_1..v_d), (e_1..e_d)] = G_1[v_1, e_1] ... G_d[v_d, e_d]`` with cores ``(r_{k-1}, v_k, e_k, r_k)``;
    ``prod(voc_modes)`` may exceed ``num_embeddings`` (padding rows are never looked up). A lookup gathers one
    slice per core and multiplies them: ``O(d r^2 E)`` per index, the table is never formed.

    Args:
        num_embeddings: vocabulary size ``V``.
        embedding_dim: embedding size ``E`` (``= prod(emb_modes)``).
        voc_modes: factorization of the vocabulary, product ``>= V`` (None: ``n_modes`` balanced modes).
        emb_modes: factorization of ``E`` (None: balanced, same length).
        rank: the ``d - 1`` bond ranks, or one int for all (capped at the maximal ranks).
        n_modes: number of modes when the modes are automatic.
        init_std: standard deviation of the table's entries at initialization (``nn.Embedding``: 1).

    Raises:
        ValueError: for sizes < 1, modes that do not fit, or bad ranks.

    Example:
        >>> import torch
        >>> emb = TTEmbedding(1000, 64, rank=8)
        >>> emb.voc_modes, emb.emb_modes, emb(torch.tensor([[0, 999]])).shape
        ((10, 10, 10), (4, 4, 4), torch.Size([1, 2, 64]))
    """

    method = "tt"

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        voc_modes: Sequence[int] | None = None,
        emb_modes: Sequence[int] | None = None,
        rank: RankArg = 8,
        n_modes: int = 3,
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        if int(num_embeddings) < 1 or int(embedding_dim) < 1:
            raise ValueError(
                f"`num_embeddings` and `embedding_dim` must be >= 1, got {num_embeddings} and {embedding_dim}."
            )
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        if voc_modes is None:
            n = len(emb_modes) if emb_modes is not None else int(n_modes)
            voc_modes = _vocabulary_modes(self.num_embeddings, n)
        if emb_modes is None:
            emb_modes = factorize(self.embedding_dim, len(voc_modes))
        self.voc_modes, self.emb_modes = tuple(int(m) for m in voc_modes), tuple(int(m) for m in emb_modes)
        if (
            len(self.voc_modes) != len(self.emb_modes)
            or math.prod(self.voc_modes) < self.num_embeddings
            or math.prod(self.emb_modes) != self.embedding_dim
        ):
            raise ValueError(
                f"TTEmbedding(voc_modes={self.voc_modes}, emb_modes={self.emb_modes}) does not fit "
                f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}: prod(voc_modes) must be "
                f">= num_embeddings, prod(emb_modes) == embedding_dim, same lengths. Pass e.g. voc_modes="
                f"{_vocabulary_modes(self.num_embeddings, 3)}, emb_modes={factorize(self.embedding_dim, 3)}."
            )
        bonds = bond_ranks(rank, tt_bounds_linear(self.voc_modes, self.emb_modes), "TTEmbedding")
        padded = [1, *bonds, 1]
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(padded[k], v, e, padded[k + 1]))
            for k, (v, e) in enumerate(zip(self.voc_modes, self.emb_modes, strict=True))
        )
        khrulkov_init_(list(self.cores), bonds, float(init_std) ** 2)

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(int(core.shape[-1]) for core in self.cores[:-1])

    def _spec_kwargs(self) -> dict[str, Any]:
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "voc_modes": list(self.voc_modes),
            "emb_modes": list(self.emb_modes),
            "rank": list(self.ranks),
        }

    def forward(self, indices: Tensor) -> Tensor:
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise TypeError(f"TTEmbedding expects integer indices (torch.long), got dtype {indices.dtype}.")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_embeddings):
            raise IndexError(
                f"TTEmbedding index out of range: indices must be in [0, {self.num_embeddings - 1}] "
                f"(num_embeddings={self.num_embeddings}), got values in [{int(indices.min())}, "
                f"{int(indices.max())}]. Map unknown tokens to an in-vocabulary id first."
            )
        flat = indices.reshape(-1).long()
        digits = []
        remainder = flat
        for mode in reversed(self.voc_modes):
            digits.append(remainder % mode)
            remainder = torch.div(remainder, mode, rounding_mode="floor")
        digits.reverse()
        out = self.cores[0][0].index_select(0, digits[0])  # (N, e_1, r_1)
        for core, digit in zip(self.cores[1:], digits[1:], strict=True):
            piece = core.permute(1, 0, 2, 3).index_select(0, digit)  # (N, r, e, r')
            out = torch.einsum("nar,nrbs->nabs", out, piece)
            out = out.reshape(flat.shape[0], out.shape[1] * out.shape[2], out.shape[3])
        return out.reshape(*indices.shape, self.embedding_dim)

    def dense_weight(self) -> Tensor:
        """The ``(num_embeddings, embedding_dim)`` table (padding rows dropped)."""
        d = len(self.voc_modes)
        merged = [core.reshape(core.shape[0], -1, core.shape[-1]) for core in self.cores]
        sizes = [size for pair in zip(self.voc_modes, self.emb_modes, strict=True) for size in pair]
        tensor = tt_to_tensor(merged).reshape(sizes)
        order = [2 * k for k in range(d)] + [2 * k + 1 for k in range(d)]
        table = tensor.permute(order).reshape(math.prod(self.voc_modes), self.embedding_dim)
        return table[: self.num_embeddings]

    def dense_bias(self) -> Tensor | None:
        return None

    def to_dense(self) -> nn.Embedding:  # type: ignore[override]
        reference = self._reference()
        layer = nn.Embedding(self.num_embeddings, self.embedding_dim, device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.dense_weight())
        return layer

    @classmethod
    def from_embedding(
        cls,
        embedding: nn.Embedding,
        rank: RankArg,
        voc_modes: Sequence[int] | None = None,
        emb_modes: Sequence[int] | None = None,
        n_modes: int = 3,
    ) -> TTEmbedding:
        """TT-SVD of ``embedding.weight`` (zero-padded to ``prod(voc_modes)`` rows) at the given bond ranks."""
        module = cls(embedding.num_embeddings, embedding.embedding_dim, voc_modes, emb_modes, rank, n_modes)
        module.to(device=embedding.weight.device, dtype=embedding.weight.dtype)
        weight = embedding.weight.detach().float()
        padded = weight.new_zeros(math.prod(module.voc_modes), module.embedding_dim)
        padded[: module.num_embeddings] = weight
        d = len(module.voc_modes)
        tensor = padded.reshape(*module.voc_modes, *module.emb_modes)
        order = [axis for k in range(d) for axis in (k, d + k)]
        dims = [v * e for v, e in zip(module.voc_modes, module.emb_modes, strict=True)]
        cores = tt_svd(tensor.permute(order).reshape(dims), ranks=list(module.ranks))
        with torch.no_grad():
            for parameter, core, v, e in zip(module.cores, cores, module.voc_modes, module.emb_modes, strict=True):
                parameter.copy_(core.reshape(core.shape[0], v, e, core.shape[-1]))
        module.rel_error = relative_error(module.dense_weight(), embedding.weight)
        return module


def embedding_unsupported(embedding: nn.Embedding, config: Any) -> str | None:
    """Why ``embedding`` cannot become a ``TTEmbedding`` under ``config`` (``None`` when it can).

    Example:
        >>> from tetra_lightning.decompose import SVDConfig, TTConfig
        >>> embedding_unsupported(nn.Embedding(100, 16), TTConfig(rank=4)) is None
        True
        >>> embedding_unsupported(nn.Embedding(100, 16), SVDConfig(rank=4))
        "only TTConfig turns an nn.Embedding into a TTEmbedding, got method 'svd'"
    """
    if not isinstance(config, TTConfig):
        return f"only TTConfig turns an nn.Embedding into a TTEmbedding, got method {config.method!r}"
    if config.energy is not None:
        return "energy= is not supported for embeddings; pass rank= (bond ranks or a fraction of the table)"
    if embedding.padding_idx is not None or embedding.max_norm is not None or embedding.sparse:
        return (
            "TTEmbedding does not keep padding_idx, max_norm or sparse gradients; compress this embedding only "
            "if the model does not rely on them (set them to None/False first)"
        )
    if embedding.num_embeddings < 4 or embedding.embedding_dim < 2:
        return f"too small to factorize ({embedding.num_embeddings} x {embedding.embedding_dim})"
    return None


def tt_embedding_params(embedding: nn.Embedding, config: TTConfig, rank: int | tuple[int, ...]) -> int:
    """Parameters of the ``TTEmbedding`` that ``config`` with bond rank(s) ``rank`` gives for ``embedding``.

    Example:
        >>> tt_embedding_params(nn.Embedding(1000, 64), TTConfig(rank=8), 8)
        3200
    """
    voc_modes, emb_modes = config.in_modes, config.out_modes
    module = TTEmbedding(embedding.num_embeddings, embedding.embedding_dim, voc_modes, emb_modes, rank=rank)
    return sum(core.numel() for core in module.cores)


def tt_embedding_kwargs(embedding: nn.Embedding, config: TTConfig) -> dict[str, Any]:
    """Arguments of ``TTEmbedding.from_embedding`` for ``embedding`` under ``config`` (modes and bond ranks).

    Raises:
        ValueError: if the modes do not fit the embedding, or a float rank keeps fewer parameters than rank 1.

    Example:
        >>> kwargs = tt_embedding_kwargs(nn.Embedding(1000, 64), TTConfig(rank=0.05))
        >>> kwargs["rank"], tt_embedding_params(nn.Embedding(1000, 64), TTConfig(), kwargs["rank"]) <= 0.05 * 64000
        (8, True)
    """
    voc_modes, emb_modes = config.in_modes, config.out_modes
    kwargs: dict[str, Any] = {"voc_modes": voc_modes, "emb_modes": emb_modes}
    rank = config.rank if config.rank is not None else 0.25
    if isinstance(rank, float):
        budget = rank * embedding.num_embeddings * embedding.embedding_dim
        if tt_embedding_params(embedding, config, 1) > budget:
            raise ValueError(
                f"rank={rank} keeps {budget:.0f} parameters, fewer than a rank-1 TTEmbedding needs "
                f"({tt_embedding_params(embedding, config, 1)}). Pass a larger fraction or an int rank."
            )
        low, high = 1, max(embedding.num_embeddings, embedding.embedding_dim)
        while low < high:  # largest uniform bond rank within the budget (the count grows with the rank)
            middle = (low + high + 1) // 2
            if tt_embedding_params(embedding, config, middle) <= budget:
                low = middle
            else:
                high = middle - 1
        rank = low
    kwargs["rank"] = rank
    return kwargs


def tt_embedding_from_config(embedding: nn.Embedding, config: TTConfig) -> TTEmbedding:
    """TT-SVD of ``embedding`` under ``config`` (see the module docstring for the meaning of the config)."""
    kwargs = tt_embedding_kwargs(embedding, config)
    module = TTEmbedding.from_embedding(embedding, kwargs["rank"], kwargs["voc_modes"], kwargs["emb_modes"])
    module.train(embedding.training)
    module.requires_grad_(embedding.weight.requires_grad)
    return module
