"""The selective scan's forward pass as one fused Triton kernel.

Letters as in ``reference.py``: b batch, d channels, l length, n state size (padded to N_PAD, a
power of two), g groups of dg = d // g channels that share B and C.

One program owns BLOCK_D channels of one group of one batch element, and their whole state: a
(BLOCK_D, N_PAD) fp32 tile that lives in registers from the first step to the last and never
reaches device memory (the "hardware-aware" part of Gu and Dao 2023, section 3.3.2). It walks
the sequence one step at a time; per step it reads BLOCK_D values of u, delta (and z), and n
values of B and C, and does, for every channel and state index at once,

    dt = softplus(delta + delta_bias)
    x  = exp(dt A) x + dt u B
    y  = sum_n C x + D u,      out = y silu(z)

writing y in u's dtype. Memory moved is the inputs read once and the output written once: the
(b, d, n, l) states of the naive form are never stored. The length is cut into chunks of CHUNK
steps; when a backward pass will follow, the state at the start of every chunk is written out
(b, d, n, ceil(l / CHUNK) fp32 numbers), so the backward can recompute the states of one chunk
at a time instead of keeping all of them.

Precision: every loaded value is converted to fp32 before any arithmetic (Triton's interpreter
gets bf16 arithmetic wrong, triton-lang/triton#11584, and the state is fp32 anyway). Positions
past the end of the sequence are never visited (the loop stops at l), so padding can never
leak softplus(delta_bias) into the state (the bug of mamba_ssm#352 and #368). Under the
interpreter, bf16 results are rounded to nearest by hand before they are stored (its own
conversion truncates, measured here on Triton 3.7.1: errors of a whole bf16 ulp).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _softplus(x):
    """log(1 + exp(x)), returning x itself above 20 where exp would lose it (as torch does)."""
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))), x)


@triton.jit
def _exp(x, EXP_FP64: tl.constexpr):
    """exp(x) in fp32. With EXP_FP64 (set under the interpreter) it is computed in fp64 and
    rounded once: the interpreter's fp32 exp is numpy's, off by up to 2.3 ulp (measured here;
    torch's is within 0.6), and those errors compound along the recurrence into gradients that
    miss the accuracy rule."""
    if EXP_FP64:
        y = tl.exp(x.to(tl.float64)).to(tl.float32)
    else:
        y = tl.exp(x)
    return y


@triton.jit
def _cast_for(y, ptr, ROUND_BF16: tl.constexpr):
    """fp32 y as ptr's element type. With ROUND_BF16 (set under the interpreter, whose fp32 to
    bf16 conversion truncates: up to one bf16 ulp of error) a bf16 result is rounded to nearest
    even by hand first, on the bits: the conversion then has nothing left to cut."""
    if ROUND_BF16:
        if ptr.dtype.element_ty == tl.bfloat16:
            bits = y.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            y = bits.to(tl.float32, bitcast=True)
    return y.to(ptr.dtype.element_ty)


@triton.jit
def _ss_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr,
    out_ptr, last_ptr, chunk_ptr,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_ad, s_an,
    s_bb, s_bg, s_bn, s_bl, s_cb, s_cg, s_cn, s_cl, s_zb, s_zd, s_zl,
    s_ob, s_od, s_ol,
    dg, n, length,
    N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_INIT: tl.constexpr, SAVE_CHUNKS: tl.constexpr, WRITE_LAST: tl.constexpr,
    ROUND_BF16: tl.constexpr, EXP_FP64: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    grp = tl.program_id(1)
    j = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = j < dg
    ch = (grp * dg + j).to(tl.int64)  # (BLOCK_D,) channel indices
    nn = tl.arange(0, N_PAD)
    mask_n = nn < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    d = dg * tl.num_programs(1)

    A = tl.load(A_ptr + ch[:, None] * s_ad + nn[None, :] * s_an, mask=mask_dn,
                other=0.0).to(tl.float32)  # (BLOCK_D, N_PAD)
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    # contiguous (b, d, n) state tensors (initial, last, chunk starts) share one index
    state_idx = (pid_b * d + ch[:, None]) * n + nn[None, :]
    if HAS_INIT:
        x = tl.load(init_ptr + state_idx, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        x = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)

    u_row = u_ptr + pid_b * s_ub + ch * s_ud
    dt_row = delta_ptr + pid_b * s_db + ch * s_dd
    z_row = z_ptr + pid_b * s_zb + ch * s_zd
    o_row = out_ptr + pid_b * s_ob + ch * s_od
    b_row = B_ptr + pid_b * s_bb + grp * s_bg + nn * s_bn
    c_row = C_ptr + pid_b * s_cb + grp * s_cg + nn * s_cn
    n_chunks = tl.cdiv(length, CHUNK)
    for c in range(0, n_chunks):
        if SAVE_CHUNKS:  # (b, d, n, chunks): the state before the chunk's first step
            tl.store(chunk_ptr + state_idx * n_chunks + c, x, mask=mask_dn)
        for t in range(c * CHUNK, tl.minimum(length, c * CHUNK + CHUNK)):
            u_t = tl.load(u_row + t * s_ul, mask=mask_d, other=0.0).to(tl.float32)
            dt = tl.load(dt_row + t * s_dl, mask=mask_d, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            B_t = tl.load(b_row + t * s_bl, mask=mask_n, other=0.0).to(tl.float32)
            C_t = tl.load(c_row + t * s_cl, mask=mask_n, other=0.0).to(tl.float32)
            x = _exp(dt[:, None] * A, EXP_FP64) * x + (dt * u_t)[:, None] * B_t[None, :]
            y = tl.sum(x * C_t[None, :], axis=1)  # (BLOCK_D,)
            if HAS_D:
                y = y + Dv * u_t
            if HAS_Z:
                z_t = tl.load(z_row + t * s_zl, mask=mask_d, other=0.0).to(tl.float32)
                y = y * z_t * tl.sigmoid(z_t)
            tl.store(o_row + t * s_ol, _cast_for(y, out_ptr, ROUND_BF16), mask=mask_d)
    if WRITE_LAST:
        tl.store(last_ptr + state_idx, x, mask=mask_dn)


INTERPRETING = not isinstance(_ss_fwd_kernel, triton.runtime.JITFunction)


def block_sizes(d_per_group: int, n: int) -> tuple[int, int, int]:
    """(BLOCK_D, N_PAD, CHUNK). Not tuned on a GPU yet (none was at hand): BLOCK_D channels
    of N_PAD states make the register tile; CHUNK is the backward's recomputation unit."""
    n_pad = max(2, triton.next_power_of_2(n))
    block_d = min(max(2, triton.next_power_of_2(d_per_group)), 16 if INTERPRETING else 32)
    return block_d, n_pad, 64


def as_grouped(M: torch.Tensor) -> torch.Tensor:
    """B or C as a (b, g, n, l) view: ungrouped (b, n, l) becomes g = 1 (no copy)."""
    return M if M.ndim == 4 else M.unsqueeze(1)


def selective_scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                           write_last, save_chunks):
    """Run the forward kernel: ``(out, last_state or None, chunk_states or None)``.

    out (b, d, l) in u's dtype; last_state (b, d, n) fp32; chunk_states (b, d, n, chunks) fp32,
    the state before each chunk of CHUNK steps. Inputs are checked by the public function; u,
    delta, z, B and C may have any strides; the small parameters are made contiguous.
    """
    b, d, length = u.shape
    n = A.shape[1]
    Bg, Cg = as_grouped(B), as_grouped(C)
    g = Bg.shape[1]
    if Cg.shape[1] != g:
        raise ValueError(f"backend='triton' needs B and C with the same groups, got B of shape "
                         f"{tuple(B.shape)} and C of shape {tuple(C.shape)}")
    dg = d // g
    block_d, n_pad, chunk = block_sizes(dg, n)
    dev = u.device
    out = torch.empty((b, d, length), dtype=u.dtype, device=dev)
    last = torch.empty((b, d, n), dtype=torch.float32, device=dev) if write_last else None
    n_chunks = triton.cdiv(length, chunk)
    chunks = (torch.empty((b, d, n, n_chunks), dtype=torch.float32, device=dev)
              if save_chunks else None)
    init = initial_state.float().contiguous() if initial_state is not None else None
    if b * d == 0:
        if last is not None:
            last.copy_(init if init is not None else torch.zeros_like(last))
        return out, last, chunks
    A_ = A.contiguous()
    dummy = out
    z_ = z if z is not None else u
    grid = (b, g, triton.cdiv(dg, block_d))
    _ss_fwd_kernel[grid](
        u, delta, A_, Bg, Cg,
        D.contiguous() if D is not None else dummy, z_,
        delta_bias.contiguous() if delta_bias is not None else dummy,
        init if init is not None else dummy,
        out, last if last is not None else dummy, chunks if chunks is not None else dummy,
        *u.stride(), *delta.stride(), *A_.stride(), *Bg.stride(), *Cg.stride(), *z_.stride(),
        *out.stride(),
        dg, n, length,
        N_PAD=n_pad, BLOCK_D=block_d, CHUNK=chunk,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), HAS_INIT=init is not None, SAVE_CHUNKS=save_chunks,
        WRITE_LAST=write_last, ROUND_BF16=INTERPRETING, EXP_FP64=INTERPRETING,
    )
    return out, last, chunks
