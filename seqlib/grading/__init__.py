"""Checks that the book's exercise notebooks call, and the machinery they share.

A graded cell of an exercise notebook is a single call such as
``check_bigram_counts(bigram_counts)``: the check runs the student's function on fresh, seeded
inputs against its own reference and raises ``AssertionError`` explaining the first failure
(what was expected, what came back, where they differ, a hint); on success it prints one line.

- ``core``: `run_check`, `Check`, `Case`, `Hint` and `find_mismatch` (compare tensors, arrays
  or numbers with tolerances and locate the first difference)
- ``ex01``, ``ex02``, ...: each exercise's checks (listed in the module's ``__all__``),
  re-exported here
- ``cells``: finds and validates the graded cells of a notebook
- ``runner``: executes notebooks and collects each task's result (``python -m seqlib.grade``)
"""

import importlib
import pkgutil
import re

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

# Each exercise's checks live in a module named exNN (ex01.py, ex02.py, ...) whose __all__ lists
# them; they are collected here, so adding an exercise never means editing this file.
CHECKS = tuple(
    getattr(module, name)
    for module in (importlib.import_module(f"{__name__}.{info.name}")
                   for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
                   if re.fullmatch(r"ex\d\d", info.name))
    for name in module.__all__
)
"""Every check a graded cell may call; the grade command accepts only these."""
globals().update({check.__name__: check for check in CHECKS})

__all__ = [
    "CHECKS",
    "Case",
    "Check",
    "Hint",
    "Mismatch",
    "WrongAnswer",
    "find_mismatch",
    "first_difference",
    "run_check",
    *(check.__name__ for check in CHECKS),
]
