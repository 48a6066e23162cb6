"""The Triton forward as one differentiable operation (a ``torch.autograd.Function``).

The forward runs the four stage kernels (``triton_chunk_cumsum``, ``triton_chunk_state``,
``triton_state_passing``, ``triton_chunk_scan``) and saves only the inputs. The backward is not
fused yet: it recomputes the forward with the PyTorch chunked form (``reference.ssd_chunked``,
the kernels' stage-by-stage twin) under autograd and differentiates that, so the gradients are
exact and flow through the initial and final states, at the PyTorch form's speed and memory.
The kernel modules (and with them Triton) are imported on the first call, not with this module.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .reference import ssd_chunked


def ssd_triton_forward(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus):
    """The four stages in Triton: (out (b, l, h, p) in x's dtype, final state fp32)."""
    from .triton_chunk_cumsum import chunk_cumsum
    from .triton_chunk_scan import chunk_scan
    from .triton_chunk_state import chunk_state
    from .triton_state_passing import state_passing

    b, length, h, p = x.shape
    n = B.shape[3]
    if length == 0:  # no chunks: nothing to launch
        final = (torch.zeros(b, h, p, n, dtype=torch.float32, device=x.device)
                 if initial_states is None else initial_states.float().clone())
        return x.new_empty(b, 0, h, p), final
    dt_out, cumsum = chunk_cumsum(dt, A, dt_bias, dt_softplus, chunk_size)     # (b, h, c, q)
    states = chunk_state(x, B, dt_out, cumsum)                                  # (b, c, h, p, n)
    entering, final = state_passing(states, cumsum, initial_states)
    return chunk_scan(x, B, C, dt_out, cumsum, entering, D, z), final


class TritonSSD(torch.autograd.Function):
    """``TritonSSD.apply(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
    dt_softplus)`` -> (out, final_states)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus):
        out, final = ssd_triton_forward(x, dt, A, B, C, chunk_size, D, z, dt_bias,
                                        initial_states, dt_softplus)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states)
        ctx.options = (chunk_size, dt_softplus)
        return out, final

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dfinal):
        chunk_size, dt_softplus = ctx.options
        saved = ctx.saved_tensors
        leaves = [None if t is None else t.detach().requires_grad_(need)
                  for t, need in zip(saved, ctx.needs_input_grad[:5] + ctx.needs_input_grad[6:10])]
        x, dt, A, B, C, D, z, dt_bias, initial_states = leaves
        with torch.enable_grad():
            out, final = ssd_chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias,
                                     None if initial_states is None else initial_states.float(),
                                     dt_softplus, return_final_states=True)
            wanted = [t for t in leaves if t is not None and t.requires_grad]
            outputs, grads_in = [out], [dout]
            if dfinal is not None:
                outputs.append(final)
                grads_in.append(dfinal)
            grads = iter(torch.autograd.grad(outputs, wanted, grads_in, allow_unused=True)
                         if wanted else [])
        result = [next(grads) if t is not None and t.requires_grad else None for t in leaves]
        result = [None if g is None or t is None else g.to(t.dtype)
                  for g, t in zip(result, leaves)]
        x_g, dt_g, A_g, B_g, C_g, D_g, z_g, bias_g, init_g = result
        return x_g, dt_g, A_g, B_g, C_g, None, D_g, z_g, bias_g, init_g, None


def triton_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus):
    """Differentiable SSD scan through the Triton kernels (inputs already checked)."""
    return TritonSSD.apply(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
                           dt_softplus)
