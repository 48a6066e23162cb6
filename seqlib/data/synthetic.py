"""Seeded synthetic tasks that probe what a sequence model can remember.

Each task is a function ``task(batch_size, <knobs>, *, seed) -> TaskBatch``. The same arguments
always give the same batch (a private ``torch.Generator`` is seeded; the global generators are
never touched), so an experiment can be repeated exactly.

Notation: b is the batch size, l the sequence length of the batch (which the knobs determine),
v the ``vocab_size``.

Token tasks (copy, selective copy, associative recall) share one layout:

- ``inputs``: int64 (b, l) token ids;
- ``targets``: int64 (b, l), the id the model should output at each position (``BLANK`` where
  nothing is scored);
- ``loss_mask``: bool (b, l), True exactly where the output is scored.

A causal model reads ``inputs[:, :t + 1]`` and is scored on ``targets[:, t]`` where
``loss_mask[:, t]`` is True, e.g. ``F.cross_entropy(logits[mask], targets[mask])``.

Reserved token ids (every token task; ``vocab_size`` counts them):

- ``BLANK = 0``: blank / padding / noise, the "nothing here" symbol;
- ``MARK = 1``: the marker that tells the model "now answer";
- ids ``FIRST_SYMBOL = 2 .. vocab_size - 1`` carry content.

The adding problem and parity have their own layouts, documented on each function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seqlib.data._checks import check_int

BLANK = 0
MARK = 1
FIRST_SYMBOL = 2


@dataclass(frozen=True, eq=False)
class TaskBatch:
    """One batch of a synthetic task: what the model reads, what it should output, and where
    the output is scored. Shapes and dtypes are documented by each task function."""

    inputs: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TaskBatch:
        """The same batch with every tensor moved to ``device``."""
        return TaskBatch(self.inputs.to(device), self.targets.to(device), self.loss_mask.to(device))


def _generator(seed: object) -> torch.Generator:
    return torch.Generator().manual_seed(check_int("seed", seed, 0))


def copy_task(
    batch_size: int, length: int, delay: int, vocab_size: int = 8, *, seed: int
) -> TaskBatch:
    """Read ``length`` random symbols, wait ``delay`` blanks, see the marker, then reproduce them.

    Layout of one row (l = 2 * length + delay + 1)::

        inputs : s_1 .. s_length | BLANK * delay | MARK | BLANK * length
        targets: BLANK ...                              | s_1 .. s_length
        mask   : False ...                              | True * length

    Symbols are uniform over ids 2 .. vocab_size - 1. The copy of ``s_i`` is due exactly
    ``length + delay + 1`` steps after ``s_i`` was read.

    Difficulty knob: ``delay``, how long the model must hold the whole sequence before using
    it (``length`` sets how much it must hold). This is the copying memory problem in the
    form used to test long-term memory in recurrent networks (e.g. Arjovsky et al. 2016).
    """
    b = check_int("batch_size", batch_size, 1)
    n = check_int("length", length, 1)
    delay = check_int("delay", delay, 0)
    v = check_int("vocab_size", vocab_size, FIRST_SYMBOL + 1, "2 reserved ids + 1 symbol")
    g = _generator(seed)

    symbols = torch.randint(FIRST_SYMBOL, v, (b, n), generator=g)
    answer_start = n + delay + 1  # first position after the marker
    inputs = torch.full((b, answer_start + n), BLANK, dtype=torch.long)
    inputs[:, :n] = symbols
    inputs[:, n + delay] = MARK
    targets = torch.full_like(inputs, BLANK)
    targets[:, answer_start:] = symbols
    loss_mask = torch.zeros_like(inputs, dtype=torch.bool)
    loss_mask[:, answer_start:] = True
    return TaskBatch(inputs, targets, loss_mask)


def selective_copy_task(
    batch_size: int, length: int, n_memorize: int, vocab_size: int = 8, *, seed: int
) -> TaskBatch:
    """Find ``n_memorize`` symbols scattered among blanks and reproduce them in order.

    Layout of one row (l = length + 1 + n_memorize)::

        inputs : length positions, n_memorize of them symbols, the rest BLANK | MARK | BLANK * n
        targets: BLANK ...                                                           | the symbols
        mask   : False ...                                                           | True * n

    The symbol positions are drawn uniformly without replacement, independently per row, so
    a model cannot solve the task by counting time steps: it has to decide from the content
    which inputs to keep and which to ignore (Gu & Dao 2023 use this task to motivate Mamba's
    input-dependent selection).

    Difficulty knobs: ``length`` (how much noise surrounds the symbols, and how far back the
    first one may lie) and ``n_memorize`` (how many to hold at once).
    """
    b = check_int("batch_size", batch_size, 1)
    region = check_int("length", length, 1)
    n = check_int("n_memorize", n_memorize, 1)
    if n > region:
        raise ValueError(f"n_memorize must be <= length ({region}), got {n}")
    v = check_int("vocab_size", vocab_size, FIRST_SYMBOL + 1, "2 reserved ids + 1 symbol")
    g = _generator(seed)

    # The first n entries of a random permutation, sorted: n distinct positions in order.
    positions = torch.rand(b, region, generator=g).argsort(dim=1)[:, :n].sort(dim=1).values
    symbols = torch.randint(FIRST_SYMBOL, v, (b, n), generator=g)
    inputs = torch.full((b, region + 1 + n), BLANK, dtype=torch.long)
    inputs[:, :region].scatter_(1, positions, symbols)
    inputs[:, region] = MARK
    targets = torch.full_like(inputs, BLANK)
    targets[:, region + 1 :] = symbols
    loss_mask = torch.zeros_like(inputs, dtype=torch.bool)
    loss_mask[:, region + 1 :] = True
    return TaskBatch(inputs, targets, loss_mask)


def associative_recall_task(
    batch_size: int, n_pairs: int, vocab_size: int = 16, *, seed: int
) -> TaskBatch:
    """Read key-value pairs, then a key; output the value that was paired with it.

    Layout of one row (l = 2 * n_pairs + 1)::

        inputs : k_1 v_1 k_2 v_2 .. k_n v_n q
        targets: BLANK ...                  v_j   where q == k_j
        mask   : False ...                  True

    The symbols split into two disjoint halves: keys are ids 2 .. 2 + k - 1 with
    k = (vocab_size - 2) // 2, values are the remaining ids up to vocab_size - 1. Keys within a
    row are distinct (so the answer is unique); values may repeat. The query is one of the
    row's keys, chosen uniformly. No marker is needed: the query is always the last position.

    Difficulty knob: ``n_pairs``, the number of associations to hold; it is at most k, so raise
    ``vocab_size`` for more pairs.
    """
    b = check_int("batch_size", batch_size, 1)
    n = check_int("n_pairs", n_pairs, 1)
    v = check_int("vocab_size", vocab_size, FIRST_SYMBOL + 2, "2 reserved ids + 1 key + 1 value")
    n_keys = (v - FIRST_SYMBOL) // 2
    if n > n_keys:
        raise ValueError(
            f"n_pairs must be <= {n_keys} (the number of distinct keys that vocab_size={v} "
            f"allows), got {n}; raise vocab_size to at least {2 * n + FIRST_SYMBOL}"
        )
    g = _generator(seed)

    keys = torch.rand(b, n_keys, generator=g).argsort(dim=1)[:, :n] + FIRST_SYMBOL
    values = torch.randint(FIRST_SYMBOL + n_keys, v, (b, n), generator=g)
    asked = torch.randint(0, n, (b,), generator=g)
    rows = torch.arange(b)

    inputs = torch.empty((b, 2 * n + 1), dtype=torch.long)
    inputs[:, 0 : 2 * n : 2] = keys
    inputs[:, 1 : 2 * n : 2] = values
    inputs[:, -1] = keys[rows, asked]
    targets = torch.full_like(inputs, BLANK)
    targets[:, -1] = values[rows, asked]
    loss_mask = torch.zeros_like(inputs, dtype=torch.bool)
    loss_mask[:, -1] = True
    return TaskBatch(inputs, targets, loss_mask)


def adding_task(batch_size: int, length: int, *, seed: int) -> TaskBatch:
    """The adding problem: add the two numbers that carry a marker.

    - ``inputs``: float32 (b, l, 2). Channel 0 holds numbers drawn uniformly from [0, 1);
      channel 1 is 1.0 at exactly two positions, one in the first half (positions
      0 .. l // 2 - 1) and one in the second half (l // 2 .. l - 1), and 0.0 elsewhere.
    - ``targets``: float32 (b,), the sum of the two marked numbers.
    - ``loss_mask``: bool (b, l), True only at the last position: the model gives its answer
      after reading the whole sequence.

    After Hochreiter & Schmidhuber (1997); this is the common later variant (numbers in
    [0, 1), one marker per half, the plain sum as target). Always answering 1.0 gives a mean
    squared error of 1/6 (the variance of a sum of two uniforms): the baseline to beat.

    Difficulty knob: ``length``, how far apart the two marked numbers can be, and how many
    unmarked numbers the model must learn to ignore.
    """
    b = check_int("batch_size", batch_size, 1)
    n = check_int("length", length, 2)
    g = _generator(seed)

    numbers = torch.rand(b, n, generator=g)
    first = torch.randint(0, n // 2, (b,), generator=g)
    second = torch.randint(n // 2, n, (b,), generator=g)
    rows = torch.arange(b)
    markers = torch.zeros(b, n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0

    inputs = torch.stack([numbers, markers], dim=-1)  # (b, l, 2)
    targets = numbers[rows, first] + numbers[rows, second]  # (b,)
    loss_mask = torch.zeros(b, n, dtype=torch.bool)
    loss_mask[:, -1] = True
    return TaskBatch(inputs, targets, loss_mask)


def parity_task(batch_size: int, length: int, *, seed: int) -> TaskBatch:
    """Running parity: after each bit, say whether an odd number of ones has been seen so far.

    - ``inputs``: int64 (b, l) of random bits, 0 or 1 (this task uses its own two-token
      vocabulary; there is no blank or marker).
    - ``targets``: int64 (b, l), ``targets[:, t] = (inputs[:, 0] + ... + inputs[:, t]) % 2``.
      The parity of the whole sequence, the classic harder variant, is ``targets[:, -1]``.
    - ``loss_mask``: bool (b, l), all True: every prefix is scored.

    A one-bit recurrent state solves it exactly at any length (flip on every 1); every output
    depends on every earlier input, so no shortcut through a few recent inputs exists.

    Difficulty knob: ``length``.
    """
    b = check_int("batch_size", batch_size, 1)
    n = check_int("length", length, 1)
    g = _generator(seed)

    bits = torch.randint(0, 2, (b, n), generator=g)
    targets = bits.cumsum(dim=1) % 2
    loss_mask = torch.ones(b, n, dtype=torch.bool)
    return TaskBatch(bits, targets, loss_mask)
