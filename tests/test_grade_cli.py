"""The grade command, end to end: the solutions score full marks, the unsolved exercise scores
nothing, and a doctored submission (a wrong answer, a fake check, an edited graded cell, an
endless loop) is caught task by task. Each notebook starts one kernel."""

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from seqlib.grade import UsageError, find_notebooks, format_table
from seqlib.grading.cells import graded_cells
from seqlib.grading.runner import grade_notebook

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two test workers share two cores
TIMEOUT = 8  # seconds per cell in the doctored run: the endless loop costs this much


def grade(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqlib.grade", *args], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=600)


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _edit(nb, marker: str, change) -> None:
    """Apply ``change`` to the source of the one code cell containing ``marker``."""
    cells = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(cells) == 1, f"expected one cell with {marker!r}, found {len(cells)}"
    cells[0].source = change(cells[0].source)


def doctored_submission(target: Path) -> None:
    """The ex01 solution with something wrong in each task."""
    nb = nbformat.read(ROOT / "solutions" / "ex01_sequences.ipynb", as_version=4)
    # one-hot: off by one, with a fake check defined to hide it
    _edit(nb, "def one_hot", lambda s: s.replace(
        "ids.unsqueeze(-1) ==", "(ids.unsqueeze(-1) + 1) % vocab_size ==")
        + "\n\n\ndef check_one_hot(function):\n    print('✓ one-hot: all 5 cases pass')\n")
    # bigram counts: rows and columns swapped, and the graded cell tagged to be skipped
    _edit(nb, "def bigram_counts", lambda s: s.replace("(ids[:-1], ids[1:])",
                                                       "(ids[1:], ids[:-1])"))
    [counts_cell] = [c for c in nb.cells if c.source.startswith("check_bigram_counts")]
    counts_cell.metadata["tags"].append("skip-execution")
    # bigram probabilities: the graded call replaced by something that cannot fail
    _edit(nb, "check_bigram_probabilities(", lambda s: "print('all good')")
    # cross-entropy: never returns on the check's first case (three classes)
    _edit(nb, "def cross_entropy", lambda s: s.replace(
        '"""\n', '"""\n    while logits.shape[-1] == 3:\n        pass\n', 1))
    # shows which folder the kernel ran in
    nb.cells.append(nbformat.v4.new_code_cell("open('ran-here.txt', 'w').close()"))
    # and the kernel dies at the end
    nb.cells.append(nbformat.v4.new_code_cell("import os\nos._exit(1)"))
    nbformat.write(nb, target)


@pytest.fixture(scope="module")
def solutions_run(tmp_path_factory):
    table = tmp_path_factory.mktemp("grade") / "solutions.csv"
    done = grade("solutions", "--csv", str(table))
    return done, read_rows(table) if table.exists() else []


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    (folder / "unsolved").mkdir()
    shutil.copy(ROOT / "exercises" / "ex01_sequences.ipynb", folder / "unsolved")
    doctored_submission(folder / "doctored.ipynb")
    table = folder / "grades.csv"
    done = grade(str(folder), "--timeout", str(TIMEOUT), "--csv", str(table))
    rows = read_rows(table) if table.exists() else []
    return done, {(Path(r["notebook"]).parent.name, r["task"]): r for r in rows}, folder


def test_solutions_pass_every_task(solutions_run):
    done, rows = solutions_run
    assert done.returncode == 0, done.stdout + done.stderr
    assert "public checks" in done.stdout
    expected = {(f"solutions/{p.name}", cell.task, f"{cell.points:g}")
                for p in sorted((ROOT / "solutions").glob("*.ipynb"))
                for cell in graded_cells(nbformat.read(p, as_version=4))}
    assert {(r["notebook"], r["task"], r["points"]) for r in rows} == expected
    assert all(r["passed"] == "yes" and r["earned"] == r["points"] for r in rows), rows
    assert all(r["message"].startswith("✓") for r in rows), rows
    for notebook in {row[0] for row in expected}:
        possible = sum(float(points) for name, _, points in expected if name == notebook)
        total = re.compile(rf"^{re.escape(notebook)}\s+total\s+{possible:g}/{possible:g}\s", re.M)
        assert total.search(done.stdout), f"no full-marks total row for {notebook}"
    assert "note:" not in done.stdout


def test_table_has_the_promised_columns(solutions_run):
    done, _ = solutions_run
    header = next(line for line in done.stdout.splitlines() if line.startswith("notebook"))
    assert header.split() == ["notebook", "task", "points", "passed", "message"]


def test_unsolved_exercise_fails_every_task(failing_run):
    done, rows, _ = failing_run
    assert done.returncode == 1, done.stdout + done.stderr
    unsolved = [row for (folder, _), row in rows.items() if folder == "unsolved"]
    assert len(unsolved) == 4
    for row in unsolved:
        assert row["passed"] == "no" and row["earned"] == "0"
        assert "task not attempted yet" in row["message"]
    assert "0/8" in done.stdout


def test_doctored_submission_is_caught_task_by_task(failing_run):
    done, rows, folder = failing_run
    verdicts = {task: row for (folder, task), row in rows.items() if folder != "unsolved"}
    assert set(verdicts) == {"one-hot", "bigram counts", "bigram probabilities",
                             "cross-entropy"}
    assert not any(row["passed"] == "yes" for row in verdicts.values()), verdicts
    assert "values differ at index" in verdicts["one-hot"]["message"]  # the fake check lost
    assert "bigram counts, case 1 of 5" in verdicts["bigram counts"]["message"]
    assert "expected 2, got 0" in verdicts["bigram counts"]["message"]  # it ran all the same
    assert "graded cell was edited" in verdicts["bigram probabilities"]["message"]
    assert f"timed out after {TIMEOUT} s" in verdicts["cross-entropy"]["message"]
    # the kernel survived the interrupted cell: the cells after it ran without error
    notes = [line for line in done.stdout.splitlines() if "doctored.ipynb: cell" in line]
    assert len(notes) == 1 and "the kernel died" in notes[0], done.stdout
    assert (folder / "ran-here.txt").exists(), "the kernel did not run in the notebook's folder"


@pytest.mark.parametrize("args, message", [
    (["no/such/notebook.ipynb"], "does not exist"),
    (["pyproject.toml"], "is not a notebook"),
    (["solutions", "--timeout", "-1"], "--timeout must be a positive number"),
])
def test_usage_errors_exit_with_status_2(args, message):
    done = grade(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "usage:" in done.stderr


def test_an_empty_folder_is_a_usage_error(tmp_path):
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "old.ipynb").write_text("{}")
    with pytest.raises(UsageError, match="no notebooks"):
        find_notebooks([str(tmp_path)])


def test_a_notebook_without_graded_cells_does_not_pass(tmp_path):
    path = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), path)
    report = grade_notebook(path, "plain.ipynb", timeout=10)
    assert not report.passed and report.results == []
    assert "no graded cells" in report.notes[0]


def test_an_unreadable_notebook_fails_without_stopping_the_batch(tmp_path):
    path = tmp_path / "broken.ipynb"
    path.write_text("this is not json")
    report = grade_notebook(path, "broken.ipynb", timeout=10)
    assert not report.passed
    assert report.results[0].message.startswith("could not read the notebook")
    assert "broken.ipynb  (notebook)  0/0" in format_table([report])


@pytest.mark.parametrize("source, problem", [
    ("check_one_hot(one_hot)", None),
    ("print('all good')", "it calls `print`"),
    ("result = check_one_hot(one_hot)", "graded cell was edited: restore it"),
    ("check_one_hot(lambda ids, v: ids)", "pass your function by name"),
    ("check_one_hot(one_hot", "not valid Python"),
])
def test_graded_cells_must_stay_a_single_call_of_a_check(source, problem):
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["graded"], "task": "t",
                                                       "points": 1})
    [found] = graded_cells(nbformat.v4.new_notebook(cells=[cell]))
    if problem is None:
        assert found.problem is None and found.check == "check_one_hot"
    else:
        assert problem in found.problem


def test_graded_cell_metadata_problems_are_named():
    def cell(metadata, source="check_one_hot(one_hot)"):
        return nbformat.v4.new_code_cell(source, metadata={"tags": ["graded"], **metadata})

    cells = [cell({"points": 1}), cell({"task": "a", "points": 0}),
             cell({"task": "b", "points": True}), cell({"task": "c", "points": 2}),
             cell({"task": "c", "points": 2}),
             nbformat.v4.new_markdown_cell("text", metadata={"tags": ["graded"]})]
    found = graded_cells(nbformat.v4.new_notebook(cells=cells))
    problems = [c.problem for c in found]
    assert "no task name" in problems[0]
    assert "positive 'points'" in problems[1] and "positive 'points'" in problems[2]
    assert problems[3] is None and found[3].points == 2.0
    assert "used by more than one graded cell" in problems[4]
    assert "not a code cell" in problems[5]


def test_a_submission_is_held_to_the_published_tasks_and_points(tmp_path):
    from seqlib.grade import hold_to_published, published_tasks
    from seqlib.grading.runner import NotebookReport, TaskResult

    submission = tmp_path / "bob_ex01_sequences.ipynb"
    tasks = published_tasks(submission, ROOT / "exercises")
    assert tasks == {"one-hot": 1, "bigram counts": 2, "bigram probabilities": 2,
                     "cross-entropy": 3}
    assert published_tasks(tmp_path / "homework.ipynb", ROOT / "exercises") is None
    # bob deleted the cross-entropy cell, gave himself 50 points for one-hot, added a task
    report = NotebookReport(str(submission), [
        TaskResult(str(submission), "one-hot", 50, True, "✓"),
        TaskResult(str(submission), "bigram counts", 2, True, "✓"),
        TaskResult(str(submission), "bigram probabilities", 2, False, "values differ"),
        TaskResult(str(submission), "bonus", 10, True, "✓"),
    ])
    hold_to_published(report, tasks)
    scored = {r.task: (r.points, r.earned, r.passed) for r in report.results}
    assert scored == {"one-hot": (1, 1, True), "bigram counts": (2, 2, True),
                      "bigram probabilities": (2, 0, False), "cross-entropy": (3, 0, False),
                      "bonus": (0, 0, False)}
    missing = next(r for r in report.results if r.task == "cross-entropy")
    assert "missing from the submission" in missing.message
    assert any("points metadata changed" in note for note in report.notes)
    assert not report.passed
