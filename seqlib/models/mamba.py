"""Mamba (Gu & Dao, 2023): the selective state space block and a small language model.

One block, for an input x of shape (b, l, d_model), with d = expand * d_model channels:

1. ``in_proj`` splits each token into a branch u and a gate z, both (b, d, l);
2. a causal depthwise convolution of width ``d_conv`` mixes each channel with its last few
   positions, then SiLU;
3. the selection: a projection of u gives, per position, a low-rank delta (rank ``dt_rank``,
   lifted to d channels by ``dt_proj``; softplus with a per-channel bias inside the scan), and
   the state matrices B and C (b, n, l);
4. the selective scan (``seqlib.ops.selective_scan``): h_t = exp(delta_t A) h_{t-1} +
   delta_t B_t u_t and y_t = C_t h_t + D u_t, per channel, with a state of n numbers;
5. y * SiLU(z), then ``out_proj`` back to d_model.

``selective=False`` keeps everything except step 3: delta, B and C become learned parameters
that do not depend on the input (B and C per channel), so the block is a linear time-invariant
diagonal SSM. Chapter 15 trains both on selective copying to show what selection buys.

Decoding keeps a constant-size state per block: the last ``d_conv - 1`` inputs of the
convolution and the scan's state (fp32). ``step`` advances it by one token and equals
``forward`` position by position (tests/test_models_mamba.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seqlib.models.feedforward import _check_positive, check_token_ids
from seqlib.models.norm import RMSNorm
from seqlib.ops.selective_scan import selective_scan_fn, selective_state_update

__all__ = ["MambaBlock", "MambaLM", "MambaState", "init_dt_bias"]


class MambaState(NamedTuple):
    """A Mamba block's decoding state."""

    conv: torch.Tensor  # (b, d, d_conv - 1): the last inputs of the convolution, oldest first
    ssm: torch.Tensor  # (b, d, n) fp32: the selective scan's state


def init_dt_bias(channels: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> torch.Tensor:
    """Biases whose softplus is log-uniform in [dt_min, dt_max] (Mamba's initialisation).

    A step size spread over two decades gives the channels memories from about 10 to about
    1000 positions at the start of training. softplus(b) = dt is inverted as
    b = dt + log(1 - exp(-dt)).
    """
    log_dt = torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = log_dt.exp().clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))


def _check_input(x: torch.Tensor, d_model: int, like: torch.Tensor, name: str,
                 leading: tuple[str, ...]) -> None:
    """ValueError unless x has shape (*leading, d_model) and the parameters' dtype and device."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != len(leading) + 1 or x.shape[-1] != d_model:
        letters = ", ".join(leading)
        raise ValueError(f"{name} must have shape ({letters}, d_model) = ({letters}, {d_model}),"
                         f" got shape {tuple(x.shape)}")
    if x.dtype != like.dtype or x.device != like.device:
        raise ValueError(f"{name} has dtype {x.dtype} on {x.device}, but the block's parameters "
                         f"are {like.dtype} on {like.device}: convert one to the other "
                         f"(e.g. block.to(x.dtype))")


def _check_sequence(x: torch.Tensor, d_model: int, like: torch.Tensor) -> None:
    _check_input(x, d_model, like, "x", ("b", "l"))


def _check_token(x_t: torch.Tensor, d_model: int, like: torch.Tensor) -> None:
    _check_input(x_t, d_model, like, "x_t", ("b",))


def _check_state_tensor(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"state.{name} must have shape {shape}, got {got}")


class MambaBlock(nn.Module):
    """The Mamba block, mapping (b, l, d_model) to (b, l, d_model); see the module docstring."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, *, selective: bool = True,
                 backend: str | None = None):
        super().__init__()
        if not isinstance(selective, bool):
            raise TypeError(f"selective must be True or False, got {selective!r}")
        dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        _check_positive(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand,
                        dt_rank=dt_rank)
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner, self.dt_rank = expand * d_model, dt_rank
        self.selective, self.backend = selective, backend
        d = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * d, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(d, 1, d_conv))
        self.conv_bias = nn.Parameter(torch.empty(d))
        bound = 1 / math.sqrt(d_conv)  # nn.Conv1d's default for a depthwise filter
        nn.init.uniform_(self.conv_weight, -bound, bound)
        nn.init.uniform_(self.conv_bias, -bound, bound)
        if selective:
            self.x_proj = nn.Linear(d, dt_rank + 2 * d_state, bias=False)
            self.dt_proj = nn.Linear(dt_rank, d, bias=False)
            nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
        else:
            self.B = nn.Parameter(torch.randn(d, d_state) / math.sqrt(d_state))
            self.C = nn.Parameter(torch.randn(d, d_state) / math.sqrt(d_state))
        self.dt_bias = nn.Parameter(init_dt_bias(d))
        # S4D-real: A = -(1, 2, ..., n) for every channel, stored as its log so that it stays
        # negative (the state decays) whatever the optimiser does
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(d, 1))
        self.D = nn.Parameter(torch.ones(d))
        self.out_proj = nn.Linear(d, d_model, bias=False)

    @property
    def A(self) -> torch.Tensor:
        """The state matrix's diagonal, (d, n), negative."""
        return -self.A_log.exp()

    def init_state(self, batch: int) -> MambaState:
        _check_positive(batch=batch)
        like = self.conv_weight
        return MambaState(like.new_zeros(batch, self.d_inner, self.d_conv - 1),
                          torch.zeros(batch, self.d_inner, self.d_state, device=like.device,
                                      dtype=torch.float64 if like.dtype == torch.float64
                                      else torch.float32))

    def check_state(self, state: MambaState, batch: int) -> None:
        if not isinstance(state, MambaState):
            raise TypeError(f"state must be a MambaState from init_state(), "
                            f"got {type(state).__name__}")
        _check_state_tensor("conv", state.conv, (batch, self.d_inner, self.d_conv - 1))
        _check_state_tensor("ssm", state.ssm, (batch, self.d_inner, self.d_state))

    def _conv(self, u: torch.Tensor, history: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise convolution of u (b, d, l) after ``history`` (b, d, d_conv - 1)
        (zeros if None) -> (SiLU(conv) (b, d, l), the new history)."""
        if history is None:
            history = u.new_zeros(u.shape[0], self.d_inner, self.d_conv - 1)
        padded = torch.cat([history.to(u.dtype), u], dim=2)
        out = F.conv1d(padded, self.conv_weight, self.conv_bias, groups=self.d_inner)
        return F.silu(out), padded[:, :, padded.shape[2] - (self.d_conv - 1):]

    def _selection(self, u: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """u (b, d, l) -> delta before its bias and softplus (b, d, l), B and C.

        B and C are (b, n, l) when selective; otherwise the per-channel parameters broadcast
        to the grouped layout (b, d, n, l) with one group per channel (stride-0 views)."""
        b, d, length = u.shape
        if not self.selective:
            delta = u.new_zeros(b, d, length)
            B = self.B.to(u.dtype)[None, :, :, None].expand(b, d, self.d_state, length)
            C = self.C.to(u.dtype)[None, :, :, None].expand(b, d, self.d_state, length)
            return delta, B, C
        projected = self.x_proj(u.transpose(1, 2))  # (b, l, dt_rank + 2n)
        low, B, C = projected.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj(low).transpose(1, 2)  # (b, d, l)
        return delta, B.transpose(1, 2), C.transpose(1, 2)

    def scan_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors the block hands to the selective scan for x (b, l, d_model), from a zero
        state, for looking at: u, delta (after bias and softplus), z (b, d, l), A (d, n), B
        and C ((b, n, l), or (b, d, n, l) when not selective)."""
        _check_sequence(x, self.d_model, self.conv_weight)
        u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)
        u, _ = self._conv(u, None)
        delta, B, C = self._selection(u)
        return {"u": u, "delta": F.softplus(delta + self.dt_bias[:, None]), "z": z,
                "A": self.A, "B": B, "C": C}

    def forward_with_state(self, x: torch.Tensor, state: MambaState | None = None
                           ) -> tuple[torch.Tensor, MambaState]:
        """x (b, l, d_model) and a state (default zeros) -> (y (b, l, d_model), new state)."""
        _check_sequence(x, self.d_model, self.conv_weight)
        if state is not None:
            self.check_state(state, x.shape[0])
        if x.shape[1] == 0:  # nothing to read: the state passes through unchanged
            return x.new_zeros(x.shape), state or self.init_state(x.shape[0])
        u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (b, d, l) each
        u, history = self._conv(u, None if state is None else state.conv)
        delta, B, C = self._selection(u)
        y, last = selective_scan_fn(
            u, delta, self.A, B, C, self.D, z=z, delta_bias=self.dt_bias, delta_softplus=True,
            return_last_state=True, backend=self.backend,
            initial_state=None if state is None else state.ssm)
        return self.out_proj(y.transpose(1, 2)), MambaState(history, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_state(x)[0]

    def step(self, x_t: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One token x_t (b, d_model) -> (y_t (b, d_model), new state); O(1) in the length."""
        _check_token(x_t, self.d_model, self.conv_weight)
        self.check_state(state, x_t.shape[0])
        u, z = self.in_proj(x_t).chunk(2, dim=1)  # (b, d) each
        window = torch.cat([state.conv.to(u.dtype), u[:, :, None]], dim=2)  # (b, d, d_conv)
        u = F.silu((window * self.conv_weight[:, 0]).sum(dim=2) + self.conv_bias)
        delta, B, C = self._selection(u[:, :, None])
        B_t, C_t = B[..., 0], C[..., 0]  # (b, n), or (b, d, n) as d groups of one channel
        y, ssm = selective_state_update(state.ssm, u, delta[..., 0], self.A, B_t, C_t, self.D,
                                        z_t=z, delta_bias=self.dt_bias, delta_softplus=True)
        return self.out_proj(y), MambaState(window[:, :, 1:], ssm)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"d_conv={self.d_conv}, dt_rank={self.dt_rank}, selective={self.selective}")


class _Residual(nn.Module):
    """x + block(RMSNorm(x)): the pre-norm residual wrapper of every layer."""

    def __init__(self, block: nn.Module, d_model: int):
        super().__init__()
        self.norm, self.block = RMSNorm(d_model), block

    def forward_with_state(self, x, state=None):
        y, state = self.block.forward_with_state(self.norm(x), state)
        return x + y, state

    def step(self, x_t, state):
        y, state = self.block.step(self.norm(x_t), state)
        return x_t + y, state


class _StackedLM(nn.Module):
    """Embedding -> residual blocks -> RMSNorm -> logits through the tied embedding.

    Subclasses build the blocks; ``forward(ids (b, l)) -> logits (b, l, v)`` plugs into
    :func:`seqlib.train.fit`, and ``init_state`` / ``step(ids_t (b,), state) -> (logits (b, v),
    state)`` into :func:`seqlib.decoding.sample`. The state is a list with one block state per
    layer.
    """

    def __init__(self, vocab_size: int, d_model: int, blocks: list[nn.Module]):
        super().__init__()
        _check_positive(vocab_size=vocab_size, d_model=d_model, n_layers=len(blocks))
        self.vocab_size, self.d_model = vocab_size, d_model
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.layers = nn.ModuleList(_Residual(block, d_model) for block in blocks)
        self.norm = RMSNorm(d_model)

    def set_backend(self, backend: str | None) -> _StackedLM:
        """Make every block's scan use ``backend`` (None: the default choice); returns self.
        The name is checked by the scan on the next call."""
        for layer in self.layers:
            layer.block.backend = backend
        return self

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h) @ self.embed.weight.T  # tied input and output embeddings

    def init_state(self, batch: int) -> list:
        return [layer.block.init_state(batch) for layer in self.layers]

    def _check_states(self, state) -> None:
        if not isinstance(state, list | tuple) or len(state) != len(self.layers):
            raise ValueError(f"state must be a list of {len(self.layers)} block states from "
                             f"init_state(), got {type(state).__name__}")

    def forward_with_state(self, x: torch.Tensor, state: list | None = None
                           ) -> tuple[torch.Tensor, list]:
        """ids (b, l) and a state (default zeros) -> (logits (b, l, v), final state)."""
        check_token_ids(x, self.vocab_size)
        if state is not None:
            self._check_states(state)
        h, new_state = self.embed(x.long()), []
        for i, layer in enumerate(self.layers):
            h, s = layer.forward_with_state(h, None if state is None else state[i])
            new_state.append(s)
        return self.logits(h), new_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_state(x)[0]

    def step(self, x_t: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        """ids x_t (b,) and the state -> (logits (b, v), new state)."""
        check_token_ids(x_t, self.vocab_size, name="x_t", ndim=1)
        self._check_states(state)
        h, new_state = self.embed(x_t.long()), []
        for layer, s in zip(self.layers, state):
            h, s = layer.step(h, s)
            new_state.append(s)
        return self.logits(h), new_state


class MambaLM(_StackedLM):
    """A small Mamba language model: ``n_layers`` pre-norm residual Mamba blocks."""

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, *,
                 selective: bool = True, backend: str | None = None):
        _check_positive(n_layers=n_layers)
        blocks = [MambaBlock(d_model, d_state, d_conv, expand, selective=selective,
                             backend=backend) for _ in range(n_layers)]
        super().__init__(vocab_size, d_model, blocks)
