"""A real text corpus that needs no download: the Python standard library's own source code.

Every Python installation carries the ``.py`` files of its standard library, so a few hundred
thousand characters of real, varied, human-written text are always at hand: code, comments,
docstrings, identifiers in many styles. :func:`code_corpus` picks files from it at random
(deterministically, for a seed) and splits them into training and validation text.

The files differ between Python versions, so the exact text does too: use the corpus for
experiments and figures, never for results that must match to the character across machines.

Which files are eligible: ``.py`` files under ``sysconfig.get_paths()["stdlib"]``, except

- test suites (directories named ``test``, ``tests`` or ``idle_test``; files ``test_*.py``);
- installed third-party packages (``site-packages``, ``dist-packages``);
- GUI and demo code (``idlelib``, ``tkinter``, ``turtledemo``, ``turtle.py``);
- generated tables rather than code (``encodings``, ``pydoc_data``, ``_sysconfigdata*``);
- files under 200 bytes (empty ``__init__.py`` files) or over 60 kB (one huge file would
  dominate a small corpus), and files that are not valid UTF-8 (skipped when read).
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqlib.data._checks import check_fraction, check_int

MIN_FILE_BYTES = 200
MAX_FILE_BYTES = 60_000
_SKIPPED_DIRS = frozenset({
    "test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
    "idlelib", "tkinter", "turtledemo", "encodings", "pydoc_data", "lib-dynload",
})
_SKIPPED_FILE_PREFIXES = ("test_", "_sysconfigdata")
_SKIPPED_FILES = frozenset({"turtle.py"})


@dataclass(frozen=True)
class CodeCorpus:
    """Training and validation text, and the files each came from (paths relative to the
    directory they were read from, with ``/`` separators). No file is in both splits."""

    train: str
    valid: str
    train_files: tuple[str, ...]
    valid_files: tuple[str, ...]


def _eligible_files(root: Path) -> list[tuple[str, int]]:
    """(relative path, size in bytes) of every eligible file under ``root``, sorted by path."""
    found = []
    for directory, subdirs, files in os.walk(root):
        # Pruning in place stops os.walk from descending into skipped directories at all.
        subdirs[:] = [d for d in subdirs
                      if d not in _SKIPPED_DIRS and not d.startswith("config-")]
        for name in files:
            if (not name.endswith(".py") or name in _SKIPPED_FILES
                    or name.startswith(_SKIPPED_FILE_PREFIXES)):
                continue
            path = Path(directory, name)
            size = path.stat().st_size
            if MIN_FILE_BYTES <= size <= MAX_FILE_BYTES:
                found.append((path.relative_to(root).as_posix(), size))
    return sorted(found)


def _read_utf8(path: Path) -> str | None:
    """The file's text with ``\\n`` line endings, or None if it is not valid UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def code_corpus(
    n_chars: int = 300_000,
    valid_fraction: float = 0.1,
    seed: int = 0,
    *,
    root: str | os.PathLike | None = None,
) -> CodeCorpus:
    """About ``n_chars`` characters of Python source, split by whole files into train and valid.

    Files are visited in an order shuffled by ``numpy.random.default_rng(seed)`` (a private
    generator) from the sorted list of eligible files. Each file goes to the validation split
    if it fits in what is left of the validation budget (``valid_fraction * n_chars``), else to
    the training split if it fits there, else it is passed over. Budgets are counted in bytes
    from the file sizes, so only the files that are kept are ever read; stdlib sources are
    almost all ASCII, so characters and bytes nearly coincide. Both splits come out a little
    under their budgets (at most a few hundred characters for a few hundred thousand).

    Each split is its files' texts joined in the order they were picked, each file ending in
    a newline. ``root`` reads another directory instead of the standard library (the same
    rules apply); tests use it to work on known files.
    """
    n_chars = check_int("n_chars", n_chars, 1)
    valid_fraction = check_fraction("valid_fraction", valid_fraction, 0.0, 1.0)
    seed = check_int("seed", seed, 0)
    base = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    if not base.is_dir():
        raise ValueError(f"root must be an existing directory, got {str(base)!r}")

    candidates = _eligible_files(base)
    available = sum(size for _, size in candidates)
    if available < n_chars:
        raise ValueError(
            f"n_chars must be at most the {available} bytes of eligible source under "
            f"{str(base)!r}, got {n_chars}"
        )

    budget = {"valid": round(valid_fraction * n_chars)}
    budget["train"] = n_chars - budget["valid"]
    picked: dict[str, list[tuple[str, str]]] = {"valid": [], "train": []}
    smallest = min(size for _, size in candidates)
    order = np.random.default_rng(seed).permutation(len(candidates))
    for index in order:
        if budget["valid"] < smallest and budget["train"] < smallest:
            break  # nothing left can fit anywhere
        name, size = candidates[index]
        split = next((s for s in ("valid", "train") if size <= budget[s]), None)
        if split is None:
            continue
        text = _read_utf8(base / name)
        if text is None:
            continue
        if not text.endswith("\n"):
            text += "\n"
        picked[split].append((name, text))
        budget[split] -= size

    for split in ("valid", "train"):
        if not picked[split] and budget[split] > 0:
            raise ValueError(
                f"the {split} split is empty: its budget of {budget[split]} characters "
                f"(n_chars={n_chars}, valid_fraction={valid_fraction}) is smaller than every "
                f"eligible file; ask for more characters"
            )
    return CodeCorpus(
        train="".join(text for _, text in picked["train"]),
        valid="".join(text for _, text in picked["valid"]),
        train_files=tuple(name for name, _ in picked["train"]),
        valid_files=tuple(name for name, _ in picked["valid"]),
    )
