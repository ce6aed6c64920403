"""``nn.Embedding`` -> ``TTEmbedding`` for :func:`~tetra_lightning.decompose.compress_` (TT config only).

The vocabulary plays the role of a linear layer's input and the embedding dimension that of its output, so a
:class:`~tetra_lightning.decompose.TTConfig`'s ``in_modes`` factorize the vocabulary (their product may exceed
``num_embeddings``: padding rows are never looked up) and ``out_modes`` the embedding dimension. The rank spec
means what it means for a TT linear layer: the bond ranks (an int for every bond, capped at each bond's maximum),
or a float fraction of the table's parameters to keep (the largest uniform bond rank that fits). ``energy=`` is
not supported for embeddings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from tetra_lightning.decompose.configs import TTConfig

if TYPE_CHECKING:
    from tetra_lightning.lowrank.layers import TTEmbedding

__all__ = ["embedding_unsupported", "tt_embedding_from_config", "tt_embedding_kwargs", "tt_embedding_params"]


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
    from tetra_lightning.lowrank.layers import TTEmbedding

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
    from tetra_lightning.lowrank.layers import TTEmbedding

    kwargs = tt_embedding_kwargs(embedding, config)
    module = TTEmbedding.from_embedding(embedding, kwargs["rank"], kwargs["voc_modes"], kwargs["emb_modes"])
    module.train(embedding.training)
    module.requires_grad_(embedding.weight.requires_grad)
    return module
