"""The Triton SSD scan as one differentiable operation (a ``torch.autograd.Function``): four
forward stage kernels, five backward ones.

Forward (``ssd_triton_forward``): ``triton_chunk_cumsum`` -> dt' and the cumulative decay
exponents (b, h, c, q); ``triton_chunk_state`` -> each chunk's own state (b, c, h, p, n);
``triton_state_passing`` -> the state entering each chunk and the final state;
``triton_chunk_scan`` -> the outputs.

Saved for the backward, besides the inputs: dt' and the cumulative sums (fp32, as many numbers
as dt, padded to whole chunks), and the fp32 states entering every chunk (DESIGN.md keeps the
scan states the backward needs in fp32). Those weigh l / q * h * p * n fp32 numbers, 2 n / q
times the bytes of a 16-bit x (one x at n = 128, q = 256). Recomputing them instead
(mamba_ssm's choice, which saves that memory) would take two more launches that read x and B
again and a sequential scan over the chunks; here the memory buys a shorter backward, and it is
what keeps the interpreter tests within their time. The outputs before the gate are not kept:
with z, the query-side kernel recomputes them (one product more per block pair), so a gated
call keeps no (b, l, h, p) tensor of its own.

Backward (``ssd_triton_backward``), in order; dy = dout * silu(z) is recomputed by each kernel
that needs it:

1. ``triton_chunk_scan_bwd.chunk_scan_bwd_dstates``: dS_in, the outputs' gradient with respect
   to the state entering each chunk, sum_t exp(a_t) dy_t C_t^T. Grid (b c h, p blocks).
2. ``triton_state_passing_bwd.state_passing_bwd``: the reverse scan over chunks: the gradient of
   each chunk's end state, of the initial state, and the entering state's decay's part of
   d(a_last). Grid (b h, blocks of p n entries).
3. ``triton_chunk_scan_bwd.chunk_scan_bwd_dc``: the query side: dC (summed over a group's
   heads), dz, and the entering state's part of d(a_t). Grid (b c g splits, blocks of q).
4. ``triton_chunk_state_bwd.chunk_state_bwd``: the key side: dx, dB (summed over a group's
   heads), d(dt'), dD, and the decay's gradient from pairs of positions. Grid (b c g splits,
   blocks of q).
5. ``triton_chunk_cumsum_bwd.chunk_cumsum_bwd``: puts the decay's gradient together (without
   the cancellation a plain d(cumsum) would have: see its module doc) and goes back to d dt,
   dA, d dt_bias through the softplus. Grid (b, c, h).

Group sums: B and C are shared by the heads of a group; their gradients are added up in
registers by programs that walk several heads, split into a few programs per group on a GPU
(``triton_common_bwd.head_splits``), never with atomics, so the backward is deterministic.
PyTorch only adds up partial sums (dA and d dt_bias per (b, h, c), dD per program, the splits
of dB and dC: all far smaller than x) and casts each gradient to its input's dtype. No part of
the backward runs through autograd. An unused output's gradient is None, not zeros: a zero
dout becomes a zero-stride tensor, a missing d final state is skipped.
The kernel modules (and with them Triton) are imported on the first call, not with this module.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def ssd_triton_forward(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus):
    """The four stages in Triton: (out (b, l, h, p) in x's dtype, final state fp32, and what the
    backward keeps: (dt', cumsum, entering), None for an empty sequence)."""
    from .triton_chunk_cumsum import chunk_cumsum
    from .triton_chunk_scan import chunk_scan
    from .triton_chunk_state import chunk_state
    from .triton_state_passing import state_passing

    b, length, h, p = x.shape
    n = B.shape[3]
    if length == 0:  # no chunks: nothing to launch
        final = (torch.zeros(b, h, p, n, dtype=torch.float32, device=x.device)
                 if initial_states is None else initial_states.float().clone())
        return x.new_empty(b, 0, h, p), final, None
    dt_out, cumsum = chunk_cumsum(dt, A, dt_bias, dt_softplus, chunk_size)     # (b, h, c, q)
    states = chunk_state(x, B, dt_out, cumsum)                                  # (b, c, h, p, n)
    entering, final = state_passing(states, cumsum, initial_states)
    out = chunk_scan(x, B, C, dt_out, cumsum, entering, D, z)
    return out, final, (dt_out, cumsum, entering)


def ssd_triton_backward(dout, dfinal, x, dt, A, B, C, D, z, dt_bias, initial_states,
                        dt_softplus, dt_out, cumsum, entering):
    """The five backward stages: gradients (dx, ddt, dA, dB, dC, dD, dz, d dt_bias, d initial)
    in their inputs' dtypes (None for absent inputs). ``dout`` (b, l, h, p) and ``dfinal``
    (b, h, p, n) may be None (no gradient reached that output) and may have any strides."""
    from .triton_chunk_cumsum_bwd import chunk_cumsum_bwd
    from .triton_chunk_scan_bwd import chunk_scan_bwd_dc, chunk_scan_bwd_dstates
    from .triton_chunk_state_bwd import chunk_state_bwd
    from .triton_state_passing_bwd import state_passing_bwd

    if dout is None:  # only the final state was used: a zero gradient that takes no memory
        dout = torch.zeros((), dtype=x.dtype, device=x.device).expand(x.shape)
    dstates = chunk_scan_bwd_dstates(dout, z, C, cumsum)
    d_end, d_last, d_initial = state_passing_bwd(dstates, cumsum, entering, dfinal,
                                                 initial_states is not None)
    dC, dz, d_enter = chunk_scan_bwd_dc(x, B, C, dout, z, D, dt_out, cumsum, entering)
    dx, dB, ddt_out, quad, dD = chunk_state_bwd(x, B, C, dout, z, D, dt_out, cumsum, d_end)
    ddt, dA, dbias = chunk_cumsum_bwd(ddt_out, d_enter, dt_out, dt, A, dt_bias, dt_softplus,
                                      quad, d_last)
    return (dx, ddt, dA.to(A.dtype), dB, dC, None if D is None else dD.to(D.dtype), dz,
            None if dt_bias is None else dbias.to(dt_bias.dtype),
            None if initial_states is None else d_initial.to(initial_states.dtype))


def _empty_backward(dfinal, x, dt, A, B, C, D, z, dt_bias, initial_states):
    """Gradients of an empty sequence: the final state is the initial state, nothing else."""
    zeros = [None if t is None else torch.zeros_like(t) for t in (x, dt, A, B, C, D, z, dt_bias)]
    d_initial = None
    if initial_states is not None:
        d_initial = (torch.zeros_like(initial_states) if dfinal is None
                     else dfinal.to(initial_states.dtype))
    return (*zeros, d_initial)


class TritonSSD(torch.autograd.Function):
    """``TritonSSD.apply(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
    dt_softplus)`` -> (out, final_states)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus):
        out, final, kept = ssd_triton_forward(x, dt, A, B, C, chunk_size, D, z, dt_bias,
                                              initial_states, dt_softplus)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not zeros
        ctx.empty = kept is None
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states,
                              *(kept if kept is not None else (None, None, None)))
        ctx.dt_softplus = dt_softplus
        return out, final

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dfinal):
        x, dt, A, B, C, D, z, dt_bias, initial_states, dt_out, cumsum, entering = (
            ctx.saved_tensors)
        if ctx.empty:
            grads = _empty_backward(dfinal, x, dt, A, B, C, D, z, dt_bias, initial_states)
        elif dout is None and dfinal is None:
            grads = (None,) * 9
        else:
            grads = ssd_triton_backward(dout, dfinal, x, dt, A, B, C, D, z, dt_bias,
                                        initial_states, ctx.dt_softplus, dt_out, cumsum,
                                        entering)
        grads = [g if need else None
                 for g, need in zip(grads, ctx.needs_input_grad[:5] + ctx.needs_input_grad[6:10])]
        x_g, dt_g, A_g, B_g, C_g, D_g, z_g, bias_g, init_g = grads
        return x_g, dt_g, A_g, B_g, C_g, None, D_g, z_g, bias_g, init_g, None


def triton_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus):
    """Differentiable SSD scan through the Triton kernels (inputs already checked)."""
    return TritonSSD.apply(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
                           dt_softplus)
