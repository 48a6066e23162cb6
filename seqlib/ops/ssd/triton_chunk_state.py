"""Stage 2 of the chunked SSD in Triton: each chunk's own state at its end.

Twin of ``reference.chunk_state_ref``: for chunk k of head i,

    states[k] = sum_{s in chunk k} exp(cumsum_last - cumsum_s) dt'_s x_s B_s^T      (p, n)

a matrix product (x scaled by the decay to the chunk's end)^T @ B over the chunk's positions.
One program per (batch, chunk, head) and block of p; it walks the chunk in blocks of
BLOCK_S positions, and keeps the full state width n in one tile. States are fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import block, dot, dot_options


@triton.jit
def _chunk_state_kernel(X, B, DT, CUMSUM, STATES, length, h, n_chunks, heads_per_group, p, n,
                        stride_xb, stride_xl, stride_xh, stride_xp,
                        stride_bb, stride_bl, stride_bg, stride_bn,
                        CHUNK: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr, DOT_DTYPE: tl.constexpr):
    pid_bch, pid_p = tl.program_id(0), tl.program_id(1)
    head = pid_bch % h
    chunk = (pid_bch // h) % n_chunks
    batch = pid_bch // (h * n_chunks)
    group = head // heads_per_group
    rows_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cols_n = tl.arange(0, BLOCK_N)
    x_base = X + batch.to(tl.int64) * stride_xb + head * stride_xh
    b_base = B + batch.to(tl.int64) * stride_bb + group * stride_bg
    # dt' and the cumulative sums are (b, h, c, q) contiguous
    chunk_base = ((batch * h + head).to(tl.int64) * n_chunks + chunk) * CHUNK
    last = tl.load(CUMSUM + chunk_base + CHUNK - 1)
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for s0 in range(0, CHUNK, BLOCK_S):
        j = s0 + tl.arange(0, BLOCK_S)                            # positions inside the chunk
        t = chunk * CHUNK + j                                     # positions in the sequence
        inside = t < length
        x = tl.load(x_base + t[:, None] * stride_xl + rows_p[None, :] * stride_xp,
                    mask=inside[:, None] & (rows_p[None, :] < p), other=0.0).to(tl.float32)
        b = tl.load(b_base + t[:, None] * stride_bl + cols_n[None, :] * stride_bn,
                    mask=inside[:, None] & (cols_n[None, :] < n), other=0.0).to(tl.float32)
        dt = tl.load(DT + chunk_base + j)
        cums = tl.load(CUMSUM + chunk_base + j)
        weight = tl.exp(last - cums) * dt                         # decay to the chunk's end
        acc += dot(tl.trans(x * weight[:, None]), b, DOT_FP32, DOT_DTYPE)  # (p, n)
    out = STATES + (((batch * n_chunks + chunk) * h + head).to(tl.int64) * p * n)
    tl.store(out + rows_p[:, None] * n + cols_n[None, :], acc,
             mask=(rows_p[:, None] < p) & (cols_n[None, :] < n))


def chunk_state(x: torch.Tensor, B: torch.Tensor, dt: torch.Tensor,
                cumsum: torch.Tensor) -> torch.Tensor:
    """x (b, l, h, p), B (b, l, g, n), dt' and cumsum (b, h, c, q) -> states (b, c, h, p, n)
    fp32."""
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    c, chunk = cumsum.shape[2], cumsum.shape[3]
    states = torch.empty(b, c, h, p, n, dtype=torch.float32, device=x.device)
    block_p = min(block(p), 64)
    _chunk_state_kernel[(b * c * h, triton.cdiv(p, block_p))](
        x, B, dt, cumsum, states, length, h, c, h // g, p, n, *x.stride(), *B.stride(),
        CHUNK=chunk, BLOCK_S=min(chunk, 64), BLOCK_P=block_p, BLOCK_N=block(n),
        **dot_options(x.dtype, x.device))
    return states
