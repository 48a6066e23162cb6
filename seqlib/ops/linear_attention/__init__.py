"""Causal linear attention, computed as the SSD scan with no decay.

Letters: b batch, h heads, l length, dk query/key head dim, dv value head dim.

>>> import torch
>>> from seqlib.ops.linear_attention import linear_attention
>>> q, k, v = torch.randn(2, 4, 50, 16), torch.randn(2, 4, 50, 16), torch.randn(2, 4, 50, 32)
>>> out, state = linear_attention(q, k, v, return_final_state=True)
>>> out.shape, state.shape
(torch.Size([2, 4, 50, 32]), torch.Size([2, 4, 16, 32]))

Definition (no feature map, no normalisation; ``reference.linear_attention_quadratic``)::

    y_t = scale * sum_{s <= t} (q_t . k_s) v_s = scale * q_t S_t,   S_t = S_{t-1} + k_t v_t^T

with scale = 1 / sqrt(dk) by default (as in flash-linear-attention), and the state
S (b, h, dk, dv) in float32 (float64 for float64 inputs).

Mapping onto ``seqlib.ops.ssd.mamba_chunk_scan_combined`` (state space duality with decay 1):
x = v, B = k, C = q, each moved to the SSD's (b, l, h, .) layout; one group per head (g = h);
A = 0 (no decay: exp(dt A) = 1) and dt = scale, so the SSD state (b, h, p = dv, n = dk) is
scale * S^T and y_t = (scale S_t^T) q_t; no D, z or softplus. The scale rides on dt, in fp32,
rather than on q, so that low-precision q is not rounded a second time; the states are
converted (S^T * scale in, / scale out) at the boundary. Every SSD backend therefore serves.
"""

from __future__ import annotations

import math
import numbers

import torch

from ..ssd import BACKENDS, mamba_chunk_scan_combined
from .reference import linear_attention_quadratic

__all__ = ["linear_attention", "linear_attention_quadratic", "BACKENDS", "CHUNK_SIZE"]

#: The SSD chunk used for linear attention.
CHUNK_SIZE = 64
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _check_inputs(q, k, v, scale, initial_state, return_final_state) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.ndim != 4:
        raise ValueError(f"q must have shape (b, h, l, dk), got shape {_fmt(q.shape)}")
    b, h, length, dk = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q, (b, h, l, dk) = {_fmt(q.shape)}, got shape "
                         f"{_fmt(k.shape)}")
    if v.ndim != 4 or tuple(v.shape[:3]) != (b, h, length):
        raise ValueError(f"v must have shape (b, h, l, dv) = ({b}, {h}, {length}, dv), got shape "
                         f"{_fmt(v.shape)}")
    if h == 0 or dk == 0 or v.shape[3] == 0:
        raise ValueError(f"q and v need h >= 1 heads and head dims >= 1, got q of shape "
                         f"{_fmt(q.shape)} and v of shape {_fmt(v.shape)}")
    if q.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"q must be float16, bfloat16, float32 or float64, got {q.dtype} "
                         f"(shape {_fmt(q.shape)})")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} (shape {_fmt(t.shape)}) but q has "
                             f"{q.dtype}: q, k and v must share one dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} (shape {_fmt(t.shape)}) but q is on "
                             f"{q.device}: q, k and v must be on one device")
    if initial_state is not None:
        want = (b, h, dk, v.shape[3])
        if not isinstance(initial_state, torch.Tensor):
            raise TypeError(f"initial_state must be a torch.Tensor, got "
                            f"{type(initial_state).__name__}")
        if tuple(initial_state.shape) != want:
            raise ValueError(f"initial_state must have shape (b, h, dk, dv) = {_fmt(want)}, got "
                             f"shape {_fmt(initial_state.shape)}")
        if initial_state.dtype not in _FLOAT_DTYPES or initial_state.device != q.device:
            raise ValueError(f"initial_state must be a floating tensor on {q.device}, got "
                             f"{initial_state.dtype} on {initial_state.device}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
                              or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"scale must be None (1/sqrt(dk)) or a positive finite number, "
                         f"got {scale!r}")
    if not isinstance(return_final_state, bool):
        raise ValueError(f"return_final_state must be a bool, got {return_final_state!r}")


def linear_attention(q, k, v, *, scale=None, initial_state=None, return_final_state=False,
                     backend=None):
    """Causal linear attention y_t = scale * sum_{s <= t} (q_t . k_s) v_s, through the SSD.

    Args:
        q, k: (b, h, l, dk); v: (b, h, l, dv); one float dtype and device.
        scale: multiplies the scores q_t . k_s; default 1 / sqrt(dk); positive.
        initial_state: (b, h, dk, dv), the sum of k_s v_s^T over earlier positions.
        return_final_state: also return the state after the last position.
        backend: None or an SSD backend name (``seqlib.ops.ssd.BACKENDS``).

    Returns:
        out (b, h, l, dv) in q's dtype, or (out, final_state) with final_state (b, h, dk, dv)
        in float32 (float64 for float64 inputs). Differentiable in q, k, v and initial_state.

    Raises:
        ValueError: bad ranks, shapes, dtypes, devices, scale or backend.
    """
    _check_inputs(q, k, v, scale, initial_state, return_final_state)
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    b, h, length, dk = q.shape
    scale = 1.0 / math.sqrt(dk) if scale is None else float(scale)
    x = v.transpose(1, 2)                                   # (b, l, h, dv): SSD's x
    B = k.transpose(1, 2)                                   # (b, l, g = h, n = dk)
    C = q.transpose(1, 2)                                   # (b, l, g = h, n = dk)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    dt = torch.full((b, length, h), scale, dtype=compute, device=q.device)  # the scale ...
    A = torch.zeros(h, dtype=compute, device=q.device)      # ... and no decay
    state0 = None
    if initial_state is not None:
        state0 = initial_state.to(compute).transpose(-1, -2) * scale   # (b, h, dv, dk)
    result = mamba_chunk_scan_combined(x, dt, A, B, C, CHUNK_SIZE, initial_states=state0,
                                       return_final_states=return_final_state, backend=backend)
    if not return_final_state:
        return result.transpose(1, 2)
    out, final = result
    return out.transpose(1, 2), final.transpose(-1, -2) / scale
