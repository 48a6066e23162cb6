"""Recurrent models written from scratch: the plain (Elman) RNN, the LSTM and the GRU.

A recurrent model keeps one state and updates it token by token with the same cell:

- RNN:  h_t = tanh(W_x x_t + b_x + W_h h_{t-1} + b_h)          (or relu instead of tanh)
- LSTM: [i, f, g, o] = W_x x_t + b_x + W_h h_{t-1} + b_h, split in four blocks;
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g);  h_t = sigmoid(o) * tanh(c_t)
- GRU:  [r, z, n]_x = W_x x_t + b_x and [r, z, n]_h = W_h h_{t-1} + b_h, each in three blocks;
        r = sigmoid(r_x + r_h);  z = sigmoid(z_x + z_h);  n = tanh(n_x + r * n_h);
        h_t = (1 - z) * n + z * h_{t-1}

Note the GRU's candidate n: the reset gate multiplies (W_hn h_{t-1} + b_hn), bias included,
as in PyTorch and cuDNN (Cho et al.'s paper applies it before the product with W_hn).

Parameters are laid out exactly as PyTorch's ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (and their
``*Cell`` versions) lay them out: ``weight_ih`` = W_x of shape (g*h, e), ``weight_hh`` = W_h of
shape (g*h, h), ``bias_ih`` = b_x and ``bias_hh`` = b_h of shape (g*h,), the g blocks in
PyTorch's gate order (LSTM: i, f, g, o; GRU: r, z, n). So weights copy across unchanged:
``from_torch`` / ``load_from_torch`` / ``to_torch`` do it for single-layer, batch-first modules.

Letters: b batch, l length, e input width (``d_in``), h hidden width (``d_hidden``; this
file has no attention heads), g gate blocks per cell (RNN 1, GRU 3, LSTM 4), v vocabulary size.

Classes, small to large: the cells (:class:`RNNCell`, :class:`LSTMCell`, :class:`GRUCell`:
one step, ``cell(x_t, state) -> new_state``), the layers (:class:`RNN`, :class:`LSTM`,
:class:`GRU`: a cell run over a sequence, ``layer(x) -> (outputs, final_state)``), and
:class:`RNNLanguageModel` (embedding, one recurrent layer, logits). A state is a tensor (b, h)
for the RNN and the GRU and a tuple (h, c) of two (b, h) tensors for the LSTM. Nothing here
changes a state in place. Chapters 3 (RNN, backpropagation through time), 4 (vanishing
gradients) and 5 (LSTM and GRU) of the book explain them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seqlib.models.feedforward import _check_positive, check_token_ids

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "RNNLanguageModel",
]


# ---------------------------------------------------------------------------------------------
# Cells: one step


class _Cell(nn.Module):
    """What the three cells share: the parameters in PyTorch's layout, input checks, copying
    weights from and to PyTorch. Subclasses set ``gates`` and write :meth:`recur`."""

    gates = 1  # g: how many (h, .) blocks are stacked in weight_ih and weight_hh
    torch_names = ()  # the nn.Module classes whose weights fit this cell

    def __init__(self, d_in: int, d_hidden: int):
        super().__init__()
        _check_positive(d_in=d_in, d_hidden=d_hidden)
        self.d_in, self.d_hidden = d_in, d_hidden
        g = self.gates
        self.weight_ih = nn.Parameter(torch.empty(g * d_hidden, d_in))  # W_x (g*h, e)
        self.weight_hh = nn.Parameter(torch.empty(g * d_hidden, d_hidden))  # W_h (g*h, h)
        self.bias_ih = nn.Parameter(torch.empty(g * d_hidden))  # b_x (g*h,)
        self.bias_hh = nn.Parameter(torch.empty(g * d_hidden))  # b_h (g*h,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's initialisation: every entry uniform in [-1/sqrt(h), 1/sqrt(h)]."""
        bound = 1.0 / math.sqrt(self.d_hidden)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    # -- checks ---------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor, name: str, ndim: int) -> None:
        expected = "(b, e)" if ndim == 2 else "(b, l, e)"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, "
                            f"got {type(x).__name__}")
        if x.ndim != ndim or x.shape[-1] != self.d_in:
            raise ValueError(f"{name} must have shape {expected} with e = d_in = {self.d_in}, "
                             f"got shape {tuple(x.shape)}")
        self._check_dtype(x, name)

    def _check_dtype(self, x: torch.Tensor, name: str) -> None:
        w = self.weight_hh
        if x.dtype != w.dtype or x.device != w.device:
            raise ValueError(f"{name} has dtype {x.dtype} on {x.device}, expected the "
                             f"parameters' dtype {w.dtype} on {w.device} (shape "
                             f"{tuple(x.shape)})")

    def _check_tensor_state(self, s: torch.Tensor, batch: int, name: str) -> None:
        if not isinstance(s, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (b, h) = ({batch}, "
                             f"{self.d_hidden}), got a {type(s).__name__}")
        if tuple(s.shape) != (batch, self.d_hidden):
            raise ValueError(f"{name} must have shape (b, h) = ({batch}, {self.d_hidden}), "
                             f"got shape {tuple(s.shape)}")
        self._check_dtype(s, name)

    def check_state(self, state: State, batch: int) -> None:
        """Raise ValueError unless ``state`` is a valid state for a batch of ``batch``."""
        self._check_tensor_state(state, batch, "state")

    # -- the step ----------------------------------------------------------------------------

    def init_state(self, batch: int) -> State:
        """The all-zero state h_0 for a batch of ``batch`` sequences."""
        _check_positive(batch=batch)
        return self.zero_state(batch)

    def zero_state(self, batch: int) -> State:
        """:meth:`init_state` without the check (a batch may be empty)."""
        w = self.weight_hh
        return torch.zeros(batch, self.d_hidden, dtype=w.dtype, device=w.device)  # (b, h)

    def project_input(self, x: torch.Tensor) -> torch.Tensor:
        """W_x x + b_x for inputs (..., e) -> (..., g*h). It does not depend on the state, so a
        layer computes it for every position at once before the sequential loop."""
        return x @ self.weight_ih.T + self.bias_ih  # (..., g*h)

    def recur(self, x_proj: torch.Tensor, state: State) -> State:
        """The new state from the projected input (b, g*h) and the previous state."""
        raise NotImplementedError

    def forward(self, x_t: torch.Tensor, state: State | None = None) -> State:
        """One step: x_t (b, e) and the previous state (default: zeros) -> the new state."""
        self._check_input(x_t, "x_t", 2)
        if state is None:
            state = self.zero_state(x_t.shape[0])
        self.check_state(state, x_t.shape[0])
        return self.recur(self.project_input(x_t), state)

    # -- PyTorch interoperability ------------------------------------------------------------

    def _torch_weights(self, module: nn.Module) -> dict[str, torch.Tensor]:
        if type(module).__name__ not in self.torch_names:
            raise TypeError(f"module must be one of {', '.join(self.torch_names)}, "
                            f"got {type(module).__name__}")
        suffix = "" if type(module).__name__.endswith("Cell") else "_l0"
        if suffix and (module.num_layers != 1 or module.bidirectional):
            raise ValueError("module must have num_layers=1 and bidirectional=False, got "
                             f"num_layers={module.num_layers}, "
                             f"bidirectional={module.bidirectional}")
        if suffix and getattr(module, "proj_size", 0):
            raise ValueError(f"module must have proj_size=0, got {module.proj_size}")
        if not module.bias:
            raise ValueError("module must have bias=True (this cell always has biases)")
        if getattr(module, "nonlinearity", "tanh") != getattr(self, "nonlinearity", "tanh"):
            raise ValueError(f"module has nonlinearity={module.nonlinearity!r}, this cell "
                             f"{self.nonlinearity!r}")
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        weights = {n: getattr(module, n + suffix) for n in names}
        for n, w in weights.items():
            ours = getattr(self, n)
            if w.shape != ours.shape:
                raise ValueError(f"module's {n + suffix} has shape {tuple(w.shape)}, expected "
                                 f"{tuple(ours.shape)} (d_in={self.d_in}, "
                                 f"d_hidden={self.d_hidden})")
        return weights

    @torch.no_grad()
    def load_from_torch(self, module: nn.Module) -> _Cell:
        """Copy the weights of a PyTorch cell or single-layer module into this cell (in
        place, taking the module's dtype and device); returns self."""
        weights = self._torch_weights(module)
        first = next(iter(weights.values()))
        self.to(dtype=first.dtype, device=first.device)
        for n, w in weights.items():
            getattr(self, n).copy_(w)
        return self

    @torch.no_grad()
    def copy_to_torch(self, module: nn.Module) -> nn.Module:
        """Copy this cell's weights into a PyTorch cell or single-layer module; returns it."""
        for n, w in self._torch_weights(module).items():
            w.copy_(getattr(self, n))
        return module

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_hidden={self.d_hidden}"


class RNNCell(_Cell):
    """The Elman cell: h_t = tanh(W_x x_t + b_x + W_h h_{t-1} + b_h) (``nonlinearity`` "tanh"
    or "relu"). Its weights match ``nn.RNNCell`` and ``nn.RNN``."""

    gates = 1
    torch_names = ("RNN", "RNNCell")

    def __init__(self, d_in: int, d_hidden: int, nonlinearity: str = "tanh"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(d_in, d_hidden)

    def recur(self, x_proj: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        pre = x_proj + state @ self.weight_hh.T + self.bias_hh  # (b, h)
        return torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"


class LSTMCell(_Cell):
    """The LSTM cell (Hochreiter and Schmidhuber, 1997, with the forget gate of Gers et al.,
    2000), gates in PyTorch's order i, f, g, o. State: a tuple (h, c). Matches
    ``nn.LSTMCell`` and ``nn.LSTM``."""

    gates = 4
    torch_names = ("LSTM", "LSTMCell")

    def zero_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        h = super().zero_state(batch)  # (b, h)
        return h, torch.zeros_like(h)  # (h, c)

    def check_state(self, state: State, batch: int) -> None:
        if not isinstance(state, tuple | list) or len(state) != 2:
            raise ValueError(f"state must be a tuple (h, c) of two tensors of shape (b, h) = "
                             f"({batch}, {self.d_hidden}), got {type(state).__name__}")
        self._check_tensor_state(state[0], batch, "state[0] (h)")
        self._check_tensor_state(state[1], batch, "state[1] (c)")

    def recur(self, x_proj: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        gates = x_proj + h @ self.weight_hh.T + self.bias_hh  # (b, 4h)
        i, f, g, o = gates.chunk(4, dim=-1)  # each (b, h)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # (b, h)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)  # (b, h)
        return h_new, c_new


class GRUCell(_Cell):
    """The GRU cell (Cho et al., 2014) in PyTorch's form, gates in the order r, z, n; the reset
    gate multiplies W_hn h_{t-1} + b_hn. Matches ``nn.GRUCell`` and ``nn.GRU``."""

    gates = 3
    torch_names = ("GRU", "GRUCell")

    def recur(self, x_proj: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        h_proj = state @ self.weight_hh.T + self.bias_hh  # (b, 3h)
        r_x, z_x, n_x = x_proj.chunk(3, dim=-1)  # each (b, h)
        r_h, z_h, n_h = h_proj.chunk(3, dim=-1)  # each (b, h)
        r = torch.sigmoid(r_x + r_h)  # (b, h)
        z = torch.sigmoid(z_x + z_h)  # (b, h)
        n = torch.tanh(n_x + r * n_h)  # (b, h)
        return (1 - z) * n + z * state  # (b, h)


# ---------------------------------------------------------------------------------------------
# Layers: a cell run over a sequence


class _Recurrent(nn.Module):
    """A cell run over x (b, l, e), left to right. ``forward(x, state=None)`` returns the
    hidden state at every position, outputs (b, l, h), and the final state; ``step(x_t,
    state)`` does one position and returns (y_t (b, h), new_state), with y_t the new h."""

    cell_class: type[_Cell] = _Cell
    torch_class: type[nn.Module] = nn.Module

    def __init__(self, d_in: int, d_hidden: int, **cell_options):
        super().__init__()
        self.cell = self.cell_class(d_in, d_hidden, **cell_options)

    @property
    def d_in(self) -> int:
        return self.cell.d_in

    @property
    def d_hidden(self) -> int:
        return self.cell.d_hidden

    def init_state(self, batch: int) -> State:
        return self.cell.init_state(batch)

    @staticmethod
    def _hidden(state: State) -> torch.Tensor:
        return state[0] if isinstance(state, tuple | list) else state  # (b, h)

    def forward(self, x: torch.Tensor, state: State | None = None
                ) -> tuple[torch.Tensor, State]:
        """x (b, l, e) and an initial state (default: zeros) -> (outputs (b, l, h), final
        state). The input projection W_x x_t + b_x is one matrix product for all positions;
        only the W_h h_{t-1} part has to wait for the previous step."""
        self.cell._check_input(x, "x", 3)
        batch = x.shape[0]
        if state is None:
            state = self.cell.zero_state(batch)
        self.cell.check_state(state, batch)
        x_proj = self.cell.project_input(x)  # (b, l, g*h)
        outputs = []
        # unbind, not x_proj[:, t]: the backward of l separate slices would build l
        # zero-filled (b, l, g*h) gradients, quadratic in l; unbind's backward is one stack
        for x_t in x_proj.unbind(1):  # each (b, g*h)
            state = self.cell.recur(x_t, state)
            outputs.append(self._hidden(state))  # (b, h)
        if not outputs:
            empty = x.new_zeros(batch, 0, self.d_hidden)  # (b, 0, h)
            return empty, state
        return torch.stack(outputs, dim=1), state  # (b, l, h)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One position: x_t (b, e), state -> (y_t (b, h), new state)."""
        new_state = self.cell(x_t, state)
        return self._hidden(new_state), new_state

    # -- PyTorch interoperability ------------------------------------------------------------

    @classmethod
    def from_torch(cls, module: nn.Module) -> _Recurrent:
        """A new layer with the weights (and dtype, device) of a single-layer PyTorch module
        such as ``nn.RNN(e, h, batch_first=True)``, or of the matching ``*Cell``."""
        options = {}
        if hasattr(module, "nonlinearity"):
            options["nonlinearity"] = module.nonlinearity
        layer = cls(module.input_size, module.hidden_size, **options)
        layer.cell.load_from_torch(module)
        return layer

    def load_from_torch(self, module: nn.Module) -> _Recurrent:
        """Copy a PyTorch module's weights into this layer (in place); returns self."""
        self.cell.load_from_torch(module)
        return self

    def to_torch(self) -> nn.Module:
        """A single-layer, batch-first PyTorch module with this layer's weights."""
        options = {}
        if isinstance(self.cell, RNNCell):
            options["nonlinearity"] = self.cell.nonlinearity
        w = self.cell.weight_hh
        module = self.torch_class(self.d_in, self.d_hidden, batch_first=True, **options)
        return self.cell.copy_to_torch(module.to(dtype=w.dtype, device=w.device))


class RNN(_Recurrent):
    """A plain (Elman) RNN layer: :class:`RNNCell` over a sequence; like
    ``nn.RNN(d_in, d_hidden, batch_first=True)``. State: h (b, h)."""

    cell_class = RNNCell
    torch_class = nn.RNN

    def __init__(self, d_in: int, d_hidden: int, nonlinearity: str = "tanh"):
        super().__init__(d_in, d_hidden, nonlinearity=nonlinearity)


class LSTM(_Recurrent):
    """An LSTM layer: :class:`LSTMCell` over a sequence; like ``nn.LSTM(d_in, d_hidden,
    batch_first=True)``. State: (h, c), each (b, h); outputs are the h's."""

    cell_class = LSTMCell
    torch_class = nn.LSTM

    def __init__(self, d_in: int, d_hidden: int):
        super().__init__(d_in, d_hidden)


class GRU(_Recurrent):
    """A GRU layer: :class:`GRUCell` over a sequence; like ``nn.GRU(d_in, d_hidden,
    batch_first=True)``. State: h (b, h)."""

    cell_class = GRUCell
    torch_class = nn.GRU

    def __init__(self, d_in: int, d_hidden: int):
        super().__init__(d_in, d_hidden)


LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


# ---------------------------------------------------------------------------------------------
# The language model


class RNNLanguageModel(nn.Module):
    """Token ids -> embedding (e) -> one recurrent layer (h) -> logits (v).

    ``cell`` is "rnn", "lstm" or "gru". ``forward(x)`` maps ids (b, l) to logits (b, l, v),
    starting from the zero state, so it plugs into :func:`seqlib.train.fit`;
    ``forward_with_state(x, state)`` also takes and returns the state (to carry it across
    windows); ``step(x_t (b,), state) -> (logits (b, v), state)`` drives
    :func:`seqlib.decoding.sample`.
    """

    def __init__(self, vocab_size: int, d_embed: int = 32, d_hidden: int = 128,
                 cell: str = "rnn"):
        super().__init__()
        _check_positive(vocab_size=vocab_size, d_embed=d_embed, d_hidden=d_hidden)
        if cell not in LAYERS:
            raise ValueError(f"cell must be one of {sorted(LAYERS)}, got {cell!r}")
        self.vocab_size, self.cell_type = vocab_size, cell
        self.embed = nn.Embedding(vocab_size, d_embed)
        self.rnn = LAYERS[cell](d_embed, d_hidden)
        self.out = nn.Linear(d_hidden, vocab_size)

    def init_state(self, batch: int) -> State:
        return self.rnn.init_state(batch)

    def forward_with_state(self, x: torch.Tensor, state: State | None = None
                           ) -> tuple[torch.Tensor, State]:
        """ids (b, l) and a state (default: zeros) -> (logits (b, l, v), final state)."""
        check_token_ids(x, self.vocab_size)
        e = self.embed(x.long())  # (b, l, e)
        hs, state = self.rnn(e, state)  # (b, l, h)
        return self.out(hs), state  # (b, l, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_state(x)[0]  # (b, l, v)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """ids x_t (b,) and the state -> (logits (b, v), new state)."""
        check_token_ids(x_t, self.vocab_size, name="x_t", ndim=1)
        y_t, state = self.rnn.step(self.embed(x_t.long()), state)  # (b, h)
        return self.out(y_t), state  # (b, v)
