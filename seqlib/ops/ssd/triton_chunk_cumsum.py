"""Stage 1 of the chunked SSD in Triton: dt' and the running decay exponent inside each chunk.

Twin of ``reference.chunk_cumsum_ref``. One program per (batch, chunk, head): it loads the q
steps of its chunk, applies the bias and softplus, sets the padded positions past the end of
the sequence to dt' = 0 (after the softplus, so nothing leaks), and writes dt' and the
cumulative sum of dt' A, both (b, h, c, q) in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _chunk_cumsum_kernel(DT, A, BIAS, DT_OUT, CUMSUM, length, h, n_chunks,
                         stride_db, stride_dl, stride_dh, stride_a, stride_bias,
                         HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                         CHUNK: tl.constexpr):
    pid_b, pid_c, pid_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pid_c * CHUNK + tl.arange(0, CHUNK)                       # positions of this chunk
    inside = t < length
    ptrs = DT + pid_b.to(tl.int64) * stride_db + t * stride_dl + pid_h * stride_dh
    dt = tl.load(ptrs, mask=inside, other=0.0).to(tl.float32)     # (q,)
    if HAS_BIAS:
        dt += tl.load(BIAS + pid_h * stride_bias).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    dt = tl.where(inside, dt, 0.0)                                # padding: no step at all
    a = tl.load(A + pid_h * stride_a).to(tl.float32)
    cums = tl.cumsum(dt * a, axis=0)
    out = ((pid_b * h + pid_h).to(tl.int64) * n_chunks + pid_c) * CHUNK + tl.arange(0, CHUNK)
    tl.store(DT_OUT + out, dt)
    tl.store(CUMSUM + out, cums)


def chunk_cumsum(dt: torch.Tensor, A: torch.Tensor, dt_bias: torch.Tensor | None,
                 dt_softplus: bool, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """dt (b, l, h) -> (dt', cumsum of dt' A), each (b, h, c, q) fp32; any strides."""
    b, length, h = dt.shape
    c = triton.cdiv(length, chunk_size)
    dt_out = torch.empty(b, h, c, chunk_size, dtype=torch.float32, device=dt.device)
    cumsum = torch.empty_like(dt_out)
    _chunk_cumsum_kernel[(b, c, h)](
        dt, A, dt_bias if dt_bias is not None else A, dt_out, cumsum, length, h, c,
        *dt.stride(), A.stride(0), dt_bias.stride(0) if dt_bias is not None else 0,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, CHUNK=chunk_size)
    return dt_out, cumsum
