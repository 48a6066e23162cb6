"""Checks for exercise 5 (LSTM and GRU cells, their parameters, the forget gate's retention).

Each ``check_*`` takes the student's function, runs it on seeded inputs built here, and compares
it with a reference written in this module. Weights use PyTorch's layout, as ``nn.LSTMCell`` and
``nn.GRUCell`` store them. Letters: b batch, l length, e input width (``d_in``), d hidden
width (``d_hidden``).

- `check_lstm_cell`: ``lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh)`` -> ``(h_new, c_new)``;
  x (b, e), h and c (b, d), W_ih (4d, e), W_hh (4d, d), b_ih and b_hh (4d,), gate blocks in
  PyTorch's order i, f, g, o. The answer is compared as ``torch.stack([h_new, c_new])``.
- `check_gru_cell`: ``gru_cell(x, h, W_ih, W_hh, b_ih, b_hh)`` -> ``h_new``; W_ih (3d, e),
  W_hh (3d, d), biases (3d,), blocks in the order r, z, n; the reset gate multiplies
  ``h W_hn^T + b_hn`` and ``h_new = (1 - z) * n + z * h``.
- `check_count_lstm_parameters`: ``count_lstm_parameters(d_in, d_hidden)`` -> the number of
  parameters of ``nn.LSTM(d_in, d_hidden)``.
- `check_forget_gate_retention`: ``forget_gate_retention(f)`` -> for forget-gate values f
  (b, l, d), the running product over time, r[:, t] = f[:, 0] * ... * f[:, t]: the fraction of
  the initial cell state that reaches step t + 1 along the cell-state path.

The two cell checks refuse PyTorch's fused cells (``torch.lstm_cell``, ``torch.gru_cell``, and
``nn.LSTM``/``nn.GRU`` through ``torch.lstm``/``torch.gru``) and seqlib's own cells.
"""

from __future__ import annotations

import contextlib
import itertools

import torch

from .core import Case, Check, Hint, WrongAnswer, run_check

__all__ = [
    "check_count_lstm_parameters",
    "check_forget_gate_retention",
    "check_gru_cell",
    "check_lstm_cell",
]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when b has a's shape and values (used by hints to recognise a known mistake)."""
    return (isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(b.double(), a.double(), rtol=1e-5, atol=1e-7))


def _cell_inputs(g: torch.Generator, b: int, e: int, d: int, gates: int, *,
                 dtype=torch.float64, scale: float = 1.0, with_c: bool = False) -> dict:
    """Random inputs for one cell step, named as the task's parameters, in call order."""
    def rand(*shape):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    args = {"x": rand(b, e), "h": rand(b, d)}
    if with_c:
        args["c"] = rand(b, d)
    args.update({"W_ih": rand(gates * d, e), "W_hh": rand(gates * d, d),
                 "b_ih": rand(gates * d), "b_hh": rand(gates * d)})
    return args


# ---------------------------------------------------------------------------------------------
# Forbidding the library's cells

_FUSED_CELLS = {
    torch.lstm_cell: "torch.lstm_cell (what nn.LSTMCell runs)",
    torch.lstm: "torch.lstm (what nn.LSTM runs)",
    torch.gru_cell: "torch.gru_cell (what nn.GRUCell runs)",
    torch.gru: "torch.gru (what nn.GRU runs)",
}


@contextlib.contextmanager
def _without_seqlib_cells():
    """Make seqlib's own LSTM and GRU cells refuse to run while the student's code does."""
    try:
        from seqlib.models import rnn
    except ImportError:  # nothing to refuse
        yield
        return
    classes = [getattr(rnn, name) for name in ("LSTMCell", "GRUCell") if hasattr(rnn, name)]
    saved = {cls: cls.__dict__["recur"] for cls in classes if "recur" in cls.__dict__}

    def refusing(name):
        def recur(self, *args, **kwargs):
            raise WrongAnswer(f"it calls seqlib.models.rnn.{name}, which this task asks you to"
                              " write yourself")
        return recur

    for cls in saved:
        cls.recur = refusing(cls.__name__)
    try:
        yield
    finally:
        for cls, recur in saved.items():
            cls.recur = recur


# ---------------------------------------------------------------------------------------------
# LSTM cell


def _lstm_variant(x, h, c, W_ih, W_hh, b_ih, b_hh, *, order="ifgo", candidate=torch.tanh,
                  biases="both", squash_c=True):
    """One LSTM step; the keyword arguments describe the correct cell (the defaults) or a
    known mistake (hints use them to recognise it)."""
    pre = x @ W_ih.T + h @ W_hh.T  # (b, 4d)
    if biases in ("both", "ih"):
        pre = pre + b_ih
    if biases in ("both", "hh"):
        pre = pre + b_hh
    blocks = dict(zip(order, pre.chunk(4, dim=-1)))  # each (b, d)
    i, f, o = (torch.sigmoid(blocks[k]) for k in "ifo")
    g = candidate(blocks["g"])
    c_new = f * c + i * g
    h_new = o * (torch.tanh(c_new) if squash_c else c_new)
    return h_new, c_new


def _lstm_reference(x, h, c, W_ih, W_hh, b_ih, b_hh):
    return _lstm_variant(x, h, c, W_ih, W_hh, b_ih, b_hh)


def _stack_pair(answer) -> torch.Tensor:
    if not isinstance(answer, tuple | list) or len(answer) != 2:
        raise WrongAnswer("it must return a tuple (h_new, c_new) of two tensors, got "
                          f"{type(answer).__name__}")
    h_new, c_new = answer
    if not (isinstance(h_new, torch.Tensor) and isinstance(c_new, torch.Tensor)):
        raise WrongAnswer("it must return a tuple (h_new, c_new) of two tensors")
    if h_new.shape != c_new.shape:
        raise WrongAnswer(f"h_new has shape {tuple(h_new.shape)} but c_new has shape "
                          f"{tuple(c_new.shape)}; both must be (b, d)")
    return torch.stack([h_new, c_new])  # (2, b, d): index 0 is h_new, 1 is c_new


def _lstm_pair(function, args) -> torch.Tensor:
    """Probe: call with seqlib's cells refused; compare (h_new, c_new) stacked."""
    with _without_seqlib_cells():
        return _stack_pair(function(*args.values()))


def _lstm_cases() -> list[Case]:
    g = _generator(505)
    note = "; compared as torch.stack([h_new, c_new]), index 0 is h_new, 1 is c_new"
    zero = _cell_inputs(g, 2, 3, 2, 4, with_c=True)
    zero["x"] = torch.zeros_like(zero["x"])
    zero["h"] = torch.zeros_like(zero["h"])
    zero["c"] = torch.zeros_like(zero["c"])
    return [
        Case("one sequence, e = 3, d = 2" + note,
             _cell_inputs(g, 1, 3, 2, 4, with_c=True), probe=_lstm_pair),
        Case("a batch of 4, e = 5, d = 3" + note,
             _cell_inputs(g, 4, 5, 3, 4, with_c=True), probe=_lstm_pair),
        Case("zero x, h and c: only the biases act" + note, zero, probe=_lstm_pair),
        Case("large weights (saturated gates), batch of 3, e = 2, d = 4" + note,
             _cell_inputs(g, 3, 2, 4, 4, with_c=True, scale=4.0), probe=_lstm_pair),
        Case("float32 inputs: the answer keeps their dtype" + note,
             _cell_inputs(g, 2, 4, 3, 4, with_c=True, dtype=torch.float32),
             probe=_lstm_pair),
    ]


def _is_lstm_variant(got, args, **mistake) -> bool:
    return _same(torch.stack(_lstm_variant(*args.values(), **mistake)), got)


def _lstm_wrong_order(got, args) -> bool:
    return any(_is_lstm_variant(got, args, order="".join(p))
               for p in itertools.permutations("ifgo") if "".join(p) != "ifgo")


_LSTM_HINTS = (
    Hint("return the answer in the inputs' dtype (do not convert to float64 or float32)",
         lambda e, g, a: g.dtype != e.dtype),
    Hint("the gate order looks wrong: PyTorch stacks the four blocks of W_ih, W_hh and the"
         " biases as i, f, g, o (input, forget, candidate, output), each d rows",
         lambda e, g, a: _lstm_wrong_order(g, a)),
    Hint("the candidate g uses tanh, not a sigmoid: it must be able to push the memory down"
         " as well as up", lambda e, g, a: _is_lstm_variant(g, a, candidate=torch.sigmoid)),
    Hint("a bias is missing: PyTorch adds both b_ih and b_hh to the gates' pre-activations",
         lambda e, g, a: _is_lstm_variant(g, a, biases="ih")
         or _is_lstm_variant(g, a, biases="hh")),
    Hint("c_new is right but h_new is not: h_new = o * tanh(c_new), the output gate times the"
         " squashed memory", lambda e, g, a: _is_lstm_variant(g, a, squash_c=False)),
)


def check_lstm_cell(lstm_cell) -> None:
    """Check ``lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh)`` -> ``(h_new, c_new)``, one LSTM
    step in PyTorch's layout and gate order (i, f, g, o), written from scratch."""
    run_check(Check(
        title="LSTM cell", reference=_lstm_reference, cases=_lstm_cases(),
        rtol=1e-5, atol=1e-6,
        hint="gates = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh, split in four blocks i, f, g, o;"
             " c_new = sigmoid(f) * c + sigmoid(i) * tanh(g); h_new = sigmoid(o) *"
             " tanh(c_new)",
        hints=_LSTM_HINTS, forbidden=_FUSED_CELLS, example="check_lstm_cell(lstm_cell)"),
        lstm_cell)


# ---------------------------------------------------------------------------------------------
# GRU cell


def _gru_variant(x, h, W_ih, W_hh, b_ih, b_hh, *, order="rzn", reset_after=True,
                 z_on_old=True, biases="both", candidate=torch.tanh):
    """One GRU step; the keyword arguments describe the correct cell (the defaults) or a
    known mistake."""
    b_x = b_ih if biases in ("both", "ih") else torch.zeros_like(b_ih)
    b_h = b_hh if biases in ("both", "hh") else torch.zeros_like(b_hh)
    x_blocks = dict(zip(order, (x @ W_ih.T + b_x).chunk(3, dim=-1)))  # each (b, d)
    W = dict(zip(order, W_hh.chunk(3, dim=0)))  # each (d, d)
    bh = dict(zip(order, b_h.chunk(3)))  # each (d,)
    r = torch.sigmoid(x_blocks["r"] + h @ W["r"].T + bh["r"])
    z = torch.sigmoid(x_blocks["z"] + h @ W["z"].T + bh["z"])
    if reset_after:
        recurrent = r * (h @ W["n"].T + bh["n"])
    else:
        recurrent = (r * h) @ W["n"].T + bh["n"]
    n = candidate(x_blocks["n"] + recurrent)
    return (1 - z) * n + z * h if z_on_old else z * n + (1 - z) * h


def _gru_reference(x, h, W_ih, W_hh, b_ih, b_hh):
    return _gru_variant(x, h, W_ih, W_hh, b_ih, b_hh)


def _gru_call(function, args) -> torch.Tensor:
    """Probe: call with seqlib's cells refused."""
    with _without_seqlib_cells():
        return function(*args.values())


def _gru_cases() -> list[Case]:
    g = _generator(606)
    zero = _cell_inputs(g, 2, 3, 2, 3)
    zero["x"] = torch.zeros_like(zero["x"])
    zero["h"] = torch.zeros_like(zero["h"])
    return [
        Case("one sequence, e = 3, d = 2", _cell_inputs(g, 1, 3, 2, 3), probe=_gru_call),
        Case("a batch of 4, e = 5, d = 3", _cell_inputs(g, 4, 5, 3, 3), probe=_gru_call),
        Case("zero x and h: only the biases act", zero, probe=_gru_call),
        Case("large weights (saturated gates), batch of 3, e = 2, d = 4",
             _cell_inputs(g, 3, 2, 4, 3, scale=4.0), probe=_gru_call),
        Case("float32 inputs: the answer keeps their dtype",
             _cell_inputs(g, 2, 4, 3, 3, dtype=torch.float32), probe=_gru_call),
    ]


def _is_gru_variant(got, args, **mistake) -> bool:
    return _same(_gru_variant(*args.values(), **mistake), got)


def _gru_wrong_order(got, args) -> bool:
    return any(_is_gru_variant(got, args, order="".join(p))
               for p in itertools.permutations("rzn") if "".join(p) != "rzn")


_GRU_HINTS = (
    Hint("return the answer in the inputs' dtype (do not convert to float64 or float32)",
         lambda e, g, a: g.dtype != e.dtype),
    Hint("the update gate mixes the wrong way round: in PyTorch (and Cho et al.) z weighs the"
         " OLD state, h_new = (1 - z) * n + z * h",
         lambda e, g, a: _is_gru_variant(g, a, z_on_old=False)),
    Hint("the reset gate acts in the wrong place: PyTorch multiplies r into the whole"
         " recurrent term, r * (h @ W_hn.T + b_hn), AFTER the matrix product and its bias;"
         " (r * h) @ W_hn.T is the form of Cho et al.'s paper",
         lambda e, g, a: _is_gru_variant(g, a, reset_after=False)),
    Hint("the gate order looks wrong: PyTorch stacks the three blocks as r, z, n (reset,"
         " update, candidate), each d rows", lambda e, g, a: _gru_wrong_order(g, a)),
    Hint("a bias is missing: PyTorch adds b_ih to the input part and b_hh to the recurrent"
         " part of every gate (b_hn inside the reset gate's product)",
         lambda e, g, a: _is_gru_variant(g, a, biases="ih")
         or _is_gru_variant(g, a, biases="hh")),
    Hint("the candidate n uses tanh, not a sigmoid",
         lambda e, g, a: _is_gru_variant(g, a, candidate=torch.sigmoid)),
)


def check_gru_cell(gru_cell) -> None:
    """Check ``gru_cell(x, h, W_ih, W_hh, b_ih, b_hh)`` -> ``h_new``, one GRU step in
    PyTorch's layout, gate order (r, z, n) and reset-gate placement, written from scratch."""
    run_check(Check(
        title="GRU cell", reference=_gru_reference, cases=_gru_cases(), rtol=1e-5, atol=1e-6,
        hint="split x @ W_ih.T + b_ih and h @ W_hh.T + b_hh into blocks r, z, n; r and z are"
             " sigmoids of the sums; n = tanh(x_n + r * h_n); h_new = (1 - z) * n + z * h",
        hints=_GRU_HINTS, forbidden=_FUSED_CELLS, example="check_gru_cell(gru_cell)"),
        gru_cell)


# ---------------------------------------------------------------------------------------------
# Parameter count


def _count_reference(d_in: int, d_hidden: int) -> int:
    return 4 * (d_in * d_hidden + d_hidden * d_hidden + 2 * d_hidden)


def _count_cases() -> list[Case]:
    return [
        Case(f"d_in = {e}, d_hidden = {d}", {"d_in": e, "d_hidden": d})
        for e, d in [(3, 5), (1, 1), (10, 20), (128, 256), (512, 512)]
    ]


def _counts_as(formula):
    return lambda e, g, a: g == formula(a["d_in"], a["d_hidden"])


_COUNT_HINTS = (
    Hint("one bias vector too few: PyTorch keeps two, b_ih and b_hh, each 4 * d_hidden long",
         _counts_as(lambda e, d: 4 * (e * d + d * d + d))),
    Hint("that is a GRU's count: an LSTM has FOUR blocks (i, f, g, o), a GRU three",
         _counts_as(lambda e, d: 3 * (e * d + d * d + 2 * d))),
    Hint("that is a single gate's share: there are four gates, each with its own input"
         " weights, recurrent weights and two biases",
         _counts_as(lambda e, d: e * d + d * d + 2 * d)),
    Hint("the recurrent matrix W_hh maps the hidden state (d_hidden) to the gates: it is"
         " (4 * d_hidden, d_hidden), not (4 * d_hidden, d_in)",
         _counts_as(lambda e, d: 4 * (2 * e * d + 2 * d))),
)


def check_count_lstm_parameters(count_lstm_parameters) -> None:
    """Check ``count_lstm_parameters(d_in, d_hidden)`` -> the parameter count of
    ``nn.LSTM(d_in, d_hidden)``: W_ih, W_hh and the two biases."""
    run_check(Check(
        title="LSTM parameter count", reference=_count_reference, cases=_count_cases(),
        hint="count the entries of weight_ih (4d, e), weight_hh (4d, d), bias_ih (4d,) and"
             " bias_hh (4d,), with e = d_in and d = d_hidden",
        hints=_COUNT_HINTS, example="check_count_lstm_parameters(count_lstm_parameters)"),
        count_lstm_parameters)


# ---------------------------------------------------------------------------------------------
# Forget-gate retention


def _retention_reference(f: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(f, dim=1)


def _retention_cases() -> list[Case]:
    g = _generator(707)

    def gates(*shape, low=0.3, dtype=torch.float64):
        values = low + (1 - low) * torch.rand(*shape, generator=g, dtype=torch.float64)
        return values.to(dtype)

    return [
        Case("one unit, four steps of f = 0.5", {"f": torch.full((1, 4, 1), 0.5,
                                                                  dtype=torch.float64)}),
        Case("a batch of 2, 5 steps, 3 units", {"f": gates(2, 5, 3)}),
        Case("one step: the retention is the gate itself", {"f": gates(3, 1, 2)}),
        Case("1000 steps of gates near 1", {"f": gates(1, 1000, 2, low=0.99)}),
        Case("float32 gates: the answer keeps their dtype",
             {"f": gates(2, 6, 4, dtype=torch.float32)}),
    ]


def _exclusive(f: torch.Tensor) -> torch.Tensor:
    ones = torch.ones_like(f[:, :1])
    return torch.cumprod(torch.cat([ones, f[:, :-1]], dim=1), dim=1)


_RETENTION_HINTS = (
    Hint("return the retention at EVERY step, shape (b, l, d), not only after the last one",
         lambda e, g, a: g.shape == (e.shape[0], e.shape[2]) and e.shape[1] != e.shape[2]),
    Hint("the retention multiplies the gates, it does not add them: the direct path scales"
         " c by f at every step", lambda e, g, a: _same(torch.cumsum(a["f"], dim=1), g)),
    Hint("off by one step: r[:, 0] is f[:, 0] itself (the state after the first step has"
         " already been multiplied by one forget gate)",
         lambda e, g, a: _same(_exclusive(a["f"]), g)),
    Hint("the product runs over TIME, axis 1 of (b, l, d), separately for each sequence and"
         " each unit", lambda e, g, a: g.shape == e.shape and (
             _same(torch.cumprod(a["f"], dim=2), g) or _same(torch.cumprod(a["f"], dim=0), g))),
    Hint("return the answer in the gates' dtype", lambda e, g, a: g.dtype != e.dtype),
)


def check_forget_gate_retention(forget_gate_retention) -> None:
    """Check ``forget_gate_retention(f)``: f (b, l, d) -> (b, l, d), the running product of
    the forget gates over time, r[:, t] = f[:, 0] * f[:, 1] * ... * f[:, t]."""
    run_check(Check(
        title="forget-gate retention", reference=_retention_reference,
        cases=_retention_cases(), rtol=1e-6, atol=1e-12,
        hint="r[:, t] is the product of f[:, 0], ..., f[:, t] along the time axis (axis 1):"
             " a running product, one per sequence and unit",
        hints=_RETENTION_HINTS,
        example="check_forget_gate_retention(forget_gate_retention)"),
        forget_gate_retention)
