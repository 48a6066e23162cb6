"""The generic machinery behind every exercise check.

A check (chapter 1's are in ``ex01.py``) is a title, a reference function, a list of seeded
`Case`s and a few `Hint`s; `run_check` runs the student's function on each case, compares its
answer with the reference's, and stops at the first case that fails.

Every failure is an ``AssertionError`` whose first line stands on its own (the grade command
shows only that line): which case failed and how. The lines after it give the inputs, what was
expected, what came back, where the two first differ, and a hint.

`find_mismatch` compares an answer with the expected value (a torch tensor, a numpy array or a
number) and describes the first difference in words; it is usable on its own.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

LABEL_WIDTH = 10  # "expected: " and friends line up their values


class WrongAnswer(Exception):
    """Raised by a case's probe when the answer breaks a contract that values cannot show."""


@dataclass(frozen=True)
class Case:
    """One input for the student's function: a label for messages and the arguments by name.

    The function is called positionally, in the order of ``args``, so a student who renames a
    parameter is not penalised. ``probe(function, args)``, when given, replaces the plain call
    (for example to run a backward pass and return a gradient).
    """

    label: str
    args: dict[str, Any]
    probe: Callable[[Callable, dict[str, Any]], Any] | None = None


@dataclass(frozen=True)
class Hint:
    """Advice shown when ``applies(expected, got, args)`` is true for a failing case (``args``
    are the case's inputs); it names a likely mistake, so it is tested before the general hint.
    """

    text: str
    applies: Callable[[Any, Any, dict[str, Any]], bool]


@dataclass
class Mismatch:
    """How an answer differs from the expected value: one line, then detail lines."""

    summary: str
    details: list[str] = field(default_factory=list)
    show_values: bool = True  # False when the values are beside the point (a broken contract)


# ---------------------------------------------------------------------------------------------
# Describing values in words


def describe(value: Any) -> str:
    """The kind of a value in plain words: 'float32 tensor of shape (4, 4)', 'float', ..."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"{_dtype_name(value.dtype)} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"numpy {value.dtype} array of shape {value.shape}"
    return type(value).__name__


def show(value: Any) -> str:
    """A short rendering of a value's contents (large arrays are summarised)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        text = np.array2string(value, threshold=40, edgeitems=3, precision=5)
    else:
        text = repr(value)
    return text if len(text) <= 600 else text[:600] + " ..."


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _scalar(x: Any) -> str:
    if isinstance(x, float | np.floating):
        return f"{float(x):.6g}"
    return str(x.item() if hasattr(x, "item") else x)


def _where(index: tuple[int, ...]) -> str:
    if not index:
        return ""
    return f" at index {index[0]}" if len(index) == 1 else f" at index {index}"


# ---------------------------------------------------------------------------------------------
# Comparing answers


def first_difference(
    expected: np.ndarray, got: np.ndarray, *, atol: float = 0.0, rtol: float = 0.0
) -> tuple[tuple[int, ...], int] | None:
    """Index of the first entry (in row-major order) where ``got`` is not close to
    ``expected``, and how many entries differ; None if all are close. Shapes must match.
    NaN matches NaN and infinities match infinities of the same sign."""
    if expected.dtype == bool or got.dtype == bool:
        differs = expected != got
    else:
        close = np.isclose(got.astype(np.float64), expected.astype(np.float64),
                           rtol=rtol, atol=atol, equal_nan=True)
        differs = ~close
    if not differs.any():
        return None
    index = tuple(int(i) for i in np.argwhere(differs)[0])
    return index, int(differs.sum())


def find_mismatch(
    expected: Any, got: Any, *, atol: float = 0.0, rtol: float = 0.0, dtype: str = "exact"
) -> Mismatch | None:
    """Compare an answer with the expected value; None when they agree.

    ``expected`` is a torch tensor, a numpy array or a number. For arrays, ``dtype`` says how
    strict to be: ``"exact"`` (the same dtype), ``"floating"`` (any floating dtype) or
    ``"any"``. Values agree when ``|got - expected| <= atol + rtol * |expected|``.
    """
    if dtype not in ("exact", "floating", "any"):
        raise ValueError(f"dtype must be 'exact', 'floating' or 'any', got {dtype!r}")
    if got is None:
        return Mismatch("returned None: is a `return` statement missing?")
    if isinstance(expected, torch.Tensor | np.ndarray):
        return _array_mismatch(expected, got, atol=atol, rtol=rtol, dtype=dtype)
    if isinstance(expected, numbers.Number):
        return _number_mismatch(expected, got, atol=atol, rtol=rtol)
    raise TypeError(f"expected must be a tensor, an array or a number, got {describe(expected)}")


def _array_mismatch(expected, got, *, atol, rtol, dtype) -> Mismatch | None:
    wanted = type(expected)
    if not isinstance(got, wanted):
        name = "a torch.Tensor" if wanted is torch.Tensor else "a numpy array"
        extra = ""
        if isinstance(got, np.ndarray) and wanted is torch.Tensor:
            extra = " (convert it with torch.from_numpy)"
        return Mismatch(f"returned a {describe(got)}, expected {name}{extra}")
    if tuple(got.shape) != tuple(expected.shape):
        swapped = tuple(got.shape) == tuple(reversed(expected.shape)) and got.ndim > 1
        note = " (the axes look swapped)" if swapped else ""
        return Mismatch(f"shape {tuple(got.shape)} instead of {tuple(expected.shape)}{note}")
    dtype_problem = _dtype_problem(expected, got, dtype)
    if dtype_problem:
        return Mismatch(dtype_problem)
    want = _as_numpy(expected)
    have = _as_numpy(got)
    found = first_difference(want, have, atol=atol, rtol=rtol)
    if found is None:
        return None
    index, count = found
    w, h = want[index], have[index]
    if np.isfinite(w) and not np.isfinite(h):
        summary = f"got {_scalar(h)}{_where(index)} where {_scalar(w)} was expected"
    else:
        summary = f"values differ{_where(index)}: expected {_scalar(w)}, got {_scalar(h)}"
    if want.size == 1:
        return Mismatch(summary)
    detail = f"{count} of {want.size} entries differ"
    if atol or rtol:
        detail += f" (tolerance: atol={atol:g}, rtol={rtol:g})"
    return Mismatch(summary, [detail])


def _dtype_problem(expected, got, rule: str) -> str | None:
    if rule == "any" or got.dtype == expected.dtype:
        return None
    is_float = got.is_floating_point() if isinstance(got, torch.Tensor) else (
        np.issubdtype(got.dtype, np.floating))
    if rule == "floating" and is_float:
        return None
    got_name = _dtype_name(got.dtype) if isinstance(got, torch.Tensor) else str(got.dtype)
    if rule == "floating":
        return f"dtype {got_name}, expected a floating-point dtype (such as float32)"
    is_tensor = isinstance(expected, torch.Tensor)
    want_name = _dtype_name(expected.dtype) if is_tensor else str(expected.dtype)
    return f"dtype {got_name} instead of {want_name}"


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _number_mismatch(expected, got, *, atol, rtol) -> Mismatch | None:
    if isinstance(got, torch.Tensor | np.ndarray) and got.ndim == 0:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, numbers.Number):
        return Mismatch(f"returned a {describe(got)}, expected a number")
    if math.isclose(got, expected, rel_tol=rtol, abs_tol=atol) or got == expected:
        return None
    return Mismatch(f"expected {_scalar(expected)}, got {_scalar(got)}")


# ---------------------------------------------------------------------------------------------
# Running a check


class _ForbidTorch(TorchFunctionMode):
    """Records calls to library functions that a from-scratch task must not use."""

    def __init__(self, forbidden: dict[Callable, str]):
        super().__init__()
        self.forbidden = forbidden
        self.used: list[str] = []

    def message(self) -> str:
        return f"it calls {self.used[0]}, which this task asks you to write yourself"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.forbidden:
            self.used.append(self.forbidden[func])
            raise WrongAnswer(self.message())
        return func(*args, **(kwargs or {}))


def _clone(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def _call(function: Callable, case: Case, args: dict[str, Any]) -> Any:
    if case.probe is not None:
        return case.probe(function, args)
    return function(*args.values())


def _changed_inputs(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [
        name for name, value in before.items()
        if isinstance(value, torch.Tensor) and not torch.equal(value, after[name])
    ]


def _inputs_line(args: dict[str, Any]) -> str:
    lines = []
    for name, value in args.items():
        if isinstance(value, torch.Tensor) and value.numel() > 24:
            text = f"<{describe(value)}>"
        else:
            text = show(value)
        lines.append(f"{name} = " + text.replace("\n", "\n" + " " * (len(name) + 3)))
    return _field("inputs:", "\n".join(lines))


def _field(label: str, text: str) -> str:
    """``label`` padded to the common width, then ``text`` with its later lines aligned."""
    return label.ljust(LABEL_WIDTH) + text.replace("\n", "\n" + " " * LABEL_WIDTH)


@dataclass(frozen=True)
class Check:
    """Everything `run_check` needs to grade one task."""

    title: str
    reference: Callable
    cases: Sequence[Case]
    hint: str
    hints: Sequence[Hint] = ()
    atol: float = 0.0
    rtol: float = 0.0
    dtype: str = "exact"
    forbidden: dict[Callable, str] = field(default_factory=dict)
    example: str = "check(my_function)"


def _pick_hint(check: Check, case: Case, expected: Any, got: Any) -> str:
    for hint in check.hints:
        try:
            if hint.applies(expected, got, case.args):
                return hint.text
        except Exception:  # a hint's test must never hide the real failure
            continue
    return check.hint


def run_check(check: Check, student_fn: Any) -> None:
    """Run ``student_fn`` on every case of ``check``; raise AssertionError at the first failure,
    else print one line saying that all cases pass."""
    if not callable(student_fn):
        raise AssertionError(
            f"{check.title}: the check needs your function, as in `{check.example}`; "
            f"it got {describe(student_fn)} {show(student_fn)}")
    total = len(check.cases)
    for number, case in enumerate(check.cases, start=1):
        where = f"{check.title}, case {number} of {total} ({case.label})"
        expected = _call(check.reference, case, _clone(case.args))
        got, problem = _run_student(check, student_fn, case, where)
        if problem is None:
            problem = find_mismatch(expected, got, atol=check.atol, rtol=check.rtol,
                                    dtype=check.dtype)
        if problem is not None:
            raise AssertionError(_failure(check, case, where, problem, expected, got))
    print(f"✓ {check.title}: all {total} cases pass")


def _run_student(check: Check, student_fn, case: Case, where: str):
    """Call the student's function on fresh copies of the inputs; return (answer, Mismatch)."""
    args = _clone(case.args)
    guard = _ForbidTorch(check.forbidden)
    try:
        with guard:
            got = _call(student_fn, case, args)
    except NotImplementedError:
        raise AssertionError(
            f"{check.title}: task not attempted yet: your function raises NotImplementedError."
            "\n  " + _field("hint:", "replace `raise NotImplementedError` with your code, run"
                                " that cell, then run this one again")) from None
    except WrongAnswer as exc:
        return None, Mismatch(f"{exc}", show_values=False)
    except Exception as exc:
        if guard.used:  # the student's code caught our signal; report it all the same
            return None, Mismatch(guard.message(), show_values=False)
        message = f"{where}: your function raised {type(exc).__name__}: {exc}"
        lines = [_inputs_line(case.args), _field("hint:", check.hint)]
        body = "\n".join(lines).replace("\n", "\n  ")
        raise AssertionError(f"{message.splitlines()[0]}\n  {body}") from exc
    if guard.used:
        return None, Mismatch(guard.message(), show_values=False)
    changed = _changed_inputs(case.args, args)
    if changed:
        return got, Mismatch(f"it changed its input `{changed[0]}` in place; work on a copy",
                             show_values=False)
    return got, None


def _failure(check: Check, case: Case, where: str, problem: Mismatch, expected, got) -> str:
    lines = [_inputs_line(case.args)]
    if problem.show_values:
        lines.append(_field("expected:", describe(expected) + "\n" + show(expected)))
        lines.append(_field("got:", describe(got) + "\n" + show(got)))
    lines += [_field("where:", detail) for detail in problem.details]
    lines.append(_field("hint:", _pick_hint(check, case, expected, got)))
    body = "\n".join(lines).replace("\n", "\n  ")
    return f"{where}: {problem.summary}\n  {body}"
