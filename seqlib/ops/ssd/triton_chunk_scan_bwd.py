"""Backward of stage 4 (``triton_chunk_scan``), the query side: what flows from the outputs to
the entering states, to C and to the gate z.

Per head, for positions t of chunk k, with dy_t = dout_t * silu(z_t) the gradient reaching
y_t (the output before the gate) and a the chunk's cumulative decay exponents::

    y_t = exp(a_t) S_in[k] C_t + sum_{s <= t} exp(a_t - a_s) (C_t . B_s) dt'_s x_s

gives

    dS_in[k] = sum_t exp(a_t) dy_t C_t^T                                        (p, n)
    dC_t     = exp(a_t) S_in[k]^T dy_t + sum_{s <= t} exp(a_t - a_s) dt'_s (dy_t . x_s) B_s
    dz_t     = dout_t (y_t + D x_t) silu'(z_t)
    e_t      = exp(a_t) dy_t . (S_in[k] C_t)     the entering state's part of d(a_t)

(``triton_chunk_cumsum_bwd`` explains how the parts of d(a) are put together.)

Two kernels:

- ``_dstates_kernel``: dS_in, one program per (batch, chunk, head) and block of p; a product
  (dy scaled by exp(a))^T @ C over the chunk. It runs first: the reverse pass over chunks
  (``triton_state_passing_bwd``) needs it.
- ``_dc_kernel``: dC, dz and e, one program per (batch, chunk, group, split of the group's
  heads) and block of BLOCK_S rows. It holds whole p and n (dy . x and C . B sum over them),
  walks its heads and, for each, the key blocks up to the diagonal, and adds the heads' dC in
  registers (see ``triton_common_bwd.head_splits``). With a gate it recomputes y_t on the way
  (the forward keeps no copy of y), which costs the two products C @ B^T and (.) @ x per block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import dot_options
from .triton_common_bwd import block_sizes, d_strides, dot, head_splits, load_dy, result_dtype


@triton.jit
def _dstates_kernel(DOUT, Z, C, CUMSUM, DSTATES, length, h, n_chunks, heads_per_group, p, n,
                    stride_ob, stride_ol, stride_oh, stride_op,
                    stride_zb, stride_zl, stride_zh, stride_zp,
                    stride_cb, stride_cl, stride_cg, stride_cn,
                    HAS_Z: tl.constexpr, CHUNK: tl.constexpr, BLOCK_T: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                    DOT_FP32: tl.constexpr, DOT_DTYPE: tl.constexpr):
    pid_bch, pid_p = tl.program_id(0), tl.program_id(1)
    head = pid_bch % h
    chunk = (pid_bch // h) % n_chunks
    batch = pid_bch // (h * n_chunks)
    group = head // heads_per_group
    rows_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cols_n = tl.arange(0, BLOCK_N)
    p_ok, n_ok = rows_p < p, cols_n < n
    chunk_base = ((batch * h + head).to(tl.int64) * n_chunks + chunk) * CHUNK
    dout_base = DOUT + batch.to(tl.int64) * stride_ob + head * stride_oh
    z_base = Z + batch.to(tl.int64) * stride_zb + head * stride_zh
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for t0 in range(0, CHUNK, BLOCK_T):
        i = t0 + tl.arange(0, BLOCK_T)
        t = chunk * CHUNK + i
        t_ok = t < length
        mask = t_ok[:, None] & p_ok[None, :]
        dy = load_dy(dout_base + t[:, None] * stride_ol + rows_p[None, :] * stride_op,
                     z_base + t[:, None] * stride_zl + rows_p[None, :] * stride_zp, mask, HAS_Z)
        c = tl.load(C + batch.to(tl.int64) * stride_cb + group * stride_cg
                    + t[:, None] * stride_cl + cols_n[None, :] * stride_cn,
                    mask=t_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
        from_start = tl.exp(tl.load(CUMSUM + chunk_base + i))
        acc += dot(tl.trans(dy * from_start[:, None]), c, DOT_FP32, DOT_DTYPE)
    out = DSTATES + ((batch * n_chunks + chunk) * h + head).to(tl.int64) * p * n
    tl.store(out + rows_p[:, None] * n + cols_n[None, :], acc, mask=p_ok[:, None] & n_ok[None, :])


@triton.jit
def _dc_kernel(X, B, C, DOUT, Z, D, DT, CUMSUM, ENTERING, DC, DZ, DENTER,
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
    pid, pid_m = tl.program_id(0), tl.program_id(1)
    split = pid % n_splits
    group = (pid // n_splits) % g
    chunk = (pid // (n_splits * g)) % n_chunks
    batch = pid // (n_splits * g * n_chunks)
    b64 = batch.to(tl.int64)
    i = pid_m * BLOCK_S + tl.arange(0, BLOCK_S)                   # query rows in the chunk
    t = chunk * CHUNK + i
    t_ok = t < length
    cols_p, cols_n = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
    p_ok, n_ok = cols_p < p, cols_n < n
    mask_tp = t_ok[:, None] & p_ok[None, :]
    c_t = tl.load(C + b64 * stride_cb + group * stride_cg + t[:, None] * stride_cl
                  + cols_n[None, :] * stride_cn,
                  mask=t_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)     # (m, n)
    b_base = B + b64 * stride_bb + group * stride_bg
    dc = tl.zeros((BLOCK_S, BLOCK_N), dtype=tl.float32)          # summed over the heads
    for k in range(heads_per_split):
        head = group * heads_per_group + split * heads_per_split + k
        chunk_base = ((batch * h + head).to(tl.int64) * n_chunks + chunk) * CHUNK
        x_base = X + b64 * stride_xb + head * stride_xh
        dout = tl.load(DOUT + b64 * stride_ob + head * stride_oh + t[:, None] * stride_ol
                       + cols_p[None, :] * stride_op, mask=mask_tp, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(Z + b64 * stride_zb + head * stride_zh + t[:, None] * stride_zl
                        + cols_p[None, :] * stride_zp, mask=mask_tp, other=0.0).to(tl.float32)
            gate = tl.sigmoid(z)
            dy = dout * z * gate
        else:
            dy = dout
        cums_t = tl.load(CUMSUM + chunk_base + i)
        from_start = tl.exp(cums_t)
        s_in = tl.load(ENTERING + ((batch * n_chunks + chunk) * h + head).to(tl.int64) * p * n
                       + cols_p[:, None] * n + cols_n[None, :],
                       mask=p_ok[:, None] & n_ok[None, :], other=0.0)            # (p, n)
        dch = dot(dy, s_in, DOT_FP32, DOT_DTYPE) * from_start[:, None]          # (m, n)
        # what exp(a_t) of the entering state gives d(a_t): dC_t . C_t, so far
        tl.store(DENTER + chunk_base + i, tl.sum(dch * c_t, axis=1))
        if HAS_Z:  # y is recomputed for the gate's derivative
            y = dot(c_t, tl.trans(s_in), DOT_FP32, DOT_DTYPE) * from_start[:, None]
        for s0 in range(0, (pid_m + 1) * BLOCK_S, BLOCK_S):
            j = s0 + tl.arange(0, BLOCK_S)
            s = chunk * CHUNK + j
            s_ok = s < length
            x_s = tl.load(x_base + s[:, None] * stride_xl + cols_p[None, :] * stride_xp,
                          mask=s_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
            b_s = tl.load(b_base + s[:, None] * stride_bl + cols_n[None, :] * stride_bn,
                          mask=s_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
            dt_s = tl.load(DT + chunk_base + j)
            cums_s = tl.load(CUMSUM + chunk_base + j)
            causal = j[None, :] <= i[:, None]
            weight = tl.exp(tl.where(causal, cums_t[:, None] - cums_s[None, :], float("-inf")))
            weight *= dt_s[None, :]                                              # (m, s)
            dch += dot(dot(dy, tl.trans(x_s), DOT_FP32, DOT_DTYPE) * weight, b_s,
                       DOT_FP32, DOT_DTYPE)
            if HAS_Z:
                y += dot(dot(c_t, tl.trans(b_s), DOT_FP32, DOT_DTYPE) * weight, x_s,
                         DOT_FP32, DOT_DTYPE)
        dc += dch
        if HAS_Z:
            if HAS_D:
                x_t = tl.load(x_base + t[:, None] * stride_xl + cols_p[None, :] * stride_xp,
                              mask=mask_tp, other=0.0).to(tl.float32)
                d = tl.load(D + head * stride_dh + cols_p * stride_dp, mask=p_ok, other=0.0)
                y += d.to(tl.float32)[None, :] * x_t
            dz = dout * y * gate * (1.0 + z * (1.0 - gate))
            tl.store(DZ + ((b64 * length + t[:, None]) * h + head) * p + cols_p[None, :],
                     dz.to(DZ.dtype.element_ty), mask=mask_tp)
    # one fp32 slot per split: (b, l, splits, g, n), summed by the launcher
    out = DC + ((b64 * length + t[:, None]) * n_splits + split) * g * n + group * n
    tl.store(out + cols_n[None, :], dc, mask=t_ok[:, None] & n_ok[None, :])


def chunk_scan_bwd_dstates(dout: torch.Tensor, z: torch.Tensor | None, C: torch.Tensor,
                           cumsum: torch.Tensor) -> torch.Tensor:
    """dout, z (b, l, h, p), C (b, l, g, n), cumsum (b, h, c, q) -> dS_in (b, c, h, p, n) fp32,
    the gradient of the outputs with respect to the state entering each chunk."""
    b, length, h, p = dout.shape
    g, n = C.shape[2], C.shape[3]
    c, chunk = cumsum.shape[2], cumsum.shape[3]
    cumsum = cumsum.contiguous()
    dstates = torch.empty(b, c, h, p, n, dtype=torch.float32, device=dout.device)
    block_p = min(block_sizes(chunk, p, n)["BLOCK_P"], 64)
    block_t = min(chunk, 64)
    _dstates_kernel[(b * c * h, triton.cdiv(p, block_p))](
        dout, z if z is not None else dout, C, cumsum, dstates, length, h, c, h // g, p, n,
        *dout.stride(), *(z.stride() if z is not None else (0, 0, 0, 0)), *C.stride(),
        HAS_Z=z is not None, CHUNK=chunk, BLOCK_T=block_t, BLOCK_P=block_p,
        BLOCK_N=block_sizes(chunk, p, n)["BLOCK_N"], **dot_options(C.dtype, C.device))
    return dstates


def chunk_scan_bwd_dc(x: torch.Tensor, B: torch.Tensor, C: torch.Tensor, dout: torch.Tensor,
                      z: torch.Tensor | None, D: torch.Tensor | None, dt: torch.Tensor,
                      cumsum: torch.Tensor, entering: torch.Tensor, splits: int | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(dC (b, l, g, n) in C's dtype, dz (b, l, h, p) in z's dtype or None, e (b, h, c, q)
    fp32: the entering state's part of d(cumsum)). ``splits`` overrides how many programs share the
    heads of a group (it must divide h // g); tests use it."""
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    c, chunk = cumsum.shape[2], cumsum.shape[3]
    dt, cumsum, entering = dt.contiguous(), cumsum.contiguous(), entering.contiguous()
    sizes = block_sizes(chunk, p, n)
    n_blocks = chunk // sizes["BLOCK_S"]
    if splits is None:
        splits = head_splits(h // g, b * c * g * n_blocks, x.device)
    if (h // g) % splits:
        raise ValueError(f"splits={splits} must divide the {h // g} heads of a group")
    dc = torch.empty(b, length, splits, g, n, dtype=torch.float32, device=x.device)
    dz = (torch.empty(b, length, h, p, dtype=result_dtype(z.dtype), device=x.device)
          if z is not None else None)
    d_enter = torch.empty_like(cumsum)
    _dc_kernel[(b * c * g * splits, n_blocks)](
        x, B, C, dout, z if z is not None else x, D if D is not None else x, dt, cumsum,
        entering, dc, dz if dz is not None else dc, d_enter,
        length, h, g, c, h // g, h // g // splits, splits, p, n,
        *x.stride(), *B.stride(), *C.stride(), *dout.stride(),
        *(z.stride() if z is not None else (0, 0, 0, 0)), *d_strides(D),
        HAS_Z=z is not None, HAS_D=D is not None, CHUNK=chunk,
        **sizes, **dot_options(x.dtype, x.device))
    dc = dc.sum(2) if splits > 1 else dc[:, :, 0]
    return dc.to(C.dtype), None if dz is None else dz.to(z.dtype), d_enter
