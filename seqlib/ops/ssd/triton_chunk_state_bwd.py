"""Backward of stage 2 (``triton_chunk_state``) fused with the key side of stage 4: everything
that flows to x, B and dt' from both places a position s feeds, the state at its chunk's end
and the outputs of the later positions of its chunk.

Per head, for positions s of chunk k, with dy_t the gradient reaching y_t (``load_dy``), dE[k]
the gradient of the state at the chunk's end (from ``triton_state_passing_bwd``) and a the
chunk's cumulative decay exponents (last = the chunk's last position)::

    states[k] = sum_s exp(a_last - a_s) dt'_s x_s B_s^T
    y_t      += sum_{s <= t} exp(a_t - a_s) (C_t . B_s) dt'_s x_s

give, with g_s = sum_{t >= s} exp(a_t - a_s) (C_t . B_s) dy_t + exp(a_last - a_s) dE[k] B_s,

    dx_s   = dt'_s g_s + D dy_s                                                    (p)
    dB_s   = dt'_s (sum_{t >= s} exp(a_t - a_s) (dy_t . x_s) C_t
                    + exp(a_last - a_s) dE[k]^T x_s)                              (n)
    ddt'_s = g_s . x_s

and the two parts of the decay's gradient that pair a key s with a later position j
(``triton_chunk_cumsum_bwd``): for every j of the chunk,

    quad_j = sum_{s < j} (G_s + sum_{t >= j} M_ts),
    G_s = exp(a_last - a_s) dt'_s x_s . (dE[k] B_s),
    M_ts = exp(a_t - a_s) (C_t . B_s) dt'_s (dy_t . x_s).

One program per (batch, chunk, group, split of the group's heads) and block of BLOCK_S keys;
whole p and n in one tile. For each head it starts from the chunk-end state's terms, then walks
the query blocks from the chunk's end back to the diagonal (the transpose of the forward's
walk, backwards so that the sums over t >= j run along with it), writes dx, ddt' and its
block's share of quad for that head, and adds the head's dB to the group's sum in registers
(see ``triton_common_bwd.head_splits``). quad comes out as one row per key block,
(b, h, c, blocks, q), and dD as one partial sum per program and head; the launcher and
``triton_chunk_cumsum_bwd`` add them up.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import dot_options
from .triton_common_bwd import block_sizes, d_strides, dot, head_splits, load_dy, result_dtype


@triton.jit
def _dx_db_kernel(X, B, C, DOUT, Z, D, DT, CUMSUM, DEND, DX, DB, DDT, QUAD, DD,
                  length, h, g, n_chunks, heads_per_group, heads_per_split, n_splits, p, n,
                  stride_xb, stride_xl, stride_xh, stride_xp,
                  stride_bb, stride_bl, stride_bg, stride_bn,
                  stride_cb, stride_cl, stride_cg, stride_cn,
                  stride_ob, stride_ol, stride_oh, stride_op,
                  stride_zb, stride_zl, stride_zh, stride_zp,
                  stride_dh, stride_dp,
                  HAS_Z: tl.constexpr, HAS_D: tl.constexpr, CHUNK: tl.constexpr,
                  BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                  DOT_FP32: tl.constexpr, DOT_DTYPE: tl.constexpr):
    pid, pid_s = tl.program_id(0), tl.program_id(1)
    n_blocks = CHUNK // BLOCK_S
    split = pid % n_splits
    group = (pid // n_splits) % g
    chunk = (pid // (n_splits * g)) % n_chunks
    batch = pid // (n_splits * g * n_chunks)
    b64 = batch.to(tl.int64)
    j = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)                   # key positions in the chunk
    s = chunk * CHUNK + j
    s_ok = s < length
    cols_p, cols_n = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
    p_ok, n_ok = cols_p < p, cols_n < n
    mask_sp = s_ok[:, None] & p_ok[None, :]
    b_s = tl.load(B + b64 * stride_bb + group * stride_bg + s[:, None] * stride_bl
                  + cols_n[None, :] * stride_bn,
                  mask=s_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)     # (s, n)
    c_base = C + b64 * stride_cb + group * stride_cg
    db = tl.zeros((BLOCK_S, BLOCK_N), dtype=tl.float32)          # summed over the heads
    for k in range(heads_per_split):
        head = group * heads_per_group + split * heads_per_split + k
        chunk_base = ((batch * h + head).to(tl.int64) * n_chunks + chunk) * CHUNK
        x_s = tl.load(X + b64 * stride_xb + head * stride_xh + s[:, None] * stride_xl
                      + cols_p[None, :] * stride_xp, mask=mask_sp, other=0.0).to(tl.float32)
        dout_base = DOUT + b64 * stride_ob + head * stride_oh
        z_base = Z + b64 * stride_zb + head * stride_zh
        dt_s = tl.load(DT + chunk_base + j)
        cums_s = tl.load(CUMSUM + chunk_base + j)
        # the state at the chunk's end first: G_s is needed by every query block below
        d_end = tl.load(DEND + ((batch * n_chunks + chunk) * h + head).to(tl.int64) * p * n
                        + cols_p[:, None] * n + cols_n[None, :],
                        mask=p_ok[:, None] & n_ok[None, :], other=0.0)           # (p, n)
        to_end = tl.exp(tl.load(CUMSUM + chunk_base + CHUNK - 1) - cums_s)        # (s,)
        grad = dot(b_s, tl.trans(d_end), DOT_FP32, DOT_DTYPE) * to_end[:, None]   # g_s: (s, p)
        dbh = dot(x_s, d_end, DOT_FP32, DOT_DTYPE) * to_end[:, None]              # (s, n)
        carried = dt_s * tl.sum(grad * x_s, axis=1)   # G_s + sum of M_ts over the later blocks
        quad_base = QUAD + (chunk_base * n_blocks + pid_s * CHUNK)
        for back in range(n_blocks - pid_s):                      # queries t >= s, last first
            i = (n_blocks - 1 - back) * BLOCK_S + tl.arange(0, BLOCK_S)
            t = chunk * CHUNK + i
            t_ok = t < length
            dy_t = load_dy(dout_base + t[:, None] * stride_ol + cols_p[None, :] * stride_op,
                           z_base + t[:, None] * stride_zl + cols_p[None, :] * stride_zp,
                           t_ok[:, None] & p_ok[None, :], HAS_Z)                  # (t, p)
            c_t = tl.load(c_base + t[:, None] * stride_cl + cols_n[None, :] * stride_cn,
                          mask=t_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
            cums_t = tl.load(CUMSUM + chunk_base + i)
            causal = i[None, :] >= j[:, None]
            decay = tl.exp(tl.where(causal, cums_t[None, :] - cums_s[:, None], float("-inf")))
            scores = dot(b_s, tl.trans(c_t), DOT_FP32, DOT_DTYPE) * decay          # (s, t)
            grad += dot(scores, dy_t, DOT_FP32, DOT_DTYPE)
            xdy = dot(x_s, tl.trans(dy_t), DOT_FP32, DOT_DTYPE)                    # (s, t)
            dbh += dot(xdy * decay, c_t, DOT_FP32, DOT_DTYPE)
            m = scores * xdy * dt_s[:, None]                                       # M_ts
            # for each j of this block: the keys s < j, with their t >= j
            tail = tl.cumsum(m, axis=1, reverse=True) + carried[:, None]
            tl.store(quad_base + i, tl.sum(tl.where(j[:, None] < i[None, :], tail, 0.0), axis=0))
            carried += tl.sum(m, axis=1)
        ddt = tl.sum(grad * x_s, axis=1)
        dx = grad * dt_s[:, None]
        if HAS_D:
            dy_s = load_dy(dout_base + s[:, None] * stride_ol + cols_p[None, :] * stride_op,
                           z_base + s[:, None] * stride_zl + cols_p[None, :] * stride_zp,
                           mask_sp, HAS_Z)
            d = tl.load(D + head * stride_dh + cols_p * stride_dp, mask=p_ok, other=0.0)
            dx += d.to(tl.float32)[None, :] * dy_s
            dd_offset = ((batch * n_chunks + chunk) * n_blocks + pid_s) * h + head
            tl.store(DD + dd_offset.to(tl.int64) * p + cols_p, tl.sum(dy_s * x_s, axis=0),
                     mask=p_ok)
        tl.store(DX + ((b64 * length + s[:, None]) * h + head) * p + cols_p[None, :],
                 dx.to(DX.dtype.element_ty), mask=mask_sp)
        tl.store(DDT + chunk_base + j, ddt)
        db += dbh * dt_s[:, None]
    out = DB + ((b64 * length + s[:, None]) * n_splits + split) * g * n + group * n
    tl.store(out + cols_n[None, :], db, mask=s_ok[:, None] & n_ok[None, :])


def chunk_state_bwd(x: torch.Tensor, B: torch.Tensor, C: torch.Tensor, dout: torch.Tensor,
                    z: torch.Tensor | None, D: torch.Tensor | None, dt: torch.Tensor,
                    cumsum: torch.Tensor, d_end: torch.Tensor, splits: int | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor | None]:
    """Gradients on the key side.

    Args: x, dout, z (b, l, h, p); B, C (b, l, g, n); D (h) or (h, p) or None; dt' and cumsum
    (b, h, c, q) fp32; d_end (b, c, h, p, n) fp32, the gradient of each chunk's end state.
    ``splits``: as in ``triton_chunk_scan_bwd.chunk_scan_bwd_dc``.

    Returns (dx in x's dtype, dB in B's dtype, ddt' (b, h, c, q) fp32, quad (b, h, c, blocks,
    q) fp32 with one row per key block (zeros before the block), dD in fp32 shaped like D, or
    None)."""
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    c, chunk = cumsum.shape[2], cumsum.shape[3]
    dt, cumsum, d_end = dt.contiguous(), cumsum.contiguous(), d_end.contiguous()
    sizes = block_sizes(chunk, p, n)
    n_blocks = chunk // sizes["BLOCK_S"]
    if splits is None:
        splits = head_splits(h // g, b * c * g * n_blocks, x.device)
    if (h // g) % splits:
        raise ValueError(f"splits={splits} must divide the {h // g} heads of a group")
    dx = torch.empty(b, length, h, p, dtype=result_dtype(x.dtype), device=x.device)
    db = torch.empty(b, length, splits, g, n, dtype=torch.float32, device=x.device)
    ddt = torch.empty_like(cumsum)
    # a key block writes only the query blocks from its own on: the rest must read as zero
    quad = torch.zeros(b, h, c, n_blocks, chunk, dtype=torch.float32, device=x.device)
    dd = (torch.empty(b, c, n_blocks, h, p, dtype=torch.float32, device=x.device)
          if D is not None else None)
    _dx_db_kernel[(b * c * g * splits, n_blocks)](
        x, B, C, dout, z if z is not None else x, D if D is not None else x, dt, cumsum, d_end,
        dx, db, ddt, quad, dd if dd is not None else ddt,
        length, h, g, c, h // g, h // g // splits, splits, p, n,
        *x.stride(), *B.stride(), *C.stride(), *dout.stride(),
        *(z.stride() if z is not None else (0, 0, 0, 0)), *d_strides(D),
        HAS_Z=z is not None, HAS_D=D is not None, CHUNK=chunk, **sizes,
        **dot_options(x.dtype, x.device))
    db = db.sum(2) if splits > 1 else db[:, :, 0]
    if dd is not None:
        dd = dd.sum((0, 1, 2))                                   # (h, p)
        dd = dd.sum(1) if D.ndim == 1 else dd
    return dx.to(x.dtype), db.to(B.dtype), ddt, quad, dd
