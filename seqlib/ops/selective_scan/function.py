"""The Triton kernels as one differentiable operation (a ``torch.autograd.Function``).

The forward saves the inputs and, instead of the (b, d, n, l) states autograd through the
reference would keep, only the fp32 state at the start of every chunk (b, d, n, l / CHUNK);
the backward kernel recomputes the rest. The upstream gradients are handed to the kernel as
they come, with whatever strides they have (``out.sum().backward()`` passes zero strides).
The kernel modules (and with them Triton) are imported on the first call, not with this module.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class TritonSelectiveScan(torch.autograd.Function):
    """``TritonSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
    initial_state)`` returns ``(out, last_state)``."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
        from .triton_fwd import selective_scan_forward

        needs_grad = any(ctx.needs_input_grad)
        out, last, chunks = selective_scan_forward(u, delta, A, B, C, D, z, delta_bias,
                                                   delta_softplus, initial_state, True,
                                                   needs_grad)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, chunks)
        ctx.delta_softplus = delta_softplus
        ctx.has_initial_state = initial_state is not None
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dlast):
        from .triton_bwd import selective_scan_backward

        u, delta, A, B, C, D, z, delta_bias, chunks = ctx.saved_tensors
        if dout is None:  # only the last state was used: a zero gradient with zero strides
            dout = torch.zeros((), dtype=u.dtype, device=u.device).expand(u.shape)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dinit = selective_scan_backward(
            dout, dlast, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, chunks,
            ctx.has_initial_state)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, dinit


def triton_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                          return_last_state, initial_state):
    """Differentiable selective scan through the Triton kernels (inputs already checked)."""
    out, last = TritonSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias,
                                          bool(delta_softplus), initial_state)
    return (out, last) if return_last_state else out
