"""Normalisation layers shared by the model families: RMSNorm and Mamba2's gated RMSNorm.

RMSNorm (Zhang & Sennrich, 2019) divides each vector by its root mean square and rescales it
by a learned weight; unlike LayerNorm it neither subtracts the mean nor adds a bias. It is
computed in float32 whatever the input's dtype (the mean of squares of bf16 values loses too
much), and the result is cast back. ``RMSNorm`` equals ``torch.nn.RMSNorm`` with the same
weight and eps (tests/test_models_mamba.py checks it in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqlib.models.feedforward import _check_positive

__all__ = ["GatedRMSNorm", "RMSNorm", "rms_normalize"]


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2 over the last dim) + eps), computed in float32 (or float64)."""
    work = x if x.dtype == torch.float64 else x.float()
    return work * torch.rsqrt(work.pow(2).mean(dim=-1, keepdim=True) + eps)


def _check_last_dim(x: torch.Tensor, d: int, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] != d:
        raise ValueError(f"{name} must have shape (..., {d}), got shape {tuple(x.shape)}")


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight over the last dimension (size ``d``)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        _check_positive(d=d)
        self.d, self.eps = d, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(x, self.d, "x")
        return (rms_normalize(x, self.eps) * self.weight).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}"


class GatedRMSNorm(nn.Module):
    """Mamba2's output norm: y = rmsnorm(x * silu(z)) * weight.

    The gate is applied before normalising, so a gate near zero cannot blow the rest up. With
    ``group_size`` < d the root mean square is taken over consecutive groups of that many
    features (Mamba2 normalises each group of heads separately when it splits them across
    devices); the default normalises all d features together.
    """

    def __init__(self, d: int, eps: float = 1e-5, group_size: int | None = None):
        super().__init__()
        _check_positive(d=d)
        group_size = d if group_size is None else group_size
        if group_size < 1 or d % group_size:
            raise ValueError(f"group_size must be a positive divisor of d={d}, got {group_size}")
        self.d, self.eps, self.group_size = d, eps, group_size
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        _check_last_dim(x, self.d, "x")
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor (the gate), got {type(z).__name__}")
        if z.shape != x.shape:
            raise ValueError(f"z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
        gated = x.float() * F.silu(z.float()) if x.dtype != torch.float64 else x * F.silu(z)
        groups = gated.unflatten(-1, (self.d // self.group_size, self.group_size))
        normed = rms_normalize(groups, self.eps).flatten(-2)
        return (normed * self.weight).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}, group_size={self.group_size}"
