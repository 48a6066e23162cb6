"""Checks for exercise 4 (vanishing and exploding gradients, gradient clipping).

Each ``check_*`` takes the student's function, runs it on seeded inputs built here, and compares
it with a reference written in this module. Letters: l sequence length, h hidden width. The
tanh RNN is h_t = tanh(W_h h_{t-1} + W_x x_t + b), with h_t a vector of width h.

- `check_rnn_jacobian`: ``rnn_jacobian(h_t, W_h)`` -> dh_t/dh_{t-1} = diag(1 - h_t^2) W_h,
  shape (h, h), or (b, h, h) for a batch of states (b, h)
- `check_hidden_gradients`: ``hidden_gradients(hs, W_h, grad_last)`` -> every dL/dh_t, (l + 1, h),
  from the states hs = h_0..h_l (l + 1, h) and dL/dh_l
- `check_spectral_radius`: ``spectral_radius(W)`` -> the largest modulus of W's eigenvalues
- `check_clip_grad_norm`: ``clip_grad_norm(grads, max_norm)`` -> the gradients rescaled so that
  their global norm is at most max_norm, written without PyTorch's clipping helpers
"""

from __future__ import annotations

import contextlib
import math

import torch

from .core import Case, Check, Hint, WrongAnswer, run_check

__all__ = [
    "check_clip_grad_norm",
    "check_hidden_gradients",
    "check_rnn_jacobian",
    "check_spectral_radius",
]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    """True when b has a's shape and values (used by hints to recognise a known mistake)."""
    return (isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(b.double(), a.double(), rtol=rtol, atol=1e-8))


def _random_states(g: torch.Generator, *shape: int, dtype=torch.float64) -> torch.Tensor:
    """Values like a tanh RNN's hidden states: in (-1, 1), some close to saturation."""
    return torch.tanh(1.5 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


# ---------------------------------------------------------------------------------------------
# the Jacobian of one tanh RNN step


def _rnn_jacobian_reference(h_t: torch.Tensor, W_h: torch.Tensor) -> torch.Tensor:
    return (1 - h_t**2).unsqueeze(-1) * W_h  # row i scaled by 1 - h_t[i]^2: (..., h, h)


def _rnn_jacobian_cases() -> list[Case]:
    g = _generator(401)
    return [
        Case("h = 3, small hand-picked values",
             {"h_t": torch.tensor([0.5, -0.2, 0.9], dtype=torch.float64),
              "W_h": torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 1.0]],
                                  dtype=torch.float64)}),
        Case("h = 5, random states and weights",
             {"h_t": _random_states(g, 5),
              "W_h": torch.randn(5, 5, generator=g, dtype=torch.float64)}),
        Case("h_t = 0: the tanh is in its linear part, the Jacobian is W_h itself",
             {"h_t": torch.zeros(4, dtype=torch.float64),
              "W_h": torch.randn(4, 4, generator=g, dtype=torch.float64)}),
        Case("a batch of 3 states (3, 4): one Jacobian per state, shape (3, 4, 4)",
             {"h_t": _random_states(g, 3, 4),
              "W_h": torch.randn(4, 4, generator=g, dtype=torch.float64)}),
        Case("float32 inputs: the result keeps their dtype",
             {"h_t": _random_states(g, 6, dtype=torch.float32),
              "W_h": torch.randn(6, 6, generator=g)}),
    ]


def _jacobian_variant(a: dict, factor=None, weights=None, rows: bool = True) -> torch.Tensor:
    h_t, W_h = a["h_t"], a["W_h"]
    factor = 1 - h_t**2 if factor is None else factor
    W = W_h if weights is None else weights
    return factor.unsqueeze(-1) * W if rows else factor.unsqueeze(-2) * W


_JACOBIAN_HINTS = (
    Hint("the tanh derivative is missing: dh_t/dh_{t-1} = diag(1 - h_t^2) W_h, not W_h",
         lambda e, g, a: _same(a["W_h"].expand_as(e), g) and not _same(e, g)),
    Hint("W_h looks transposed: row i of the Jacobian is dh_t[i]/dh_{t-1}, which is"
         " (1 - h_t[i]^2) times row i of W_h",
         lambda e, g, a: _same(_jacobian_variant(a, weights=a["W_h"].T), g)),
    Hint("you scaled the COLUMNS of W_h (W_h diag(1 - h_t^2)); the factor 1 - h_t[i]^2 belongs"
         " to output unit i, so it scales ROW i: diag(1 - h_t^2) W_h",
         lambda e, g, a: _same(_jacobian_variant(a, rows=False), g)),
    Hint("h_t is already tanh(a_t): its derivative is 1 - h_t^2, not 1 - tanh(h_t)^2",
         lambda e, g, a: _same(_jacobian_variant(a, factor=1 - torch.tanh(a["h_t"]) ** 2), g)),
    Hint("the derivative of tanh is 1 - tanh^2 = 1 - h_t^2 (squared), not 1 - h_t",
         lambda e, g, a: _same(_jacobian_variant(a, factor=1 - a["h_t"]), g)),
    Hint("for a batch of states (b, h) return one (h, h) Jacobian per state: (b, h, h)."
         " torch.diag on a 2-D tensor extracts a diagonal instead of building one; use"
         " broadcasting, (1 - h_t**2).unsqueeze(-1) * W_h, or torch.diag_embed",
         lambda e, g, a: tuple(g.shape) != tuple(e.shape) and a["h_t"].ndim > 1),
    Hint("return the result in the inputs' dtype (no .double() or .float() at the end)",
         lambda e, g, a: g.dtype != e.dtype),
)


def check_rnn_jacobian(rnn_jacobian) -> None:
    """Check ``rnn_jacobian(h_t, W_h)``: diag(1 - h_t^2) W_h, shape h_t.shape + (h,)."""
    run_check(Check(
        title="RNN Jacobian", reference=_rnn_jacobian_reference, cases=_rnn_jacobian_cases(),
        rtol=1e-5, atol=1e-7,
        hint="J[i, j] = dh_t[i] / dh_{t-1}[j] = (1 - h_t[i]^2) * W_h[i, j]; for a batch of"
             " states (b, h), one such matrix per state: broadcast with (1 - h_t**2)"
             ".unsqueeze(-1) or use torch.diag_embed (torch.diag of a 2-D tensor extracts a"
             " diagonal)",
        hints=_JACOBIAN_HINTS, example="check_rnn_jacobian(rnn_jacobian)"), rnn_jacobian)


# ---------------------------------------------------------------------------------------------
# backpropagation through time, hidden states only


def _hidden_gradients_reference(hs: torch.Tensor, W_h: torch.Tensor,
                                grad_last: torch.Tensor) -> torch.Tensor:
    grads = [grad_last]
    for t in range(hs.shape[0] - 1, 0, -1):  # dL/dh_{t-1} = W_h^T ((1 - h_t^2) * dL/dh_t)
        grads.append(((1 - hs[t] ** 2) * grads[-1]) @ W_h)
    return torch.stack(grads[::-1])  # (l + 1, h)


def _run_tanh_rnn(g: torch.Generator, length: int, width: int, radius: float) -> dict:
    """States h_0..h_l of a tanh RNN whose W_h has the given spectral radius."""
    W_h = torch.randn(width, width, generator=g, dtype=torch.float64)
    W_h = W_h * radius / torch.linalg.eigvals(W_h).abs().max()
    W_x = torch.randn(width, 2, generator=g, dtype=torch.float64)
    h = 0.5 * torch.randn(width, generator=g, dtype=torch.float64)
    hs = [h]
    for _ in range(length):
        h = torch.tanh(W_h @ h + W_x @ (0.3 * torch.randn(2, generator=g, dtype=torch.float64)))
        hs.append(h)
    grad_last = torch.randn(width, generator=g, dtype=torch.float64)
    return {"hs": torch.stack(hs), "W_h": W_h, "grad_last": grad_last}


def _hidden_gradients_cases() -> list[Case]:
    g = _generator(402)
    return [
        Case("l = 1, h = 2: one step back",
             {"hs": torch.tensor([[0.3, -0.6], [0.5, 0.8]], dtype=torch.float64),
              "W_h": torch.tensor([[0.5, 0.1], [0.2, 0.6]], dtype=torch.float64),
              "grad_last": torch.tensor([1.0, -2.0], dtype=torch.float64)}),
        Case("l = 4, h = 3, random states and weights",
             {"hs": _random_states(g, 5, 3),
              "W_h": torch.randn(3, 3, generator=g, dtype=torch.float64),
              "grad_last": torch.randn(3, generator=g, dtype=torch.float64)}),
        Case("l = 0: only h_0, so the answer is grad_last alone, shape (1, h)",
             {"hs": _random_states(g, 1, 3),
              "W_h": torch.randn(3, 3, generator=g, dtype=torch.float64),
              "grad_last": torch.randn(3, generator=g, dtype=torch.float64)}),
        Case("the states of a real tanh RNN, l = 30, h = 8, spectral radius 1.5",
             _run_tanh_rnn(g, 30, 8, 1.5)),
        Case("float32 inputs: the result keeps their dtype",
             {"hs": _random_states(g, 6, 4, dtype=torch.float32),
              "W_h": torch.randn(4, 4, generator=g),
              "grad_last": torch.randn(4, generator=g)}),
    ]


def _gradients_variant(a: dict, transpose=False, previous=False, factor=True) -> torch.Tensor:
    hs, W_h = a["hs"], (a["W_h"].T if transpose else a["W_h"])
    grads = [a["grad_last"]]
    for t in range(hs.shape[0] - 1, 0, -1):
        h = hs[t - 1] if previous else hs[t]
        scale = 1 - h**2 if factor else torch.ones_like(h)
        grads.append((scale * grads[-1]) @ W_h)
    return torch.stack(grads[::-1])


_GRADIENT_HINTS = (
    Hint("backpropagation multiplies by the TRANSPOSED Jacobian: dL/dh_{t-1} = J_t^T dL/dh_t"
         " = W_h^T ((1 - h_t^2) * dL/dh_t); as rows, ((1 - h_t**2) * g) @ W_h",
         lambda e, g, a: _same(_gradients_variant(a, transpose=True), g)),
    Hint("the factor 1 - h^2 comes from the step that PRODUCED h_t: going from dL/dh_t to"
         " dL/dh_{t-1} uses hs[t], not hs[t - 1]",
         lambda e, g, a: _same(_gradients_variant(a, previous=True), g)),
    Hint("the tanh derivative is missing: multiply dL/dh_t by 1 - h_t^2 before W_h^T",
         lambda e, g, a: _same(_gradients_variant(a, factor=False), g)),
    Hint("row t must hold dL/dh_t: row l (the last) is grad_last and row 0 is dL/dh_0; your"
         " rows look reversed", lambda e, g, a: _same(e.flip(0), g)),
    Hint("return one row per state h_0..h_l: shape (l + 1, h), the same as hs",
         lambda e, g, a: tuple(g.shape) != tuple(e.shape)),
    Hint("return the result in the inputs' dtype (no .double() or .float() at the end)",
         lambda e, g, a: g.dtype != e.dtype),
)


def check_hidden_gradients(hidden_gradients) -> None:
    """Check ``hidden_gradients(hs, W_h, grad_last)``: (l + 1, h), row t = dL/dh_t, from
    dL/dh_{t-1} = W_h^T ((1 - h_t^2) * dL/dh_t) and row l = grad_last."""
    run_check(Check(
        title="gradients through time", reference=_hidden_gradients_reference,
        cases=_hidden_gradients_cases(), rtol=1e-5, atol=1e-7,
        hint="start from grads[l] = grad_last and go back: grads[t - 1] = W_h^T ((1 - hs[t]^2)"
             " * grads[t]) for t = l, ..., 1",
        hints=_GRADIENT_HINTS, example="check_hidden_gradients(hidden_gradients)"),
        hidden_gradients)


# ---------------------------------------------------------------------------------------------
# the spectral radius


def _spectral_radius_reference(W: torch.Tensor) -> float:
    return float(torch.linalg.eigvals(W.double()).abs().max())


def _spectral_radius_cases() -> list[Case]:
    g = _generator(403)
    angle = 1.0
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)],
                             [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    skew = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64)
    return [
        Case("diagonal, eigenvalues 0.9 and 1.1",
             {"W": torch.diag(torch.tensor([0.9, 1.1], dtype=torch.float64))}),
        Case("diagonal with a negative eigenvalue, -2 and 0.5",
             {"W": torch.diag(torch.tensor([-2.0, 0.5], dtype=torch.float64))}),
        Case("0.8 times a rotation by 1 radian, in a skewed basis: complex eigenvalues"
             " 0.8 e^{+-i}", {"W": skew @ (0.8 * rotation) @ torch.linalg.inv(skew)}),
        Case("non-normal [[0.5, 4], [0, 0.5]]: both eigenvalues are 0.5",
             {"W": torch.tensor([[0.5, 4.0], [0.0, 0.5]], dtype=torch.float64)}),
        Case("a random 6 x 6 Gaussian matrix",
             {"W": torch.randn(6, 6, generator=g, dtype=torch.float64)}),
        Case("float32, 1 x 1", {"W": torch.tensor([[-3.0]])}),
    ]


def _number(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError, RuntimeError):
        return None


def _real_eigenvalues(a: dict) -> bool:
    return bool((torch.linalg.eigvals(a["W"].double()).imag == 0).all())


def _close(x, y) -> bool:
    x = _number(x)
    return x is not None and math.isclose(x, float(y), rel_tol=1e-5, abs_tol=1e-8)


_SPECTRAL_HINTS = (
    Hint("that is the largest SINGULAR value (the 2-norm ||W||_2), an upper bound on the"
         " spectral radius; the two agree only for normal matrices (symmetric, orthogonal)."
         " The spectral radius is max |lambda| over the eigenvalues: torch.linalg.eigvals",
         lambda e, g, a: _close(g, torch.linalg.matrix_norm(a["W"].double(), ord=2))),
    Hint("torch.linalg.eigvalsh (and eigh) assume a SYMMETRIC matrix and read only one"
         " triangle of it; a recurrent matrix is not symmetric: use torch.linalg.eigvals",
         lambda e, g, a: _close(g, torch.linalg.eigvalsh(a["W"].double()).abs().max())),
    Hint("eigenvalues can be negative: the spectral radius is the largest ABSOLUTE value",
         lambda e, g, a: _real_eigenvalues(a) and (
             _close(g, torch.linalg.eigvals(a["W"].double()).real.max())
             or (_number(g) is not None and _number(g) < 0))),
    Hint("a real matrix can have complex eigenvalues: take their modulus |lambda| (.abs() of"
         " the complex tensor), not the real part",
         lambda e, g, a: not _real_eigenvalues(a) and (
             _close(g, torch.linalg.eigvals(a["W"].double()).real.abs().max())
             or _close(g, torch.linalg.eigvals(a["W"].double()).real.max()))),
    Hint("the diagonal entries are the eigenvalues only of a triangular matrix",
         lambda e, g, a: _close(g, a["W"].double().diagonal().abs().max())),
)


def check_spectral_radius(spectral_radius) -> None:
    """Check ``spectral_radius(W)``: max |lambda| over the eigenvalues lambda of the square
    matrix W, as a number (a Python float or a 0-dim tensor)."""
    run_check(Check(
        title="spectral radius", reference=_spectral_radius_reference,
        cases=_spectral_radius_cases(), rtol=1e-5, atol=1e-8,
        hint="rho(W) = max over the eigenvalues lambda of W of |lambda|; eigenvalues of a real"
             " matrix may be complex (torch.linalg.eigvals returns a complex tensor)",
        hints=_SPECTRAL_HINTS, example="check_spectral_radius(spectral_radius)"),
        spectral_radius)


# ---------------------------------------------------------------------------------------------
# gradient clipping by the global norm

_LIBRARY_CLIPPING = {
    torch._foreach_norm: "torch._foreach_norm (PyTorch's clip_grad_norm_ and get_total_norm"
                         " use it)",
    torch._foreach_mul: "torch._foreach_mul",
    torch._foreach_mul_: "torch._foreach_mul_ (PyTorch's clipping uses it)",
}


class _Refused(WrongAnswer):
    pass


@contextlib.contextmanager
def _no_library_clipping():
    """Replace PyTorch's clipping helpers by functions that refuse, for one call."""
    utils = torch.nn.utils
    names = [n for n in ("clip_grad_norm_", "clip_grad_norm", "get_total_norm",
                         "clip_grads_with_norm_") if hasattr(utils, n)]
    modules = [utils, utils.clip_grad]
    saved = [(m, n, getattr(m, n)) for m in modules for n in names if hasattr(m, n)]

    def refuse(name):
        def refused(*args, **kwargs):
            raise _Refused(f"it calls torch.nn.utils.{name}, which this task asks you to write"
                           " yourself")
        return refused

    try:
        for m, n, _ in saved:
            setattr(m, n, refuse(n))
        yield
    finally:
        for m, n, f in saved:
            setattr(m, n, f)


def _clipped(function, args) -> torch.Tensor:
    """Probe: call ``function(grads, max_norm)`` on copies of the gradients, check the answer's
    form, and return all its entries flattened and concatenated in order."""
    originals = args["grads"]
    grads = [g.clone() for g in originals]
    with _no_library_clipping():
        out = function(grads, args["max_norm"])
    if any(not torch.equal(g, o) for g, o in zip(grads, originals)):
        raise WrongAnswer("it changed the gradients it was given in place; leave them alone"
                          " and return new tensors (x * scale, not x.mul_(scale))")
    if isinstance(out, torch.Tensor) or not isinstance(out, list | tuple):
        raise WrongAnswer(f"it returned a {type(out).__name__}; return a list with one tensor"
                          f" per gradient ({len(grads)} here)")
    if len(out) != len(grads):
        raise WrongAnswer(f"it returned {len(out)} tensors for {len(grads)} gradients")
    for i, (o, g) in enumerate(zip(out, grads)):
        if not isinstance(o, torch.Tensor) or o.shape != g.shape or o.dtype != g.dtype:
            kind = (f"a {o.dtype} tensor of shape {tuple(o.shape)}"
                    if isinstance(o, torch.Tensor) else f"a {type(o).__name__}")
            raise WrongAnswer(f"tensor {i} of the answer is {kind}; expected a {g.dtype} tensor"
                              f" of shape {tuple(g.shape)}, like gradient {i}")
    if not out:
        return torch.zeros(0)
    return torch.cat([o.reshape(-1).double() for o in out])


def _clip_reference(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    total = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    scale = min(1.0, max_norm / total) if total > 0 else 1.0
    return [(g.double() * scale).to(g.dtype) for g in grads]


def _clip_cases() -> list[Case]:
    g = _generator(404)
    small = [0.9 * v / v.norm() for v in torch.randn(10, 4, generator=g)]
    return [
        Case("gradients [3, 4] and [12]: global norm 13 > max_norm 5 (the comparison reads"
             " all entries, tensor after tensor)",
             {"grads": [torch.tensor([3.0, 4.0]), torch.tensor([12.0])], "max_norm": 5.0},
             probe=_clipped),
        Case("global norm 2.5 <= max_norm 10: the gradients come back unchanged",
             {"grads": [torch.tensor([[1.5, 0.0], [0.0, 2.0]]), torch.tensor([0.0])],
              "max_norm": 10.0}, probe=_clipped),
        Case("three random tensors of shapes (4, 3), (3,) and (2, 2, 2), max_norm 1",
             {"grads": [torch.randn(4, 3, generator=g), torch.randn(3, generator=g),
                        torch.randn(2, 2, 2, generator=g)], "max_norm": 1.0}, probe=_clipped),
        Case("ten tensors of norm 0.9 each, max_norm 1: each is small, together they are not",
             {"grads": small, "max_norm": 1.0}, probe=_clipped),
        Case("a single float64 tensor with a huge norm, max_norm 0.5",
             {"grads": [1e6 * torch.randn(5, 5, generator=g, dtype=torch.float64)],
              "max_norm": 0.5}, probe=_clipped),
    ]


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tensors])


def _per_tensor(a: dict) -> torch.Tensor:
    return _flat([t * min(1.0, a["max_norm"] / float(t.norm())) for t in a["grads"]])


def _sum_of_norms(a: dict) -> torch.Tensor:
    total = sum(float(t.norm()) for t in a["grads"])
    return _flat([t * min(1.0, a["max_norm"] / total) for t in a["grads"]])


def _global_norm(tensors) -> float:
    return float(_flat(tensors).norm())


_CLIP_HINTS = (
    Hint("each tensor was clipped on its own; the norm is GLOBAL: sqrt of the sum of the squared"
         " entries of ALL the tensors together, and every tensor is scaled by the same factor",
         lambda e, g, a: _same(_per_tensor(a), g)),
    Hint("the global norm is sqrt(sum over tensors of ||g_i||^2), not the sum of the tensors'"
         " norms", lambda e, g, a: _same(_sum_of_norms(a), g)),
    Hint("when the global norm is at most max_norm, return the gradients unchanged: clipping"
         " only ever scales DOWN, by min(1, max_norm / norm)",
         lambda e, g, a: _global_norm(a["grads"]) <= a["max_norm"]
         and math.isclose(float(g.norm()), a["max_norm"], rel_tol=1e-4)),
    Hint("after clipping, the global norm should be exactly max_norm: scale by max_norm / norm"
         " (not norm / max_norm, and with the square root)",
         lambda e, g, a: _global_norm(a["grads"]) > a["max_norm"]
         and not math.isclose(float(g.norm()), a["max_norm"], rel_tol=1e-4)),
)


def check_clip_grad_norm(clip_grad_norm) -> None:
    """Check ``clip_grad_norm(grads, max_norm)``: a new list of tensors, each gradient times
    min(1, max_norm / global norm), the inputs untouched, no PyTorch clipping helpers."""
    run_check(Check(
        title="gradient clipping", reference=_clip_reference, cases=_clip_cases(),
        rtol=1e-5, atol=1e-7, dtype="floating",
        hint="norm = sqrt(sum over all tensors of (g**2).sum()); return [g * min(1, max_norm /"
             " norm) for g in grads]",
        hints=_CLIP_HINTS, forbidden=_LIBRARY_CLIPPING,
        example="check_clip_grad_norm(clip_grad_norm)"), clip_grad_norm)
