"""Mamba2 (Dao & Gu, 2024): the SSD block and a small language model.

One block, for an input x of shape (b, l, d_model), with d = expand * d_model channels split
into h = d / p heads of ``head_dim`` p channels, and g groups sharing B and C:

1. one ``in_proj`` produces, per token, everything at once: the gate z (d), the branch x (d),
   B and C (g * n each) and the step dt (h). Mamba1 computed B, C and delta from x after the
   convolution; computing them in parallel with x makes the block one matrix multiply wide;
2. a causal depthwise convolution over x, B and C together, then SiLU;
3. the SSD scan (``seqlib.ops.ssd``): per head, h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T
   and y_t = h_t C_t + D x_t, with one scalar A per head (the whole state decays together)
   and a (p, n) matrix state;
4. a gated RMSNorm, rmsnorm(y * SiLU(z)), then ``out_proj`` back to d_model.

Decoding keeps the last ``d_conv - 1`` convolution inputs and the (h, p, n) fp32 state per
block; ``step`` equals ``forward`` position by position (tests/test_models_mamba2.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seqlib.models.feedforward import _check_positive
from seqlib.models.mamba import (
    _check_sequence,
    _check_state_tensor,
    _check_token,
    _StackedLM,
    init_dt_bias,
)
from seqlib.models.norm import GatedRMSNorm
from seqlib.ops.ssd import mamba_chunk_scan_combined, ssd_state_update

__all__ = ["Mamba2Block", "Mamba2LM", "Mamba2State"]


class Mamba2State(NamedTuple):
    """A Mamba2 block's decoding state."""

    conv: torch.Tensor  # (b, d + 2 g n, d_conv - 1): the last inputs of the convolution
    ssm: torch.Tensor  # (b, h, p, n) fp32: the SSD state


class Mamba2Block(nn.Module):
    """The Mamba2 block, mapping (b, l, d_model) to (b, l, d_model); see the module docstring."""

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2,
                 head_dim: int = 32, n_groups: int = 1, chunk_size: int = 64, *,
                 backend: str | None = None):
        super().__init__()
        _check_positive(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand,
                        head_dim=head_dim, n_groups=n_groups)
        d = expand * d_model
        if d % head_dim:
            raise ValueError(f"head_dim={head_dim} must divide expand * d_model = {d}")
        heads = d // head_dim
        if (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                or not 16 <= chunk_size <= 256 or chunk_size & (chunk_size - 1)):
            raise ValueError(f"chunk_size must be a power of two from 16 to 256, "
                             f"got {chunk_size!r}")
        if heads % n_groups:
            raise ValueError(f"n_groups={n_groups} must divide the {heads} heads "
                             f"(expand * d_model / head_dim)")
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, d
        self.head_dim, self.n_heads, self.n_groups = head_dim, heads, n_groups
        self.chunk_size, self.backend = chunk_size, backend
        self.conv_dim = d + 2 * n_groups * d_state
        self.in_proj = nn.Linear(d_model, d + self.conv_dim + heads, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, 1, d_conv))
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim))
        bound = 1 / math.sqrt(d_conv)
        nn.init.uniform_(self.conv_weight, -bound, bound)
        nn.init.uniform_(self.conv_bias, -bound, bound)
        self.dt_bias = nn.Parameter(init_dt_bias(heads))
        # one decay rate per head, spread over [1, 16] so heads start with different memories
        self.A_log = nn.Parameter(torch.empty(heads).uniform_(1, 16).log())
        self.D = nn.Parameter(torch.ones(heads))
        self.norm = GatedRMSNorm(d)
        self.out_proj = nn.Linear(d, d_model, bias=False)

    @property
    def A(self) -> torch.Tensor:
        """One negative decay rate per head, (h)."""
        return -self.A_log.exp()

    def init_state(self, batch: int) -> Mamba2State:
        _check_positive(batch=batch)
        like = self.conv_weight
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        return Mamba2State(
            like.new_zeros(batch, self.conv_dim, self.d_conv - 1),
            torch.zeros(batch, self.n_heads, self.head_dim, self.d_state, dtype=dtype,
                        device=like.device))

    def check_state(self, state: Mamba2State, batch: int) -> None:
        if not isinstance(state, Mamba2State):
            raise TypeError(f"state must be a Mamba2State from init_state(), "
                            f"got {type(state).__name__}")
        _check_state_tensor("conv", state.conv, (batch, self.conv_dim, self.d_conv - 1))
        _check_state_tensor("ssm", state.ssm,
                            (batch, self.n_heads, self.head_dim, self.d_state))

    def _split(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """in_proj's output (..., d + conv_dim + h) -> z (..., d), xBC (..., conv_dim),
        dt (..., h)."""
        return projected.split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)

    def _heads(self, xBC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xBC (..., conv_dim) -> x (..., h, p), B and C (..., g, n)."""
        gn = self.n_groups * self.d_state
        x, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        groups = (self.n_groups, self.d_state)
        return (x.unflatten(-1, (self.n_heads, self.head_dim)), B.unflatten(-1, groups),
                C.unflatten(-1, groups))

    def forward_with_state(self, x: torch.Tensor, state: Mamba2State | None = None
                           ) -> tuple[torch.Tensor, Mamba2State]:
        """x (b, l, d_model) and a state (default zeros) -> (y (b, l, d_model), new state)."""
        _check_sequence(x, self.d_model, self.conv_weight)
        b = x.shape[0]
        if state is not None:
            self.check_state(state, b)
        if x.shape[1] == 0:  # nothing to read: the state passes through unchanged
            return x.new_zeros(x.shape), state or self.init_state(b)
        z, xBC, dt = self._split(self.in_proj(x))
        history = (xBC.new_zeros(b, self.conv_dim, self.d_conv - 1) if state is None
                   else state.conv.to(xBC.dtype))
        padded = torch.cat([history, xBC.transpose(1, 2)], dim=2)  # (b, conv_dim, k - 1 + l)
        conv = F.conv1d(padded, self.conv_weight, self.conv_bias, groups=self.conv_dim)
        xs, B, C = self._heads(F.silu(conv).transpose(1, 2))
        y, final = mamba_chunk_scan_combined(
            xs, dt, self.A, B, C, self.chunk_size, D=self.D, dt_bias=self.dt_bias,
            initial_states=None if state is None else state.ssm, dt_softplus=True,
            return_final_states=True, backend=self.backend)
        y = self.norm(y.flatten(-2), z)
        new_history = padded[:, :, padded.shape[2] - (self.d_conv - 1):]
        return self.out_proj(y), Mamba2State(new_history, final)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_state(x)[0]

    def step(self, x_t: torch.Tensor, state: Mamba2State) -> tuple[torch.Tensor, Mamba2State]:
        """One token x_t (b, d_model) -> (y_t (b, d_model), new state); O(1) in the length."""
        _check_token(x_t, self.d_model, self.conv_weight)
        self.check_state(state, x_t.shape[0])
        z, xBC, dt = self._split(self.in_proj(x_t))
        window = torch.cat([state.conv.to(xBC.dtype), xBC[:, :, None]], dim=2)  # (b, ., k)
        xBC = F.silu((window * self.conv_weight[:, 0]).sum(dim=2) + self.conv_bias)
        xs, B, C = self._heads(xBC)
        y, ssm = ssd_state_update(state.ssm, xs, dt, self.A, B, C, D=self.D,
                                  dt_bias=self.dt_bias, dt_softplus=True)
        y = self.norm(y.flatten(-2), z)
        return self.out_proj(y), Mamba2State(window[:, :, 1:], ssm)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, heads={self.n_heads}, "
                f"head_dim={self.head_dim}, d_state={self.d_state}, groups={self.n_groups}, "
                f"d_conv={self.d_conv}, chunk_size={self.chunk_size}")


class Mamba2LM(_StackedLM):
    """A small Mamba2 language model: ``n_layers`` pre-norm residual Mamba2 blocks."""

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2,
                 d_state: int = 64, d_conv: int = 4, expand: int = 2, head_dim: int = 32,
                 n_groups: int = 1, chunk_size: int = 64, *, backend: str | None = None):
        _check_positive(n_layers=n_layers)
        blocks = [Mamba2Block(d_model, d_state, d_conv, expand, head_dim, n_groups, chunk_size,
                              backend=backend) for _ in range(n_layers)]
        super().__init__(vocab_size, d_model, blocks)
