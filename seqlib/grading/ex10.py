"""Checks for exercise 10 (FlashAttention: memory traffic, online softmax, a Triton kernel).

Each ``check_*`` takes the student's function (or kernel), runs it on seeded inputs built here,
and compares it with a reference written in this module. Letters: b batch, h heads, lq query
length, lk key length, d head dim; one head's queries are q (lq, d), its keys and values k, v
(lk, d); scores s = q k^T / sqrt(d); softmax over the keys of each query row.

- `check_naive_attention_bytes`: ``naive_attention_bytes(b, h, lq, lk, d, bytes_per_element)``
  -> the bytes that three-kernel attention (scores, softmax, weighted sum) moves to and from
  the GPU's main memory
- `check_online_softmax_attention`: ``online_softmax_attention(q, k, v, block_size)`` -> (lq, d),
  softmax attention computed over blocks of keys with a running maximum and a running sum,
  never holding the full (lq, lk) matrix of scores and never calling a library softmax
- `check_flash_forward_kernel`: ``flash_forward_kernel``, a ``@triton.jit`` kernel with the
  signature of the notebook; the check launches it itself (on a CUDA GPU, or on the CPU under
  Triton's interpreter) and compares the output and the row log-sum-exp with the reference

This module imports Triton only inside `check_flash_forward_kernel`, so that everything else
works where Triton is not installed (macOS, Windows).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .core import Case, Check, Hint, WrongAnswer, run_check
from .triton_tasks import kernel_source, triton_problem

__all__ = [
    "check_flash_forward_kernel",
    "check_naive_attention_bytes",
    "check_online_softmax_attention",
]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(a: torch.Tensor, b, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """True when b has a's shape and values (used by hints to recognise a known mistake)."""
    return (isinstance(b, torch.Tensor) and a.shape == b.shape
            and bool(torch.isfinite(b).all())
            and torch.allclose(b.double(), a.double(), rtol=rtol, atol=atol))


# ---------------------------------------------------------------------------------------------
# The bytes that naive attention moves


def _naive_bytes_reference(b: int, h: int, lq: int, lk: int, d: int,
                           bytes_per_element: int) -> int:
    # kernel 1, S = scale Q K^T: reads Q and K, writes S; kernel 2, P = softmax(S): reads S,
    # writes P; kernel 3, O = P V: reads P and V, writes O
    elements = (lq * d + lk * d + lq * lk) + (2 * lq * lk) + (lq * lk + lk * d + lq * d)
    return b * h * elements * bytes_per_element


def _naive_bytes_cases() -> list[Case]:
    def case(label, b, h, lq, lk, d, size):
        return Case(label, {"b": b, "h": h, "lq": lq, "lk": lk, "d": d,
                            "bytes_per_element": size})

    return [
        case("one head, lq = lk = 4, d = 2, float32", 1, 1, 4, 4, 2, 4),
        case("the chapter's size: b = 1, h = 16, l = 4096, d = 64, bf16", 1, 16, 4096, 4096,
             64, 2),
        case("lq = 100 queries, lk = 300 keys, b = 2, h = 8, d = 32, float32", 2, 8, 100, 300,
             32, 4),
        case("decoding one token against a cache of 1000 keys: b = 3, h = 2, d = 128, fp16",
             3, 2, 1, 1000, 128, 2),
    ]


def _bytes_variant(a: dict, score_passes: int = 4, per_element: bool = True,
                   heads: bool = True) -> float:
    elements = 2 * a["lq"] * a["d"] + 2 * a["lk"] * a["d"] + score_passes * a["lq"] * a["lk"]
    return (elements * (a["b"] * a["h"] if heads else 1)
            * (a["bytes_per_element"] if per_element else 1))


def _equals(x: float, y) -> bool:
    return isinstance(y, int | float) and math.isclose(float(y), x, rel_tol=1e-9)


_BYTES_HINTS = (
    Hint("this counts the (lq, lk) matrices twice; each is written once AND read once: S is"
         " written by the first kernel and read by the softmax, P written by the softmax and"
         " read by the third kernel: 4 lq lk elements in all",
         lambda e, g, a: _equals(_bytes_variant(a, score_passes=2), g)),
    Hint("this counts the (lq, lk) matrices three times; there are four passes: write S,"
         " read S, write P, read P",
         lambda e, g, a: _equals(_bytes_variant(a, score_passes=3), g)),
    Hint("this counts elements; multiply by bytes_per_element (2 for fp16 and bf16, 4 for"
         " float32)", lambda e, g, a: _equals(_bytes_variant(a, per_element=False), g)),
    Hint("every (batch, head) pair moves its own Q, K, V, S, P and O: multiply by b * h",
         lambda e, g, a: _equals(_bytes_variant(a, heads=False), g)),
)


def check_naive_attention_bytes(naive_attention_bytes) -> None:
    """Check ``naive_attention_bytes(b, h, lq, lk, d, bytes_per_element)``: the bytes read and
    written by three kernels, S = scale Q K^T, P = softmax(S), O = P V."""
    run_check(Check(
        title="bytes of naive attention", reference=_naive_bytes_reference,
        cases=_naive_bytes_cases(), rtol=1e-9,
        hint="per (batch, head): kernel 1 reads Q (lq d) and K (lk d) and writes S (lq lk);"
             " kernel 2 reads S and writes P; kernel 3 reads P and V (lk d) and writes O"
             " (lq d); multiply the elements by b * h * bytes_per_element",
        hints=_BYTES_HINTS,
        example="check_naive_attention_bytes(naive_attention_bytes)"), naive_attention_bytes)


# ---------------------------------------------------------------------------------------------
# Online softmax in plain PyTorch

_LIBRARY_SOFTMAX = {
    torch.softmax: "torch.softmax",
    torch.Tensor.softmax: "Tensor.softmax",
    F.softmax: "torch.nn.functional.softmax",
    torch.special.softmax: "torch.special.softmax",
    torch.log_softmax: "torch.log_softmax",
    torch.Tensor.log_softmax: "Tensor.log_softmax",
    F.log_softmax: "torch.nn.functional.log_softmax",
    F.scaled_dot_product_attention: "torch.nn.functional.scaled_dot_product_attention",
}


def _attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         block_size: int | None = None) -> torch.Tensor:
    """Softmax attention of one head in float64, every score at once, returned in q's dtype."""
    s = (q.double() @ k.double().T) / math.sqrt(q.shape[-1])  # (lq, lk)
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    return ((p / p.sum(dim=-1, keepdim=True)) @ v.double()).to(q.dtype)


def _online_variant(q, k, v, block_size: int, *, rescale: bool = True, scaled: bool = True,
                    divide: bool = True, flipped: bool = False,
                    padded_keys: bool = False) -> torch.Tensor:
    """Online softmax in float64, optionally with one known mistake, for the hints:
    ``rescale=False`` never rescales the accumulator and the sum when the maximum grows;
    ``scaled=False`` leaves out 1/sqrt(d); ``divide=False`` forgets the final division by the
    sum; ``flipped`` rescales by exp(m_new - m_old) instead of exp(m_old - m_new);
    ``padded_keys`` pads the last block with zero keys and values that take part in the sum."""
    q, k, v = q.double(), k.double(), v.double()
    lq, d = q.shape
    lk = k.shape[0]
    scale = 1 / math.sqrt(d) if scaled else 1.0
    m = torch.full((lq,), -math.inf, dtype=torch.float64)
    ell = torch.zeros(lq, dtype=torch.float64)
    acc = torch.zeros(lq, v.shape[1], dtype=torch.float64)
    for j0 in range(0, lk, block_size):
        kj, vj = k[j0:j0 + block_size], v[j0:j0 + block_size]
        if padded_keys and len(kj) < block_size:
            missing = block_size - len(kj)
            kj = torch.cat([kj, kj.new_zeros(missing, d)])
            vj = torch.cat([vj, vj.new_zeros(missing, vj.shape[1])])
        s = scale * (q @ kj.T)
        m_new = torch.maximum(m, s.amax(dim=-1))
        alpha = torch.exp(m - m_new) if not flipped else torch.exp(m_new - m).nan_to_num(0.0)
        if not rescale:
            alpha = torch.ones_like(alpha)
        p = torch.exp(s - m_new[:, None])
        ell = alpha * ell + p.sum(dim=-1)
        acc = alpha[:, None] * acc + p @ vj
        m = m_new
    return acc / ell[:, None] if divide else acc


class _WatchShapes(TorchFunctionMode):
    """Records whether any torch call returns a tensor whose last two axes are (lq, lk) or
    (lk, lq): the full matrix of scores (or of weights) that online softmax never builds."""

    def __init__(self, lq: int, lk: int):
        super().__init__()
        self.shapes = {(lq, lk), (lk, lq)}
        self.seen: tuple[int, ...] | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, tuple | list) else (result,):
            if (self.seen is None and isinstance(t, torch.Tensor) and t.ndim >= 2
                    and tuple(t.shape[-2:]) in self.shapes):
                self.seen = tuple(t.shape)
        return result


def _without_full_scores(function, args) -> torch.Tensor:
    """Probe: run the function, and refuse it if it built the (lq, lk) matrix of scores."""
    lq, lk = args["q"].shape[0], args["k"].shape[0]
    if function is _attention_reference or lk <= args["block_size"]:
        return function(*args.values())  # one block holds every key: nothing to watch
    watch = _WatchShapes(lq, lk)
    with watch:
        out = function(*args.values())
    if watch.seen is not None:
        raise WrongAnswer(
            f"it builds a tensor of shape {watch.seen}, the full matrix of scores of"
            f" {lq} queries against all {lk} keys; online softmax keeps only (lq, block_size)"
            f" blocks, so that its memory does not grow with lq * lk")
    return out


def _online_cases() -> list[Case]:
    g = _generator(1001)

    def randn(*shape, scale=1.0, dtype=torch.float32):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    def case(label, lq, lk, d, block, *, q_scale=1.0, dtype=torch.float32, keys=None):
        q = randn(lq, d, scale=q_scale, dtype=dtype)
        if keys is not None:  # positive queries, so that larger keys give larger scores
            q, k = q.abs(), keys.to(dtype)
        else:
            k = randn(lk, d, dtype=dtype)
        return Case(label, {"q": q, "k": k, "v": randn(lk, d, dtype=dtype),
                            "block_size": block}, probe=_without_full_scores)

    # keys whose scores grow block after block, so the running maximum changes at every block
    growing = (torch.linspace(0.2, 3.0, 12, dtype=torch.float64)[:, None]
               * (1 + 0.1 * torch.rand(12, 4, generator=g, dtype=torch.float64)))
    return [
        case("one query, 5 keys, blocks of 2 (the last block holds one key)", 1, 5, 4, 2),
        case("6 queries, 23 keys, d = 8, blocks of 5", 6, 23, 8, 5),
        case("scores that grow from block to block: the maximum changes every time", 3, 12,
             4, 3, keys=growing),
        case("fewer keys than one block: 3 queries, 4 keys, blocks of 8", 3, 4, 6, 8),
        case("blocks of a single key", 4, 7, 5, 1),
        case("large scores (about +-100): exp overflows unless the maximum is subtracted",
             5, 19, 16, 4, q_scale=50.0),
        case("float64 inputs: the output keeps their dtype", 7, 30, 8, 16,
             dtype=torch.float64),
    ]


_ONLINE_HINTS = (
    Hint("exp overflowed: subtract the running maximum m before every exp, exp(s - m_new),"
         " and rescale what was summed before by exp(m_old - m_new)",
         lambda e, g, a: isinstance(g, torch.Tensor) and not bool(torch.isfinite(g).all())),
    Hint("return the output in q's dtype (compute in it, or convert back with .to(q.dtype))",
         lambda e, g, a: g.dtype != e.dtype),
    Hint("when a block raises the running maximum from m_old to m_new, what was summed under"
         " m_old must be multiplied by exp(m_old - m_new): both the running sum AND the"
         " accumulator of weighted values",
         lambda e, g, a: _same(_online_variant(*a.values(), rescale=False), g)),
    Hint("the rescaling factor is exp(m_old - m_new) (at most 1, since m_new >= m_old), not"
         " exp(m_new - m_old)",
         lambda e, g, a: _same(_online_variant(*a.values(), flipped=True), g)),
    Hint("the scores are scaled: s = q k^T / sqrt(d)",
         lambda e, g, a: _same(_online_variant(*a.values(), scaled=False), g)),
    Hint("the accumulator holds sum_j exp(s_j - m) v_j; divide it by the running sum"
         " l = sum_j exp(s_j - m) at the end",
         lambda e, g, a: _same(_online_variant(*a.values(), divide=False), g)),
)


def check_online_softmax_attention(online_softmax_attention) -> None:
    """Check ``online_softmax_attention(q, k, v, block_size)``: q (lq, d), k and v (lk, d) ->
    softmax(q k^T / sqrt(d)) v, (lq, d) in q's dtype, computed one block of keys at a time."""
    run_check(Check(
        title="online softmax attention", reference=_attention_reference,
        cases=_online_cases(), rtol=1e-4, atol=1e-5,
        hint="for each block of keys: s = q k_j^T / sqrt(d); m_new = max(m, rowmax(s));"
             " alpha = exp(m - m_new); l = alpha l + rowsum(exp(s - m_new)); acc = alpha acc +"
             " exp(s - m_new) v_j; m = m_new; at the end return acc / l",
        hints=_ONLINE_HINTS, forbidden=_LIBRARY_SOFTMAX,
        example="check_online_softmax_attention(online_softmax_attention)"),
        online_softmax_attention)


# ---------------------------------------------------------------------------------------------
# The online-softmax forward kernel in Triton

_JUNK = 1.0e4  # what lies just past each input's rows and columns: reading it shows at once
_UNWRITTEN = float("nan")  # what the output buffers hold before the launch


def _padded_copy(x: torch.Tensor, extra_rows: int, extra_cols: int, transposed: bool,
                 fill: float) -> torch.Tensor:
    """x (n, c) copied into a bigger buffer whose other entries are ``fill``; returns the view
    of x's place in it (so its row stride is not c, and with ``transposed`` its column stride
    is not 1)."""
    n, c = x.shape
    if transposed:
        buffer = torch.full((c + extra_cols, n + extra_rows), fill, dtype=x.dtype,
                            device=x.device)
        view = buffer.T[:n, :c]
    else:
        buffer = torch.full((n + extra_rows, c + extra_cols), fill, dtype=x.dtype,
                            device=x.device)
        view = buffer[:n, :c]
    view.copy_(x)
    return view




def _flash_reference(q, k, v, block_m, block_n, layout) -> torch.Tensor:
    return _attention_reference(q, k, v)


def _lse_reference(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    s = (q.double() @ k.double().T) / math.sqrt(q.shape[-1])
    return torch.logsumexp(s, dim=-1)


def _launcher(kernel, device: torch.device, atol: float, rtol: float):
    """The function that run_check calls: launch the student's kernel on copies of the inputs
    laid out in padded buffers, check what it wrote outside the output, check the log-sum-exp
    once the output is right, and return the output."""
    import triton

    def launch(q, k, v, block_m, block_n, layout):
        if "raise NotImplementedError" in kernel_source(kernel):
            raise NotImplementedError
        lq, d = q.shape
        lk = k.shape[0]
        block_d = max(16, triton.next_power_of_2(d))
        transposed = layout == "transposed"
        qd, kd, vd = (_padded_copy(x.to(device), 32, 16, transposed, _JUNK) for x in (q, k, v))
        out = _padded_copy(torch.full((lq, d), _UNWRITTEN, device=device), 32, 16, False,
                           _UNWRITTEN)
        lse_buffer = torch.full((lq + block_m,), _UNWRITTEN, device=device)
        lse = lse_buffer[:lq]
        kernel[(triton.cdiv(lq, block_m),)](
            qd, kd, vd, out, lse, *qd.stride(), *kd.stride(), *vd.stride(), *out.stride(),
            lq, lk, d, 1.0 / math.sqrt(d), block_m, block_n, block_d)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        whole = out.as_strided((lq + 32, d + 16), out.stride())  # the output's whole buffer
        written_around = ~torch.isnan(whole).clone()
        written_around[:lq, :d] = False
        if bool(written_around[lq:].any()) or bool(~torch.isnan(lse_buffer[lq:]).any()):
            raise WrongAnswer("it writes past the last query row (rows >= lq of the output or"
                              " of lse): mask the tl.store with rows < lq")
        if bool(written_around.any()):
            raise WrongAnswer("it writes past the head dim (columns >= d of the output): mask the"
                              " tl.store with dims < d")
        got = out.cpu().clone()
        if torch.isnan(got).any():
            raise WrongAnswer("some entries of the output were never written (still NaN):"
                              " does every program store its whole tile, rows < lq and"
                              " dims < d?")
        expected = _attention_reference(q, k, v).double()
        if torch.allclose(got.double(), expected, atol=atol, rtol=rtol):
            _check_lse(q, k, lse.cpu(), atol, rtol)
        return got

    return launch


def _check_lse(q, k, got: torch.Tensor, atol: float, rtol: float) -> None:
    want = _lse_reference(q, k)
    if torch.allclose(got.double(), want, atol=atol, rtol=rtol):
        return
    row = int(((got.double() - want).abs() > atol + rtol * want.abs()).nonzero()[0])
    unscaled = _lse_reference(q * math.sqrt(q.shape[-1]), k)
    if torch.allclose(got.double(), want / math.log(2), atol=atol, rtol=rtol):
        note = " It looks like log base 2: if you work with exp2, multiply by ln 2 at the end."
    elif torch.allclose(got.double(), unscaled, atol=atol, rtol=rtol):
        note = (" It looks like the scores were not scaled: lse is the log-sum-exp of"
                " scale * q k^T.")
    else:
        note = (" lse[i] = m_i + log(l_i), the natural log, from the running maximum m and the"
                " running sum l of exp(s - m).")
    raise WrongAnswer(f"the output is right but lse is not: row {row}: expected"
                      f" {want[row]:.6g}, got {float(got[row]):.6g}.{note}")


def _kernel_cases() -> list[Case]:
    g = _generator(1010)

    def case(label, lq, lk, d, block_m=16, block_n=16, layout="padded", q_scale=1.0):
        def randn(*shape, scale=1.0):
            return scale * torch.randn(*shape, generator=g)
        return Case(label, {"q": randn(lq, d, scale=q_scale), "k": randn(lk, d),
                            "v": randn(lk, d), "block_m": block_m, "block_n": block_n,
                            "layout": layout})

    return [
        case("a single query and a single key: the output is that key's value", 1, 1, 16),
        case("transposed inputs (stride_qd, stride_kd, stride_vd are not 1), lq = 9, lk = 33",
             9, 33, 16, layout="transposed"),
        case("lq = 17 queries, lk = 40 keys, d = 16: both lengths cut by the tiles", 17, 40, 16),
        case("more queries than keys: lq = 40, lk = 17", 40, 17, 16),
        case("head dim d = 12, padded to BLOCK_D = 16", 17, 40, 12),
        case("large scores (about +-100) and BLOCK_N = 32: a running maximum is needed", 17,
             40, 16, block_n=32, q_scale=50.0),
    ]


def _padded_keys_in(a: dict) -> torch.Tensor:
    return _online_variant(a["q"], a["k"], a["v"], a["block_n"], padded_keys=True)


_KERNEL_HINTS = (
    Hint("some values are not finite: subtract the running maximum before tl.exp, and keep"
         " padded keys out with tl.where(cols < lk, s, float('-inf')) rather than by"
         " loading zeros", lambda e, g, a: not bool(torch.isfinite(g).all())),
    Hint("the keys past lk in the last tile take part in the softmax: after loading them"
         " (mask=..., other=0.0) their scores are 0, not -inf; set them with"
         " tl.where(cols[None, :] < lk, s, float('-inf'))",
         lambda e, g, a: _same(_padded_keys_in(a), g)),
    Hint("when a tile raises the running maximum from m_old to m_new, multiply both the"
         " running sum and the accumulator by alpha = exp(m_old - m_new)",
         lambda e, g, a: _same(_online_variant(a["q"], a["k"], a["v"], a["block_n"],
                                               rescale=False), g)),
    Hint("the scores are scaled: s = scale * q k^T (the check passes scale = 1/sqrt(d))",
         lambda e, g, a: _same(_online_variant(a["q"], a["k"], a["v"], a["block_n"],
                                               scaled=False), g)),
    Hint("divide the accumulator by the running sum at the end: O = acc / l",
         lambda e, g, a: _same(_online_variant(a["q"], a["k"], a["v"], a["block_n"],
                                               divide=False), g)),
    Hint("this case's inputs are not contiguous: element (i, c) of q is at q_ptr + i *"
         " stride_qm + c * stride_qd (likewise for k, v and o); use the strides the check"
         " passes",
         lambda e, g, a: a["layout"] == "transposed"),
    Hint("mask the head dim: load columns c < d only (other=0.0); the columns past d hold"
         " other data", lambda e, g, a: a["q"].shape[1] % 16 != 0),
)


def check_flash_forward_kernel(flash_forward_kernel) -> None:
    """Check the ``@triton.jit`` kernel ``flash_forward_kernel`` (signature in the notebook):
    launched with grid (cdiv(lq, BLOCK_M),) on one head, it must write O = softmax(scale q k^T)
    v and lse = the natural log-sum-exp of each row's scaled scores."""
    title = "flash forward kernel"
    problem, interpreting = triton_problem(
        flash_forward_kernel, "check_flash_forward_kernel(flash_forward_kernel)")
    if problem is not None:
        raise AssertionError(f"{title}: {problem}")
    device = torch.device("cpu" if interpreting else "cuda")
    # on a GPU, tl.dot on float32 rounds its operands to TF32 unless input_precision="ieee"
    atol, rtol = (1e-5, 1e-4) if device.type == "cpu" else (2e-3, 2e-3)
    run_check(Check(
        title=title, reference=_flash_reference, cases=_kernel_cases(), atol=atol, rtol=rtol,
        hint="per program: load the BLOCK_M query rows once; for each tile of BLOCK_N keys:"
             " s = scale * q k^T with keys past lk set to -inf, m_new = max(m, rowmax(s)),"
             " alpha = exp(m - m_new), l = alpha l + rowsum(p), acc = alpha acc + p v with"
             " p = exp(s - m_new); then store acc / l and m + log(l) for rows < lq",
        hints=_KERNEL_HINTS, example="check_flash_forward_kernel(flash_forward_kernel)"),
        _launcher(flash_forward_kernel, device, atol, rtol))
