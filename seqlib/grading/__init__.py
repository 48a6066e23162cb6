"""Checks that the book's exercise notebooks call, and the machinery they share.

A graded cell of an exercise notebook is a single call such as
``check_bigram_counts(bigram_counts)``: the check runs the student's function on fresh, seeded
inputs against its own reference and raises ``AssertionError`` explaining the first failure
(what was expected, what came back, where they differ, a hint); on success it prints one line.

- ``core``: `run_check`, `Check`, `Case`, `Hint` and `find_mismatch` (compare tensors, arrays
  or numbers with tolerances and locate the first difference)
- ``ex01``: chapter 1's checks, re-exported here
- ``cells``: finds and validates the graded cells of a notebook
- ``runner``: executes notebooks and collects each task's result (``python -m seqlib.grade``)
"""

from .core import (
    Case,
    Check,
    Hint,
    Mismatch,
    WrongAnswer,
    find_mismatch,
    first_difference,
    run_check,
)
from .ex01 import (
    check_bigram_counts,
    check_bigram_probabilities,
    check_cross_entropy,
    check_one_hot,
)

CHECKS = (check_one_hot, check_bigram_counts, check_bigram_probabilities, check_cross_entropy)
"""Every check a graded cell may call; the grade command accepts only these."""

__all__ = [
    "CHECKS",
    "Case",
    "Check",
    "Hint",
    "Mismatch",
    "WrongAnswer",
    "check_bigram_counts",
    "check_bigram_probabilities",
    "check_cross_entropy",
    "check_one_hot",
    "find_mismatch",
    "first_difference",
    "run_check",
]
