"""The selective scan's backward pass as one fused Triton kernel that recomputes the states.

Letters as in ``triton_fwd.py``. With a_t = exp(dt_t A) and x_t = a_t x_{t-1} + dt_t u_t B_t,
y_t = sum_n C_t x_t + D u_t and out_t = y_t silu(z_t), the gradient flows backwards through the
adjoint state h_t = dL/dx_t (b, d, n), itself a linear recurrence run in reverse:

    dy_t = dout_t silu(z_t)                      dz_t = dout_t y_t silu'(z_t)
    h_t  = dy_t C_t + a_{t+1} h_{t+1}            (h after the last step: dL/d last_state)
    dC_t = sum_d dy_t x_t                        dB_t = sum_d h_t dt_t u_t
    du_t = dy_t D + dt_t sum_n h_t B_t           dD  = sum_{b,t} dy_t u_t
    ddt_t = sum_n h_t (u_t B_t + A a_t x_{t-1})  dA  = sum_{b,t} h_t a_t x_{t-1} dt_t
    ddelta_t = ddt_t sigmoid(delta_t + bias)     (softplus' ; 1 without softplus)
    dbias = sum_{b,t} ddelta_t                   d initial_state = a_0 h_0

It needs x_{t-1} while walking t downwards, but the forward pass kept only the state at the
start of every chunk of CHUNK steps. So one program (the forward's BLOCK_D channels of one
group and batch element) visits the chunks from the last to the first, and for each chunk

1. recomputes its CHUNK states forwards from the saved chunk start, writing each x_{t-1} to a
   per-program scratch buffer (b, d, n, CHUNK) fp32, small enough to stay in the GPU's L2;
2. walks the chunk backwards, rebuilding x_t = a_t x_{t-1} + dt_t u_t B_t from the scratch
   (no division by a_t, which underflows), and updates h in registers.

Per-channel gradients (du, ddelta, dz) are written per step; dA, dD and dbias are summed over
the length in registers (with compensated summation) and written per batch element (the
launcher sums over b); dB and dC sum over the channels of a group, which several programs
share, so each program adds its block's sum with an fp32 atomic add. As in the forward, every
loaded value is converted to fp32 first, and steps past the end of the sequence are never
visited.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_fwd import INTERPRETING, _cast_for, _exp, _softplus, as_grouped, block_sizes


@triton.jit
def _kahan_add(total, comp, term):
    """Compensated summation (Kahan 1965): ``total + term`` with the rounding error of every
    addition carried in ``comp`` and fed back. dA, dD and ddelta_bias sum l terms per program,
    and a plain fp32 running sum loses several ulps over a few hundred of them."""
    y = term - comp
    new = total + y
    return new, (new - total) - y


@triton.jit
def _ss_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr,
    chunk_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dinit_ptr,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_ad, s_an,
    s_bb, s_bg, s_bn, s_bl, s_cb, s_cg, s_cn, s_cl, s_zb, s_zd, s_zl, s_gb, s_gd, s_gl,
    dg, n, length,
    N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, HAS_INIT: tl.constexpr, ROUND_BF16: tl.constexpr,
    EXP_FP64: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    grp = tl.program_id(1)
    n_groups = tl.num_programs(1)
    j = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = j < dg
    ch = (grp * dg + j).to(tl.int64)
    nn = tl.arange(0, N_PAD)
    mask_n = nn < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    d = dg * n_groups

    A = tl.load(A_ptr + ch[:, None] * s_ad + nn[None, :] * s_an, mask=mask_dn,
                other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    state_idx = (pid_b * d + ch[:, None]) * n + nn[None, :]  # contiguous (b, d, n)
    if HAS_DLAST:  # h_{l-1} gets dL/d last_state: the carry a_l h_l starts there
        carry = tl.load(dlast_ptr + state_idx, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)
    dA_comp = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)  # Kahan compensation
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dD_comp = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_comp = tl.zeros((BLOCK_D,), dtype=tl.float32)

    u_row = u_ptr + pid_b * s_ub + ch * s_ud
    dt_row = delta_ptr + pid_b * s_db + ch * s_dd
    z_row = z_ptr + pid_b * s_zb + ch * s_zd
    g_row = dout_ptr + pid_b * s_gb + ch * s_gd
    # our own gradient buffers are contiguous (b, d, l); dB, dC (b, g, n, l) fp32
    bdl_row = (pid_b * d + ch) * length
    b_row = B_ptr + pid_b * s_bb + grp * s_bg + nn * s_bn
    c_row = C_ptr + pid_b * s_cb + grp * s_cg + nn * s_cn
    bc_grad_row = ((pid_b * n_groups + grp) * n + nn) * length
    scratch = scratch_ptr + state_idx * CHUNK
    n_chunks = tl.cdiv(length, CHUNK)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        start = c * CHUNK
        steps = tl.minimum(length - start, CHUNK)
        # 1. the chunk's states, forwards from its saved start: scratch[k] = x_{start+k-1}
        x = tl.load(chunk_ptr + state_idx * n_chunks + c, mask=mask_dn, other=0.0)
        for k in range(0, steps):
            t = start + k
            tl.store(scratch + k, x, mask=mask_dn)
            u_t = tl.load(u_row + t * s_ul, mask=mask_d, other=0.0).to(tl.float32)
            dt = tl.load(dt_row + t * s_dl, mask=mask_d, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            B_t = tl.load(b_row + t * s_bl, mask=mask_n, other=0.0).to(tl.float32)
            x = _exp(dt[:, None] * A, EXP_FP64) * x + (dt * u_t)[:, None] * B_t[None, :]
        tl.debug_barrier()  # the scratch written above is read by other threads below
        # 2. backwards through the chunk
        for kk in range(0, steps):
            k = steps - 1 - kk
            t = start + k
            x_prev = tl.load(scratch + k, mask=mask_dn, other=0.0)
            u_t = tl.load(u_row + t * s_ul, mask=mask_d, other=0.0).to(tl.float32)
            raw = tl.load(dt_row + t * s_dl, mask=mask_d, other=0.0).to(tl.float32)
            if HAS_BIAS:
                raw = raw + bias
            if SOFTPLUS:
                dt = _softplus(raw)
            else:
                dt = raw
            B_t = tl.load(b_row + t * s_bl, mask=mask_n, other=0.0).to(tl.float32)
            C_t = tl.load(c_row + t * s_cl, mask=mask_n, other=0.0).to(tl.float32)
            g_t = tl.load(g_row + t * s_gl, mask=mask_d, other=0.0).to(tl.float32)
            a = _exp(dt[:, None] * A, EXP_FP64)
            ax = a * x_prev  # a_t x_{t-1}
            x_t = ax + (dt * u_t)[:, None] * B_t[None, :]
            if HAS_Z:
                z_t = tl.load(z_row + t * s_zl, mask=mask_d, other=0.0).to(tl.float32)
                sig = tl.sigmoid(z_t)
                y = tl.sum(x_t * C_t[None, :], axis=1)
                if HAS_D:
                    y = y + Dv * u_t
                dz = g_t * y * sig * (1.0 + z_t * (1.0 - sig))
                tl.store(dz_ptr + bdl_row + t, _cast_for(dz, dz_ptr, ROUND_BF16), mask=mask_d)
                dy = g_t * z_t * sig
            else:
                dy = g_t
            h = dy[:, None] * C_t[None, :] + carry  # (BLOCK_D, N_PAD)
            dC_t = tl.sum(dy[:, None] * x_t, axis=0)  # (N_PAD,): this block's channels
            dB_t = tl.sum(h * (dt * u_t)[:, None], axis=0)
            tl.atomic_add(dC_ptr + bc_grad_row + t, dC_t, mask=mask_n)
            tl.atomic_add(dB_ptr + bc_grad_row + t, dB_t, mask=mask_n)
            du = dt * tl.sum(h * B_t[None, :], axis=1)
            if HAS_D:
                du = du + dy * Dv
                dD_acc, dD_comp = _kahan_add(dD_acc, dD_comp, dy * u_t)
            ddt = tl.sum(h * (u_t[:, None] * B_t[None, :] + A * ax), axis=1)
            dA_acc, dA_comp = _kahan_add(dA_acc, dA_comp, h * ax * dt[:, None])
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw)
            dbias_acc, dbias_comp = _kahan_add(dbias_acc, dbias_comp, ddt)
            tl.store(du_ptr + bdl_row + t, _cast_for(du, du_ptr, ROUND_BF16), mask=mask_d)
            tl.store(ddelta_ptr + bdl_row + t, _cast_for(ddt, ddelta_ptr, ROUND_BF16), mask=mask_d)
            carry = a * h
        tl.debug_barrier()  # the next chunk overwrites the scratch
    tl.store(dA_ptr + state_idx, dA_acc, mask=mask_dn)  # (b, d, n): summed over b later
    if HAS_D:
        tl.store(dD_ptr + pid_b * d + ch, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * d + ch, dbias_acc, mask=mask_d)
    if HAS_INIT:
        tl.store(dinit_ptr + state_idx, carry, mask=mask_dn)


def selective_scan_backward(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                            chunk_states, has_initial_state):
    """Gradients ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state)``, each in its
    input's dtype and shape (None for an input that was None). ``dout`` may have any strides
    (zero ones included); ``dlast`` is the gradient of the last state, or None."""
    b, d, length = u.shape
    n = A.shape[1]
    Bg, Cg = as_grouped(B), as_grouped(C)
    g = Bg.shape[1]
    dg = d // g
    block_d, n_pad, chunk = block_sizes(dg, n)
    dev = u.device
    f32 = torch.float32
    du = torch.empty((b, d, length), dtype=u.dtype, device=dev)
    ddelta = torch.empty((b, d, length), dtype=delta.dtype, device=dev)
    dz = torch.empty((b, d, length), dtype=z.dtype, device=dev) if z is not None else None
    dA = torch.zeros((b, d, n), dtype=f32, device=dev)
    dB = torch.zeros((b, g, n, length), dtype=f32, device=dev)
    dC = torch.zeros((b, g, n, length), dtype=f32, device=dev)
    dD = torch.zeros((b, d), dtype=f32, device=dev)
    dbias = torch.zeros((b, d), dtype=f32, device=dev)
    dinit = torch.zeros((b, d, n), dtype=f32, device=dev)
    if dlast is not None:
        dlast = dlast.float().contiguous()
    if b * d > 0 and length > 0:
        scratch = torch.empty((b, d, n, chunk), dtype=f32, device=dev)
        A_ = A.contiguous()
        dummy = dA
        z_ = z if z is not None else u
        grid = (b, g, triton.cdiv(dg, block_d))
        _ss_bwd_kernel[grid](
            u, delta, A_, Bg, Cg,
            D.contiguous() if D is not None else dummy, z_,
            delta_bias.contiguous() if delta_bias is not None else dummy,
            dout, dlast if dlast is not None else dummy, chunk_states, scratch,
            du, ddelta, dz if dz is not None else dummy, dA, dB, dC, dD, dbias, dinit,
            *u.stride(), *delta.stride(), *A_.stride(), *Bg.stride(), *Cg.stride(),
            *z_.stride(), *dout.stride(),
            dg, n, length,
            N_PAD=n_pad, BLOCK_D=block_d, CHUNK=chunk,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), HAS_DLAST=dlast is not None,
            HAS_INIT=has_initial_state, ROUND_BF16=INTERPRETING, EXP_FP64=INTERPRETING,
        )
    elif length == 0:
        du.zero_()
        ddelta.zero_()
        if dz is not None:
            dz.zero_()
        if dlast is not None:  # nothing happened: the last state is the initial state
            dinit.copy_(dlast)
    dB = dB.reshape(B.shape) if B.ndim == 4 else dB[:, 0]
    dC = dC.reshape(C.shape) if C.ndim == 4 else dC[:, 0]
    return (du, ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD.sum(0).to(D.dtype) if D is not None else None, dz,
            dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
            dinit if has_initial_state else None)
