"""Stage 4 of the chunked SSD in Triton: the outputs, chunk by chunk.

Twin of ``reference.chunk_scan_ref`` plus the skip connection and gate. For positions t of
chunk k (i, j index positions inside the chunk):

    y_t = exp(cumsum_t) (S_in[k] C_t)                                  the state entering
        + sum_{s <= t in chunk k} exp(cumsum_t - cumsum_s) (C_t . B_s) dt'_s x_s
                                                                      the quadratic form
    out_t = (y_t + D x_t) * silu(z_t)

One program per (batch, chunk, head), block of BLOCK_M positions and block of p. The entering
state's part is one matrix product C @ S_in^T; the quadratic part walks the key blocks up to the
diagonal: scores C @ B^T masked to s <= t and weighted by the decay, then @ x. fp32 throughout,
output in x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import INTERPRETING, block, dot, dot_options


@triton.jit
def _chunk_scan_kernel(X, B, C, DT, CUMSUM, ENTERING, D, Z, OUT,
                       length, h, n_chunks, heads_per_group, p, n,
                       stride_xb, stride_xl, stride_xh, stride_xp,
                       stride_bb, stride_bl, stride_bg, stride_bn,
                       stride_cb, stride_cl, stride_cg, stride_cn,
                       stride_zb, stride_zl, stride_zh, stride_zp,
                       stride_dh, stride_dp,
                       HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                       CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                       DOT_FP32: tl.constexpr, DOT_DTYPE: tl.constexpr):
    pid_bch, pid_m, pid_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    head = pid_bch % h
    chunk = (pid_bch // h) % n_chunks
    batch = pid_bch // (h * n_chunks)
    group = head // heads_per_group
    i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                   # query positions in the chunk
    t = chunk * CHUNK + i
    rows_ok = t < length
    cols_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cols_n = tl.arange(0, BLOCK_N)
    p_ok, n_ok = cols_p < p, cols_n < n
    chunk_base = ((batch * h + head).to(tl.int64) * n_chunks + chunk) * CHUNK
    x_base = X + batch.to(tl.int64) * stride_xb + head * stride_xh
    b_base = B + batch.to(tl.int64) * stride_bb + group * stride_bg
    c = tl.load(C + batch.to(tl.int64) * stride_cb + group * stride_cg
                + t[:, None] * stride_cl + cols_n[None, :] * stride_cn,
                mask=rows_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)   # (m, n)
    cums_t = tl.load(CUMSUM + chunk_base + i)                                      # (m,)
    # the state entering this chunk, decayed to each position: exp(cumsum_t) C_t S_in^T
    s_in = tl.load(ENTERING + ((batch * n_chunks + chunk) * h + head).to(tl.int64) * p * n
                   + cols_p[:, None] * n + cols_n[None, :],
                   mask=p_ok[:, None] & n_ok[None, :], other=0.0)                  # (p, n)
    acc = dot(c, tl.trans(s_in), DOT_FP32, DOT_DTYPE) * tl.exp(cums_t)[:, None]    # (m, p)
    # the quadratic form inside the chunk, key blocks up to the diagonal
    for s0 in range(0, (pid_m + 1) * BLOCK_M, BLOCK_S):
        j = s0 + tl.arange(0, BLOCK_S)
        s = chunk * CHUNK + j
        cols_ok = s < length
        b = tl.load(b_base + s[:, None] * stride_bl + cols_n[None, :] * stride_bn,
                    mask=cols_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)  # (s, n)
        x = tl.load(x_base + s[:, None] * stride_xl + cols_p[None, :] * stride_xp,
                    mask=cols_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)  # (s, p)
        dt_s = tl.load(DT + chunk_base + j)
        cums_s = tl.load(CUMSUM + chunk_base + j)
        causal = j[None, :] <= i[:, None]
        decay = tl.exp(tl.where(causal, cums_t[:, None] - cums_s[None, :], float("-inf")))
        scores = dot(c, tl.trans(b), DOT_FP32, DOT_DTYPE) * decay * dt_s[None, :]  # (m, s)
        acc += dot(scores, x, DOT_FP32, DOT_DTYPE)
    mask = rows_ok[:, None] & p_ok[None, :]
    if HAS_D:
        x_t = tl.load(x_base + t[:, None] * stride_xl + cols_p[None, :] * stride_xp,
                      mask=mask, other=0.0).to(tl.float32)
        d = tl.load(D + head * stride_dh + cols_p * stride_dp, mask=p_ok, other=0.0)
        acc += d.to(tl.float32)[None, :] * x_t
    if HAS_Z:
        z = tl.load(Z + batch.to(tl.int64) * stride_zb + head * stride_zh
                    + t[:, None] * stride_zl + cols_p[None, :] * stride_zp,
                    mask=mask, other=0.0).to(tl.float32)
        acc *= z * tl.sigmoid(z)
    out = OUT + ((batch.to(tl.int64) * length + t[:, None]) * h + head) * p + cols_p[None, :]
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=mask)


def chunk_scan(x: torch.Tensor, B: torch.Tensor, C: torch.Tensor, dt: torch.Tensor,
               cumsum: torch.Tensor, entering: torch.Tensor, D: torch.Tensor | None,
               z: torch.Tensor | None) -> torch.Tensor:
    """Outputs (b, l, h, p) in x's dtype from the three earlier stages' results; any strides
    for x, B, C, D and z."""
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    c, chunk = cumsum.shape[2], cumsum.shape[3]
    # the interpreter converts fp32 to bf16 by truncation (up to one ulp off, where the GPU
    # rounds to nearest): there the kernel writes fp32 and PyTorch rounds
    exact_rounding = INTERPRETING and x.dtype == torch.bfloat16
    out = torch.empty(b, length, h, p, dtype=torch.float32 if exact_rounding else x.dtype,
                      device=x.device)
    block_p = min(block(p), 64)
    block_m = min(chunk, 64)
    if D is None:
        d_strides = (0, 0)
    else:  # D (h) reads the same value for every p: stride 0 along p
        d_strides = (D.stride(0), 0) if D.ndim == 1 else D.stride()
    _chunk_scan_kernel[(b * c * h, chunk // block_m, triton.cdiv(p, block_p))](
        x, B, C, dt, cumsum, entering, D if D is not None else x, z if z is not None else x,
        out, length, h, c, h // g, p, n, *x.stride(), *B.stride(), *C.stride(),
        *(z.stride() if z is not None else (0, 0, 0, 0)), *d_strides,
        HAS_D=D is not None, HAS_Z=z is not None, CHUNK=chunk, BLOCK_M=block_m,
        BLOCK_S=block_m, BLOCK_P=block_p, BLOCK_N=block(n), **dot_options(x.dtype, x.device))
    return out.to(x.dtype)
