"""Tests for seqlib.tokenize: exact round trips, unknown characters, and byte-pair encoding
checked against slow references written here from the algorithm's definition."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter

import numpy as np
import pytest
import torch

from seqlib.tokenize import BPETokenizer, CharTokenizer

AWKWARD = [
    "",
    "a",
    "héllo wörld, ça va?",
    "日本語のテキストと한국어",
    "emoji 🤖🎉 and a family 👩‍👩‍👧 with joiners",
    "tabs\tand\nnewlines\r\nand\n\n\n   indentation",
    "  leading and trailing spaces  ",
    "\x00 control \x07 chars \x7f",
    "combining e\u0301 vs é, ligature ﬁ, nbsp\u00a0here",
    "def __init__(self, x_1=0x1F):\n    return {'k': [1, 2.5e-3]}  # ok\n",
    "a" * 1000 + " " * 300 + "_" * 50,
]

# A made-up text with many distinct identifiers sharing pieces, so that hundreds of merges can
# be learned from it and the test does not depend on files on disk.
_rng = random.Random(0)
_SYLLABLES = ["re", "turn", "val", "ue", "in", "dex", "self", "get", "item", "_", "da", "ta", "1"]
_SEPARATORS = ["    ", "\n", "\n    ", " ", "(", "):\n    ", ", ", " == ", ".", "é", "→", "\t"]
TRAIN_TEXT = "".join(
    _rng.choice(_SEPARATORS) + "".join(_rng.choices(_SYLLABLES, k=_rng.randint(1, 3)))
    for _ in range(4000)
)


# ---------------------------------------------------------------- characters


def test_char_round_trip_on_awkward_strings():
    tokenizer = CharTokenizer.from_text("".join(AWKWARD))
    for text in AWKWARD:
        ids = tokenizer.encode(text)
        assert len(ids) == len(text)
        assert tokenizer.decode(ids) == text


def test_char_vocabulary_is_sorted_and_unique():
    tokenizer = CharTokenizer.from_text("banana bread")
    assert tokenizer.vocab == sorted(set("banana bread"))
    assert tokenizer.vocab_size == len(tokenizer.vocab) == 7
    assert tokenizer.encode("ab") == [tokenizer.vocab.index("a"), tokenizer.vocab.index("b")]


def test_char_unknown_error_names_character_and_position():
    tokenizer = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'z' at position 3"):
        tokenizer.encode("abcz")
    with pytest.raises(ValueError, match=r"'\\n' at position 1"):
        tokenizer.encode("a\nb")


def test_char_unknown_replace_uses_reserved_id():
    strict = CharTokenizer.from_text("abc")
    lenient = CharTokenizer.from_text("abc", unknown="replace")
    assert lenient.vocab_size == strict.vocab_size + 1
    assert lenient.vocab[lenient.unknown_id] == "<unk>" and strict.unknown_id is None
    ids = lenient.encode("azb🤖")
    assert ids == [0, lenient.unknown_id, 1, lenient.unknown_id]
    assert lenient.encode("cab") == strict.encode("cab")
    assert lenient.decode(ids) == "a<unk>b<unk>"


def test_char_decode_accepts_tensors_and_arrays():
    tokenizer = CharTokenizer.from_text("hello")
    ids = tokenizer.encode("hello")
    assert tokenizer.decode(torch.tensor(ids)) == "hello"
    assert tokenizer.decode(np.array(ids)) == "hello"


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda t: t.decode([0, 3]), ValueError, r"ids\[1\] = 3"),
        (lambda t: t.decode([-1]), ValueError, "out of range"),
        (lambda t: t.decode([0.5]), TypeError, "ids"),
        (lambda t: t.decode("ab"), TypeError, "ids"),
        (lambda t: t.encode(["a"]), TypeError, "text"),
        (lambda t: CharTokenizer.from_text(""), ValueError, "text"),
        (lambda t: CharTokenizer.from_text("ab", unknown="ignore"), ValueError, "unknown"),
        (lambda t: CharTokenizer(["a", "a"]), ValueError, "repeat"),
        (lambda t: CharTokenizer(["ab"]), ValueError, "single characters"),
    ],
)
def test_char_bad_arguments_raise(call, error, words):
    tokenizer = CharTokenizer.from_text("abc")
    with pytest.raises(error, match=words):
        call(tokenizer)


# ---------------------------------------------------------------- byte-pair encoding


def _word_class(char: str) -> object:
    """Chunk class of a character: word characters and whitespace form runs; every other
    character is a chunk of its own (hence a fresh object, equal to nothing else)."""
    if char.isalnum() or char == "_":
        return "word"
    if char.isspace():
        return "space"
    return object()


def _reference_chunks(text: str) -> list[str]:
    return ["".join(run) for _, run in itertools.groupby(text, key=_word_class)]


def _spelled(ids) -> str:
    return "".join(f"<{token:05d}>" for token in ids)


def _reference_merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Merge by string replacement: with every id spelled as a fixed-width ``<nnnnn>``,
    ``str.replace`` finds the pair only on token boundaries, left to right, without overlap."""
    replaced = _spelled(ids).replace(_spelled(pair), _spelled([new_id]))
    return [int(token) for token in re.findall(r"<(\d{5})>", replaced)]


def _reference_encode(text: str, merges: list[tuple[int, int]]) -> list[int]:
    """Apply every merge, in the order learned, to every chunk: the definition of encoding."""
    out = []
    for chunk in _reference_chunks(text):
        ids = list(chunk.encode("utf-8"))
        for k, pair in enumerate(merges):
            ids = _reference_merge(ids, pair, 256 + k)
        out += ids
    return out


def _reference_train(text: str, vocab_size: int) -> list[tuple[int, int]]:
    """Slow BPE training: recount every pair after every merge; most frequent pair wins,
    ties to the smallest pair; stop when no pair occurs twice."""
    chunks = Counter(_reference_chunks(text))
    words = {chunk: list(chunk.encode("utf-8")) for chunk in chunks}
    merges = []
    while 256 + len(merges) < vocab_size:
        counts = Counter()
        for chunk, ids in words.items():
            for pair in zip(ids, ids[1:]):
                counts[pair] += chunks[chunk]
        if not counts or max(counts.values()) < 2:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for chunk in words:
            words[chunk] = _reference_merge(words[chunk], best, 255 + len(merges))
    return merges


@pytest.fixture(scope="module")
def trained() -> BPETokenizer:
    return BPETokenizer.train(TRAIN_TEXT, 400)


def test_reference_merge_is_left_to_right_and_non_overlapping():
    assert _reference_merge([1, 1, 1], (1, 1), 9) == [9, 1]
    assert _reference_merge([1, 1, 1, 1], (1, 1), 9) == [9, 9]
    assert _reference_merge([1, 2, 1, 2, 2], (1, 2), 9) == [9, 9, 2]
    assert _reference_merge([11, 1, 11], (1, 1), 9) == [11, 1, 11]  # no match across ids


def test_bpe_training_matches_slow_reference():
    text = TRAIN_TEXT[:4000]
    merges = BPETokenizer.train(text, 330).merges
    assert len(merges) == 74
    assert merges == _reference_train(text, 330)


def test_bpe_encode_applies_merges_in_order(trained):
    unseen = "def forward(self, x_2):\n        return self.value[index] + 1  # é🤖\n"
    for text in [TRAIN_TEXT[:2000], unseen, *AWKWARD]:
        assert trained.encode(text) == _reference_encode(text, trained.merges)


def test_bpe_round_trip_on_awkward_strings(trained):
    for text in AWKWARD + [TRAIN_TEXT]:
        assert trained.decode(trained.encode(text)) == text


def test_bpe_compresses_its_training_text(trained):
    assert trained.vocab_size == 400 and len(trained.merges) == 144
    n_bytes = len(TRAIN_TEXT.encode("utf-8"))
    assert len(trained.encode(TRAIN_TEXT)) < 0.5 * n_bytes


def test_bpe_tokens_are_concatenated_bytes(trained):
    for k, (first, second) in enumerate(trained.merges):
        assert trained.token_bytes(256 + k) == trained.token_bytes(first) + trained.token_bytes(
            second
        )
    assert trained.token_bytes(65) == b"A"
    assert trained.token_str(0xC3) == "\ufffd"  # half of a two-byte character
    assert trained.decode([0xC3]) == "\ufffd"  # invalid UTF-8 decodes, does not raise
    assert trained.decode(list("é".encode())) == "é"


def test_bpe_merges_never_cross_chunk_boundaries(trained):
    for k in range(len(trained.merges)):
        text = trained.token_bytes(256 + k).decode("utf-8", errors="ignore")
        assert len(_reference_chunks(text)) <= 1, repr(text)


def test_bpe_is_deterministic_and_vocab_256_means_bytes():
    assert BPETokenizer.train(TRAIN_TEXT, 300).merges == BPETokenizer.train(TRAIN_TEXT, 300).merges
    plain = BPETokenizer.train(TRAIN_TEXT, 256)
    assert plain.merges == [] and plain.encode("héllo") == list("héllo".encode())


def test_bpe_stops_early_on_tiny_text():
    tokenizer = BPETokenizer.train("abab", 1000)
    assert tokenizer.merges == [(97, 98)] and tokenizer.vocab_size == 257


def test_bpe_rebuilds_from_merges(trained):
    rebuilt = BPETokenizer(trained.merges)
    assert rebuilt.encode(TRAIN_TEXT[:500]) == trained.encode(TRAIN_TEXT[:500])


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda t: BPETokenizer.train("abc", 255), ValueError, "vocab_size"),
        (lambda t: BPETokenizer.train("abc", 300.0), TypeError, "vocab_size"),
        (lambda t: BPETokenizer.train(b"abc", 300), TypeError, "text"),
        (lambda t: t.decode([t.vocab_size]), ValueError, "out of range"),
        (lambda t: t.token_bytes(-1), ValueError, "out of range"),
        (lambda t: t.encode("lone \ud800 surrogate"), ValueError, "surrogate"),
        (lambda t: BPETokenizer([(1, 256)]), ValueError, r"merges\[0\]"),
        (lambda t: BPETokenizer([(1, 2, 3)]), ValueError, r"merges\[0\]"),
    ],
)
def test_bpe_bad_arguments_raise(trained, call, error, words):
    with pytest.raises(error, match=words):
        call(trained)
