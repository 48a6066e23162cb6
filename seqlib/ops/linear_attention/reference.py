"""Causal linear attention in plain PyTorch, written from its own definition (not via the SSD).

Letters: b batch, h heads, l length, dk key/query head dim, dv value head dim, t and s positions.
Shapes: q, k (b, h, l, dk); v (b, h, l, dv); states (b, h, dk, dv).

    y_t = scale * sum_{s <= t} (q_t . k_s) v_s  +  scale * q_t S_0
        = scale * q_t S_t,   with S_t = S_{t-1} + k_t v_t^T   (the RNN view)

No feature map and no normalisation (Katharopoulos et al. 2020 without phi and the
denominator, as in flash-linear-attention's ``chunk_linear_attn`` with normalize=False). This
is what ``seqlib.ops.linear_attention`` computes through the SSD code path; the tests check the
two against each other. This module imports torch only.
"""

from __future__ import annotations

import math

import torch

__all__ = ["linear_attention_quadratic"]


def linear_attention_quadratic(q, k, v, scale=None, initial_state=None,
                               return_final_state=False):
    """The masked quadratic form (q k^T o causal mask) v, in float32 (float64 for float64
    inputs); output in q's dtype, state (b, h, dk, dv) in the compute dtype."""
    dtype = q.dtype
    cd = torch.float64 if dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    length = q.shape[2]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0)    # (b, h, l, l)
    y = scores @ v                                                 # (b, h, l, dv)
    state = k.transpose(-1, -2) @ v                                # (b, h, dk, dv)
    if initial_state is not None:
        s0 = initial_state.to(cd)
        y = y + q @ s0
        state = state + s0
    out = (scale * y).to(dtype)
    return (out, state) if return_final_state else out
