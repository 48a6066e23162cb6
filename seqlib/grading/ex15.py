"""Checks for exercise 15 (Mamba: discretization, the scan's combine step, a parallel scan and a
Triton kernel for the selective scan).

Each ``check_*`` takes the student's function (or kernel), runs it on seeded inputs built here,
and compares it with a reference: the definitions below in float64, and for the kernel seqlib's
sequential `selective_scan_reference`. Letters (mamba_ssm's, the book's): b batch, d channels,
n state size, l length. Per batch, channel and state index, with step sizes delta > 0 and a
diagonal A < 0,

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t        (h_{-1} = 0)
    y_t = sum over the n states of C_t h_t

- `check_selective_discretize`: ``discretize(delta, A, B, u)``, delta and u (b, d, l), A (d, n),
  B (b, n, l) -> the pair (dA, dBu), both (b, d, n, l): dA = exp(delta A), dBu = delta B u
- `check_scan_combine`: ``combine(left, right)`` on pairs of tensors (a, b): (a1, b1) followed
  by (a2, b2) is (a1 a2, a2 b1 + b2), the step h -> a2 (a1 h + b1) + b2
- `check_parallel_scan`: ``parallel_scan(a, b)``, a and b (..., l) -> the pair (a_cum, h), the
  inclusive scan of the pairs over the last axis: a_cum_t = a_0 ... a_t and h_t = a_t h_{t-1} +
  b_t; computed in ceil(log2 l) whole-tensor steps (Hillis and Steele), never one position at a
  time, never with a library scan (cumsum, cumprod) and never with an (l, l) matrix
- `check_selective_scan_kernel`: ``selective_scan_kernel``, a ``@triton.jit`` kernel with the
  notebook's signature; the check launches it itself (on a CUDA GPU, or on the CPU under
  Triton's interpreter) with grid (cdiv(d, BLOCK_D), b) on strided buffers with other data
  around them, and compares y with the reference

This module imports Triton only inside `check_selective_scan_kernel`, so that everything else
works where Triton is not installed (macOS, Windows).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode

from ..ops.selective_scan.reference import selective_scan_reference
from .core import Case, Check, Hint, WrongAnswer, describe, find_mismatch, run_check
from .triton_tasks import kernel_source, triton_problem

__all__ = [
    "check_parallel_scan",
    "check_scan_combine",
    "check_selective_discretize",
    "check_selective_scan_kernel",
]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(a: torch.Tensor, b, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """True when b has a's shape and values (hints use it to recognise a known mistake)."""
    return (isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(b.detach().double().cpu(), a.double().cpu(), rtol=rtol,
                               atol=atol))


def _not_finite(t) -> bool:
    return isinstance(t, torch.Tensor) and not bool(torch.isfinite(t).all())


def _pair(result, names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The two tensors of a returned pair; WrongAnswer saying what came back otherwise."""
    wanted = f"a pair ({names[0]}, {names[1]}) of tensors"
    if result is None:
        raise WrongAnswer(f"it returned None, expected {wanted}: is a `return` missing?")
    if not isinstance(result, tuple | list) or len(result) != 2:
        count = f" of {len(result)} items" if isinstance(result, tuple | list) else ""
        raise WrongAnswer(f"it returned a {describe(result)}{count}, expected {wanted}")
    for name, part in zip(names, result):
        if not isinstance(part, torch.Tensor):
            raise WrongAnswer(f"the {name} it returned is a {describe(part)}, expected a tensor")
    return result[0], result[1]


# ---------------------------------------------------------------------------------------------
# Task 1: discretization


def _discretize_variant(delta, A, B, u, *, delta_in_decay: bool = True,
                        delta_on_input: bool = True, u_on_input: bool = True,
                        swap_dn: bool = False, transpose_A: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dA, dBu), (b, d, n, l), in float64, optionally with one known mistake:
    ``delta_in_decay=False`` exp(A); ``delta_on_input=False`` B u; ``u_on_input=False``
    delta B; ``swap_dn`` puts the states before the channels, (b, n, d, l); ``transpose_A``
    uses A.T (which has A's shape when d = n)."""
    dt = delta.double()[:, :, None, :]  # (b, d, 1, l)
    A64 = (A.T if transpose_A else A).double()[None, :, :, None]  # (1, d, n, 1)
    dA = torch.exp(dt * A64 if delta_in_decay else A64.expand_as(dt * A64))
    dBu = B.double()[:, None, :, :].expand_as(dA)  # (b, d, n, l)
    if delta_on_input:
        dBu = dBu * dt
    if u_on_input:
        dBu = dBu * u.double()[:, :, None, :]
    if swap_dn:
        dA, dBu = dA.transpose(1, 2), dBu.transpose(1, 2)
    return dA, dBu


def _discretize_reference(delta, A, B, u) -> tuple[torch.Tensor, torch.Tensor]:
    dA, dBu = _discretize_variant(delta, A, B, u)
    return dA.to(delta.dtype), dBu.to(delta.dtype)


def _take(part: int) -> Callable:
    """Probe: call discretize and keep dA (part 0) or dBu (part 1)."""
    def probe(function, args):
        return _pair(function(*args.values()), ("dA", "dBu"))[part]
    return probe


def _discretize_cases() -> list[Case]:
    g = _generator(1501)

    def inputs(b, d, n, length, dtype=torch.float32):
        def rand(*shape):
            return torch.rand(*shape, generator=g, dtype=torch.float64)
        return {"delta": (0.05 + rand(b, d, length)).to(dtype),
                "A": -(0.2 + 1.3 * rand(d, n)).to(dtype),
                "B": torch.randn(b, n, length, generator=g, dtype=torch.float64).to(dtype),
                "u": torch.randn(b, d, length, generator=g, dtype=torch.float64).to(dtype)}

    small = inputs(1, 2, 3, 4)
    square = inputs(2, 3, 3, 5)
    return [
        Case("dA = exp(delta A) for b = 1, d = 2, n = 3, l = 4", small, _take(0)),
        Case("dBu = delta B u for the same inputs", small, _take(1)),
        Case("dA with d = n = 3: A's rows are the channels, its columns the states", square,
             _take(0)),
        Case("dBu with b = 2, d = 3, n = 4, l = 5", inputs(2, 3, 4, 5), _take(1)),
        Case("float64 inputs: dBu keeps delta's dtype", inputs(1, 2, 2, 3, torch.float64),
             _take(1)),
        Case("float64 inputs: dA keeps delta's dtype", inputs(2, 2, 3, 2, torch.float64),
             _take(0)),
    ]


def _discretized_like(part: int, **mistake) -> Callable:
    return lambda e, g, a: _same(_discretize_variant(*a.values(), **mistake)[part], g)


def _layout_bdln(e, g, a) -> bool:
    b, d, n, length = e.shape
    return tuple(g.shape) == (b, d, length, n) and g.shape != e.shape


def _channels_and_states_swapped(e, g, a) -> bool:
    if g.shape != e.shape:
        return tuple(g.shape) == tuple(e.shape[i] for i in (0, 2, 1, 3))
    square = a["A"].shape[0] == a["A"].shape[1]
    return any(_discretized_like(part, swap_dn=True)(e, g, a)
               or (square and _discretized_like(part, transpose_A=True)(e, g, a))
               for part in (0, 1))


_DISCRETIZE_HINTS = (
    Hint("return both tensors in delta's dtype", lambda e, g, a: g.dtype != e.dtype),
    Hint("time is the LAST axis: return (b, d, n, l) tensors, not (b, d, l, n)", _layout_bdln),
    Hint("the channel axis d comes before the state axis n: (b, d, n, l). A[i, j] is the rate of"
         " channel i's state j, so it goes in as A[None, :, :, None], not A.T",
         _channels_and_states_swapped),
    Hint("the decay is exp(delta A): multiply A by the step size delta before the exp (a long"
         " step forgets more than a short one); exp(A) alone does not select anything",
         _discretized_like(0, delta_in_decay=False)),
    Hint("the input is scaled by the step size too: dBu = delta B u (a step of length delta"
         " adds delta times the rate B u)", _discretized_like(1, delta_on_input=False)),
    Hint("dBu = delta B u: the channel's input u is missing",
         _discretized_like(1, u_on_input=False)),
)


def check_selective_discretize(discretize) -> None:
    """Check ``discretize(delta, A, B, u)``: delta, u (b, d, l), A (d, n), B (b, n, l) -> the
    pair (dA, dBu), both (b, d, n, l) in delta's dtype: dA = exp(delta A), dBu = delta B u."""
    run_check(Check(
        title="discretize", reference=_discretize_reference, cases=_discretize_cases(),
        atol=1e-6, rtol=1e-5,
        hint="give every tensor the axes (b, d, n, l), with size 1 where it has none: delta and"
             " u as delta[:, :, None, :] (b, d, 1, l), A as A[None, :, :, None] (1, d, n, 1),"
             " B as B[:, None] (b, 1, n, l); then dA = exp(delta A) and dBu = delta B u"
             " broadcast to (b, d, n, l)",
        hints=_DISCRETIZE_HINTS, example="check_selective_discretize(discretize)"), discretize)


# ---------------------------------------------------------------------------------------------
# Task 2: the combine step


def _combine_reference(left, right) -> tuple[torch.Tensor, torch.Tensor]:
    (a1, b1), (a2, b2) = left, right
    return a1 * a2, a2 * b1 + b2


def _combine_probe(part: int) -> Callable:
    """Probe: combine the pairs (a1, b1) and (a2, b2) of the case; keep a (0) or b (1)."""
    def probe(function, args):
        out = function((args["a1"], args["b1"]), (args["a2"], args["b2"]))
        return _pair(out, ("a", "b"))[part]
    return probe


def _fold_probe(function, args) -> torch.Tensor:
    """Probe: fold the pairs (a_t, b_t) of a sequence (time on the last axis) from the left
    with ``function``; return the b part after each pair, which should be h_t."""
    a, b = args["a"], args["b"]
    if function is _combine_reference:  # the recurrence itself, h_t = a_t h_{t-1} + b_t
        h, states = torch.zeros_like(b[..., 0]), []
        for t in range(b.shape[-1]):
            h = a[..., t] * h + b[..., t]
            states.append(h)
        return torch.stack(states, -1)
    pair = (a[..., 0], b[..., 0])
    states = [pair[1]]
    for t in range(1, b.shape[-1]):
        pair = _pair(function(pair, (a[..., t], b[..., t])), ("a", "b"))
        states.append(pair[1])
    return torch.stack(states, -1)


def _associativity_probe(function, args) -> torch.Tensor:
    """Probe: combine three pairs x, y, z both ways, (x y) z and x (y z); refuse a function
    for which the two differ; return the b part."""
    x, y, z = ((args[f"a{i}"], args[f"b{i}"]) for i in (1, 2, 3))
    first = _pair(function(_pair(function(x, y), ("a", "b")), z), ("a", "b"))
    second = _pair(function(x, _pair(function(y, z), ("a", "b"))), ("a", "b"))
    for name, one, other in zip(("a", "b"), first, second):
        problem = find_mismatch(one.detach(), other.detach(), atol=1e-5, rtol=1e-4,
                                dtype="any")
        if problem is not None:
            raise WrongAnswer(
                f"it is not associative: combining (x then y) then z and x then (y then z)"
                f" gives different {name} parts ({problem.summary}, the first being"
                f" (x then y) then z); the scan regroups the pairs freely, so"
                f" the order of grouping must not matter")
    return first[1]


def _combine_cases() -> list[Case]:
    g = _generator(1502)

    def pairs(*shape, count=2):
        args = {}
        for i in range(1, count + 1):
            args[f"a{i}"] = 0.3 + 0.7 * torch.rand(*shape, generator=g)
            args[f"b{i}"] = torch.randn(*shape, generator=g)
        return args

    hand = {"a1": torch.tensor([0.5, 0.9, 0.1]), "b1": torch.tensor([1.0, 2.0, -3.0]),
            "a2": torch.tensor([0.25, 0.5, 0.8]), "b2": torch.tensor([-1.0, 0.5, 2.0])}
    sequence = {"a": 0.3 + 0.7 * torch.rand(2, 3, 6, generator=g),
                "b": torch.randn(2, 3, 6, generator=g)}
    return [
        Case("the decay of (a1, b1) then (a2, b2), tensors of shape (3,)", hand,
             _combine_probe(0)),
        Case("the state part of (a1, b1) then (a2, b2), the same tensors", hand,
             _combine_probe(1)),
        Case("the state part for tensors of shape (2, 3, 4)", pairs(2, 3, 4), _combine_probe(1)),
        Case("associativity: (x then y) then z equals x then (y then z), shape (3, 4)",
             pairs(3, 4, count=3), _associativity_probe),
        Case("folding a sequence of 6 pairs from the left gives h_t = a_t h_{t-1} + b_t,"
             " shape (2, 3, 6)", sequence, _fold_probe),
    ]


def _pair_like(formula: Callable) -> Callable:
    return lambda e, g, a: _same(formula(a["a1"], a["b1"], a["a2"], a["b2"]), g)


_COMBINE_HINTS = (
    Hint("return the pair in the inputs' dtype", lambda e, g, a: g.dtype != e.dtype),
    Hint("decays multiply: a1 then a2 decays by a1 * a2 (they would add only as logarithms)",
         _pair_like(lambda a1, b1, a2, b2: a1 + a2)),
    Hint("the combined decay is a1 * a2: applying the left step and then the right one decays"
         " by both", lambda e, g, a: _pair_like(lambda a1, b1, a2, b2: a2)(e, g, a)
         or _pair_like(lambda a1, b1, a2, b2: a1)(e, g, a)),
    Hint("the order matters: the LEFT pair comes first in time, so its state b1 is decayed by"
         " the RIGHT pair's a2: a2 * b1 + b2, not a1 * b2 + b1",
         _pair_like(lambda a1, b1, a2, b2: a1 * b2 + b1)),
    Hint("the state b1 that comes in from the left is decayed by the second step's a2 and"
         " then b2 is added: a2 * b1 + b2; yours forgets b1",
         _pair_like(lambda a1, b1, a2, b2: b2)),
    Hint("b1 must decay by a2 before b2 is added: a2 * b1 + b2, not b1 + b2",
         _pair_like(lambda a1, b1, a2, b2: b1 + b2)),
    Hint("b1 decays by the second step's a2 (the step that follows it), not by its own a1",
         _pair_like(lambda a1, b1, a2, b2: a1 * b1 + b2)),
)


def check_scan_combine(combine) -> None:
    """Check ``combine(left, right)`` with left = (a1, b1), right = (a2, b2) tensors of one
    shape -> (a1 * a2, a2 * b1 + b2): the step h -> a1 h + b1 followed by h -> a2 h + b2."""
    run_check(Check(
        title="combine", reference=_combine_reference, cases=_combine_cases(),
        atol=1e-6, rtol=1e-5,
        hint="apply the left step, then the right one: a2 (a1 h + b1) + b2 = (a1 a2) h +"
             " (a2 b1 + b2), so return (a1 * a2, a2 * b1 + b2)",
        hints=_COMBINE_HINTS, example="check_scan_combine(combine)"), combine)


# ---------------------------------------------------------------------------------------------
# Task 3: the parallel scan

_LIBRARY_SCANS = {
    torch.cumsum: "torch.cumsum", torch.Tensor.cumsum: "Tensor.cumsum",
    torch.Tensor.cumsum_: "Tensor.cumsum_", torch.cumprod: "torch.cumprod",
    torch.Tensor.cumprod: "Tensor.cumprod", torch.Tensor.cumprod_: "Tensor.cumprod_",
    torch.logcumsumexp: "torch.logcumsumexp", torch.Tensor.logcumsumexp: "Tensor.logcumsumexp",
    torch.cummax: "torch.cummax", torch.Tensor.cummax: "Tensor.cummax",
}
_LEAVING_TORCH = {
    torch.Tensor.tolist: "Tensor.tolist", torch.Tensor.numpy: "Tensor.numpy",
    torch.Tensor.item: "Tensor.item",
}
_CALLS_PER_STEP = 32  # torch calls allowed per doubling step (slices, combine, cat, ...)


def _steps(length: int) -> int:
    return math.ceil(math.log2(length)) if length > 1 else 0


class _ScanWatch(TorchFunctionMode):
    """Counts the torch calls made while active, and records the first library scan, the
    first conversion out of torch, and the first tensor with two trailing axes of the
    sequence's length (an (l, l) matrix)."""

    def __init__(self, length: int):
        super().__init__()
        self.length = length
        self.calls = 0
        self.problem: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        if self.problem is None and func in _LIBRARY_SCANS:
            self.problem = (f"it calls {_LIBRARY_SCANS[func]}, a library scan: this task asks"
                            f" you to build the scan yourself from combine")
            raise WrongAnswer(self.problem)
        if self.problem is None and func in _LEAVING_TORCH:
            self.problem = (f"it calls {_LEAVING_TORCH[func]}, leaving torch for Python"
                            f" numbers: the scan works on whole tensors, ceil(log2 l) steps"
                            f" of tensor operations")
            raise WrongAnswer(self.problem)
        result = func(*args, **(kwargs or {}))
        if self.problem is None and self.length >= 8:
            for t in result if isinstance(result, tuple | list) else (result,):
                if (isinstance(t, torch.Tensor) and t.ndim >= 2
                        and tuple(t.shape[-2:]) == (self.length, self.length)):
                    self.problem = (
                        f"it builds a tensor of shape {tuple(t.shape)}, an (l, l) matrix over"
                        f" all pairs of positions: that is O(l^2) work and memory; the scan"
                        f" needs only tensors shaped like a and b")
                    break
        return result

    def limit(self) -> int:
        return _CALLS_PER_STEP * (_steps(self.length) + 1)

    def verdict(self) -> None:
        if self.problem is not None:
            raise WrongAnswer(self.problem)
        if self.calls > self.limit():
            raise WrongAnswer(
                f"it made {self.calls} torch calls on a sequence of l = {self.length}"
                f" positions, more than the {self.limit()} allowed for ceil(log2 l) ="
                f" {_steps(self.length)} doubling steps of a few whole-tensor operations each:"
                f" it seems to walk the positions one by one (that is the sequential scan);"
                f" each step must update every position at once")


def _scan_variant(a, b, *, steps: int | None = None, exclusive: bool = False,
                  wrap: bool = False, new_a_first: bool = False):
    """Hillis-Steele in float64, optionally with one known mistake: ``steps`` doubling steps
    instead of ceil(log2 l); ``exclusive`` returns the scan shifted by one (the pairs before t,
    not up to t); ``wrap`` pairs the first s positions with the last ones (torch.roll);
    ``new_a_first`` updates a before using it in the update of b."""
    a, b = a.double(), b.double()
    length = a.shape[-1]
    steps = _steps(length) if steps is None else steps
    s = 1
    for _ in range(steps):
        if wrap:
            a_prev, b_prev = a.roll(s, -1), b.roll(s, -1)
            a_new, b_new = a_prev * a, a * b_prev + b
        else:
            a_prev = torch.cat([torch.ones_like(a[..., :s]), a[..., :-s]], -1)
            b_prev = torch.cat([torch.zeros_like(b[..., :s]), b[..., :-s]], -1)
            a_new = a_prev * a
            b_new = (a_new if new_a_first else a) * b_prev + b
        a, b, s = a_new, b_new, 2 * s
    if exclusive:
        a = torch.cat([torch.ones_like(a[..., :1]), a[..., :-1]], -1)
        b = torch.cat([torch.zeros_like(b[..., :1]), b[..., :-1]], -1)
    return a, b


def _scan_reference(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequential definition in float64, returned in a's and b's dtypes."""
    a64, b64 = a.double(), b.double()
    product, h = torch.ones_like(a64[..., 0]), torch.zeros_like(b64[..., 0])
    products, states = [], []
    for t in range(a.shape[-1]):
        product = product * a64[..., t]
        h = a64[..., t] * h + b64[..., t]
        products.append(product)
        states.append(h)
    return torch.stack(products, -1).to(a.dtype), torch.stack(states, -1).to(b.dtype)


def _scan_probe(part: int) -> Callable:
    """Probe: run parallel_scan under a _ScanWatch and keep a_cum (0) or h (1)."""
    def probe(function, args):
        if function is _scan_reference:
            return function(*args.values())[part]
        watch = _ScanWatch(args["a"].shape[-1])
        try:
            with watch:
                out = function(*args.values())
        except Exception:
            if watch.problem is not None:  # our signal, caught or not: report it all the same
                raise WrongAnswer(watch.problem) from None
            raise
        watch.verdict()
        return _pair(out, ("a_cum", "h"))[part]
    return probe


def _scan_cases() -> list[Case]:
    g = _generator(1503)

    def case(label, *shape, part=1, low=0.5, dtype=torch.float32):
        a = low + (1 - low) * torch.rand(*shape, generator=g, dtype=torch.float64)
        b = torch.randn(*shape, generator=g, dtype=torch.float64)
        return Case(label, {"a": a.to(dtype), "b": b.to(dtype)}, _scan_probe(part))

    return [
        case("l = 1: a single pair is its own scan", 2, 1),
        case("l = 5, one sequence: the states h_t", 5),
        case("l = 5: the running products a_cum_t = a_0 a_1 ... a_t", 5, part=0),
        case("l = 8, a power of two, shape (2, 3, 8)", 2, 3, 8),
        case("l = 13, shape (b, d, n, l) = (2, 3, 4, 13)", 2, 3, 4, 13),
        case("l = 1000, shape (2, 1000): ceil(log2 l) = 10 steps", 2, 1000, low=0.9),
        case("float64 inputs, l = 6: the outputs keep their dtype", 3, 6,
             dtype=torch.float64),
    ]


def _scanned_like(**mistake) -> Callable:
    """A hint's test: the answer is the part (a_cum or h, whichever the case checks) of the
    scan with ``mistake``."""
    def applies(e, g, a):
        checks_h = not _same(_scan_reference(a["a"], a["b"])[0], e)
        return _same(_scan_variant(a["a"], a["b"], **mistake)[int(checks_h)], g)
    return applies


_SCAN_HINTS = (
    Hint("return a_cum and h in the inputs' dtype", lambda e, g, a: g.dtype != e.dtype),
    Hint("the scan is INCLUSIVE: position t holds the pairs 0..t, its own included (h_t, not"
         " h_{t-1})", _scanned_like(exclusive=True)),
    Hint("the first s positions have no partner s positions back: leave them as they are (or"
         " pair them with the identity (1, 0)); torch.roll wraps the last positions around to"
         " the front", _scanned_like(wrap=True)),
    Hint("compute both parts of the new pairs from the OLD pairs: the new b is a_t * b_{t-s} +"
         " b_t with the a_t from before this step (combine does this when it gets the old"
         " pairs)", _scanned_like(new_a_first=True)),
    Hint("the last positions miss the first pairs: l that is not a power of two needs"
         " ceil(log2 l) steps, not floor(log2 l); keep doubling the shift s while s < l",
         lambda e, g, a: a["a"].shape[-1] > 1 and _scanned_like(
             steps=math.floor(math.log2(a["a"].shape[-1])))(e, g, a)),
    Hint("one step too few or too many? with shifts s = 1, 2, 4, ... while s < l, position t"
         " ends up holding every pair from 0 to t", lambda e, g, a: any(
             _scanned_like(steps=_steps(a["a"].shape[-1]) + k)(e, g, a) for k in (-1, 1))),
)


def check_parallel_scan(parallel_scan) -> None:
    """Check ``parallel_scan(a, b)``: a, b (..., l) -> (a_cum, h), the inclusive scan of the
    pairs (a_t, b_t) over the last axis, h_t = a_t h_{t-1} + b_t from h_{-1} = 0 and a_cum_t =
    a_0 ... a_t, in ceil(log2 l) whole-tensor steps."""
    run_check(Check(
        title="parallel scan", reference=_scan_reference, cases=_scan_cases(),
        atol=1e-5, rtol=1e-4,
        hint="s = 1; while s < l: positions t >= s get combine((a, b)[..., :-s], (a, b)[...,"
             " s:]) (pair t - s, then pair t), positions t < s keep their pair (torch.cat the"
             " two parts); s *= 2. Return (a, b)",
        hints=_SCAN_HINTS, example="check_parallel_scan(parallel_scan)"), parallel_scan)


# ---------------------------------------------------------------------------------------------
# Task 4: the selective-scan kernel in Triton

_KERNEL_EXAMPLE = "check_selective_scan_kernel(selective_scan_kernel)"
_JUNK = float("nan")  # what lies past each input's last channel and last state
_UNWRITTEN = -3.25e29  # what y's buffer holds before the launch
_SPARE = 8  # extra entries along every axis of a buffer but the batch




def _buffer(shape: tuple[int, ...], layout: str, batched: bool, fill, dtype,
            device) -> tuple[torch.Tensor, torch.Tensor]:
    """(a view of ``shape``, the whole buffer it lies in, holding ``fill`` elsewhere).

    ``"padded"``: every axis but the batch (the first, when ``batched``) has _SPARE more
    entries, so no stride is the contiguous one; ``"transposed"``: the same with the last two
    axes stored the other way round (stride 1 along the second to last axis);
    ``"contiguous"``: contiguous strides, spare entries after the last element only."""
    if layout == "contiguous":
        size = math.prod(shape)
        buffer = torch.full((size + _SPARE,), fill, dtype=dtype, device=device)
        return buffer[:size].view(shape), buffer
    sizes = [s + (0 if batched and axis == 0 else _SPARE) for axis, s in enumerate(shape)]
    if layout == "transposed":
        sizes[-2], sizes[-1] = sizes[-1], sizes[-2]
    buffer = torch.full(sizes, fill, dtype=dtype, device=device)
    view = buffer.transpose(-1, -2) if layout == "transposed" else buffer
    return view[tuple(slice(0, s) for s in shape)], buffer


def _placed(t: torch.Tensor, layout: str, batched: bool, fill: float, device) -> torch.Tensor:
    view, _ = _buffer(tuple(t.shape), layout, batched, fill, torch.float32, device)
    view.copy_(t)
    return view


def _kernel_reference(u, delta, A, B, C, block_d, layout) -> torch.Tensor:
    return selective_scan_reference(u.double(), delta.double(), A.double(), B.double(),
                                    C.double()).float()


def _kernel_variant(u, delta, A, B, C, *, reset: bool = False, read_before: bool = False,
                    delta_in_decay: bool = True, delta_on_input: bool = True) -> torch.Tensor:
    """The scan in float64 with one known mistake: ``reset`` starts every step from h = 0;
    ``read_before`` reads y_t = C_t . h_{t-1} before the update; ``delta_in_decay=False``
    decays by exp(A); ``delta_on_input=False`` adds B_t u_t."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64)  # (b, d, n)
    ys = []
    for t in range(u.shape[-1]):
        dt = delta[:, :, t, None]  # (b, d, 1)
        decay = torch.exp(dt * A if delta_in_decay else A.expand_as(h))
        step = (dt if delta_on_input else 1.0) * u[:, :, t, None] * B[:, None, :, t]
        before = h
        h = (0.0 if reset else decay * h) + step
        ys.append(((before if read_before else h) * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, -1)


def _stray_writes(stray: torch.Tensor, layout: str, d: int, length: int, block_d: int) -> str:
    """What to say about writes outside y, given where they landed in y's buffer."""
    overhang = -(-d // block_d) * block_d  # the channels the programs cover
    if layout != "contiguous":
        by_axes = stray.transpose(-1, -2) if layout == "transposed" else stray  # (b, d+, l+)
        beyond = by_axes.clone()
        beyond[:, d:overhang, :length] = False
        if not bool(beyond.any()):
            return (f"it writes past the last channel: the last block of channels overhangs d"
                    f" (here d = {d} channels in blocks of BLOCK_D = {block_d}), and its"
                    f" channels >= d belong to other data; mask the tl.store with channels < d")
    return ("it writes outside y, where no channel and no step of y lies: address y[i, c, t]"
            " as y_ptr + i * stride_yb + c * stride_yd + t * stride_yl with the strides the"
            " check passes, and mask the tl.store with channels < d")


def _launcher(kernel, device: torch.device):
    """The function that run_check calls: lay the inputs out in buffers with other data
    around them (see `_buffer`), launch the student's kernel with grid (cdiv(d, BLOCK_D), b),
    check that it wrote every output and nothing else, and return y."""
    import triton

    def launch(u, delta, A, B, C, block_d, layout, junk=_JUNK):
        if "raise NotImplementedError" in kernel_source(kernel):
            raise NotImplementedError
        b, d, length = u.shape
        n = A.shape[1]
        ud, deltad = (_placed(t, layout, True, junk, device) for t in (u, delta))
        Ad = _placed(A, layout, False, junk, device)
        Bd, Cd = (_placed(t, layout, True, junk, device) for t in (B, C))
        yd, whole = _buffer((b, d, length), layout, True, _UNWRITTEN, torch.float32, device)
        inside_view, inside = _buffer((b, d, length), layout, True, False, torch.bool, device)
        inside_view.fill_(True)
        block_n = max(2, triton.next_power_of_2(n))
        kernel[(triton.cdiv(d, block_d), b)](
            ud, deltad, Ad, Bd, Cd, yd, *ud.stride(), *deltad.stride(), *Ad.stride(),
            *Bd.stride(), *Cd.stride(), *yd.stride(), d, n, length, block_d, block_n)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stray = (whole != _UNWRITTEN) & ~inside  # NaN counts as written
        if bool(stray.any()):
            raise WrongAnswer(_stray_writes(stray, layout, d, length, block_d))
        got = yd.cpu().clone()
        missing = got == _UNWRITTEN
        if bool(missing.any()):
            where = tuple(int(i) for i in missing.nonzero()[0])
            raise WrongAnswer(
                f"some outputs were never written, the first at y{list(where)} (batch,"
                f" channel, time): does program (i, j) store y_t for its BLOCK_D channels"
                f" i * BLOCK_D ... of sequence j at every step t < length?")
        return got

    return launch


def _kernel_cases() -> list[Case]:
    g = _generator(1504)

    def case(label, b, d, n, length, block_d=4, layout="padded", decay=(0.2, 1.5)):
        def rand(*shape, low=0.0, high=1.0):
            return low + (high - low) * torch.rand(*shape, generator=g)

        return Case(label, {"u": torch.randn(b, d, length, generator=g),
                            "delta": rand(b, d, length, low=0.05, high=1.0),
                            "A": -rand(d, n, low=decay[0], high=decay[1]),
                            "B": torch.randn(b, n, length, generator=g),
                            "C": torch.randn(b, n, length, generator=g),
                            "block_d": block_d, "layout": layout})

    return [
        case("one channel, one state, one step: y_0 = C_0 delta_0 B_0 u_0 (BLOCK_D = 4,"
             " BLOCK_N = 2)", 1, 1, 1, 1),
        case("d = 6 channels in blocks of 4 (the last block holds 2), n = 4, l = 9", 1, 6, 4,
             9),
        case("b = 2 sequences, n = 3 states in a BLOCK_N of 4, l = 7", 2, 5, 3, 7),
        case("transposed layouts: u, delta and y have stride 1 along d, B and C along n, A"
             " along d; d = 6, n = 4, l = 8", 1, 6, 4, 8, layout="transposed"),
        case("BLOCK_D = 8 holds all d = 6 channels; strong decay, A down to -6", 1, 6, 2, 10,
             block_d=8, decay=(3.0, 6.0)),
    ]


def _kernel_like(**mistake) -> Callable:
    return lambda e, g, a: _same(_kernel_variant(a["u"], a["delta"], a["A"], a["B"], a["C"],
                                                 **mistake), g)


def _kernel_hints(launch, atol: float, rtol: float) -> tuple[Hint, ...]:
    """The kernel's hints; two of them launch the kernel again on the same inputs, laid out
    differently, to see whether that alone puts it right."""

    def right_with_zeros_around(e, g, a):
        return _same(e, launch(*a.values(), junk=0.0), rtol=rtol, atol=atol)

    def strided_like_contiguous(e, g, a):
        return _same(e, launch(*list(a.values())[:-1], "contiguous"), rtol=rtol, atol=atol)

    return (
        Hint("it reads past the last channel or the last state: the rows >= d of u, delta and"
             " A and the columns >= n of A, B and C hold other data (here NaN), and with zeros"
             " there your kernel is right; load with mask=(channels < d) (and states < n) and"
             " other=0.0", right_with_zeros_around),
        Hint("this case's buffers are not contiguous, and on contiguous ones your kernel is"
             " right: u[i, c, t] is at u_ptr + i * stride_ub + c * stride_ud + t * stride_ul"
             " (likewise delta, A, B, C and y); use the strides the check passes",
             strided_like_contiguous),
        Hint("some values are not finite: mask every tl.load (other=0.0) so that no padded"
             " channel or state reads other data", lambda e, g, a: _not_finite(g)),
        Hint("the state must carry over from one step to the next: create h = tl.zeros("
             "[BLOCK_D, BLOCK_N], tl.float32) once, BEFORE the loop over time, and inside it"
             " update h = exp(delta_t A) h + delta_t B_t u_t", _kernel_like(reset=True)),
        Hint("y_t reads the state AFTER step t: first update h with step t's input, then"
             " y_t = tl.sum(h * C_t[None, :], axis=1)", _kernel_like(read_before=True)),
        Hint("the decay is exp(delta_t A), with each channel's own step size:"
             " tl.exp(delta[:, None] * A), not tl.exp(A)", _kernel_like(delta_in_decay=False)),
        Hint("the input enters as delta_t B_t u_t: (delta * u)[:, None] * B_t[None, :]",
             _kernel_like(delta_on_input=False)),
    )


def check_selective_scan_kernel(selective_scan_kernel) -> None:
    """Check the ``@triton.jit`` kernel ``selective_scan_kernel`` (signature in the notebook):
    launched with grid (cdiv(d, BLOCK_D), b), program (i, j) scans channels i * BLOCK_D ... of
    sequence j over time, h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, and writes
    y_t = sum_n C_t h_t."""
    title = "selective-scan kernel"
    problem, interpreting = triton_problem(selective_scan_kernel, _KERNEL_EXAMPLE)
    if problem is not None:
        raise AssertionError(f"{title}: {problem}")
    device = torch.device("cpu" if interpreting else "cuda")
    atol, rtol = 1e-5, 1e-4
    launch = _launcher(selective_scan_kernel, device)
    run_check(Check(
        title=title, reference=_kernel_reference, cases=_kernel_cases(), atol=atol, rtol=rtol,
        hint="per program: channels = program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D), states"
             " = tl.arange(0, BLOCK_N); load A (BLOCK_D, BLOCK_N) once; h = zeros; for t in"
             " range(length): load delta_t, u_t (BLOCK_D,), B_t, C_t (BLOCK_N,); h ="
             " exp(delta_t[:, None] A) h + (delta_t u_t)[:, None] B_t[None, :]; store y_t ="
             " sum(h C_t[None, :], axis=1) for channels < d",
        hints=_kernel_hints(launch, atol, rtol), example=_KERNEL_EXAMPLE), launch)
