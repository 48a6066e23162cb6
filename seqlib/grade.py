"""Grade exercise notebooks: ``python -m seqlib.grade PATH... [--timeout S] [--csv FILE]``.

Each PATH is a notebook or a folder searched recursively for notebooks (one student's
submission or a whole class's). Every notebook is executed in a fresh kernel from its own folder
(see `seqlib.grading.runner`), then a table gives, for each graded task: the notebook, the task,
the points earned out of those possible, whether it passed, and the first line of its message;
each notebook ends with its total. ``--csv FILE`` writes the same rows, with full messages.

A submission whose file name contains the name of a published exercise (``ex01_sequences`` in
``alice_ex01_sequences.ipynb``) is held to that exercise's tasks and points: a graded cell that
was deleted counts as a failed task, and edited points metadata is ignored. The published
exercises are read from ``--exercises DIR`` (default: the ``exercises/`` folder of the repository
seqlib is installed from).

Exit status: 0 when every task of every notebook passed; 1 when any task failed (or a notebook
has no graded cells); 2 for a usage error (a missing path, a file that is not a notebook).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

PUBLIC_NOTE = ("These are the public checks, the ones shipped with the exercises; an instructor"
               " may grade with more.")
MESSAGE_WIDTH = 140  # the table's message column; the CSV keeps whole messages


class UsageError(Exception):
    """A command-line mistake: reported in one line, exit status 2."""


def find_notebooks(paths: list[str]) -> list[tuple[Path, str]]:
    """Expand the command-line paths into (notebook path, display name) pairs, in order."""
    found: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            notebooks = sorted(p for p in path.rglob("*.ipynb")
                               if ".ipynb_checkpoints" not in p.parts)
            if not notebooks:
                raise UsageError(f"no notebooks (*.ipynb) in the folder {raw}")
            found += [(p, str(p)) for p in notebooks]
        elif path.is_file():
            if path.suffix != ".ipynb":
                raise UsageError(f"{raw} is not a notebook: expected a .ipynb file or a folder")
            found.append((path, raw))
        else:
            raise UsageError(f"{raw} does not exist")
    return found


def default_exercises_dir() -> Path | None:
    """The repository's exercises/ folder, when seqlib is installed from a clone."""
    folder = Path(__file__).resolve().parent.parent / "exercises"
    return folder if folder.is_dir() else None


def published_tasks(notebook: Path, exercises_dir: Path | None) -> dict[str, float] | None:
    """{task: points} of the published exercise the submission's name refers to, or None."""
    if exercises_dir is None:
        return None
    matches = [p for p in sorted(exercises_dir.glob("*.ipynb")) if p.stem in notebook.stem]
    if not matches:
        return None
    import nbformat

    from .grading.cells import graded_cells

    published = max(matches, key=lambda p: len(p.stem))  # the most specific name
    return {cell.task: cell.points
            for cell in graded_cells(nbformat.read(published, as_version=4))}


def hold_to_published(report, tasks: dict[str, float]) -> None:
    """Score ``report`` on the published tasks: missing ones fail, points come from the
    published exercise, tasks it does not have fail."""
    from .grading.runner import TaskResult

    by_task = {result.task: result for result in report.results}
    held = []
    for task, points in tasks.items():
        result = by_task.get(task)
        if result is None:
            held.append(TaskResult(report.notebook, task, points, False,
                                   "the graded cell of this task is missing from the"
                                   " submission: restore it from the exercise notebook"))
            continue
        if result.points != points:
            report.notes.append(f"task {task!r}: points metadata changed to"
                                f" {_points(result.points)}; scored out of {_points(points)}")
        held.append(TaskResult(result.notebook, task, points, result.passed, result.message))
    held += [TaskResult(r.notebook, r.task, 0.0, False, "not a task of the published exercise")
             for r in report.results if r.task not in tasks]
    report.results[:] = held


def _points(value: float) -> str:
    return f"{value:g}"


def _short(message: str) -> str:
    return message if len(message) <= MESSAGE_WIDTH else message[:MESSAGE_WIDTH - 3] + "..."


def format_table(reports) -> str:
    """The score table: one row per task and a total row per notebook."""
    header = ("notebook", "task", "points", "passed", "message")
    rows = []
    for report in reports:
        for r in report.results:
            rows.append((r.notebook, r.task, f"{_points(r.earned)}/{_points(r.points)}",
                         "yes" if r.passed else "NO", _short(r.message)))
        earned = sum(r.earned for r in report.results)
        possible = sum(r.points for r in report.results)
        passed = sum(r.passed for r in report.results)
        rows.append((report.notebook, "total", f"{_points(earned)}/{_points(possible)}",
                     f"{passed}/{len(report.results)}", ""))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        cells = [text.ljust(width) for text, width in zip(row, widths)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    return "\n".join(lines)


def write_csv(reports, target: Path) -> None:
    with target.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["notebook", "task", "points", "earned", "passed", "message"])
        for report in reports:
            for r in report.results:
                writer.writerow([r.notebook, r.task, _points(r.points), _points(r.earned),
                                 "yes" if r.passed else "no", r.message])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m seqlib.grade",
        description="Execute exercise notebooks and report each graded task. " + PUBLIC_NOTE)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a notebook, or a folder searched recursively for notebooks")
    parser.add_argument("--timeout", type=int, default=60, metavar="SECONDS",
                        help="time limit for each cell, whole seconds (default: 60); a cell"
                             " over it is interrupted and fails")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the rows as CSV")
    parser.add_argument("--exercises", type=Path, metavar="DIR", default=default_exercises_dir(),
                        help="the published exercise notebooks that submissions are held to"
                             " (default: the repository's exercises/ folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.timeout <= 0:
            raise UsageError(f"--timeout must be a positive number of seconds,"
                             f" got {args.timeout}")
        notebooks = find_notebooks(args.paths)
        if args.exercises is not None and not args.exercises.is_dir():
            raise UsageError(f"--exercises: {args.exercises} is not a folder")
        if args.csv is not None and not args.csv.parent.is_dir():
            raise UsageError(f"--csv: the folder {args.csv.parent} does not exist")
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 2

    try:  # imported late: torch and nbclient load only once the paths are known to be good
        from .grading.runner import grade_notebook
    except ModuleNotFoundError as exc:
        print(f"error: the grade command needs {exc.name}, which is not installed here",
              file=sys.stderr)
        return 2

    print(PUBLIC_NOTE)
    reports = []
    for path, name in notebooks:
        print(f"grading {name} ...", flush=True)
        report = grade_notebook(path, name, args.timeout)
        tasks = published_tasks(path, args.exercises)
        if tasks:
            hold_to_published(report, tasks)
        reports.append(report)
    print()
    print(format_table(reports))
    for report in reports:
        for note in report.notes:
            print(f"note: {report.notebook}: {note}")
    if args.csv is not None:
        write_csv(reports, args.csv)
        print(f"wrote {args.csv}")
    failed = [r for r in reports if not r.passed]
    tasks = sum(len(r.results) for r in reports)
    print(f"{len(reports) - len(failed)} of {len(reports)} notebooks passed every task"
          f" ({tasks} tasks in all).")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
