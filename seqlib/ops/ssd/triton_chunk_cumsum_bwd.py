"""Backward of stage 1 (``triton_chunk_cumsum``): from the gradients of dt' and of the running
decay exponents a_t = A (dt'_0 + ... + dt'_t) inside each chunk back to dt, A and dt_bias.

Every a_t with t >= j contains dt'_j, so dt'_j (through A) and A (through dt'_j) see
R_j = sum_{t >= j} d(a_t)::

    d(dt'_j) += A R_j,        dA = sum_j dt'_j R_j,
    d(dt_j)   = d(dt'_j) softplus'(dt_j + dt_bias)  (or d(dt'_j) without the softplus),
    d(dt_bias) = sum_j d(dt_j)

dA is summed as dt' R rather than as a d(a) / A, which would divide by A = 0 (linear
attention's case). Padded positions past the end of the sequence hold dt' = 0, a constant
set after the softplus, so they pass no gradient to dt or dt_bias (their dt' is not a function
of either: mamba_ssm#352 and #368 leaked softplus(dt_bias) there).

How R is formed. The SSD uses a in differences exp(a_t - a_s) (t >= s) and in exp(a_t) (the
entering state reaching t). Summing the gradient of a_t over t >= j (plus sign) and of a_s over
s >= j (minus sign) would cancel every pair with both ends at or after j: in fp32 that leaves
rounding noise of the size of the pairs' sum, where the answer may be exactly zero. Instead the
backward kernels hand over only what survives:

    R_j = d_last + sum_{t >= j} e_t + quad_j
    d_last  = exp(a_last) <S_in, dE>          the chunk's entering state decayed to its end
                                              (``triton_state_passing_bwd``)
    e_t     = exp(a_t) dy_t . (S_in C_t)      the entering state at t (``triton_chunk_scan_bwd``)
    quad_j  = sum over pairs s < j <= t       the pairs that straddle j, inside the chunk and to
                                              its end state (``triton_chunk_state_bwd``)

so this kernel takes d_last (partial sums), e (summed here in reverse) and quad (one row per key
block), and forms R_j as a sum of terms that do not cancel. Given only e = d(cumsum) (no
quad, no d_last) it is exactly the backward of ``reference.chunk_cumsum_ref``.

One program per (batch, chunk, head), like the forward. dA and d(dt_bias) come out as one
partial sum per program, (b, h, c), which the launcher adds up with PyTorch (a reduction over
l / q numbers per head).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common_bwd import result_dtype


@triton.jit
def _chunk_cumsum_bwd_kernel(DDT_OUT, DCUMSUM, QUAD, DLAST, DT_OUT, DT, A, BIAS, DDT, DA,
                             DBIAS, length, h, n_chunks, n_last,
                             stride_db, stride_dl, stride_dh, stride_a, stride_bias,
                             stride_gb, stride_gl, stride_gh,
                             HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                             N_QUAD: tl.constexpr, BLOCK_LAST: tl.constexpr,
                             CHUNK: tl.constexpr):
    pid_b, pid_c, pid_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q = tl.arange(0, CHUNK)
    t = pid_c * CHUNK + q
    inside = t < length
    flat = ((pid_b * h + pid_h).to(tl.int64) * n_chunks + pid_c)
    offsets = flat * CHUNK + q
    rev = tl.cumsum(tl.load(DCUMSUM + offsets), axis=0, reverse=True)    # R_j
    if N_QUAD > 0:
        rows = tl.arange(0, N_QUAD)
        rev += tl.sum(tl.load(QUAD + (flat * N_QUAD + rows[:, None]) * CHUNK + q[None, :]),
                      axis=0)
    if BLOCK_LAST > 0:
        parts = tl.arange(0, BLOCK_LAST)
        rev += tl.sum(tl.load(DLAST + flat * n_last + parts, mask=parts < n_last, other=0.0),
                      axis=0)
    a = tl.load(A + pid_h * stride_a).to(tl.float32)
    ddt = tl.load(DDT_OUT + offsets) + a * rev
    tl.store(DA + flat, tl.sum(tl.load(DT_OUT + offsets) * rev, axis=0))
    if SOFTPLUS:
        raw = tl.load(DT + pid_b.to(tl.int64) * stride_db + t * stride_dl + pid_h * stride_dh,
                      mask=inside, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw += tl.load(BIAS + pid_h * stride_bias).to(tl.float32)
        ddt *= tl.where(raw > 20.0, 1.0, tl.sigmoid(raw))        # softplus is x above 20
    ddt = tl.where(inside, ddt, 0.0)
    tl.store(DDT + pid_b.to(tl.int64) * stride_gb + t * stride_gl + pid_h * stride_gh,
             ddt.to(DDT.dtype.element_ty), mask=inside)
    if HAS_BIAS:
        tl.store(DBIAS + flat, tl.sum(ddt, axis=0))


def chunk_cumsum_bwd(ddt_out: torch.Tensor, dcumsum: torch.Tensor, dt_out: torch.Tensor,
                     dt: torch.Tensor, A: torch.Tensor, dt_bias: torch.Tensor | None,
                     dt_softplus: bool, quad: torch.Tensor | None = None,
                     d_last: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of dt, A and dt_bias.

    Args: ddt_out, the gradient of dt'; dcumsum, terms of d(a) summed here in reverse
    (the ``e`` of the module doc, or the whole gradient of the cumulative sums); dt_out, dt'
    itself: all (b, h, c, q) fp32. dt (b, l, h), the raw steps. quad (b, h, c, blocks, q) and
    d_last (b, h, c, parts): the other terms of R, or None.

    Returns (ddt (b, l, h) in dt's dtype, dA (h) fp32, d dt_bias (h) fp32 or None)."""
    b, length, h = dt.shape
    c, chunk = dcumsum.shape[2], dcumsum.shape[3]
    ddt_out, dcumsum, dt_out = ddt_out.contiguous(), dcumsum.contiguous(), dt_out.contiguous()
    quad = quad.contiguous() if quad is not None else None
    d_last = d_last.contiguous() if d_last is not None else None
    ddt = torch.empty(b, length, h, dtype=result_dtype(dt.dtype), device=dt.device)
    da = torch.empty(b, h, c, dtype=torch.float32, device=dt.device)
    dbias = torch.empty_like(da) if dt_bias is not None else None
    n_last = d_last.shape[3] if d_last is not None else 0
    _chunk_cumsum_bwd_kernel[(b, c, h)](
        ddt_out, dcumsum, quad if quad is not None else dcumsum,
        d_last if d_last is not None else dcumsum, dt_out, dt, A,
        dt_bias if dt_bias is not None else A, ddt, da, dbias if dbias is not None else da,
        length, h, c, n_last, *dt.stride(), A.stride(0),
        dt_bias.stride(0) if dt_bias is not None else 0, *ddt.stride(),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        N_QUAD=quad.shape[3] if quad is not None else 0,
        BLOCK_LAST=triton.next_power_of_2(n_last) if n_last else 0, CHUNK=chunk)
    return ddt.to(dt.dtype), da.sum((0, 2)), None if dbias is None else dbias.sum((0, 2))
