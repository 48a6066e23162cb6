"""The Triton kernels as one differentiable operation (a ``torch.autograd.Function``).

The forward saves q, k, v, the output and the fp32 row log-sum-exp (b, h, lq): memory linear in
the lengths, where autograd through the reference would keep the (b, h, lq, lk) probabilities.
The backward hands the upstream gradient to ``triton_bwd.attention_backward`` as it comes, with
whatever strides it has (``out.sum().backward()`` passes a gradient whose strides are all zero).
The kernel modules (and with them Triton) are imported on the first call, not with this module.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class TritonAttention(torch.autograd.Function):
    """``TritonAttention.apply(q, k, v, is_causal, scale, window)``; scale is a float here."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, window):
        from .triton_fwd import attention_forward

        out, lse = attention_forward(q, k, v, is_causal, scale, window)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.options = (is_causal, scale, window)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        from .triton_bwd import attention_backward

        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(dout, q, k, v, out, lse, *ctx.options)
        return dq, dk, dv, None, None, None


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool,
                     scale: float, window: int | None) -> torch.Tensor:
    """Differentiable attention through the Triton kernels (inputs already checked)."""
    return TritonAttention.apply(q, k, v, is_causal, scale, window)
