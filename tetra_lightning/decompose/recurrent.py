"""``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` rebuilt from cells whose input and hidden maps are layers that may be factorized.

PyTorch's recurrent modules keep their weights as flat parameters (``weight_ih_l0``, ``weight_hh_l0``, ...) read by
a fused kernel, so no factorized layer can replace them. :class:`FactorizedRNN` computes the same function with one
cell per layer and direction, each holding an ``input_map`` (``input -> gates * hidden``) and a ``hidden_map``
(``hidden -> gates * hidden``) that it calls: ``nn.Linear`` after :func:`split_recurrent` (numerically the module it
replaces), then any factorized layer, e.g. the TT-matrix of the TT-LSTM / TT-GRU of Yang et al. The gate updates
are the ones of :class:`~tetra_lightning.lowrank.TTLSTMCell` and :class:`~tetra_lightning.lowrank.TTGRUCell`
(:func:`lstm_update`, :func:`gru_update`). The rewrite is recorded as a history entry of kind ``"recurrent"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from tetra_lightning.checkpoint import register_history_kind

__all__ = [
    "RECURRENT_KIND",
    "FactorizedRNN",
    "RecurrentCell",
    "gru_update",
    "lstm_update",
    "recurrent_unsupported",
    "restore_recurrent",
    "split_recurrent",
]

#: History kind of the entries written when an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` is split into cells.
RECURRENT_KIND = "recurrent"
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def lstm_update(input_gates: Tensor, hidden_gates: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step from the two maps' outputs (gates ordered ``i, f, g, o`` like PyTorch): ``(h', c')``.

    Example:
        >>> h, c = lstm_update(torch.zeros(1, 8), torch.zeros(1, 8), torch.ones(1, 2))
        >>> round(float(c[0, 0]), 4), round(float(h[0, 0]), 4)
        (0.5, 0.2311)
    """
    i, f, g, o = (input_gates + hidden_gates).chunk(4, dim=-1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


def gru_update(input_gates: Tensor, hidden_gates: Tensor, hidden: Tensor) -> Tensor:
    """One GRU step (gates ``r, z, n``; the hidden map's bias sits inside ``r * (...)`` as in PyTorch): ``h'``.

    Example:
        >>> float(gru_update(torch.zeros(1, 6), torch.zeros(1, 6), torch.ones(1, 2))[0, 0])
        0.5
    """
    x_r, x_z, x_n = input_gates.chunk(3, dim=-1)
    h_r, h_z, h_n = hidden_gates.chunk(3, dim=-1)
    reset = torch.sigmoid(x_r + h_r)
    update = torch.sigmoid(x_z + h_z)
    candidate = torch.tanh(x_n + reset * h_n)
    return (1 - update) * candidate + update * hidden


def recurrent_unsupported(module: nn.Module) -> str | None:
    """Why a recurrent module cannot be split into cells (None when it can).

    Example:
        >>> recurrent_unsupported(nn.LSTM(4, 8, num_layers=2, bidirectional=True)) is None
        True
        >>> recurrent_unsupported(nn.LSTM(4, 8, proj_size=2))
        'nn.LSTM with proj_size=2 is left fused'
    """
    if getattr(module, "proj_size", 0):
        return f"nn.LSTM with proj_size={module.proj_size} is left fused"
    if getattr(module, "mode", None) not in _GATES:
        return f"recurrent mode {getattr(module, 'mode', None)!r} is not supported"
    return None


class RecurrentCell(nn.Module):
    """One layer and direction of a :class:`FactorizedRNN`: ``gates = input_map(x_t) + hidden_map(h_{t-1})``.

    Args:
        input_size: features of the cell's input.
        hidden_size: hidden state size.
        mode: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``.
        bias: whether both maps have biases.

    Example:
        >>> cell = RecurrentCell(4, 8, "GRU")
        >>> cell.input_map.out_features, cell.hidden_map.in_features
        (24, 8)
    """

    def __init__(self, input_size: int, hidden_size: int, mode: str, bias: bool = True) -> None:
        super().__init__()
        gates = _GATES[mode] * int(hidden_size)
        self.mode = mode
        self.input_map: nn.Module = nn.Linear(int(input_size), gates, bias=bias)
        self.hidden_map: nn.Module = nn.Linear(int(hidden_size), gates, bias=bias)

    def run(self, inputs: Tensor, state: tuple[Tensor, Tensor], lengths: Tensor | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Runs the cell over ``inputs`` ``(T, N, F)`` from ``state`` ``(h, c)``; steps past ``lengths`` keep the state.

        Returns ``(outputs (T, N, H), (h_T, c_T))`` (``c`` is unused except for LSTMs).
        """
        hidden, cell = state
        if lengths is not None:
            lengths = lengths.to(inputs.device)
        input_gates = self.input_map(inputs)  # all steps at once: one large product
        outputs = []
        for step in range(inputs.shape[0]):
            hidden_gates = self.hidden_map(hidden)
            if self.mode == "LSTM":
                new_hidden, new_cell = lstm_update(input_gates[step], hidden_gates, cell)
            elif self.mode == "GRU":
                new_hidden, new_cell = gru_update(input_gates[step], hidden_gates, hidden), cell
            else:
                total = input_gates[step] + hidden_gates
                new_hidden, new_cell = (torch.tanh(total) if self.mode == "RNN_TANH" else torch.relu(total)), cell
            if lengths is not None:
                active = (step < lengths).to(new_hidden.dtype)[:, None]
                new_hidden = active * new_hidden + (1 - active) * hidden
                new_cell = active * new_cell + (1 - active) * cell
                outputs.append(new_hidden * active)
            else:
                outputs.append(new_hidden)
            hidden, cell = new_hidden, new_cell
        return torch.stack(outputs), (hidden, cell)


def _reverse_within(inputs: Tensor, lengths: Tensor | None) -> Tensor:
    """``inputs`` ``(T, N, F)`` with every sequence reversed within its own length (padding stays at the end)."""
    if lengths is None:
        return inputs.flip(0)
    steps = torch.arange(inputs.shape[0], device=inputs.device)[:, None]
    lengths = lengths.to(inputs.device)[None, :]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return inputs.gather(0, index[:, :, None].expand_as(inputs))


class FactorizedRNN(nn.Module):
    """``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` as one :class:`RecurrentCell` per layer and direction.

    ``forward`` takes and returns what the PyTorch module does: ``(L, N, H_in)`` (``batch_first``: ``(N, L, H_in)``),
    unbatched ``(L, H_in)`` or a ``PackedSequence``, an optional initial state, and returns
    ``(output, h_n)`` or, for an LSTM, ``(output, (h_n, c_n))``. Dropout between layers applies in training.

    Args:
        mode: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``.
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as in ``nn.LSTM``.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> lstm = nn.LSTM(6, 8, num_layers=2, batch_first=True)
        >>> cells = split_recurrent(lstm)
        >>> x = torch.randn(3, 5, 6)
        >>> (out, (h, c)), (ref, (h_ref, c_ref)) = cells(x), lstm(x)
        >>> bool(torch.allclose(out, ref, atol=1e-5) and torch.allclose(c, c_ref, atol=1e-5))
        True
    """

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if mode not in _GATES:
            raise ValueError(f"`mode` must be one of {sorted(_GATES)}, got {mode!r}.")
        self.mode, self.input_size, self.hidden_size = mode, int(input_size), int(hidden_size)
        self.num_layers, self.bias, self.batch_first = int(num_layers), bool(bias), bool(batch_first)
        self.dropout, self.bidirectional, self.proj_size = float(dropout), bool(bidirectional), 0
        directions = 2 if self.bidirectional else 1
        self.cells = nn.ModuleList(
            RecurrentCell(
                self.input_size if layer == 0 else directions * self.hidden_size, self.hidden_size, mode, self.bias
            )
            for layer in range(self.num_layers)
            for _ in range(directions)
        )

    def spec(self) -> dict[str, Any]:
        """JSON-safe constructor arguments (the maps are recorded as their own history entries)."""
        return {
            "mode": self.mode,
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bias": self.bias,
            "batch_first": self.batch_first,
            "dropout": self.dropout,
            "bidirectional": self.bidirectional,
        }

    def flatten_parameters(self) -> None:
        """No-op (the cells hold ordinary layers); kept because user code calls it on RNN modules."""

    def forward(self, input: Any, hx: Any = None) -> tuple[Any, Any]:  # noqa: A002 - PyTorch's argument name
        packed = isinstance(input, PackedSequence)
        lengths: Tensor | None = None
        if packed:
            padded, lengths = pad_packed_sequence(input, batch_first=False)
            sequence = padded  # (T, N, F), original batch order
        else:
            batched = input.dim() == 3
            sequence = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                sequence = sequence.transpose(0, 1)
        directions = 2 if self.bidirectional else 1
        batch = sequence.shape[1]
        zeros = sequence.new_zeros(self.num_layers * directions, batch, self.hidden_size)
        if hx is None:
            h0, c0 = zeros, zeros
        elif self.mode == "LSTM":
            h0, c0 = hx
        else:
            h0, c0 = hx, zeros
        if not packed and input.dim() == 2 and hx is not None:
            h0 = h0.unsqueeze(1)
            c0 = c0.unsqueeze(1) if self.mode == "LSTM" else c0
        final_h, final_c = [], []
        layer_input = sequence
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                cell = self.cells[index]
                state = (h0[index], c0[index])
                if direction == 0:
                    out, (h, c) = cell.run(layer_input, state, lengths)
                else:
                    out, (h, c) = cell.run(_reverse_within(layer_input, lengths), state, lengths)
                    out = _reverse_within(out, lengths)
                outputs.append(out)
                final_h.append(h)
                final_c.append(c)
            layer_input = torch.cat(outputs, dim=-1) if directions == 2 else outputs[0]
            if self.training and self.dropout > 0.0 and layer + 1 < self.num_layers:
                layer_input = nn.functional.dropout(layer_input, p=self.dropout)
        h_n, c_n = torch.stack(final_h), torch.stack(final_c)
        output: Any = layer_input
        if packed:
            order = input.sorted_indices
            ordered = output if order is None else output.index_select(1, order)
            sorted_lengths = lengths if order is None else lengths.index_select(0, order.cpu())
            repacked = pack_padded_sequence(ordered, sorted_lengths, enforce_sorted=True)
            output = PackedSequence(repacked.data, repacked.batch_sizes, input.sorted_indices, input.unsorted_indices)
        elif input.dim() == 2:
            output, h_n, c_n = output.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, ((h_n, c_n) if self.mode == "LSTM" else h_n)


def split_recurrent(module: nn.RNNBase) -> FactorizedRNN:
    """The :class:`FactorizedRNN` computing what ``module`` (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``) computes.

    Raises:
        TypeError: for a module that is not an ``nn.RNNBase``.
        ValueError: for one that cannot be split (see :func:`recurrent_unsupported`).

    Example:
        >>> split = split_recurrent(nn.GRU(4, 8, num_layers=2, bidirectional=True))
        >>> len(split.cells), split.cells[2].input_map.in_features
        (4, 16)
    """
    if not isinstance(module, nn.RNNBase):
        raise TypeError(f"`module` must be an nn.LSTM, nn.GRU or nn.RNN, got {type(module).__name__}.")
    reason = recurrent_unsupported(module)
    if reason is not None:
        raise ValueError(f"`module` cannot be split: {reason}. Exclude it with `filter_fn`.")
    reference = module.weight_ih_l0
    split = FactorizedRNN(
        module.mode,
        module.input_size,
        module.hidden_size,
        module.num_layers,
        module.bias,
        module.batch_first,
        module.dropout,
        module.bidirectional,
    ).to(device=reference.device, dtype=reference.dtype)
    suffixes = ("", "_reverse") if module.bidirectional else ("",)
    with torch.no_grad():
        for layer in range(module.num_layers):
            for direction, suffix in enumerate(suffixes):
                cell = split.cells[layer * len(suffixes) + direction]
                cell.input_map.weight.copy_(getattr(module, f"weight_ih_l{layer}{suffix}"))
                cell.hidden_map.weight.copy_(getattr(module, f"weight_hh_l{layer}{suffix}"))
                if module.bias:
                    cell.input_map.bias.copy_(getattr(module, f"bias_ih_l{layer}{suffix}"))
                    cell.hidden_map.bias.copy_(getattr(module, f"bias_hh_l{layer}{suffix}"))
    split.train(module.training)
    split.requires_grad_(any(p.requires_grad for p in module.parameters()))
    return split


def restore_recurrent(model: nn.Module, history: Sequence[Mapping[str, Any]]) -> nn.Module:
    """Replays ``{"kind": "recurrent"}`` entries: each named RNN becomes a (dense) :class:`FactorizedRNN`.

    Raises:
        ValueError: for an entry naming a module the model lacks or that is no ``nn.RNNBase``.

    Example:
        >>> model = nn.Sequential(nn.LSTM(4, 8))
        >>> entry = {"kind": "recurrent", "name": "0", "spec": split_recurrent(model[0]).spec()}
        >>> type(restore_recurrent(model, [entry])[0]).__name__
        'FactorizedRNN'
    """
    for index, entry in enumerate(history):
        if entry.get("kind") != RECURRENT_KIND or "skipped" in entry:
            continue
        name = entry.get("name")
        try:
            old = model.get_submodule(name) if name else None
        except AttributeError:
            old = None
        if not isinstance(old, nn.RNNBase):
            raise ValueError(
                f"`history[{index}]` splits {name!r}, which is not an nn.LSTM / nn.GRU / nn.RNN of the model (found "
                f"{type(old).__name__}). Replay the history on a model built like the one that was compressed."
            )
        new = FactorizedRNN(**dict(entry["spec"]))
        new.to(device=old.weight_ih_l0.device, dtype=old.weight_ih_l0.dtype)
        new.train(old.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


# compress_ entries of recurrent modules split into cells (see restore_recurrent).
register_history_kind(RECURRENT_KIND, restore_recurrent, ("kind", "name", "spec"))
