"""Checks for exercise 16 (Mamba2: state space duality, the chunked algorithm, a Triton kernel).

Each ``check_*`` takes the student's function (or kernel), runs it on seeded inputs built here,
and compares it with a reference: the sequential recurrence or the stage references of
`seqlib.ops.ssd.reference`, run in float64. Letters (the book's): b batch, l length, h heads,
p head dim, n state size, c chunks, q positions per chunk. One group: every head reads the same
B and C, of shape (b, l, n). Per head, with a_t = A dt_t,

    S_t = exp(a_t) S_{t-1} + dt_t x_t B_t^T        (S is (p, n), S_0 = 0)
    y_t = S_t C_t

- `check_segsum`: ``segsum(a)``, (..., T) -> (..., T, T), entry [t, s] = a_{s+1} + ... + a_t
  for s <= t and -inf above the diagonal, so that exp() of it is the decay mask L
- `check_ssd_quadratic`: ``ssd_quadratic(x, dt, A, B, C)`` for one head, x (l, p), dt (l,), A a
  float, B and C (l, n) -> y = (L o C B^T)(dt x), (l, p)
- `check_ssd_chunked`: ``ssd_chunked(x, dt, A, B, C, chunk_size)``, x (b, l, h, p), dt (b, l, h),
  A (h), B and C (b, l, n), l a multiple of chunk_size -> y (b, l, h, p): quadratic inside the
  chunks, states passed between them, never an (l, l) matrix and never a loop over positions
- `check_chunk_state_kernel`: ``chunk_state_kernel``, a ``@triton.jit`` kernel with the
  notebook's signature; the check launches it itself (on a CUDA GPU, or on the CPU under
  Triton's interpreter) on strided buffers whose length is not a multiple of the chunk, and
  compares each chunk's own end state with the reference

The PyTorch tasks must not be passed by calling seqlib's own SSD: the checks watch, with a
Python profiler, for any call into ``seqlib/ops`` or ``seqlib/models`` while the student's
function runs. (Copying seqlib's source into the notebook cannot be told apart from writing it.)
This module imports Triton only inside `check_chunk_state_kernel`, so that everything else
works where Triton is not installed (macOS, Windows).
"""

from __future__ import annotations

import math
import os
import sys
from functools import partial
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from ..ops.ssd import reference as _ssd
from .core import Case, Check, Hint, WrongAnswer, run_check
from .triton_tasks import kernel_source, triton_problem

__all__ = [
    "check_chunk_state_kernel",
    "check_segsum",
    "check_ssd_chunked",
    "check_ssd_quadratic",
]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(a: torch.Tensor, b, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """True when b has a's shape and values, infinities included (hints use it to recognise a
    known mistake)."""
    return (isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(b.detach().double().cpu(), a.double(), rtol=rtol, atol=atol))


def _not_finite(t) -> bool:
    """True when t is a tensor holding a NaN or an infinity."""
    return isinstance(t, torch.Tensor) and not bool(torch.isfinite(t).all())


# ---------------------------------------------------------------------------------------------
# Refusing seqlib's own SSD inside a from-scratch task

_SEQLIB = Path(_ssd.__file__).resolve().parents[2]
_LIBRARY_DIRS = tuple(str(_SEQLIB / folder) + os.sep for folder in ("ops", "models"))


class _LibraryWatch:
    """While active, records the first Python function entered whose code lives in seqlib's
    ops or models (by a profiler, so an alias such as ``from seqlib.ops.ssd import segsum as
    s`` is caught too)."""

    _inside: dict[str, bool] = {}

    def __init__(self):
        self.used: str | None = None

    def _library(self, filename: str) -> bool:
        inside = self._inside.get(filename)
        if inside is None:
            inside = os.path.realpath(filename).startswith(_LIBRARY_DIRS)
            self._inside[filename] = inside
        return inside

    def _profile(self, frame, event, arg):
        if event == "call" and self.used is None and self._library(frame.f_code.co_filename):
            module = frame.f_globals.get("__name__", "seqlib")
            name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
            self.used = f"{module}.{name}"

    def __enter__(self):
        self.previous = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(self.previous)
        return False

    def message(self) -> str:
        return (f"it calls seqlib's {self.used}, which this task asks you to write yourself"
                " (seqlib's SSD is what your function is compared with)")


def _from_scratch(function, args, *, reference=None, watch_length=None, max_calls=None):
    """Probe: call ``function`` on ``args`` and refuse it if it called seqlib's ops or models;
    with ``watch_length``, also if it built a tensor with two axes of that length (an (l, l)
    matrix), and with ``max_calls``, if it made more torch calls than that (see `_Watch`).
    The reference itself runs unwatched."""
    if function is reference:
        return function(*args.values())
    library = _LibraryWatch()
    watch = _Watch(watch_length)
    try:
        with library, watch:
            out = function(*args.values())
    except Exception:
        if library.used:  # the library call failed or was caught: report it all the same
            raise WrongAnswer(library.message()) from None
        raise
    if library.used:
        raise WrongAnswer(library.message())
    if watch.seen is not None:
        length = watch_length
        raise WrongAnswer(
            f"it builds a tensor of shape {watch.seen}, an ({length}, {length}) matrix over"
            f" the whole sequence: that is the quadratic form; the chunked form keeps only"
            f" (chunk_size, chunk_size) blocks inside each chunk, so its cost grows linearly"
            f" with l")
    if max_calls is not None and watch.calls > max_calls:
        length, chunk_size = args["x"].shape[1], args["chunk_size"]
        raise WrongAnswer(
            f"it made {watch.calls} torch calls on a sequence of {length} positions in"
            f" {length // chunk_size} chunks: it seems to loop over the positions one by one"
            f" (the recurrence); the chunked form loops at most over the chunks and does the"
            f" rest with matrix products")
    return out


class _Watch(TorchFunctionMode):
    """Counts the torch calls, and records the shape of the first tensor returned with two or
    more axes of size ``length`` (when ``length`` is given)."""

    def __init__(self, length: int | None = None):
        super().__init__()
        self.length = length
        self.seen: tuple[int, ...] | None = None
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        result = func(*args, **(kwargs or {}))
        if self.length is not None and self.seen is None:
            for t in result if isinstance(result, tuple | list) else (result,):
                if isinstance(t, torch.Tensor) and list(t.shape).count(self.length) >= 2:
                    self.seen = tuple(t.shape)
        return result


# ---------------------------------------------------------------------------------------------
# Task 1: the segment sums


def _segsum_reference(a: torch.Tensor) -> torch.Tensor:
    return _ssd.segsum(a.double()).to(a.dtype)


def _segsum_variant(a: torch.Tensor, *, inclusive: bool = False, above: float | None = None,
                    transposed: bool = False, diagonal: float = 0.0) -> torch.Tensor:
    """The segment sums in float64 with one known mistake: ``inclusive`` adds a_j itself;
    ``above`` is the value above the diagonal (None: leave cumsum_t - cumsum_s there);
    ``transposed`` swaps t and s; ``diagonal`` is the value on the diagonal."""
    a = a.double()
    cs = a.cumsum(-1)
    out = cs[..., :, None] - cs[..., None, :]  # [t, s] = a_{s+1} + ... + a_t when s <= t
    if inclusive:
        out = out + a[..., None, :]
    length = a.shape[-1]
    upper = torch.ones(length, length, dtype=torch.bool).triu(1)
    if above is not None:
        out = out.masked_fill(upper, above)
    out = out.masked_fill(torch.eye(length, dtype=torch.bool), diagonal) if not inclusive else out
    return out.transpose(-1, -2) if transposed else out


def _segsum_cases() -> list[Case]:
    g = _generator(1601)

    def case(label, a):
        return Case(label, {"a": a}, probe=partial(_from_scratch, reference=_segsum_reference))

    return [
        case("a single value: T = 1", torch.tensor([-0.5])),
        case("four values a = [-1, -2, -3, -4]", torch.tensor([-1.0, -2.0, -3.0, -4.0])),
        case("a batch of shape (2, 3, 7): the last axis is time",
             -torch.rand(2, 3, 7, generator=g)),
        case("float64 input: the output keeps a's dtype",
             -torch.rand(6, generator=g, dtype=torch.float64)),
        case("a long sequence, T = 100", -torch.rand(100, generator=g)),
    ]


def _large_negative_above(e, g, a) -> bool:
    """The lower triangle is right and the upper one holds large finite negative numbers."""
    length = e.shape[-1]
    upper = torch.ones(length, length, dtype=torch.bool).triu(1)
    above = g[..., upper]
    return (above.numel() > 0 and bool(torch.isfinite(above).all())
            and bool((above <= -1e4).all())
            and _same(e.masked_fill(upper, 0.0), g.masked_fill(upper, 0.0)))


_SEGSUM_HINTS = (
    Hint("return the result in a's dtype", lambda e, g, a: g.dtype != e.dtype),
    Hint("put -inf itself above the diagonal (-math.inf or float('-inf')), not a large"
         " negative number: the segment sum of the future is defined as -inf, whose exp() is"
         " exactly 0 in every dtype", _large_negative_above),
    Hint("entry [t, s] sums a_{s+1} .. a_t: a_s itself is not included (the diagonal is 0, an"
         " empty sum, so that position t's own input reaches y_t undecayed: exp(0) = 1)",
         lambda e, g, a: _same(_segsum_variant(a["a"], inclusive=True, above=-math.inf), g)),
    Hint("the diagonal is 0 (the empty sum), not -inf: exp(-inf) = 0 would drop each"
         " position's own input",
         lambda e, g, a: _same(_segsum_variant(a["a"], above=-math.inf, diagonal=-math.inf),
                               g)),
    Hint("the sums belong to the lower triangle (s <= t, the past) and -inf to the upper"
         " one (s > t, the future): your matrix looks transposed",
         lambda e, g, a: _same(_segsum_variant(a["a"], above=-math.inf, transposed=True), g)),
    Hint("above the diagonal (s > t) the entry must be -inf: exp(-inf) = 0 keeps the future"
         " out, while exp(0) = 1 lets it in",
         lambda e, g, a: _same(_segsum_variant(a["a"], above=0.0), g)),
    Hint("cumsum_t - cumsum_s is right for s <= t only: above the diagonal it gives finite"
         " values where -inf belongs; mask them, e.g. with masked_fill on a triu(1) mask",
         lambda e, g, a: _same(_segsum_variant(a["a"]), g)),
)


def check_segsum(segsum) -> None:
    """Check ``segsum(a)``: (..., T) -> (..., T, T) with entry [t, s] = a_{s+1} + ... + a_t for
    s <= t (0 on the diagonal) and -inf for s > t, in a's dtype."""
    run_check(Check(
        title="segment sums", reference=_segsum_reference, cases=_segsum_cases(),
        atol=5e-5, rtol=1e-5,  # room for cumsum(a)[t] - cumsum(a)[s] in float32 at T = 100
        hint="out[..., t, s] = a[..., s+1] + ... + a[..., t] for s <= t: one way is"
             " cumsum(a)[t] - cumsum(a)[s]; then fill the entries with s > t with -inf",
        hints=_SEGSUM_HINTS, example="check_segsum(segsum)"), segsum)


# ---------------------------------------------------------------------------------------------
# Task 2: the quadratic form for one head


def _recurrence(x, dt, A, B, C) -> torch.Tensor:
    """The sequential recurrence in float64 for x (b, l, h, p), dt (b, l, h), A (h), B and C
    (b, l, n): seqlib's definition, with one group."""
    return _ssd.ssd_reference(x.double(), dt.double(), A.double(), B.double()[:, :, None],
                              C.double()[:, :, None])


def _quadratic_reference(x, dt, A, B, C) -> torch.Tensor:
    A = torch.tensor([float(A)], dtype=torch.float64)
    y = _recurrence(x[None, :, None], dt[None, :, None], A, B[None], C[None])
    return y[0, :, 0].to(x.dtype)


def _quadratic_variant(x, dt, A, B, C, *, decay: bool = True, dt_on_x: bool = True,
                       swapped: bool = False, dt_in_decay: bool = True) -> torch.Tensor:
    """y = (L o C B^T)(dt x) in float64 with one known mistake."""
    x, dt, B, C = x.double(), dt.double(), B.double(), C.double()
    a = A * dt if dt_in_decay else torch.full_like(dt, float(A))
    length = len(dt)
    lower = torch.ones(length, length, dtype=torch.bool).tril()
    L = torch.exp(_segsum_variant(a, above=-math.inf)) if decay else lower.double()
    scores = B @ C.T if swapped else C @ B.T
    return (L * scores) @ (dt[:, None] * x if dt_on_x else x)


def _quadratic_cases() -> list[Case]:
    g = _generator(1602)

    def case(label, length, p, n, A, dtype=torch.float32):
        def randn(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
        dt = (0.1 + torch.rand(length, generator=g, dtype=torch.float64)).to(dtype)
        return Case(label, {"x": randn(length, p), "dt": dt, "A": A, "B": randn(length, n),
                            "C": randn(length, n)},
                    probe=partial(_from_scratch, reference=_quadratic_reference))

    return [
        case("one position: y_0 = (C_0 . B_0) dt_0 x_0", 1, 2, 3, -0.5),
        case("l = 6, p = 3, n = 4, A = -0.5", 6, 3, 4, -0.5),
        case("strong decay, A = -5: far positions barely count", 10, 2, 3, -5.0),
        case("no decay, A = 0: causal linear attention", 7, 3, 2, 0.0),
        case("float64 inputs: the output keeps x's dtype", 12, 4, 5, -1.0,
             dtype=torch.float64),
    ]


_QUADRATIC_HINTS = (
    Hint("return y in x's dtype", lambda e, g, a: g.dtype != e.dtype),
    Hint("the inputs enter as dt_s x_s: multiply each row of x by its dt before the product",
         lambda e, g, a: _same(_quadratic_variant(*a.values(), dt_on_x=False), g)),
    Hint("the scores are C_t . B_s (queries C, keys B): C @ B.T, not B @ C.T",
         lambda e, g, a: _same(_quadratic_variant(*a.values(), swapped=True), g)),
    Hint("the decay exponents are a_t = A dt_t (dt is the step size), not A alone",
         lambda e, g, a: _same(_quadratic_variant(*a.values(), dt_in_decay=False), g)),
    Hint("the mask L must decay: L = exp(segsum(A dt)), not a plain causal mask of ones",
         lambda e, g, a: _same(_quadratic_variant(*a.values(), decay=False), g)),
)


def check_ssd_quadratic(ssd_quadratic) -> None:
    """Check ``ssd_quadratic(x, dt, A, B, C)`` for one head: x (l, p), dt (l,), A a float,
    B and C (l, n) -> y = (L o C B^T)(dt x) of shape (l, p) in x's dtype, equal to the
    recurrence."""
    run_check(Check(
        title="quadratic SSD", reference=_quadratic_reference, cases=_quadratic_cases(),
        atol=1e-5, rtol=1e-4,
        hint="L = exp(segsum(A * dt)) (l, l); scores = C @ B.T (l, l); y = (L * scores) @"
             " (dt[:, None] * x)",
        hints=_QUADRATIC_HINTS, example="check_ssd_quadratic(ssd_quadratic)"), ssd_quadratic)


# ---------------------------------------------------------------------------------------------
# Task 3: the chunked algorithm in PyTorch


def _chunked_reference(x, dt, A, B, C, chunk_size) -> torch.Tensor:
    return _recurrence(x, dt, A, B, C).to(x.dtype)


def _chunked_variant(x, dt, A, B, C, chunk_size, *, inter: bool = True,
                     pass_decay: bool = True, decay_twice: bool = False,
                     inclusive_mask: bool = False, entry_before: bool = False) -> torch.Tensor:
    """The chunked algorithm in float64, optionally with one known mistake:
    ``inter=False`` leaves out the entering states' part; ``pass_decay=False`` passes states
    on without the chunk's decay; ``decay_twice`` decays the chunk's own state again when
    passing it on; ``inclusive_mask`` lets L include a_s; ``entry_before`` decays the entering
    state to position t by exp(r_{t-1}) instead of exp(r_t)."""
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    b, length, h, p = x.shape
    n, q = B.shape[-1], chunk_size
    c = length // q
    xs = (x * dt[..., None]).reshape(b, c, q, h, p)                        # dt x
    a = (dt * A).reshape(b, c, q, h).transpose(-1, -2)                     # (b, c, h, q)
    cum = a.cumsum(-1)
    Bc, Cc = B.reshape(b, c, q, n), C.reshape(b, c, q, n)
    seg = cum[..., :, None] - cum[..., None, :]                            # [t, s]
    if inclusive_mask:
        seg = seg + a[..., None, :]
    lower = torch.ones(q, q, dtype=torch.bool).tril()
    L = torch.exp(seg.masked_fill(~lower, -math.inf))                      # (b, c, h, q, q)
    scores = torch.einsum("bctn,bcsn->bcts", Cc, Bc)[:, :, None] * L
    y = torch.einsum("bchts,bcshp->bcthp", scores, xs)
    to_end = torch.exp(cum[..., -1:] - cum)                                # (b, c, h, q)
    own = torch.einsum("bchs,bcshp,bcsn->bchpn", to_end, xs, Bc)           # each chunk's own
    total = torch.exp(cum[..., -1])[..., None, None]                       # (b, c, h, 1, 1)
    state = x.new_zeros(b, h, p, n)
    entering = []
    for k in range(c):
        entering.append(state)
        if decay_twice:
            state = total[:, k] * (state + own[:, k])
        elif pass_decay:
            state = total[:, k] * state + own[:, k]
        else:
            state = state + own[:, k]
    entering = torch.stack(entering, dim=1)                                # (b, c, h, p, n)
    into = torch.exp(cum - a if entry_before else cum).transpose(-1, -2)   # (b, c, q, h)
    if inter:
        y = y + torch.einsum("bctn,bchpn->bcthp", Cc, entering) * into[..., None]
    return y.reshape(b, length, h, p)


def _chunked_cases() -> list[Case]:
    g = _generator(1603)

    def case(label, b, length, h, p, n, chunk_size, *, decay=(0.2, 1.5), steps=(0.05, 1.0),
             dtype=torch.float32, max_calls=None):
        def rand(*shape, low=0.0, high=1.0):
            u = torch.rand(*shape, generator=g, dtype=torch.float64)
            return (low + (high - low) * u).to(dtype)

        def randn(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

        args = {"x": randn(b, length, h, p), "dt": rand(b, length, h, low=steps[0], high=steps[1]),
                "A": -rand(h, low=decay[0], high=decay[1]), "B": randn(b, length, n),
                "C": randn(b, length, n), "chunk_size": chunk_size}
        watch = length if 1 < chunk_size < length else None  # (c, c) = (l, l) if q = 1
        return Case(label, args, probe=partial(_from_scratch, reference=_chunked_reference,
                                               watch_length=watch, max_calls=max_calls))

    return [
        case("a single chunk: l = chunk_size = 8", 1, 8, 1, 2, 3, 8),
        case("two chunks: l = 16, chunk_size = 8, h = 2", 1, 16, 2, 3, 4, 8),
        case("six chunks: l = 48, chunk_size = 8, b = 2, h = 2", 2, 48, 2, 3, 5, 8),
        case("chunks of one position: l = 5, chunk_size = 1", 1, 5, 2, 3, 2, 1),
        case("strong decay in long chunks: A dt down to -4 per step, chunk_size = 64", 1, 128,
             1, 2, 3, 64, decay=(3.0, 4.0), steps=(0.5, 1.0)),
        case("float64 inputs: the output keeps x's dtype", 1, 16, 2, 3, 4, 4,
             dtype=torch.float64),
        case("a long sequence: l = 1024 in chunks of 256 (watched: no (l, l) matrix, no loop"
             " over positions)", 1, 1024, 2, 4, 3, 256, decay=(0.05, 0.3), max_calls=2048),
    ]


def _chunked_like(**mistake):
    return lambda e, g, a: _same(_chunked_variant(*a.values(), **mistake), g)


_CHUNKED_HINTS = (
    Hint("return y in x's dtype", lambda e, g, a: g.dtype != e.dtype),
    Hint("some values are not finite: keep every decay as ONE exponential of a difference,"
         " exp(r_t - r_s) <= 1; exp(r_t) * exp(-r_s) overflows when the decay is"
         " strong", lambda e, g, a: _not_finite(g)),
    Hint("the outputs of every chunk after the first also see the state that enters the"
         " chunk: add exp(r_t) (C_t . S_in) for each position t of the chunk",
         _chunked_like(inter=False)),
    Hint("passing the states on, the entering state must decay across the whole chunk:"
         " S_in[k+1] = exp(r_last[k]) S_in[k] + states[k]",
         _chunked_like(pass_decay=False)),
    Hint("a chunk's own state (states[k]) has already decayed to the chunk's end: passing it"
         " on, only the entering state gets the chunk's decay, S_in[k+1] = exp(r_last[k])"
         " S_in[k] + states[k], not exp(r_last[k]) (S_in[k] + states[k])",
         _chunked_like(decay_twice=True)),
    Hint("off by one in the mask: L[t, s] = exp(a_{s+1} + ... + a_t) = exp(r_t - r_s)"
         " does not include a_s", _chunked_like(inclusive_mask=True)),
    Hint("the entering state reaches position t of a chunk decayed by exp(r_t), including"
         " position t's own a_t (the recurrence decays before it adds the input)",
         _chunked_like(entry_before=True)),
)


def check_ssd_chunked(ssd_chunked) -> None:
    """Check ``ssd_chunked(x, dt, A, B, C, chunk_size)``: x (b, l, h, p), dt (b, l, h), A (h),
    B and C (b, l, n) with l a multiple of chunk_size -> y (b, l, h, p) in x's dtype, equal to
    the recurrence, computed chunk by chunk."""
    run_check(Check(
        title="chunked SSD", reference=_chunked_reference, cases=_chunked_cases(),
        atol=1e-4, rtol=1e-4,  # float32 sums of hundreds of terms of size about 1
        hint="per chunk and head, with r = cumsum(A dt) restarted in each chunk: (1) y_diag ="
             " (L o C B^T)(dt x) with L = exp(segsum); (2) states[k] = sum_s exp(r_last -"
             " r_s) dt_s x_s B_s^T; (3) S_in[0] = 0, S_in[k+1] = exp(r_last[k]) S_in[k] +"
             " states[k]; (4) y = y_diag + exp(r_t) S_in[k] C_t",
        hints=_CHUNKED_HINTS, example="check_ssd_chunked(ssd_chunked)"), ssd_chunked)


# ---------------------------------------------------------------------------------------------
# Task 4: the chunk-state kernel in Triton

_JUNK = float("nan")  # what lies past each input's last position and last column
_UNWRITTEN = -1.2345e30  # what the states' buffer holds before the launch
_SPARE = 16  # extra positions, heads and columns around each buffer's data
_KERNEL_EXAMPLE = "check_chunk_state_kernel(chunk_state_kernel)"




def _in_buffer(shape: tuple[int, ...], layout: str, order: tuple[int, ...], fill,
               dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A tensor of ``shape`` placed inside a bigger buffer that holds ``fill`` elsewhere;
    returns (the tensor's view, the whole buffer).

    ``"padded"``: every axis but the first (the batch) has _SPARE more entries, so no stride is
    the contiguous one; ``"transposed"``: the same, with the axes stored in ``order`` (so the
    last axis's stride is not 1); ``"contiguous"``: contiguous strides, spare entries after the
    last element only."""
    if layout == "contiguous":
        buffer = torch.full((math.prod(shape) + _SPARE ** 2,), fill, dtype=dtype, device=device)
        return buffer[:math.prod(shape)].view(shape), buffer
    if layout == "padded":
        order = tuple(range(len(shape)))
    sizes = [shape[axis] + (_SPARE if axis else 0) for axis in order]
    buffer = torch.full(sizes, fill, dtype=dtype, device=device)
    view = buffer.permute(*[order.index(axis) for axis in range(len(shape))])
    return view[tuple(slice(0, size) for size in shape)], buffer


def _laid_out(t: torch.Tensor, layout: str, order: tuple[int, ...], fill: float,
              device: torch.device) -> torch.Tensor:
    """t copied into a buffer laid out as `_in_buffer` says (float32)."""
    view, _ = _in_buffer(tuple(t.shape), layout, order, fill, torch.float32, device)
    view.copy_(t)
    return view


def _chunk_states_reference(x, dt, A, B, chunk_size, layout) -> torch.Tensor:
    """Each chunk's own end state (b, c, h, p, n) in float64, from seqlib's stage references
    (which pad the last chunk with dt = 0, x = B = 0)."""
    b, length, h, p = x.shape
    n = B.shape[-1]
    c = -(-length // chunk_size)
    pad = c * chunk_size - length
    dtp, cum = _ssd.chunk_cumsum_ref(dt.double(), A.double(), None, False, chunk_size,
                                     torch.float64)
    xc = torch.nn.functional.pad(x.double(), (0, 0, 0, 0, 0, pad)).reshape(
        b, c, chunk_size, h, p)
    Bc = torch.nn.functional.pad(B.double()[:, :, None].expand(b, length, h, n),
                                 (0, 0, 0, 0, 0, pad)).reshape(b, c, chunk_size, h, n)
    return _ssd.chunk_state_ref(xc, Bc, dtp, cum)


def _states_variant(x, dt, A, B, chunk_size, *, weight: str) -> torch.Tensor:
    """Chunk states in float64 with the weight of position s in its chunk computed wrongly:
    ``"from_start"`` exp(r_s) dt_s, ``"no_dt"`` exp(last - r_s), ``"inclusive"``
    exp(last - r_s + a_s) dt_s."""
    b, length, h, p = x.shape
    c = -(-length // chunk_size)
    pad = c * chunk_size - length

    def chunked(t):  # (b, l, ...) -> (b, c, q, ...), zeros past the end
        t = torch.nn.functional.pad(t.double(), (0, 0) * (t.ndim - 2) + (0, pad))
        return t.reshape(b, c, chunk_size, *t.shape[2:])

    dtc, xc, Bc = chunked(dt), chunked(x), chunked(B)                     # (b, c, q, ...)
    a = dtc * A.double()
    cum = a.cumsum(2)
    last = cum[:, :, -1:]
    w = {"from_start": torch.exp(cum) * dtc, "no_dt": torch.exp(last - cum),
         "inclusive": torch.exp(last - cum + a) * dtc}[weight]             # (b, c, q, h)
    return torch.einsum("bcsh,bcshp,bcsn->bchpn", w, xc, Bc)


def _launcher(kernel, device: torch.device):
    """The function that run_check calls: lay the inputs out in buffers with spare entries
    around them (see `_in_buffer` for the layouts) and ``junk`` in the spare entries, launch the
    student's kernel with grid (c, h, b), check that it wrote every state and nothing else,
    and return the states."""
    import triton

    def launch(x, dt, A, B, chunk_size, layout, junk=_JUNK):
        if "raise NotImplementedError" in kernel_source(kernel):
            raise NotImplementedError
        b, length, h, p = x.shape
        n = B.shape[-1]
        c = triton.cdiv(length, chunk_size)
        xd = _laid_out(x, layout, (0, 2, 3, 1), junk, device)  # stride 1 along l
        dtd = _laid_out(dt, layout, (0, 2, 1), junk, device)
        Bd = _laid_out(B, layout, (0, 2, 1), junk, device)
        Ad = torch.full((h + _SPARE,), junk, device=device)
        Ad[:h] = A.to(device)
        shape, order = (b, c, h, p, n), (0, 1, 2, 4, 3)  # transposed: stride 1 along p
        sd, whole = _in_buffer(shape, layout, order, _UNWRITTEN, torch.float32, device)
        inside_view, inside = _in_buffer(shape, layout, order, False, torch.bool, device)
        inside_view.fill_(True)
        block_p = max(16, triton.next_power_of_2(p))
        block_n = max(16, triton.next_power_of_2(n))
        kernel[(c, h, b)](
            xd, dtd, Ad, Bd, sd, *xd.stride(), *dtd.stride(), *Bd.stride(), *sd.stride(),
            length, p, n, chunk_size, block_p, block_n)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        written = whole != _UNWRITTEN  # NaN counts as written
        if bool((written & ~inside).any()):
            raise WrongAnswer(
                "it writes outside states[batch, chunk, head, :p, :n] (rows >= p or columns"
                " >= n of a chunk's (p, n) state): mask the tl.store with (rows < p) &"
                " (cols < n), and address the states with their strides")
        got = sd.cpu().clone()
        missing = got == _UNWRITTEN
        if bool(missing.any()):
            where = tuple(int(i) for i in missing.nonzero()[0])
            raise WrongAnswer(
                f"some states were never written, the first at states{list(where)} (batch,"
                f" chunk, head, row, column): does the program (chunk, head, batch) ="
                f" (program_id(0), program_id(1), program_id(2)) store its whole (p, n)"
                f" state?")
        return got

    return launch


def _kernel_cases() -> list[Case]:
    g = _generator(1604)

    def case(label, b, length, h, p, n, chunk_size, layout="padded", decay=(0.2, 1.5),
             steps=(0.05, 1.0)):
        def rand(*shape, low=0.0, high=1.0):
            return low + (high - low) * torch.rand(*shape, generator=g)

        return Case(label, {"x": torch.randn(b, length, h, p, generator=g),
                            "dt": rand(b, length, h, low=steps[0], high=steps[1]),
                            "A": -rand(h, low=decay[0], high=decay[1]),
                            "B": torch.randn(b, length, n, generator=g),
                            "chunk_size": chunk_size, "layout": layout})

    return [
        case("length 5 in one chunk of 16: 11 positions of padding", 1, 5, 1, 16, 16, 16),
        case("length 40 in chunks of 16: three chunks, the last holds 8 positions; p = 12,"
             " n = 10 in tiles of 16", 1, 40, 2, 12, 10, 16),
        case("transposed layouts: x, dt, B and the states have stride 1 along l, l, l and p;"
             " length 33, chunks of 16", 1, 33, 2, 8, 16, 16, layout="transposed"),
        case("batch of 2, length 64 in two full chunks of 32", 2, 64, 1, 16, 16, 32),
        case("strong decay: A dt down to -6 per position, about e^-120 across a chunk of 32",
             1, 64, 1, 16, 16, 32, decay=(4.0, 6.0), steps=(0.5, 1.0)),
    ]


def _states_like(weight: str):
    return lambda e, g, a: _same(
        _states_variant(a["x"], a["dt"], a["A"], a["B"], a["chunk_size"], weight=weight), g,
        rtol=1e-3, atol=1e-4)


def _kernel_hints(launch, atol: float, rtol: float) -> tuple[Hint, ...]:
    """The kernel's hints; two of them launch the kernel again on the same inputs, laid out
    differently, to see whether that alone puts it right."""

    def right_with_zeros_past_the_end(e, g, a):
        return _same(e, launch(*a.values(), junk=0.0), rtol=rtol, atol=atol)

    def strided_like_contiguous(e, g, a):
        if a["layout"] == "contiguous":
            return False
        again = launch(*list(a.values())[:-1], "contiguous")
        return _same(e, again, rtol=rtol, atol=atol)

    return (
        Hint("it reads past the end of the sequence: positions t >= length hold other data"
             " (here NaN), and with zeros there your kernel is right; load dt, x and B with"
             " mask=t < length and other=0.0 (dt = 0 on the padding: no decay and no input)",
             right_with_zeros_past_the_end),
        Hint("this case's buffers are not contiguous, and on contiguous ones your kernel is"
             " right: element (i, t, j, k) of x is at x_ptr + i * stride_xb + t * stride_xl +"
             " j * stride_xh + k * stride_xp (likewise dt, B and the states); use the strides"
             " the check passes", strided_like_contiguous),
        Hint("some values are not finite: compute each weight as ONE exponential,"
             " exp(r_last - r_s) <= 1; exp(r_last) * exp(-r_s) overflows when the"
             " decay is strong; and mask every load with t < length",
             lambda e, g, a: _not_finite(g)),
        Hint("the decay runs from position s to the END of its chunk: exp(r_last - r_s),"
             " not exp(r_s) (from the chunk's start)", _states_like("from_start")),
        Hint("each position's input is dt_s x_s B_s^T: the weight is exp(r_last - r_s) *"
             " dt_s", _states_like("no_dt")),
        Hint("off by one: the decay from s to the chunk's end is exp(a_{s+1} + ... + a_last)"
             " = exp(r_last - r_s), with the INCLUSIVE running sum r_s = a_0 + ... + a_s",
             _states_like("inclusive")),
    )


def check_chunk_state_kernel(chunk_state_kernel) -> None:
    """Check the ``@triton.jit`` kernel ``chunk_state_kernel`` (signature in the notebook):
    launched with grid (c, h, b), program (k, j, i) must write chunk k's own end state for head
    j of sequence i, states[i, k, j] = sum_s exp(r_last - r_s) dt_s x_s B_s^T, (p, n)."""
    title = "chunk-state kernel"
    problem, interpreting = triton_problem(chunk_state_kernel, _KERNEL_EXAMPLE)
    if problem is not None:
        raise AssertionError(f"{title}: {problem}")
    device = torch.device("cpu" if interpreting else "cuda")
    # on a GPU, tl.dot on float32 rounds its operands to TF32 unless input_precision="ieee"
    atol, rtol = (1e-5, 1e-4) if device.type == "cpu" else (2e-3, 2e-3)
    launch = _launcher(chunk_state_kernel, device)
    run_check(Check(
        title=title, reference=lambda *args: _chunk_states_reference(*args).float(),
        cases=_kernel_cases(), atol=atol, rtol=rtol,
        hint="per program (chunk, head, batch): t = chunk * CHUNK + tl.arange(0, CHUNK);"
             " load dt, x (CHUNK, BLOCK_P) and B (CHUNK, BLOCK_N) with mask t < length and"
             " other=0.0; a = A dt; r = tl.cumsum(a, 0); w = exp(tl.sum(a) - r) * dt;"
             " state = tl.dot(tl.trans(x * w[:, None]), B); store rows < p, columns < n",
        hints=_kernel_hints(launch, atol, rtol), example=_KERNEL_EXAMPLE), launch)
