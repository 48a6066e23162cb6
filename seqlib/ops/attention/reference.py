"""Scaled dot-product attention in plain PyTorch: the definition, and its tiled form.

Letters: b batch, h query heads, hk key/value heads (h % hk == 0, g = h // hk query heads share
one key/value head), lq query length, lk key length, d head dim, i a query position, j a key
position. Shapes: q (b, h, lq, d); k, v (b, hk, lk, d); output (b, h, lq, d).

The definition (:func:`attention_reference`), for each query row i of each head::

    s_ij = scale * q_i . k_j                      (scores, scale = 1/sqrt(d) by default)
    p_ij = exp(s_ij - m_i) / sum_j' exp(s_ij' - m_i)   over visible j only, m_i = max_j s_ij
    o_i  = sum_j p_ij v_j

Visibility (:func:`visible_keys`): with ``is_causal`` the queries are aligned to the *end* of
the keys, as in flash-attn >= 2.1, so query i sees key j iff j <= i + (lk - lq); a ``window``
w (which implies causal) also drops keys older than the last w: j > i + (lk - lq) - w. A row
that sees no key at all returns zeros and passes back zero gradients.

The tiled form (:func:`attention_tiled`) computes the same thing without ever holding the
(lq, lk) matrix of scores: it walks over chunks of queries and, for each, over chunks of keys,
keeping per query row a running maximum m, a running sum l of exponentials and a running
weighted sum of values, rescaled whenever the maximum grows (online softmax: Milakov and
Gimelshein 2018; its use for attention: Dao et al. 2022, "FlashAttention", and Dao 2023,
"FlashAttention-2"). Its backward pass recomputes the chunks of probabilities from the row
log-sum-exp saved by the forward, as the Triton kernels do: this module is the bridge from the
definition to ``triton_fwd.py`` and ``triton_bwd.py``.

This module imports torch only.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "visible_keys",
    "attention_reference",
    "attention_tiled",
    "tiled_forward",
    "tiled_backward",
    "DEFAULT_CHUNK",
]

#: Chunk of queries and of keys that the tiled form works on at a time (measured on the CPU by
#: ``python -m seqlib.bench attention``: 256 keeps the matrix products large enough to be
#: efficient while the per-chunk tensors stay small).
DEFAULT_CHUNK = 256


def visible_keys(lq: int, lk: int, is_causal: bool = False, window: int | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (lq, lk) matrix: entry (i, j) is True iff query i may attend to key j.

    Causal alignment is to the bottom right: query i sees key j iff j <= i + (lk - lq), so the
    last query sees every key (decoding with a cache). ``window=w`` implies causal and keeps only
    j > i + (lk - lq) - w, the last w keys up to the query's own position.
    """
    return _visible_block(0, lq, 0, lk, lk - lq, is_causal, window, device)


def _visible_block(i0: int, i1: int, j0: int, j1: int, shift: int, is_causal: bool,
                   window: int | None, device: torch.device | str | None) -> torch.Tensor:
    """Rows i0 <= i < i1 and columns j0 <= j < j1 of :func:`visible_keys` (shift = lk - lq)."""
    i = torch.arange(i0, i1, device=device)[:, None]  # (i1 - i0, 1)
    j = torch.arange(j0, j1, device=device)[None, :]  # (1, j1 - j0)
    visible = torch.ones(i1 - i0, j1 - j0, dtype=torch.bool, device=device)
    if is_causal or window is not None:
        visible = visible & (j <= i + shift)
    if window is not None:
        visible = visible & (j > i + shift - window)
    return visible


def _block_is_fully_visible(i0: int, i1: int, j0: int, j1: int, shift: int, is_causal: bool,
                            window: int | None) -> bool:
    """True when every query of [i0, i1) sees every key of [j0, j1): no mask needed."""
    causal_ok = not (is_causal or window is not None) or j1 - 1 <= i0 + shift
    window_ok = window is None or j0 > i1 - 1 + shift - window
    return causal_ok and window_ok


def _default_scale(d: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(d) if scale is None else float(scale)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        is_causal: bool = False, scale: float | None = None,
                        window: int | None = None) -> torch.Tensor:
    """Attention as written on paper: every score, the mask, a softmax, the weighted sum.

    Runs in the inputs' dtype (float64 gives the exact answer the tests compare against) and
    holds the full (b, h, lq, lk) matrix of scores, so its memory grows as lq * lk. Arguments
    as :func:`seqlib.ops.attention.attention` (which checks them; this function does not).
    """
    b, h, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    scale = _default_scale(d, scale)
    # grouped-query attention: query head i reads key/value head i // (h // hk)
    k = k.repeat_interleave(h // hk, dim=1)  # (b, h, lk, d)
    v = v.repeat_interleave(h // hk, dim=1)  # (b, h, lk, d)

    scores = scale * (q @ k.transpose(-2, -1))  # (b, h, lq, lk)
    visible = visible_keys(lq, lk, is_causal, window, device=q.device)  # (lq, lk)
    scores = scores.masked_fill(~visible, float("-inf"))

    # softmax written out so that a row with no visible key gives zeros instead of 0/0 = NaN:
    # subtract the row maximum (0 for an empty row) and divide by the row sum (1 if it is 0).
    if lk > 0:
        row_max = scores.amax(dim=-1, keepdim=True).detach()  # softmax does not depend on it
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    else:  # no keys at all (an empty cache): every row is empty
        row_max = scores.new_zeros(b, h, lq, 1)
    weights = torch.exp(scores - row_max)  # (b, h, lq, lk), 0 where masked
    row_sum = weights.sum(dim=-1, keepdim=True)
    probs = weights / torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))
    return probs @ v  # (b, h, lq, d)


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float type accumulates in float32, as the kernels do."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _key_range(i0: int, i1: int, lq: int, lk: int, is_causal: bool,
               window: int | None) -> tuple[int, int]:
    """Keys [lo, hi) that at least one of the queries i0 <= i < i1 may see (empty if lo >= hi)."""
    shift = lk - lq
    lo, hi = 0, lk
    if is_causal or window is not None:
        hi = min(lk, max(0, i1 + shift))  # the last query, i1 - 1, sees keys j <= i1 - 1 + shift
    if window is not None:
        lo = max(0, i0 + shift - window + 1)  # the first query sees keys from i0+shift-w+1
    return lo, max(lo, hi)


def tiled_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False,
                  scale: float | None = None, window: int | None = None,
                  chunk: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Online-softmax attention over chunks; returns ``(out, lse)``.

    ``out`` is (b, h, lq, d) in q's dtype; ``lse`` is the log-sum-exp of each row's visible
    scores, (b, h, lq), in float32 (float64 for float64 inputs), +inf for a row that sees no
    key. Never holds more than a (chunk, chunk) block of scores per head.
    """
    b, h, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    g = h // hk
    scale = _default_scale(d, scale)
    acc_dtype = _accumulator_dtype(q.dtype)
    q5 = q.reshape(b, hk, g, lq, d)  # the g query heads that share one key/value head
    out = torch.zeros(b, hk, g, lq, d, dtype=q.dtype, device=q.device)
    lse = torch.full((b, hk, g, lq), float("inf"), dtype=acc_dtype, device=q.device)

    for i0 in range(0, lq, chunk):
        i1 = min(i0 + chunk, lq)
        qi = q5[:, :, :, i0:i1].to(acc_dtype)  # (b, hk, g, cq, d)
        m = torch.full(qi.shape[:-1], float("-inf"), dtype=acc_dtype, device=q.device)
        row_sum = torch.zeros_like(m)  # running sum of exp(s - m), "l" in the papers
        acc = torch.zeros_like(qi)  # running sum of exp(s - m) * v
        lo, hi = _key_range(i0, i1, lq, lk, is_causal, window)
        for j0 in range(lo, hi, chunk):
            j1 = min(j0 + chunk, hi)
            kj = k[:, :, None, j0:j1].to(acc_dtype)  # (b, hk, 1, ck, d)
            vj = v[:, :, None, j0:j1].to(acc_dtype)
            s = scale * (qi @ kj.transpose(-2, -1))  # (b, hk, g, cq, ck)
            if not _block_is_fully_visible(i0, i1, j0, j1, lk - lq, is_causal, window):
                visible = _visible_block(i0, i1, j0, j1, lk - lq, is_causal, window, q.device)
                s = s.masked_fill(~visible, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))
            # a row that has seen no key yet keeps m = -inf; shift it by 0 instead (no NaN)
            m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            alpha = torch.exp(m - m_safe)  # rescales what was summed under the old maximum
            p = torch.exp(s - m_safe[..., None])  # (b, hk, g, cq, ck)
            row_sum = row_sum * alpha + p.sum(dim=-1)
            acc = acc * alpha[..., None] + p @ vj
            m = m_new
        seen = row_sum > 0  # False for a row that sees no key: it keeps out = 0, lse = +inf
        safe_sum = torch.where(seen, row_sum, 1.0)
        out[:, :, :, i0:i1] = (acc / safe_sum[..., None]).to(q.dtype)
        lse[:, :, :, i0:i1] = torch.where(seen, m + torch.log(safe_sum), float("inf"))
    return out.reshape(b, h, lq, d), lse.reshape(b, h, lq)


def tiled_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   out: torch.Tensor, lse: torch.Tensor, is_causal: bool = False,
                   scale: float | None = None, window: int | None = None,
                   chunk: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of attention, recomputing each block of probabilities.

    With P the probabilities, dO the upstream gradient and delta_i = sum_d dO_i * O_i (which
    equals sum_j P_ij dP_ij), the softmax backward is dS = P * (dP - delta) with dP = dO V^T,
    and then dQ = scale * dS K, dK = scale * dS^T Q, dV = P^T dO. P is rebuilt block by block
    as exp(s - lse), so nothing of size (lq, lk) is stored between the passes. dk and dv sum
    over the g query heads that share each key/value head.
    """
    b, h, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    g = h // hk
    scale = _default_scale(d, scale)
    acc_dtype = _accumulator_dtype(q.dtype)
    q5 = q.reshape(b, hk, g, lq, d)
    do5 = dout.reshape(b, hk, g, lq, d)
    lse5 = lse.reshape(b, hk, g, lq).to(acc_dtype)
    delta = (do5.to(acc_dtype) * out.reshape(b, hk, g, lq, d).to(acc_dtype)).sum(-1)
    dq = torch.zeros(b, hk, g, lq, d, dtype=acc_dtype, device=q.device)
    dk = torch.zeros(b, hk, lk, d, dtype=acc_dtype, device=q.device)
    dv = torch.zeros_like(dk)

    for i0 in range(0, lq, chunk):
        i1 = min(i0 + chunk, lq)
        qi = q5[:, :, :, i0:i1].to(acc_dtype)  # (b, hk, g, cq, d)
        doi = do5[:, :, :, i0:i1].to(acc_dtype)
        lo, hi = _key_range(i0, i1, lq, lk, is_causal, window)
        for j0 in range(lo, hi, chunk):
            j1 = min(j0 + chunk, hi)
            kj = k[:, :, None, j0:j1].to(acc_dtype)  # (b, hk, 1, ck, d)
            vj = v[:, :, None, j0:j1].to(acc_dtype)
            s = scale * (qi @ kj.transpose(-2, -1))  # (b, hk, g, cq, ck)
            if not _block_is_fully_visible(i0, i1, j0, j1, lk - lq, is_causal, window):
                visible = _visible_block(i0, i1, j0, j1, lk - lq, is_causal, window, q.device)
                s = s.masked_fill(~visible, float("-inf"))
            p = torch.exp(s - lse5[:, :, :, i0:i1, None])  # 0 where masked or row empty
            dp = doi @ vj.transpose(-2, -1)  # (b, hk, g, cq, ck)
            ds = p * (dp - delta[:, :, :, i0:i1, None])
            dq[:, :, :, i0:i1] += scale * (ds @ kj)
            dk[:, :, j0:j1] += scale * (ds.transpose(-2, -1) @ qi).sum(dim=2)  # sum over g
            dv[:, :, j0:j1] += (p.transpose(-2, -1) @ doi).sum(dim=2)
    return (dq.reshape(b, h, lq, d).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype))


class _TiledAttention(torch.autograd.Function):
    """The tiled forward and backward as one differentiable operation: autograd keeps q, k, v,
    the output and the (b, h, lq) log-sum-exp, never the blocks of probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, window, chunk):
        out, lse = tiled_forward(q, k, v, is_causal, scale, window, chunk)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.options = (is_causal, scale, window, chunk)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = tiled_backward(dout, q, k, v, out, lse, *ctx.options)
        return dq, dk, dv, None, None, None, None


def attention_tiled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False,
                    scale: float | None = None, window: int | None = None,
                    chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Attention by online softmax over (chunk, chunk) blocks, differentiable, in PyTorch.

    Same result as :func:`attention_reference` (to rounding) with memory linear in the lengths:
    the forward keeps one block of scores at a time, the backward recomputes them.
    """
    return _TiledAttention.apply(q, k, v, is_causal, scale, window, chunk)
