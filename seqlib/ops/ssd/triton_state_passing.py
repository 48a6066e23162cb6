"""Stage 3 of the chunked SSD in Triton: the states entering every chunk, and the final state.

Twin of ``reference.state_passing_ref``: a sequential scan over the c chunks,

    entering[0] = initial state,  entering[k + 1] = exp(cumsum_last[k]) entering[k] + states[k]

parallel over batch, heads and the p * n state entries (one program per block of entries).
Everything in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _state_passing_kernel(STATES, CUMSUM, INITIAL, ENTERING, FINAL, h, n_chunks, p, n,
                          stride_ib, stride_ih, stride_ip, stride_in,
                          HAS_INITIAL: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid_bh, pid_e = tl.program_id(0), tl.program_id(1)
    batch, head = pid_bh // h, pid_bh % h
    e = pid_e * BLOCK + tl.arange(0, BLOCK)                       # flat (p, n) entries
    valid = e < p * n
    if HAS_INITIAL:
        ptrs = (INITIAL + batch.to(tl.int64) * stride_ib + head * stride_ih
                + (e // n) * stride_ip + (e % n) * stride_in)
        state = tl.load(ptrs, mask=valid, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BLOCK,), dtype=tl.float32)
    size = p * n
    for k in range(n_chunks):
        offset = ((batch * n_chunks + k) * h + head).to(tl.int64) * size + e
        tl.store(ENTERING + offset, state, mask=valid)
        decay = tl.exp(tl.load(CUMSUM + ((batch * h + head).to(tl.int64) * n_chunks + k) * CHUNK
                               + CHUNK - 1))
        state = decay * state + tl.load(STATES + offset, mask=valid, other=0.0)
    tl.store(FINAL + pid_bh.to(tl.int64) * size + e, state, mask=valid)


def state_passing(states: torch.Tensor, cumsum: torch.Tensor,
                  initial_states: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """states (b, c, h, p, n), cumsum (b, h, c, q), initial (b, h, p, n) or None ->
    (entering (b, c, h, p, n), final (b, h, p, n)), fp32."""
    b, c, h, p, n = states.shape
    entering = torch.empty_like(states)
    final = torch.empty(b, h, p, n, dtype=torch.float32, device=states.device)
    block_e = min(triton.next_power_of_2(p * n), 1024)
    strides = initial_states.stride() if initial_states is not None else (0, 0, 0, 0)
    _state_passing_kernel[(b * h, triton.cdiv(p * n, block_e))](
        states, cumsum, initial_states if initial_states is not None else states, entering,
        final, h, c, p, n, *strides, HAS_INITIAL=initial_states is not None,
        CHUNK=cumsum.shape[3], BLOCK=block_e)
    return entering, final
