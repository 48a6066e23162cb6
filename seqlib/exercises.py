"""Generate the exercise notebooks from the solution notebooks, and check they are in sync.

``python -m seqlib.exercises sync`` writes ``exercises/NAME.ipynb`` for every
``solutions/NAME.ipynb``: in each code cell, every block from a ``### BEGIN SOLUTION`` line to
its ``### END SOLUTION`` line (both included) becomes ``raise NotImplementedError`` at the
block's indentation, so a function body stays valid Python; outputs and execution counts are
dropped; cell metadata (tags, task, points) is kept. The output is deterministic: the same
solutions always give the same bytes.

``python -m seqlib.exercises check`` changes nothing; it exits with status 1 and names each
stale, missing or orphaned exercise when exercises/ does not match solutions/.

Both take ``--solutions DIR`` and ``--exercises DIR``; the defaults are the folders next to the
``seqlib`` package (the repository's own).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = "raise NotImplementedError"
REPOSITORY = Path(__file__).resolve().parent.parent


class MarkerError(ValueError):
    """Solution markers that do not pair up (or sit where they cannot be replaced)."""


def strip_solutions(source: str, where: str = "cell") -> str:
    """Replace each BEGIN/END SOLUTION block of ``source`` by ``raise NotImplementedError``."""
    kept: list[str] = []
    opened_at: int | None = None
    indent = ""
    for number, line in enumerate(source.split("\n"), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if opened_at is not None:
                raise MarkerError(f"{where}, line {number}: {BEGIN} inside the block opened at"
                                  f" line {opened_at}; close it with {END} first")
            opened_at, indent = number, line[: len(line) - len(line.lstrip())]
            kept.append(indent + STUB)
        elif marker == END:
            if opened_at is None:
                raise MarkerError(f"{where}, line {number}: {END} without a {BEGIN} before it")
            if not line.startswith(indent) or line[len(indent):] != END:
                raise MarkerError(f"{where}, line {number}: {END} is not indented like its"
                                  f" {BEGIN} on line {opened_at}")
            opened_at = None
        elif opened_at is None:
            kept.append(line)
        elif BEGIN in line or END in line:
            raise MarkerError(f"{where}, line {number}: a marker must be alone on its line")
    if opened_at is not None:
        raise MarkerError(f"{where}, line {opened_at}: {BEGIN} is never closed by {END}")
    return "\n".join(kept)


def exercise_from_solution(solution, name: str = "notebook"):
    """The exercise notebook (a new NotebookNode) made from a solution notebook."""
    exercise = copy.deepcopy(solution)
    for number, cell in enumerate(exercise.cells, start=1):
        where = f"{name}, cell {number}"
        if "id" not in cell and exercise.nbformat_minor >= 5:
            cell["id"] = f"cell-{number}"  # a fixed id: nbformat would invent a random one
        if cell.cell_type != "code":
            if BEGIN in cell.source or END in cell.source:
                raise MarkerError(f"{where}: solution markers work only in code cells")
            continue
        cell.source = strip_solutions(cell.source, where)
        cell.outputs = []
        cell.execution_count = None
    return exercise


def render(solution_path: Path) -> bytes:
    """The bytes of the exercise generated from the solution notebook at ``solution_path``."""
    solution = nbformat.read(solution_path, as_version=4)
    exercise = exercise_from_solution(solution, solution_path.name)
    text = nbformat.writes(exercise)  # indent 1, sorted keys, validated
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


def _solutions(solutions: Path) -> list[Path]:
    if not solutions.is_dir():
        raise FileNotFoundError(f"no solutions folder at {solutions} (use --solutions DIR)")
    return sorted(p for p in solutions.glob("*.ipynb"))


def sync(solutions: Path, exercises: Path) -> list[Path]:
    """Write every exercise whose bytes changed; return the paths written."""
    exercises.mkdir(parents=True, exist_ok=True)
    written = []
    for source in _solutions(solutions):
        target = exercises / source.name
        content = render(source)
        if not target.exists() or target.read_bytes() != content:
            target.write_bytes(content)
            written.append(target)
    return written


def problems(solutions: Path, exercises: Path) -> list[str]:
    """What is out of sync, one sentence each; empty when exercises/ matches solutions/."""
    found = []
    names = set()
    for source in _solutions(solutions):
        names.add(source.name)
        target = exercises / source.name
        if not target.exists():
            found.append(f"{target} is missing (generated from {source})")
        elif target.read_bytes() != render(source):
            found.append(f"{target} is stale: it differs from what {source} generates")
    if exercises.is_dir():
        found += [f"{orphan} has no solution notebook in {solutions}"
                  for orphan in sorted(exercises.glob("*.ipynb")) if orphan.name not in names]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqlib.exercises",
                                     description="Generate exercises/ from solutions/.")
    parser.add_argument("command", choices=["sync", "check"],
                        help="sync: (re)write the exercises; check: report what is out of sync")
    parser.add_argument("--solutions", type=Path, default=REPOSITORY / "solutions", metavar="DIR",
                        help="the solution notebooks (default: the repository's solutions/)")
    parser.add_argument("--exercises", type=Path, default=REPOSITORY / "exercises", metavar="DIR",
                        help="where the exercises go (default: the repository's exercises/)")
    args = parser.parse_args(argv)
    try:
        if args.command == "sync":
            written = sync(args.solutions, args.exercises)
            for path in written:
                print(f"wrote {path}")
            print(f"{len(written)} exercise notebook(s) updated; the others were up to date")
            return 0
        stale = problems(args.solutions, args.exercises)
    except (MarkerError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in stale:
        print(problem)
    if stale:
        print("run `python -m seqlib.exercises sync` to regenerate them", file=sys.stderr)
        return 1
    print(f"exercises in sync with {args.solutions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
