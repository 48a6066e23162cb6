"""Executing submitted notebooks and collecting the result of each graded task.

`grade_notebook` runs one notebook top to bottom in a fresh ``python3`` kernel whose working
directory is the notebook's own folder. Errors do not stop the run, so every task gets a
verdict; each cell has a time limit, and a cell that exceeds it is interrupted and counts as a
failure. Before a graded cell runs, the genuine check is imported again from `seqlib.grading`,
so a function of the same name defined earlier in the notebook cannot stand in for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from .cells import GradedCell, graded_cells

# nbclient skips cells tagged "skip-execution" by default: a graded cell must always run
_NEVER_SKIP = "seqlib-grade: no cell is skipped"
_TIMED_OUT = "seqlib-grade: cell timed out"  # the error name of the reply to a timed-out cell
PASS_MARK = "✓"  # the first character of the line a check prints when every case passes


@dataclass(frozen=True)
class TaskResult:
    """The verdict on one graded task."""

    notebook: str
    task: str
    points: float
    passed: bool
    message: str

    @property
    def earned(self) -> float:
        return self.points if self.passed else 0.0


@dataclass
class NotebookReport:
    """The results of one notebook, plus notes about problems outside its graded cells."""

    notebook: str
    results: list[TaskResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(result.passed for result in self.results)


@dataclass
class _Outcome:
    """What happened when one cell ran: None fields mean it ran cleanly."""

    error: str | None = None
    last_line: str = ""


def grade_notebook(path: Path, name: str, timeout: int) -> NotebookReport:
    """Execute the notebook at ``path`` and judge each graded cell; ``name`` labels the rows
    and ``timeout`` is each cell's limit in seconds."""
    report = NotebookReport(name)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # a broken file is one student's problem, not the batch's
        report.results.append(TaskResult(name, "(notebook)", 0.0, False,
                                         f"could not read the notebook: {exc}".split("\n")[0]))
        return report
    graded = graded_cells(nb)
    if not graded:
        report.notes.append("no graded cells found (code cells tagged 'graded'): nothing to"
                            " grade; was the notebook copied without its cell metadata?")
        return report
    try:
        outcomes = _execute(nb, path.parent, timeout, graded)
    except Exception as exc:  # the kernel could not start or the connection broke
        message = f"could not execute the notebook: {type(exc).__name__}: {exc}"
        outcomes = {cell.index: _Outcome(message.split("\n")[0]) for cell in graded}
    for cell in graded:
        report.results.append(_verdict(name, cell, outcomes.get(cell.index)))
    report.notes.extend(_ungraded_errors(nb, graded, outcomes))
    return report


def _verdict(name: str, cell: GradedCell, outcome: _Outcome | None) -> TaskResult:
    if cell.problem is not None:
        return TaskResult(name, cell.task, cell.points, False, cell.problem)
    if outcome is None:
        return TaskResult(name, cell.task, cell.points, False, "the cell did not run")
    if outcome.error is not None:
        return TaskResult(name, cell.task, cell.points, False, outcome.error)
    if not outcome.last_line.startswith(PASS_MARK):
        return TaskResult(name, cell.task, cell.points, False,
                          "the check did not report success (its last printed line should"
                          f" start with {PASS_MARK})")
    return TaskResult(name, cell.task, cell.points, True, outcome.last_line)


def _ungraded_errors(nb, graded: list[GradedCell], outcomes: dict[int, _Outcome]) -> list[str]:
    graded_indices = {cell.index for cell in graded}
    return [
        f"cell {index + 1} (not graded): {outcome.error}"
        for index, outcome in sorted(outcomes.items())
        if index not in graded_indices and outcome.error is not None
    ]


def _execute(nb, folder: Path, timeout: int, graded: list[GradedCell]) -> dict[int, _Outcome]:
    """Run every code cell in order; map each cell's index to its outcome."""
    checks = {cell.index: cell.check for cell in graded if cell.problem is None}
    skipped = {cell.index for cell in graded if cell.problem is not None}
    replies: dict[int, dict] = {}
    # On a timeout nbclient interrupts the kernel and, since error_on_timeout is set, collects
    # the cell's remaining output before it moves on, so no output of a later cell is lost.
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", allow_errors=True,
        interrupt_on_timeout=True, error_on_timeout={"ename": _TIMED_OUT, "evalue": ""},
        skip_cells_with_tag=_NEVER_SKIP, resources={"metadata": {"path": str(folder)}},
        on_cell_executed=lambda cell, cell_index, execute_reply: replies.__setitem__(
            cell_index, execute_reply))
    outcomes: dict[int, _Outcome] = {}
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or index in skipped or not cell.source.strip():
                continue
            if index in checks:  # the genuine check, whatever the notebook defined before
                cell.source = f"from seqlib.grading import {checks[index]}\n{cell.source}"
            try:
                client.execute_cell(cell, index)
            except DeadKernelError:
                outcomes[index] = _Outcome("the kernel died while running this cell (out of"
                                           " memory, or the process exited)")
                for later in range(index + 1, len(nb.cells)):
                    if nb.cells[later].cell_type == "code":
                        outcomes[later] = _Outcome("not run: the kernel died in an earlier cell")
                break
            if (replies.get(index) or {}).get("content", {}).get("ename") == _TIMED_OUT:
                outcomes[index] = _Outcome(f"timed out after {timeout} s (the limit per cell)")
            else:
                outcomes[index] = _read_outputs(cell.outputs)
    return outcomes


def _read_outputs(outputs) -> _Outcome:
    """The first error of a cell (type and first line of its message) and its last printed
    line."""
    text = "".join(out.get("text", "") for out in outputs
                   if out.get("output_type") == "stream" and out.get("name") == "stdout")
    lines = [line for line in text.splitlines() if line.strip()]
    last_line = lines[-1].strip() if lines else ""
    for out in outputs:
        if out.get("output_type") == "error":
            first = (out.get("evalue") or "").split("\n")[0]
            ename = out.get("ename", "error")
            message = first if ename == "AssertionError" and first else f"{ename}: {first}"
            return _Outcome(message.rstrip(": "), last_line)
    return _Outcome(None, last_line)
