"""Finding and validating the graded cells of an exercise notebook.

A graded cell is a code cell tagged ``graded`` whose metadata holds ``task`` (a short name,
unique in the notebook) and ``points`` (a positive number), and whose code is one call of a
check from `seqlib.grading` on names, such as ``check_bigram_counts(bigram_counts)``. The grade
command relies on that shape to re-import the genuine check before it runs the cell, and the
tests use it to keep every exercise notebook well formed.
"""

from __future__ import annotations

import ast
import numbers
from dataclasses import dataclass

GRADED_TAG = "graded"


@dataclass(frozen=True)
class GradedCell:
    """A graded cell as found in a notebook; ``problem`` is None when it is well formed."""

    index: int  # position among all the notebook's cells, from 0
    task: str
    points: float
    check: str | None  # the name of the check it calls
    problem: str | None = None


def check_names() -> set[str]:
    """Names of the checks a graded cell may call."""
    from . import CHECKS

    return {check.__name__ for check in CHECKS}


def called_check(source: str) -> str:
    """The check that a graded cell's code calls; ValueError saying why if the code is not a
    single call like ``check_one_hot(one_hot)``."""
    restore = ("restore it to the exercise notebook's single call of a check on your function,"
               " such as `check_one_hot(one_hot)`")
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"the graded cell was edited and is not valid Python ({exc.msg});"
                         f" {restore}") from None
    body = tree.body
    if len(body) != 1 or not isinstance(body[0], ast.Expr) or not isinstance(
            body[0].value, ast.Call):
        raise ValueError(f"the graded cell was edited: {restore}")
    call = body[0].value
    if not isinstance(call.func, ast.Name) or call.func.id not in check_names():
        raise ValueError(f"the graded cell was edited: it calls `{ast.unparse(call.func)}`, not"
                         f" a check from seqlib.grading; {restore}")
    if call.keywords or not all(isinstance(arg, ast.Name) for arg in call.args):
        raise ValueError(f"the graded cell was edited: it must pass your function by name;"
                         f" {restore}")
    return call.func.id


def graded_cells(nb) -> list[GradedCell]:
    """Every cell tagged ``graded``, in order, each with the problem found in it (if any)."""
    found: list[GradedCell] = []
    seen_tasks: set[str] = set()
    for index, cell in enumerate(nb.cells):
        if GRADED_TAG not in cell.get("metadata", {}).get("tags", []):
            continue
        found.append(_inspect(index, cell, seen_tasks))
        seen_tasks.add(found[-1].task)
    return found


def _inspect(index: int, cell, seen_tasks: set[str]) -> GradedCell:
    metadata = cell.get("metadata", {})
    task = metadata.get("task")
    points = metadata.get("points")
    label = task if isinstance(task, str) and task.strip() else f"cell {index + 1}"
    valid_points = isinstance(points, numbers.Real) and not isinstance(points, bool)
    worth = float(points) if valid_points and points > 0 else 0.0

    def broken(problem: str) -> GradedCell:
        return GradedCell(index, label, worth, None, problem)

    if cell.get("cell_type") != "code":
        return broken(f"cell {index + 1} is tagged graded but is not a code cell")
    if label != task:
        return broken(f"graded cell {index + 1} has no task name in its metadata ('task')")
    if label in seen_tasks:
        return broken(f"task name {label!r} is used by more than one graded cell")
    if worth <= 0:
        return broken(f"graded cell {index + 1} needs positive 'points' metadata, got {points!r}")
    try:
        check = called_check(cell.get("source", ""))
    except ValueError as exc:
        return broken(str(exc))
    return GradedCell(index, label, worth, check)
