"""The Mamba2 SSD scan in plain PyTorch: the recurrence, its quadratic form and the chunked form.

Letters (mamba_ssm's, as in the book): b batch, l length, h heads, p head dim, g groups of heads
sharing B and C (head i reads group i // (h // g)), n state size, c chunks, q positions in one
chunk (the chunk size), t and s positions. Uppercase A, B, C, D and dt are the SSM's parameters.
Shapes: x (b, l, h, p); dt (b, l, h); A (h); B, C (b, l, g, n); D (h) or (h, p); z like x;
states (b, h, p, n).

The definition (:func:`ssd_reference`), per head, with dt' the discretisation step::

    dt'_t = softplus(dt_t + dt_bias)   if dt_softplus   else   dt_t + dt_bias
    S_t   = exp(dt'_t A) S_{t-1} + dt'_t x_t B_t^T      (S is (p, n); S_0 = initial state)
    y_t   = S_t C_t + D x_t,            out_t = y_t * silu(z_t)   (when z is given)

Unrolling it gives the quadratic ("attention") form (:func:`ssd_quadratic`; Dao and Gu 2024,
"Transformers are SSMs", state space duality): with a_t = dt'_t A and the segment sums
seg(t, s) = a_{s+1} + ... + a_t,

    y_t = sum_s L_ts (C_t . B_s) dt'_s x_s + exp(a_0 + ... + a_t) S_0 C_t,
    L_ts = exp(seg(t, s)) for s <= t, 0 above the diagonal,

i.e. y = (L o C B^T)(dt' x) + the initial state's decayed part,

so SSD is masked linear attention whose mask decays with the input. The chunked form
(:func:`ssd_chunked`) cuts the sequence into chunks of q positions and runs four stages, the
ones the Triton kernels implement (``triton_*.py``), each with a ``*_ref`` twin here:

1. :func:`chunk_cumsum_ref`: dt' and the running sum of a = dt' A inside each chunk;
2. :func:`chunk_state_ref`: each chunk's own contribution to the state at its end;
3. :func:`state_passing_ref`: a short sequential scan over chunks giving the state entering each;
4. :func:`chunk_scan_ref`: the quadratic form inside each chunk plus the entering state's part.

Padding: a length that is not a multiple of q is padded at the end with dt' = 0 (set *after*
the bias and softplus, so softplus(0 + dt_bias) never leaks in), x = B = C = 0. A padded
position then decays the state by exp(0) = 1 and adds nothing, so the final state and the real
outputs are exact; the padded outputs are cut off.

Precision: every form computes in float32 (float64 when x is float64) and returns the output in
x's dtype and the states in float32 (float64 for float64 inputs). This module imports torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "ssd_reference",
    "ssd_quadratic",
    "ssd_chunked",
    "ssd_state_update",
    "discretize",
    "segsum",
    "chunk_cumsum_ref",
    "chunk_state_ref",
    "state_passing_ref",
    "chunk_scan_ref",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def discretize(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool,
               dtype: torch.dtype) -> torch.Tensor:
    """dt' = softplus(dt + dt_bias) or dt + dt_bias, in ``dtype``; dt (..., h), dt_bias (h)."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    return F.softplus(dt) if dt_softplus else dt


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    """(b, l, g, n) -> (b, l, h, n): head i reads group i // (h // g)."""
    return t.repeat_interleave(h // t.shape[2], dim=2)


def _finish(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None,
            z: torch.Tensor | None) -> torch.Tensor:
    """y + D x, gated by silu(z), in y's dtype; x, z (..., h, p), D (h) or (h, p)."""
    if D is not None:
        d = D.to(y.dtype)
        y = y + (d[:, None] if d.ndim == 1 else d) * x.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def _initial(initial_states, b, h, p, n, dtype, device):
    if initial_states is None:
        return torch.zeros(b, h, p, n, dtype=dtype, device=device)
    return initial_states.to(dtype)


def ssd_reference(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None,
                  dt_softplus=False, return_final_states=False):
    """The sequential recurrence, one position at a time: the definition (see the module doc).

    Mirrors mamba_ssm's ``mamba_chunk_scan_combined`` arguments (chunk_size is not needed).
    """
    b, length, h, p = x.shape
    n = B.shape[-1]
    cd = compute_dtype(x.dtype)
    dtp = discretize(dt, dt_bias, dt_softplus, cd)                        # (b, l, h)
    decay = torch.exp(dtp * A.to(cd))                                      # (b, l, h)
    Bh, Ch = _heads(B, h).to(cd), _heads(C, h).to(cd)                      # (b, l, h, n)
    xc = x.to(cd)
    state = _initial(initial_states, b, h, p, n, cd, x.device)             # (b, h, p, n)
    ys = []
    for t in range(length):
        update = (dtp[:, t, :, None] * xc[:, t])[..., None] * Bh[:, t, :, None, :]
        state = decay[:, t, :, None, None] * state + update                # (b, h, p, n)
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else xc.new_zeros(b, 0, h, p)         # (b, l, h, p)
    out = _finish(y, x, D, z).to(x.dtype)
    return (out, state) if return_final_states else out


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Segment sums along the last axis: (..., l) -> (..., l, l) with entry [t, s] equal to
    a_{s+1} + ... + a_t for s <= t (0 on the diagonal) and -inf above it, so exp() of it is the
    decay mask L. Summed directly rather than as a difference of two cumulative sums, which
    would cancel catastrophically on long sequences in float32."""
    length = a.shape[-1]
    rows = a[..., :, None].expand(*a.shape, length)                  # [t, s] = a_t
    strictly_lower = torch.ones(length, length, dtype=torch.bool, device=a.device).tril(-1)
    sums = rows.masked_fill(~strictly_lower, 0).cumsum(dim=-2)  # [t, s] = sum_{s < k <= t} a_k
    lower = torch.ones(length, length, dtype=torch.bool, device=a.device).tril()
    return sums.masked_fill(~lower, float("-inf"))


def ssd_quadratic(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None,
                  dt_softplus=False, return_final_states=False):
    """The quadratic form y = (L o C B^T)(dt' x) plus the initial state's decayed part: SSD as
    masked linear attention, O(l^2) time and memory."""
    b, length, h, p = x.shape
    n = B.shape[-1]
    cd = compute_dtype(x.dtype)
    dtp = discretize(dt, dt_bias, dt_softplus, cd).transpose(1, 2)        # (b, h, l)
    a = dtp * A.to(cd)[:, None]                                            # (b, h, l)
    Bh = _heads(B, h).to(cd).transpose(1, 2)                               # (b, h, l, n)
    Ch = _heads(C, h).to(cd).transpose(1, 2)                               # (b, h, l, n)
    xs = x.to(cd).transpose(1, 2) * dtp[..., None]                         # (b, h, l, p)
    L = torch.exp(segsum(a))                                               # (b, h, l, l)
    y = (L * (Ch @ Bh.transpose(-1, -2))) @ xs                             # (b, h, l, p)
    from_start = torch.exp(torch.cumsum(a, dim=-1))                        # (b, h, l)
    state0 = _initial(initial_states, b, h, p, n, cd, x.device)
    y = y + from_start[..., None] * (Ch @ state0.transpose(-1, -2))        # (b, h, l, p)
    out = _finish(y.transpose(1, 2), x, D, z).to(x.dtype)
    if not return_final_states:
        return out
    to_end = torch.exp(a.sum(-1, keepdim=True) - torch.cumsum(a, dim=-1))  # (b, h, l)
    final = state0 * (from_start[..., -1:, None] if length else 1.0) + torch.einsum(
        "bhl,bhlp,bhln->bhpn", to_end, xs, Bh)
    return out, final


# ---- the chunked algorithm, stage by stage (the Triton kernels' twins) -----------------------

def chunk_cumsum_ref(dt, A, dt_bias, dt_softplus, chunk_size, dtype):
    """Stage 1. dt (b, l, h) -> dt' and its running decay exponent inside each chunk, both
    (b, h, c, q), with the padded positions' dt' set to 0 (after bias and softplus)."""
    b, length, h = dt.shape
    c = -(-length // chunk_size)
    dtp = discretize(dt, dt_bias, dt_softplus, dtype)                      # (b, l, h)
    dtp = F.pad(dtp, (0, 0, 0, c * chunk_size - length))                        # zeros at the end
    dtp = dtp.reshape(b, c, chunk_size, h).permute(0, 3, 1, 2)             # (b, h, c, q)
    return dtp, torch.cumsum(dtp * A.to(dtype)[:, None, None], dim=-1)


def chunk_state_ref(xc, Bc, dtp, dA_cumsum):
    """Stage 2. Each chunk's state at its end, starting from zero:
    sum_s exp(cumsum_last - cumsum_s) dt'_s x_s B_s^T. xc (b, c, q, h, p), Bc (b, c, q, h, n);
    returns (b, c, h, p, n)."""
    to_end = torch.exp(dA_cumsum[..., -1:] - dA_cumsum) * dtp              # (b, h, c, q)
    return torch.einsum("bhcq,bcqhp,bcqhn->bchpn", to_end, xc, Bc)


def state_passing_ref(chunk_states, dA_cumsum, initial_states):
    """Stage 3. The state entering every chunk and the final state: a sequential scan over the
    c chunks, S_in[k+1] = exp(chunk k's total decay exponent) S_in[k] + chunk_states[k].
    Returns (entering (b, c, h, p, n), final (b, h, p, n))."""
    chunk_decay = torch.exp(dA_cumsum[..., -1])                            # (b, h, c)
    state = initial_states
    entering = []
    for k in range(chunk_states.shape[1]):
        entering.append(state)
        state = chunk_decay[:, :, k, None, None] * state + chunk_states[:, k]
    if not entering:  # an empty sequence: no chunks
        b, *rest = initial_states.shape
        return initial_states.new_zeros(b, 0, *rest), state
    return torch.stack(entering, dim=1), state


def chunk_scan_ref(xc, Bc, Cc, dtp, dA_cumsum, entering):
    """Stage 4. Outputs of every chunk: the quadratic form inside the chunk plus the entering
    state decayed to each position, exp(cumsum_t) S_in C_t. Returns y (b, c, q, h, p)."""
    q = dA_cumsum.shape[-1]
    lower = torch.ones(q, q, dtype=torch.bool, device=dA_cumsum.device).tril()
    diff = dA_cumsum[..., :, None] - dA_cumsum[..., None, :]              # (b, h, c, q, q)
    L = torch.exp(diff.masked_fill(~lower, float("-inf")))                # decay from s to t
    scores = torch.einsum("bcthn,bcshn->bhcts", Cc, Bc) * L                # (b, h, c, q, q)
    y = torch.einsum("bhcts,bhcs,bcshp->bcthp", scores, dtp, xc)
    from_start = torch.exp(dA_cumsum).permute(0, 2, 3, 1)                  # (b, c, q, h)
    return y + torch.einsum("bcthn,bchpn->bcthp", Cc, entering) * from_start[..., None]


def ssd_chunked(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                dt_softplus=False, return_final_states=False):
    """The chunked algorithm: quadratic inside chunks of ``chunk_size`` positions, states passed
    between chunks; O(l q) work for the quadratic part and O(l p n) for the states. Any length:
    the sequence is padded to whole chunks in a way that cannot leak (see the module doc)."""
    b, length, h, p = x.shape
    n = B.shape[-1]
    cd = compute_dtype(x.dtype)
    c = -(-length // chunk_size)
    pad = c * chunk_size - length

    def chunked(t):  # (b, l, k, m) -> (b, c, q, k, m), zero-padded
        return F.pad(t.to(cd), (0, 0, 0, 0, 0, pad)).reshape(b, c, chunk_size, *t.shape[2:])

    dtp, dA_cumsum = chunk_cumsum_ref(dt, A, dt_bias, dt_softplus, chunk_size, cd)
    xc, Bc, Cc = chunked(x), chunked(_heads(B, h)), chunked(_heads(C, h))
    chunk_states = chunk_state_ref(xc, Bc, dtp, dA_cumsum)
    state0 = _initial(initial_states, b, h, p, n, cd, x.device)
    entering, final = state_passing_ref(chunk_states, dA_cumsum, state0)
    y = chunk_scan_ref(xc, Bc, Cc, dtp, dA_cumsum, entering)
    y = y.reshape(b, c * chunk_size, h, p)[:, :length]
    out = _finish(y, x, D, z).to(x.dtype)
    return (out, final) if return_final_states else out


def ssd_state_update(state, x_t, dt_t, A, B_t, C_t, D=None, z_t=None, dt_bias=None,
                     dt_softplus=False):
    """One step of the recurrence for decoding: state (b, h, p, n), x_t (b, h, p), dt_t (b, h),
    B_t, C_t (b, g, n), z_t (b, h, p). Returns (out_t in x_t's dtype, new state in the state's
    dtype); the inputs are never modified. Mirrors mamba_ssm's ``selective_state_update`` for
    scalar A per head."""
    h = x_t.shape[1]
    cd = compute_dtype(x_t.dtype)
    dtp = discretize(dt_t, dt_bias, dt_softplus, cd)                       # (b, h)
    decay = torch.exp(dtp * A.to(cd))                                      # (b, h)
    Bh = B_t.to(cd).repeat_interleave(h // B_t.shape[1], dim=1)            # (b, h, n)
    Ch = C_t.to(cd).repeat_interleave(h // C_t.shape[1], dim=1)
    xs = x_t.to(cd) * dtp[..., None]                                       # (b, h, p)
    new = decay[..., None, None] * state.to(cd) + xs[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", new, Ch)
    out = _finish(y, x_t, D, z_t).to(x_t.dtype)
    return out, new.to(state.dtype)
