"""Exercise notebooks: generated from the solutions and in sync with them, well formed, and
failing every graded cell until the student writes the code.

Notebooks are found by globbing solutions/ and exercises/, so a new exercise is covered the
moment it is added. Each exercise notebook is executed once per test session (a kernel start
costs seconds).
"""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from seqlib.exercises import (
    BEGIN,
    END,
    MarkerError,
    exercise_from_solution,
    problems,
    render,
    strip_solutions,
    sync,
)
from seqlib.grading.cells import graded_cells

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))
NOTEBOOKS = SOLUTIONS + EXERCISES
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two test workers share two cores


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def test_there_are_exercises():
    assert SOLUTIONS, "no solution notebooks under solutions/"
    assert [p.name for p in EXERCISES] == [p.name for p in SOLUTIONS]


# ---------------------------------------------------------------------------------------------
# In sync with the solutions


def test_exercises_are_in_sync_with_solutions(tmp_path):
    written = sync(ROOT / "solutions", tmp_path)
    assert sorted(p.name for p in written) == [p.name for p in SOLUTIONS]
    for generated in written:
        committed = ROOT / "exercises" / generated.name
        assert committed.read_bytes() == generated.read_bytes(), (
            f"{_name(committed)} is stale: run `python -m seqlib.exercises sync`")
    assert problems(ROOT / "solutions", ROOT / "exercises") == []


def test_generation_is_deterministic(tmp_path):
    for solution in SOLUTIONS:
        assert render(solution) == render(solution)
    assert sync(ROOT / "solutions", tmp_path)
    assert sync(ROOT / "solutions", tmp_path) == []  # second run: nothing to rewrite


def test_check_command_names_a_stale_exercise(tmp_path):
    sync(ROOT / "solutions", tmp_path)
    stale = tmp_path / SOLUTIONS[0].name
    stale.write_bytes(stale.read_bytes().replace(b"NotImplementedError", b"NotImplementedErr"))
    (tmp_path / "ex99_orphan.ipynb").write_bytes(stale.read_bytes())
    command = [sys.executable, "-m", "seqlib.exercises", "check",
               "--solutions", str(ROOT / "solutions"), "--exercises", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{stale} is stale" in done.stdout
    assert "ex99_orphan.ipynb has no solution notebook" in done.stdout
    assert "seqlib.exercises sync" in done.stderr


def test_check_command_passes_on_the_repository():
    done = subprocess.run([sys.executable, "-m", "seqlib.exercises", "check"],
                          capture_output=True, text=True, env=ENV, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------
# Well formed


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_has_no_outputs_and_the_python3_kernel(path):
    nb = _read(path)
    dirty = [i for i, c in enumerate(nb.cells, 1)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{_name(path)}: cells {dirty} carry outputs or execution counts"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", _name(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_graded_cells_carry_tag_task_and_points(path):
    nb = _read(path)
    graded = graded_cells(nb)
    assert graded, f"{_name(path)} has no graded cells"
    broken = [(cell.index + 1, cell.problem) for cell in graded if cell.problem]
    assert not broken, f"{_name(path)}: {broken}"
    for cell in graded:
        metadata = nb.cells[cell.index].metadata
        assert isinstance(metadata["task"], str) and metadata["points"] > 0
    # a check called from an untagged cell would never be graded
    graded_indices = {cell.index for cell in graded}
    untagged = [i + 1 for i, c in enumerate(nb.cells)
                if c.cell_type == "code" and c.source.lstrip().startswith("check_")
                and i not in graded_indices]
    assert not untagged, f"{_name(path)}: cells {untagged} call a check but are not tagged"


def test_exercise_1_has_at_least_three_tasks():
    assert len(graded_cells(_read(ROOT / "exercises" / "ex01_sequences.ipynb"))) >= 3


@pytest.mark.parametrize("path", EXERCISES, ids=_name)
def test_exercises_hold_no_solution_code(path):
    nb = _read(path)
    text = path.read_text(encoding="utf-8")
    assert BEGIN not in text and END not in text
    stubs = sum(c.source.count("raise NotImplementedError") for c in nb.cells
                if c.cell_type == "code")
    assert stubs >= len(graded_cells(nb)), f"{_name(path)}: fewer stubs than graded tasks"
    solution = _read(ROOT / "solutions" / path.name)
    assert [c.metadata for c in nb.cells] == [c.metadata for c in solution.cells]


# ---------------------------------------------------------------------------------------------
# Every graded cell fails on the generated exercise


@pytest.fixture(scope="module", params=EXERCISES, ids=_name)
def executed_exercise(request):
    nb = _read(request.param)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(request.param.parent)}})
    client.execute(env=ENV)
    return nb


def test_every_graded_cell_fails_on_the_exercise(executed_exercise):
    nb = executed_exercise
    for cell in graded_cells(nb):
        outputs = nb.cells[cell.index].outputs
        errors = [out for out in outputs if out.output_type == "error"]
        assert errors, f"graded cell {cell.task!r} passed on the unsolved exercise"
        assert errors[0].ename == "AssertionError", (errors[0].ename, errors[0].evalue)
        assert "task not attempted yet" in errors[0].evalue, errors[0].evalue
        printed = "".join(out.get("text", "") for out in outputs)
        assert "✓" not in printed


def test_exercise_setup_cells_run_cleanly(executed_exercise):
    # the graded cells fail because of the tasks, not because the set-up (imports) is broken
    first_code = next(c for c in executed_exercise.cells if c.cell_type == "code")
    assert not [out for out in first_code.outputs if out.output_type == "error"]


# ---------------------------------------------------------------------------------------------
# The marker rules


def test_a_block_becomes_one_raise_at_its_indentation():
    source = "\n".join([
        "def f(x):",
        '    """Doc."""',
        f"    {BEGIN}",
        "    y = x + 1",
        "    return y",
        f"    {END}",
        "",
        "z = 1",
    ])
    stub = "    raise NotImplementedError"
    assert strip_solutions(source) == f'def f(x):\n    """Doc."""\n{stub}\n\nz = 1'


def test_several_blocks_and_top_level_blocks():
    source = f"{BEGIN}\na = 1\n{END}\nb = 2\n  {BEGIN}\n  c = 3\n  {END}"
    stub = "raise NotImplementedError"
    assert strip_solutions(source) == f"{stub}\nb = 2\n  {stub}"


@pytest.mark.parametrize("source, message", [
    (f"{BEGIN}\nx = 1", "line 1: ### BEGIN SOLUTION is never closed"),
    (f"x = 1\n{END}", "line 2: ### END SOLUTION without a ### BEGIN SOLUTION"),
    (f"{BEGIN}\n{BEGIN}\n{END}", "line 2: ### BEGIN SOLUTION inside the block opened at line 1"),
    (f"    {BEGIN}\n    x = 1\n{END}", "line 3: ### END SOLUTION is not indented like"),
    (f"{BEGIN}\nx = 1  {END}\n{END}", "line 2: a marker must be alone on its line"),
])
def test_unbalanced_markers_are_refused(source, message):
    with pytest.raises(MarkerError, match=message):
        strip_solutions(source, where="nb, cell 3")


def test_generated_notebook_drops_outputs_and_keeps_metadata():
    cell = nbformat.v4.new_code_cell(f"def f():\n    {BEGIN}\n    return 1\n    {END}",
                                     metadata={"tags": ["graded"], "task": "f", "points": 2})
    cell.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    cell.execution_count = 3
    solution = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title"), cell])
    exercise = exercise_from_solution(solution)
    made = exercise.cells[1]
    assert made.source == "def f():\n    raise NotImplementedError"
    assert made.outputs == [] and made.execution_count is None
    assert made.metadata == {"tags": ["graded"], "task": "f", "points": 2}
    assert exercise.cells[0].source == "# Title"
    assert solution.cells[1].outputs, "the solution itself must not be modified"


def test_markers_in_markdown_are_refused():
    solution = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(BEGIN)])
    with pytest.raises(MarkerError, match="only in code cells"):
        exercise_from_solution(solution, "x.ipynb")
