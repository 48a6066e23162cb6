"""Tests for seqlib.data: synthetic tasks, the agreement language, the code corpus and the
time series.

The synthetic-task checkers below re-derive each target from the inputs alone, with plain
Python loops written from the task descriptions, never by calling the generator's own code.
The corpus tests never look at exact text: the standard library differs between Python
versions. Exact expectations are checked on a small directory tree the test builds itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqlib.data import (
    BLANK,
    FIRST_SYMBOL,
    MARK,
    AgreementSentence,
    TimeSeries,
    adding_task,
    agreement_sentences,
    agreement_vocabulary,
    associative_recall_task,
    code_corpus,
    copy_task,
    eeg_recording,
    mismatched_twin,
    parity_task,
    selective_copy_task,
    stock_prices,
)
from seqlib.data.language import NOUNS, VERBS

# ---------------------------------------------------------------- synthetic tasks


def _answer_region(row_mask: list[bool]) -> list[int]:
    return [t for t, scored in enumerate(row_mask) if scored]


def _check_marker_task(batch, region: int, n_answers: int, vocab_size: int) -> None:
    """Copy and selective copy: the scored targets are the non-blank tokens before the marker,
    in order, and they are scored at the n_answers positions right after the marker."""
    for row_in, row_out, row_mask in zip(
        batch.inputs.tolist(), batch.targets.tolist(), batch.loss_mask.tolist()
    ):
        assert row_in.count(MARK) == 1
        marker = row_in.index(MARK)
        assert marker == region
        remembered = [t for t in row_in[:marker] if t != BLANK]
        assert all(FIRST_SYMBOL <= t < vocab_size for t in remembered)
        assert all(t == BLANK for t in row_in[marker + 1 :])
        scored = _answer_region(row_mask)
        assert scored == list(range(marker + 1, marker + 1 + n_answers))
        assert scored[-1] == len(row_in) - 1
        assert [row_out[t] for t in scored] == remembered
        assert all(row_out[t] == BLANK for t in range(len(row_out)) if not row_mask[t])


@pytest.mark.parametrize("length, delay, vocab_size", [(1, 0, 3), (5, 3, 8), (10, 20, 12)])
def test_copy_targets_follow_from_inputs(length, delay, vocab_size):
    batch = copy_task(16, length, delay, vocab_size, seed=3)
    assert batch.inputs.shape == (16, 2 * length + delay + 1)
    assert batch.inputs.dtype == torch.long and batch.loss_mask.dtype == torch.bool
    _check_marker_task(batch, length + delay, length, vocab_size)
    # Every one of the first `length` inputs is a symbol (blanks come only after them).
    assert (batch.inputs[:, :length] >= FIRST_SYMBOL).all()


@pytest.mark.parametrize("length, n_memorize", [(1, 1), (8, 3), (30, 30), (50, 4)])
def test_selective_copy_targets_follow_from_inputs(length, n_memorize):
    batch = selective_copy_task(32, length, n_memorize, 6, seed=1)
    assert batch.inputs.shape == (32, length + 1 + n_memorize)
    _check_marker_task(batch, length, n_memorize, 6)


def test_selective_copy_positions_vary_between_rows():
    batch = selective_copy_task(64, 40, 4, seed=0)
    layouts = {tuple((row != BLANK).tolist()) for row in batch.inputs[:, :40]}
    assert len(layouts) > 32


@pytest.mark.parametrize("n_pairs, vocab_size", [(1, 4), (3, 16), (7, 16), (10, 25)])
def test_associative_recall_target_is_the_queried_value(n_pairs, vocab_size):
    batch = associative_recall_task(32, n_pairs, vocab_size, seed=5)
    n_keys = (vocab_size - 2) // 2
    assert batch.inputs.shape == (32, 2 * n_pairs + 1)
    for row_in, row_out, row_mask in zip(
        batch.inputs.tolist(), batch.targets.tolist(), batch.loss_mask.tolist()
    ):
        keys, values = row_in[0:-1:2], row_in[1:-1:2]
        assert len(set(keys)) == n_pairs
        assert all(2 <= k < 2 + n_keys for k in keys)
        assert all(2 + n_keys <= v < vocab_size for v in values)
        table = dict(zip(keys, values))
        query = row_in[-1]
        assert _answer_region(row_mask) == [len(row_in) - 1]
        assert row_out[-1] == table[query]


def test_associative_recall_queries_every_slot():
    batch = associative_recall_task(200, 5, seed=0)
    asked = {row[0:-1:2].index(row[-1]) for row in batch.inputs.tolist()}
    assert asked == set(range(5))


@pytest.mark.parametrize("length", [2, 3, 17, 100])
def test_adding_target_is_sum_of_marked_numbers(length):
    batch = adding_task(32, length, seed=2)
    assert batch.inputs.shape == (32, length, 2) and batch.inputs.dtype == torch.float32
    assert batch.targets.shape == (32,)
    for row, target, row_mask in zip(
        batch.inputs.tolist(), batch.targets.tolist(), batch.loss_mask.tolist()
    ):
        marked = [t for t, (_, marker) in enumerate(row) if marker == 1.0]
        assert all(marker in (0.0, 1.0) for _, marker in row)
        assert len(marked) == 2
        assert marked[0] < length // 2 <= marked[1]
        assert all(0.0 <= number < 1.0 for number, _ in row)
        assert target == pytest.approx(row[marked[0]][0] + row[marked[1]][0], abs=1e-6)
        assert _answer_region(row_mask) == [length - 1]


@pytest.mark.parametrize("length", [1, 9, 64])
def test_parity_is_the_running_parity(length):
    batch = parity_task(16, length, seed=4)
    for bits, parities in zip(batch.inputs.tolist(), batch.targets.tolist()):
        assert set(bits) <= {0, 1}
        odd = 0
        for bit, parity in zip(bits, parities):
            odd ^= bit
            assert parity == odd
    assert batch.loss_mask.all()


TASKS = {
    "copy": lambda seed: copy_task(8, 6, 4, seed=seed),
    "selective_copy": lambda seed: selective_copy_task(8, 12, 3, seed=seed),
    "associative_recall": lambda seed: associative_recall_task(8, 5, seed=seed),
    "adding": lambda seed: adding_task(8, 12, seed=seed),
    "parity": lambda seed: parity_task(8, 12, seed=seed),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tasks_are_seeded_and_leave_global_rng_alone(name):
    state = torch.random.get_rng_state()
    first, again, other = TASKS[name](0), TASKS[name](0), TASKS[name](1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for field in ("inputs", "targets", "loss_mask"):
        assert torch.equal(getattr(first, field), getattr(again, field))
    assert not torch.equal(first.inputs, other.inputs)


def test_task_batch_moves_to_a_device():
    batch = copy_task(2, 3, 1, seed=0).to("cpu")
    assert batch.inputs.device.type == "cpu" and batch.loss_mask.dtype == torch.bool


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: copy_task(0, 4, 2, seed=0), ValueError, "batch_size"),
        (lambda: copy_task(2, 0, 2, seed=0), ValueError, "length"),
        (lambda: copy_task(2, 4, -1, seed=0), ValueError, "delay"),
        (lambda: copy_task(2, 4, 2, vocab_size=2, seed=0), ValueError, "vocab_size"),
        (lambda: copy_task(2, 4.0, 2, seed=0), TypeError, "length"),
        (lambda: copy_task(True, 4, 2, seed=0), TypeError, "batch_size"),
        (lambda: copy_task(2, 4, 2, seed=-1), ValueError, "seed"),
        (lambda: copy_task(2, 4, 2, seed="0"), TypeError, "seed"),
        (lambda: selective_copy_task(2, 3, 4, seed=0), ValueError, "n_memorize"),
        (lambda: selective_copy_task(2, 3, 0, seed=0), ValueError, "n_memorize"),
        (lambda: associative_recall_task(2, 8, 16, seed=0), ValueError, "n_pairs"),
        (lambda: associative_recall_task(2, 1, 3, seed=0), ValueError, "vocab_size"),
        (lambda: adding_task(2, 1, seed=0), ValueError, "length"),
        (lambda: parity_task(2, 0, seed=0), ValueError, "length"),
    ],
)
def test_bad_task_knobs_raise(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_seed_is_required():
    with pytest.raises(TypeError):
        copy_task(2, 4, 2)


# ---------------------------------------------------------------- agreement language

SINGULAR_NOUNS = {s for s, _ in NOUNS}
PLURAL_NOUNS = {p for _, p in NOUNS}
SINGULAR_VERBS = {s for s, _ in VERBS}
PLURAL_VERBS = {p for _, p in VERBS}


@pytest.mark.parametrize("distance", [0, 1, 2, 3, 4, 5, 7, 12, 25])
def test_verb_agrees_with_subject_at_exact_distance(distance):
    sentences = agreement_sentences(40, distance, seed=distance)
    for s in sentences:
        assert isinstance(s, AgreementSentence)
        assert s.verb_index - s.subject_index - 1 == distance == s.distance
        assert s.text == " ".join(s.words) and s.words[-1] == "."
        subject, verb = s.words[s.subject_index], s.words[s.verb_index]
        assert subject in (PLURAL_NOUNS if s.plural else SINGULAR_NOUNS)
        assert verb in (PLURAL_VERBS if s.plural else SINGULAR_VERBS)
        # After the verb: "the [adjective] noun ."
        assert s.words[s.verb_index + 1] == "the"
        assert len(s.words) - s.verb_index in (4, 5)
        assert set(s.words) <= set(agreement_vocabulary())
    assert {s.plural for s in sentences} == {True, False}


def test_attractors_vary_and_clause_verbs_agree_with_their_own_nouns():
    nouns = SINGULAR_NOUNS | PLURAL_NOUNS
    attractor_numbers, disagreeing = set(), 0
    for s in agreement_sentences(200, 10, seed=0):
        filler = s.words[s.subject_index + 1 : s.verb_index]
        for i, word in enumerate(filler):
            if word in nouns:
                attractor_numbers.add(word in PLURAL_NOUNS)
                disagreeing += (word in PLURAL_NOUNS) != s.plural
                # A noun directly followed by a verb is a relative clause's subject.
                if i + 1 < len(filler) and filler[i + 1] in SINGULAR_VERBS | PLURAL_VERBS:
                    assert (filler[i + 1] in PLURAL_VERBS) == (word in PLURAL_NOUNS)
    assert attractor_numbers == {True, False}
    assert disagreeing > 100


def test_agreement_sentences_are_seeded():
    assert agreement_sentences(20, 6, seed=3) == agreement_sentences(20, 6, seed=3)
    assert agreement_sentences(20, 6, seed=3) != agreement_sentences(20, 6, seed=4)


def test_mismatched_twin_flips_only_the_verb():
    for s in agreement_sentences(30, 5, seed=1):
        twin = mismatched_twin(s)
        differ = [i for i, (a, b) in enumerate(zip(s.words, twin.words)) if a != b]
        assert differ == [s.verb_index]
        assert twin.words[s.verb_index] in (SINGULAR_VERBS if s.plural else PLURAL_VERBS)
        assert twin.plural == s.plural and twin.text == " ".join(twin.words)
        assert mismatched_twin(twin) == s


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"n": 0, "distance": 3}, ValueError, "n"),
        ({"n": 2, "distance": -1}, ValueError, "distance"),
        ({"n": 2, "distance": 2.5}, TypeError, "distance"),
        ({"n": 2, "distance": 2, "seed": -3}, ValueError, "seed"),
    ],
)
def test_bad_agreement_arguments_raise(kwargs, error, words):
    with pytest.raises(error, match=words):
        agreement_sentences(**kwargs)
    with pytest.raises(TypeError, match="AgreementSentence"):
        mismatched_twin("the dog sees the cat .")


# ---------------------------------------------------------------- code corpus


def test_code_corpus_is_deterministic_and_split_by_file():
    first, again = code_corpus(40_000, 0.2, seed=0), code_corpus(40_000, 0.2, seed=0)
    assert first == again
    other = code_corpus(40_000, 0.2, seed=1)
    assert other.train_files + other.valid_files != first.train_files + first.valid_files
    for corpus in (first, other):
        assert not set(corpus.train_files) & set(corpus.valid_files)
        assert corpus.train_files and corpus.valid_files
        for name in corpus.train_files + corpus.valid_files:
            assert name.endswith(".py") and not name.startswith("/")
            assert "site-packages/" not in name and "/test/" not in f"/{name}"


def test_code_corpus_sizes_are_near_the_request():
    corpus = code_corpus(60_000, 0.25, seed=2)
    total = len(corpus.train) + len(corpus.valid)
    assert 0.9 * 60_000 <= total <= 1.01 * 60_000
    assert 0.8 * 15_000 <= len(corpus.valid) <= 1.01 * 15_000


def _write(path, content: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)


def test_code_corpus_rules_on_a_known_tree(tmp_path):
    body = "x = 1\n" * 60  # 360 bytes: above the 200-byte floor
    for i in range(6):
        _write(tmp_path / f"pkg/mod{i}.py", f"# module {i}\n" + body)
    _write(tmp_path / "pkg/latin1.py", b"# caf\xe9\n" + body.encode())  # not UTF-8
    _write(tmp_path / "pkg/tiny.py", "y = 2\n")  # under the floor
    _write(tmp_path / "pkg/huge.py", "z = 3\n" * 20_000)  # over the ceiling
    _write(tmp_path / "test/mod.py", body)
    _write(tmp_path / "pkg/test_mod.py", body)
    _write(tmp_path / "notes.txt", body)

    texts = {f"pkg/mod{i}.py": (tmp_path / f"pkg/mod{i}.py").read_text() for i in range(6)}
    # Several seeds, so that the undecodable file is visited (and must be passed over).
    for seed in range(8):
        corpus = code_corpus(2_000, 0.2, seed=seed, root=tmp_path)
        assert set(corpus.train_files + corpus.valid_files) <= set(texts)
        # Budgets of 400 and 1600 bytes hold one and four of the 371-byte modules.
        assert len(corpus.valid_files) == 1 and len(corpus.train_files) == 4
        assert corpus.train == "".join(texts[name] for name in corpus.train_files)
        assert corpus.valid == "".join(texts[name] for name in corpus.valid_files)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"n_chars": 0}, ValueError, "n_chars"),
        ({"n_chars": 10**12}, ValueError, "n_chars"),
        ({"n_chars": 1000.0}, TypeError, "n_chars"),
        ({"valid_fraction": 1.0}, ValueError, "valid_fraction"),
        ({"valid_fraction": -0.1}, ValueError, "valid_fraction"),
        ({"valid_fraction": "0.1"}, TypeError, "valid_fraction"),
        ({"seed": -1}, ValueError, "seed"),
        ({"root": "/nonexistent/dir/for/seqlib"}, ValueError, "root"),
        ({"n_chars": 300, "valid_fraction": 0.1}, ValueError, "split is empty"),
    ],
)
def test_bad_corpus_arguments_raise(kwargs, error, words):
    with pytest.raises(error, match=words):
        code_corpus(**kwargs)


# ---------------------------------------------------------------- time series


def test_stock_prices():
    series = stock_prices()
    assert series.values.shape == series.times.shape == (len(series),) and len(series) > 100
    assert np.issubdtype(series.times.dtype, np.datetime64)
    assert (np.diff(series.times) > np.timedelta64(0, "D")).all()
    assert np.isfinite(series.values).all() and (series.values > 0).all()
    assert series.unit == "USD"
    with pytest.raises(ValueError):
        series.values[0] = 0.0  # read-only


def test_eeg_recording_layout():
    series = eeg_recording()
    assert series.values.shape == (800, 4) and len(series.channels) == 4
    assert np.array_equal(series.times, np.arange(800)) and series.time_unit == "sample"
    values = series.values
    assert np.isfinite(values).all()
    assert np.allclose(values.std(axis=0), 1.0, atol=0.05)
    # Samples of one channel follow each other in time, so neighbours are strongly correlated;
    # reading the file with the wrong layout (channel-major) or dtype destroys that.
    for channel in values.T:
        assert np.corrcoef(channel[:-1], channel[1:])[0, 1] > 0.5


def test_time_series_checks_shapes_and_keeps_caller_arrays_writable():
    times, values = np.arange(5.0), np.ones(5)
    TimeSeries("x", times, values, "m", "s")
    values[0] = 2.0  # the caller's array is still writable
    with pytest.raises(ValueError, match="values"):
        TimeSeries("x", times, np.ones(4), "m", "s")
