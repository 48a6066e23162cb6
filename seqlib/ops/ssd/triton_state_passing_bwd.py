"""Backward of stage 3 (``triton_state_passing``): the reverse scan over chunks.

The forward ran entering[0] = S0, entering[k + 1] = exp(a_last[k]) entering[k] + states[k],
with final = entering[c]. Walking the chunks from the last to the first, with dE the gradient of
the state at the end of chunk k (dE = d final for the last chunk)::

    d_end[k]  = dE                                   the gradient of chunk k's own state
    d_last[k] = exp(a_last[k]) <entering[k], dE>     what the decay of the entering state
                                                     gives a_last, the chunk's total exponent
    dE       <- dS_in[k] + exp(a_last[k]) dE         the gradient of the state entering chunk k

and after the first chunk, d S0 = dE. The entering states come from the forward (kept in fp32),
so no state is recomputed here.

Parallel over batch, heads and the p * n state entries (one program per block of entries, as in
the forward); ``d_last`` comes out as one partial sum per block of entries, (b, h, c, blocks).
dS_in (from ``triton_chunk_scan_bwd``) is overwritten by d_end in place: each slot is read
before it is written, by the same program. Everything in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _state_passing_bwd_kernel(DSTATES, CUMSUM, ENTERING, DFINAL, DINITIAL, DLAST,
                              h, n_chunks, p, n,
                              stride_fb, stride_fh, stride_fp, stride_fn,
                              HAS_DFINAL: tl.constexpr, HAS_INITIAL: tl.constexpr,
                              CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid_bh, pid_e = tl.program_id(0), tl.program_id(1)
    batch, head = pid_bh // h, pid_bh % h
    e = pid_e * BLOCK + tl.arange(0, BLOCK)                       # flat (p, n) entries
    valid = e < p * n
    size = p * n
    if HAS_DFINAL:
        d_state = tl.load(DFINAL + batch.to(tl.int64) * stride_fb + head * stride_fh
                          + (e // n) * stride_fp + (e % n) * stride_fn,
                          mask=valid, other=0.0).to(tl.float32)
    else:
        d_state = tl.zeros((BLOCK,), dtype=tl.float32)
    for kk in range(n_chunks):
        k = n_chunks - 1 - kk
        offset = ((batch * n_chunks + k) * h + head).to(tl.int64) * size + e
        d_in = tl.load(DSTATES + offset, mask=valid, other=0.0)
        tl.store(DSTATES + offset, d_state, mask=valid)
        entering = tl.load(ENTERING + offset, mask=valid, other=0.0)
        decay = tl.exp(tl.load(CUMSUM + ((batch * h + head).to(tl.int64) * n_chunks + k) * CHUNK
                               + CHUNK - 1))
        tl.store(DLAST + ((batch * h + head).to(tl.int64) * n_chunks + k) * tl.num_programs(1)
                 + pid_e, decay * tl.sum(entering * d_state, axis=0))
        d_state = d_in + decay * d_state
    if HAS_INITIAL:
        tl.store(DINITIAL + pid_bh.to(tl.int64) * size + e, d_state, mask=valid)


def state_passing_bwd(dstates: torch.Tensor, cumsum: torch.Tensor, entering: torch.Tensor,
                      dfinal: torch.Tensor | None, has_initial: bool,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dstates (b, c, h, p, n) fp32, the outputs' gradient with respect to each entering state
    (overwritten); cumsum (b, h, c, q); entering (b, c, h, p, n) from the forward; dfinal
    (b, h, p, n) or None, any strides. Returns (d_end (b, c, h, p, n), the storage of dstates;
    d_last (b, h, c, blocks) partial sums; d initial state (b, h, p, n) fp32 or None)."""
    b, c, h, p, n = dstates.shape
    dstates, cumsum, entering = dstates.contiguous(), cumsum.contiguous(), entering.contiguous()
    block_e = min(triton.next_power_of_2(p * n), 1024)
    n_e = triton.cdiv(p * n, block_e)
    d_last = torch.empty(b, h, c, n_e, dtype=torch.float32, device=dstates.device)
    d_initial = (torch.empty(b, h, p, n, dtype=torch.float32, device=dstates.device)
                 if has_initial else None)
    _state_passing_bwd_kernel[(b * h, n_e)](
        dstates, cumsum, entering, dfinal if dfinal is not None else dstates,
        d_initial if d_initial is not None else d_last, d_last, h, c, p, n,
        *(dfinal.stride() if dfinal is not None else (0, 0, 0, 0)),
        HAS_DFINAL=dfinal is not None, HAS_INITIAL=has_initial, CHUNK=cumsum.shape[3],
        BLOCK=block_e)
    return dstates, d_last, d_initial
