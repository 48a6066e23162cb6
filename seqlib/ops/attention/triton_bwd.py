"""Attention backward pass in Triton: three kernels that recompute the probabilities.

Letters as in ``reference.py``. With s = scale * q k^T, P = softmax(s) over visible keys,
O = P V and dO the upstream gradient (FlashAttention-2, Dao 2023, section 3.1.2):

    dV = P^T dO        dP = dO V^T        dS = P * (dP - delta),  delta_i = sum_d dO_i O_i
    dQ = scale * dS K                     dK = scale * dS^T Q

P is never stored: each tile is rebuilt as exp(s - lse) from the row log-sum-exp that the
forward saved (lse = +inf on a row that saw no key, so its P and its gradients are 0). The
stages, one kernel each:

1. ``_bwd_delta_kernel``: delta = rowsum(dO * O) per query row, in fp32.
2. ``_bwd_dkdv_kernel``: one program per tile of BLOCK_N keys of one key/value head; it walks
   over the query tiles that see those keys, for each of the g query heads sharing the head,
   and accumulates dK and dV in registers: grouped-query sums need no atomics and no copies.
3. ``_bwd_dq_kernel``: one program per tile of BLOCK_M queries; it walks over the key tiles
   those queries see (the forward's loop) and accumulates dQ.

Why two loops instead of one with atomic adds into dQ: recomputing P and dP in the dQ kernel
costs two extra tile products per tile (7 instead of 5), but every output is written once by
one program, so the result is deterministic, dQ needs no fp32 scratch buffer, and each kernel
reads like the formulas above. The masks follow the forward's bottom-right causal alignment in
both loops, and the non-causal case visits every tile (Triton's tutorial 06 backward assumed a
causal mask, triton-lang/triton#4541).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_fwd import (
    LOG2E,
    TileConfig,
    _dot,
    _key_tiles,
    _load_tile,
    _visible,
    dot_in_fp32,
    padded_head_dim,
    pick_config,
    result_dtype,
)


@triton.jit
def _bwd_delta_kernel(OUT, DO, DELTA,
                      stride_ob, stride_oh, stride_om, stride_od,
                      stride_dob, stride_doh, stride_dom, stride_dod,
                      h, lq,
                      HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """Grid (cdiv(lq, BLOCK_M), b * h): DELTA (b, h, lq) fp32 = rowsum(dO * OUT)."""
    bh = tl.program_id(1)
    off_b = (bh // h).to(tl.int64)
    off_h = (bh % h).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D_PAD)
    o = _load_tile(OUT + off_b * stride_ob + off_h * stride_oh, rows, dims, stride_om, stride_od,
                   lq, HEAD_DIM, D_PAD, True).to(tl.float32)
    do = _load_tile(DO + off_b * stride_dob + off_h * stride_doh, rows, dims, stride_dom,
                    stride_dod, lq, HEAD_DIM, D_PAD, True).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * lq + rows, tl.sum(o * do, 1), mask=rows < lq)


@triton.jit
def _query_tiles(n0, lq, lk, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Query tiles that see some key of [n0, n0 + BLOCK_N), as (lo, mid_lo, mid_hi, hi):
    tiles starting in [mid_lo, mid_hi) lie inside both lengths and every row of them sees every
    key of the tile, so they need no mask. All but hi are multiples of BLOCK_M."""
    shift = lk - lq
    last_key = tl.minimum(n0 + BLOCK_N, lk) - 1
    lo = 0
    hi = lq
    mid_lo = 0
    mid_hi = lq // BLOCK_M * BLOCK_M  # tiles wholly inside lq
    if IS_CAUSAL:  # query i sees key j iff i >= j - shift
        lo = tl.minimum(tl.maximum(n0 - shift, 0), lq) // BLOCK_M * BLOCK_M
        mid_lo = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - shift, 0), BLOCK_M) * BLOCK_M
    if HAS_WINDOW:  # query i sees key j iff i < j - shift + window
        hi = tl.minimum(lq, tl.maximum(last_key - shift + window, 0))
        mid_hi = tl.minimum(mid_hi, tl.maximum(n0 - shift + window, 0) // BLOCK_M * BLOCK_M)
    mid_hi = tl.where(n0 + BLOCK_N > lk, 0, mid_hi)  # a key tile cut by lk: mask every tile
    hi = tl.maximum(hi, lo)
    hi_up = tl.cdiv(hi, BLOCK_M) * BLOCK_M
    mid_lo = tl.minimum(tl.maximum(mid_lo, lo), hi_up)
    mid_hi = tl.maximum(tl.minimum(mid_hi, hi_up), mid_lo)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def _dkdv_tiles(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qm, stride_qd, stride_dom, stride_dod,
                cols, dims, start, stop, lq, lk, window, qk_scale,
                HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                DOT_FP32: tl.constexpr):
    """Add the query tiles starting at start, start + BLOCK_M, ... < stop into dK and dV.
    Works on transposed tiles (keys as rows), so that dV = P^T dO is a plain product."""
    for m0 in range(start, stop, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        q = _load_tile(Q, rows, dims, stride_qm, stride_qd, lq, HEAD_DIM, D_PAD, MASKED)
        do = _load_tile(DO, rows, dims, stride_dom, stride_dod, lq, HEAD_DIM, D_PAD, MASKED)
        if MASKED:  # rows past lq: lse = +inf makes their P zero
            lse = tl.load(LSE + rows, mask=rows < lq, other=float("inf"))
            delta = tl.load(DELTA + rows, mask=rows < lq, other=0.0)
        else:
            lse = tl.load(LSE + rows)
            delta = tl.load(DELTA + rows)
        s_t = _dot(k, tl.trans(q), DOT_FP32) * qk_scale  # (BLOCK_N, BLOCK_M), base 2
        if MASKED:
            keep = _visible(rows[None, :], cols[:, None], lq, lk, window, IS_CAUSAL, HAS_WINDOW)
            s_t = tl.where(keep, s_t, float("-inf"))
        p_t = tl.exp2(s_t - lse[None, :] * 1.4426950408889634)  # P^T; lse * log2(e)
        dv += _dot(p_t, do, DOT_FP32)
        dp_t = _dot(v, tl.trans(do), DOT_FP32)  # (dO V^T)^T
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t, q, DOT_FP32)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                     stride_qb, stride_qh, stride_qm, stride_qd,
                     stride_kb, stride_kh, stride_kn, stride_kd,
                     stride_vb, stride_vh, stride_vn, stride_vd,
                     stride_dob, stride_doh, stride_dom, stride_dod,
                     stride_dkb, stride_dkh, stride_dkn, stride_dkd,
                     stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                     h, hk, lq, lk, window, group, qk_scale, scale,
                     HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                     DOT_FP32: tl.constexpr):
    """Grid (cdiv(lk, BLOCK_N), b * hk): dK and dV (b, hk, lk, d) for one key tile."""
    n0 = tl.program_id(0) * BLOCK_N
    bhk = tl.program_id(1)
    off_b = (bhk // hk).to(tl.int64)
    off_hk = (bhk % hk).to(tl.int64)
    cols = n0 + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, D_PAD)
    k = _load_tile(K + off_b * stride_kb + off_hk * stride_kh, cols, dims, stride_kn,
                   stride_kd, lk, HEAD_DIM, D_PAD, True)
    v = _load_tile(V + off_b * stride_vb + off_hk * stride_vh, cols, dims, stride_vn,
                   stride_vd, lk, HEAD_DIM, D_PAD, True)
    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    lo, mid_lo, mid_hi, hi = _query_tiles(n0, lq, lk, window, BLOCK_M, BLOCK_N,
                                          IS_CAUSAL, HAS_WINDOW)
    for r in range(group):  # the g query heads that read this key/value head
        off_h = off_hk * group + r
        Qh = Q + off_b * stride_qb + off_h * stride_qh
        DOh = DO + off_b * stride_dob + off_h * stride_doh
        LSEh = LSE + (off_b * h + off_h) * lq
        DELTAh = DELTA + (off_b * h + off_h) * lq
        dk, dv = _dkdv_tiles(dk, dv, k, v, Qh, DOh, LSEh, DELTAh, stride_qm, stride_qd,
                             stride_dom, stride_dod, cols, dims, lo, mid_lo, lq, lk, window,
                             qk_scale, HEAD_DIM, D_PAD, BLOCK_M, True, IS_CAUSAL, HAS_WINDOW,
                             DOT_FP32)
        dk, dv = _dkdv_tiles(dk, dv, k, v, Qh, DOh, LSEh, DELTAh, stride_qm, stride_qd,
                             stride_dom, stride_dod, cols, dims, mid_lo, mid_hi, lq, lk, window,
                             qk_scale, HEAD_DIM, D_PAD, BLOCK_M, False, IS_CAUSAL, HAS_WINDOW,
                             DOT_FP32)
        dk, dv = _dkdv_tiles(dk, dv, k, v, Qh, DOh, LSEh, DELTAh, stride_qm, stride_qd,
                             stride_dom, stride_dod, cols, dims, mid_hi, hi, lq, lk, window,
                             qk_scale, HEAD_DIM, D_PAD, BLOCK_M, True, IS_CAUSAL, HAS_WINDOW,
                             DOT_FP32)
    dk = dk * scale
    mask = (cols[:, None] < lk) & (dims[None, :] < HEAD_DIM)
    tl.store(DK + off_b * stride_dkb + off_hk * stride_dkh + cols[:, None] * stride_dkn
             + dims[None, :] * stride_dkd, dk.to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + off_b * stride_dvb + off_hk * stride_dvh + cols[:, None] * stride_dvn
             + dims[None, :] * stride_dvd, dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit
def _dq_tiles(dq, q, do, lse2, delta, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
              rows, dims, start, stop, lq, lk, window, qk_scale,
              HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
              DOT_FP32: tl.constexpr):
    """Add the key tiles starting at start, start + BLOCK_N, ... < stop into dQ."""
    for n0 in range(start, stop, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k = _load_tile(K, cols, dims, stride_kn, stride_kd, lk, HEAD_DIM, D_PAD, MASKED)
        v = _load_tile(V, cols, dims, stride_vn, stride_vd, lk, HEAD_DIM, D_PAD, MASKED)
        s = _dot(q, tl.trans(k), DOT_FP32) * qk_scale  # (BLOCK_M, BLOCK_N), base 2
        if MASKED:
            keep = _visible(rows[:, None], cols[None, :], lq, lk, window, IS_CAUSAL, HAS_WINDOW)
            s = tl.where(keep, s, float("-inf"))
        p = tl.exp2(s - lse2[:, None])
        dp = _dot(do, tl.trans(v), DOT_FP32)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds, k, DOT_FP32)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ,
                   stride_qb, stride_qh, stride_qm, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_dob, stride_doh, stride_dom, stride_dod,
                   stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                   h, lq, lk, window, group, qk_scale, scale,
                   HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                   DOT_FP32: tl.constexpr):
    """Grid (cdiv(lq, BLOCK_M), b * h): dQ (b, h, lq, d) for one query tile."""
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    off_b = (bh // h).to(tl.int64)
    off_h = bh % h
    off_hk = (off_h // group).to(tl.int64)
    off_h = off_h.to(tl.int64)
    K += off_b * stride_kb + off_hk * stride_kh
    V += off_b * stride_vb + off_hk * stride_vh
    rows = m0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D_PAD)
    q = _load_tile(Q + off_b * stride_qb + off_h * stride_qh, rows, dims, stride_qm, stride_qd,
                   lq, HEAD_DIM, D_PAD, True)
    do = _load_tile(DO + off_b * stride_dob + off_h * stride_doh, rows, dims, stride_dom,
                    stride_dod, lq, HEAD_DIM, D_PAD, True)
    lse2 = tl.load(LSE + bh.to(tl.int64) * lq + rows, mask=rows < lq, other=float("inf"))
    lse2 = lse2 * 1.4426950408889634  # to base 2, like the scores
    delta = tl.load(DELTA + bh.to(tl.int64) * lq + rows, mask=rows < lq, other=0.0)
    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    lo, mid_lo, mid_hi, hi = _key_tiles(m0, lq, lk, window, BLOCK_M, BLOCK_N,
                                        IS_CAUSAL, HAS_WINDOW)
    dq = _dq_tiles(dq, q, do, lse2, delta, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
                   rows, dims, lo, mid_lo, lq, lk, window, qk_scale, HEAD_DIM, D_PAD, BLOCK_N,
                   True, IS_CAUSAL, HAS_WINDOW, DOT_FP32)
    dq = _dq_tiles(dq, q, do, lse2, delta, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
                   rows, dims, mid_lo, mid_hi, lq, lk, window, qk_scale, HEAD_DIM, D_PAD,
                   BLOCK_N, False, IS_CAUSAL, HAS_WINDOW, DOT_FP32)
    dq = _dq_tiles(dq, q, do, lse2, delta, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
                   rows, dims, mid_hi, hi, lq, lk, window, qk_scale, HEAD_DIM, D_PAD, BLOCK_N,
                   True, IS_CAUSAL, HAS_WINDOW, DOT_FP32)
    dq = dq * scale
    tl.store(DQ + off_b * stride_dqb + off_h * stride_dqh + rows[:, None] * stride_dqm
             + dims[None, :] * stride_dqd, dq.to(DQ.dtype.element_ty),
             mask=(rows[:, None] < lq) & (dims[None, :] < HEAD_DIM))


# ---------------------------------------------------------------------------------------------
# Launcher


def attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       out: torch.Tensor, lse: torch.Tensor, is_causal: bool, scale: float,
                       window: int | None, configs: dict[str, TileConfig] | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv), shaped and typed like q, k, v, from the upstream gradient
    ``dout`` (any strides, including the zero strides of ``out.sum().backward()``) and the
    forward's ``out`` and fp32 ``lse``. ``configs`` maps "delta", "dkdv", "dq" to tile sizes
    (tests use it to try uneven tiles)."""
    b, h, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    grad_dtype = result_dtype(q.dtype)  # fp32 for bf16 under the interpreter (it truncates)
    dq = torch.empty(q.shape, dtype=grad_dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=grad_dtype, device=q.device)
    dv = torch.empty(v.shape, dtype=grad_dtype, device=q.device)
    if lq == 0 or b == 0 or h == 0:  # no query at all: the keys get no gradient
        return dq.to(q.dtype), dk.zero_().to(k.dtype), dv.zero_().to(v.dtype)
    configs = configs or {}
    d_pad = padded_head_dim(d)
    dot_fp32 = dot_in_fp32(q.dtype, q.device)
    options = dict(HEAD_DIM=d, D_PAD=d_pad, IS_CAUSAL=bool(is_causal or window is not None),
                   HAS_WINDOW=window is not None, DOT_FP32=dot_fp32)
    group = h // hk
    win = window or 0

    delta = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    cfg = configs.get("delta") or pick_config("dq", d_pad, dot_fp32, q.device)
    _bwd_delta_kernel[(triton.cdiv(lq, cfg.block_m), b * h)](
        out, dout, delta, *out.stride(), *dout.stride(), h, lq,
        HEAD_DIM=d, D_PAD=d_pad, BLOCK_M=cfg.block_m, num_warps=cfg.num_warps,
    )
    if lk > 0:
        cfg = configs.get("dkdv") or pick_config("dkdv", d_pad, dot_fp32, q.device)
        _bwd_dkdv_kernel[(triton.cdiv(lk, cfg.block_n), b * hk)](
            q, k, v, dout, lse, delta, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
            h, hk, lq, lk, win, group, scale * LOG2E, scale,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, **options,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    cfg = configs.get("dq") or pick_config("dq", d_pad, dot_fp32, q.device)
    _bwd_dq_kernel[(triton.cdiv(lq, cfg.block_m), b * h)](
        q, k, v, dout, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(),
        h, lq, lk, win, group, scale * LOG2E, scale,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, **options,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
