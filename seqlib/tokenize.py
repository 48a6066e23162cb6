"""Tokenizers: text to a list of integer ids and back.

- :class:`CharTokenizer`: one id per character seen in a training text. Small and transparent,
  but sequences are as long as the text, and characters it never saw are a problem (an error,
  or one shared ``"<unk>"`` id).
- :class:`BPETokenizer`: byte-level byte-pair encoding (Sennrich, Haddow & Birch 2016, on
  bytes as in GPT-2, Radford et al. 2019). It starts from the 256 byte values, so every string
  can be encoded and decoded exactly, and learns *merges*: each merge replaces the most
  frequent pair of adjacent tokens in the training text with one new token. A larger
  vocabulary (v) gives shorter sequences (l): the trade-off chapter 1 measures.

Both tokenizers have ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``.
``decode`` accepts any sequence of ints, including a 1-D tensor or array.
"""

from __future__ import annotations

import heapq
import numbers
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

UNKNOWN_TOKEN = "<unk>"

# BPE pre-splitting: a run of word characters (letters, digits, underscore: an identifier or a
# number), a run of whitespace (indentation with its newline), or one other character. Merges
# never cross these boundaries, so tokens stay meaningful pieces ("return", "    ", "self")
# rather than accidents of what happened to stand next to each other.
CHUNK_PATTERN = re.compile(r"\w+|\s+|[^\w\s]")


def _as_id_list(ids: object) -> list[int]:
    """``ids`` (list, tuple, 1-D tensor or array of ints) as a list of Python ints."""
    if hasattr(ids, "tolist"):  # torch tensors and numpy arrays: far faster than iterating
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"ids must be a sequence of ints, got {type(ids).__name__}")
    out = []
    for position, token in enumerate(ids):
        if isinstance(token, bool) or not isinstance(token, numbers.Integral):
            raise TypeError(
                f"ids must be a sequence of ints, got {type(token).__name__} {token!r} "
                f"at position {position}"
            )
        out.append(int(token))
    return out


def _check_ids_in_range(ids: list[int], vocab_size: int) -> None:
    for position, token in enumerate(ids):
        if not 0 <= token < vocab_size:
            raise ValueError(
                f"ids[{position}] = {token} is out of range: ids must be in 0 .. {vocab_size - 1}"
            )


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return text


class CharTokenizer:
    """One id per character, in sorted order of the characters.

    ``unknown`` says what ``encode`` does with a character outside the vocabulary:

    - ``"error"`` (default): raise ``ValueError`` naming the character and its position;
    - ``"replace"``: map it to the extra id ``vocab_size - 1``, whose entry is ``"<unk>"``.
      Decoding that id gives the string ``"<unk>"``, so text with unseen characters does not
      survive an encode-decode round trip.
    """

    def __init__(self, chars: Iterable[str], unknown: str = "error") -> None:
        chars = list(chars)
        for position, char in enumerate(chars):
            if not isinstance(char, str) or len(char) != 1:
                raise ValueError(
                    f"chars must hold single characters, got {char!r} at position {position}"
                )
        if len(set(chars)) != len(chars):
            raise ValueError("chars must not repeat a character")
        if unknown not in ("error", "replace"):
            raise ValueError(f"unknown must be 'error' or 'replace', got {unknown!r}")
        self.unknown = unknown
        self._vocab = chars + ([UNKNOWN_TOKEN] if unknown == "replace" else [])
        self._ids = {char: i for i, char in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str, unknown: str = "error") -> CharTokenizer:
        """A tokenizer whose vocabulary is the sorted set of characters in ``text``."""
        text = _check_text(text)
        if not text:
            raise ValueError("text must contain at least one character to build a vocabulary")
        return cls(sorted(set(text)), unknown=unknown)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def vocab(self) -> list[str]:
        """The string of every id, in id order (a copy)."""
        return list(self._vocab)

    @property
    def unknown_id(self) -> int | None:
        """The id of ``"<unk>"``, or None when unknown characters raise an error."""
        return self.vocab_size - 1 if self.unknown == "replace" else None

    def encode(self, text: str) -> list[int]:
        text = _check_text(text)
        ids = self._ids
        if self.unknown == "replace":
            unk = self.vocab_size - 1
            return [ids.get(char, unk) for char in text]
        try:
            return [ids[char] for char in text]
        except KeyError:
            position = next(i for i, char in enumerate(text) if char not in ids)
            raise ValueError(
                f"character {text[position]!r} at position {position} is not in the "
                "vocabulary; build the tokenizer with unknown='replace' to map such "
                "characters to '<unk>'"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        ids = _as_id_list(ids)
        _check_ids_in_range(ids, self.vocab_size)
        return "".join(self._vocab[i] for i in ids)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, unknown={self.unknown!r})"


def _merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """``ids`` with every occurrence of ``pair`` replaced by ``new_id``, scanning left to right
    (so ``a a a`` with pair ``(a, a)`` becomes ``aa a``)."""
    first, second = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"character {text[error.start]!r} at position {error.start} of a chunk has no "
            "UTF-8 encoding (a lone surrogate); it cannot be tokenized"
        ) from None


def _learn_merges(chunk_counts: Counter[str], n_merges: int) -> list[tuple[int, int]]:
    """Up to ``n_merges`` merges learned from chunks and how often each occurs.

    Work is done per distinct chunk, weighted by its count. Pair counts are kept up to date
    incrementally: a merge only revisits the chunks that contain the merged pair (``where``)
    and adjusts the counts of the pairs those chunks gain or lose. A heap finds the most
    frequent pair; entries whose count has since changed are skipped when they surface.
    Ties go to the smallest pair of ids, so training is deterministic.
    """
    words = [list(_utf8(chunk)) for chunk in chunk_counts]
    weights = list(chunk_counts.values())
    pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for index, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += weights[index]
            where[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges:
        while heap and pair_counts.get(heap[0][1], 0) != -heap[0][0]:
            heapq.heappop(heap)  # stale entry
        if not heap or -heap[0][0] < 2:
            break  # no pair occurs twice: further merges would not shorten anything
        pair = heapq.heappop(heap)[1]
        new_id = 256 + len(merges)
        merges.append(pair)
        changed = set()
        for index in sorted(where.pop(pair)):
            old = words[index]
            new = _merge_pair(old, pair, new_id)
            if len(new) == len(old):
                continue  # the chunk lost this pair to an earlier merge
            delta = Counter(zip(new, new[1:]))
            delta.subtract(Counter(zip(old, old[1:])))
            for changed_pair, difference in delta.items():
                if difference:
                    pair_counts[changed_pair] += difference * weights[index]
                    changed.add(changed_pair)
                    if difference > 0:
                        where[changed_pair].add(index)
            words[index] = new
        for changed_pair in changed:
            count = pair_counts[changed_pair]
            if count > 0:
                heapq.heappush(heap, (-count, changed_pair))
            else:
                del pair_counts[changed_pair]
    return merges


class BPETokenizer:
    """Byte-level byte-pair encoding.

    Ids 0 .. 255 are the byte values; id ``256 + k`` is the token made by merge ``k``, the pair
    ``merges[k]`` of existing ids joined into one. To encode, the text is split into chunks
    (``CHUNK_PATTERN``: word-character runs, whitespace runs, single other characters), each
    chunk becomes its UTF-8 bytes, and the merges are applied in the order they were learned.
    Chunks are cached, so a repeated identifier is encoded once.

    Every string round-trips exactly; no input is ever unknown. ``decode`` of an arbitrary id
    sequence (say, sampled from a model) may produce invalid UTF-8: those bytes are shown as
    the replacement character U+FFFD instead of raising.
    """

    _CACHE_LIMIT = 200_000  # distinct chunks kept; the cache is cleared beyond this

    def __init__(self, merges: Iterable[tuple[int, int]]) -> None:
        self._merges: list[tuple[int, int]] = []
        self._token_bytes = [bytes([value]) for value in range(256)]
        for k, pair in enumerate(merges):
            known = 256 + k
            if (len(pair) != 2 or any(isinstance(i, bool) or not isinstance(i, numbers.Integral)
                                      or not 0 <= i < known for i in pair)):
                raise ValueError(
                    f"merges[{k}] must be a pair of existing ids in 0 .. {known - 1}, got {pair!r}"
                )
            first, second = int(pair[0]), int(pair[1])
            self._merges.append((first, second))
            self._token_bytes.append(self._token_bytes[first] + self._token_bytes[second])
        self._rank = {pair: k for k, pair in enumerate(self._merges)}
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges from ``text``.

        Training stops early, with a smaller vocabulary, when no pair of adjacent tokens occurs
        at least twice any more (a tiny text): check ``vocab_size`` on the result.
        """
        text = _check_text(text)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        if vocab_size < 256:
            raise ValueError(
                f"vocab_size must be >= 256 (the byte values every byte-level vocabulary "
                f"starts from), got {vocab_size}"
            )
        chunk_counts = Counter(CHUNK_PATTERN.findall(text))
        return cls(_learn_merges(chunk_counts, int(vocab_size) - 256))

    @property
    def vocab_size(self) -> int:
        return len(self._token_bytes)

    @property
    def merges(self) -> list[tuple[int, int]]:
        """Every merge, in the order it was learned (a copy)."""
        return list(self._merges)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes that id ``token_id`` stands for."""
        (token_id,) = _as_id_list([token_id])
        _check_ids_in_range([token_id], self.vocab_size)
        return self._token_bytes[token_id]

    def token_str(self, token_id: int) -> str:
        """The token as readable text; a partial UTF-8 character shows as U+FFFD."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = list(_utf8(chunk))
        rank = self._rank
        no_merge = len(self._merges)
        # Applying all merges in order is the same as repeatedly applying the earliest-learned
        # merge present in the chunk, which skips the many merges that do not occur in it.
        while len(ids) >= 2:
            best = min(zip(ids, ids[1:]), key=lambda pair: rank.get(pair, no_merge))
            k = rank.get(best)
            if k is None:
                break
            ids = _merge_pair(ids, best, 256 + k)
        return ids

    def encode(self, text: str) -> list[int]:
        text = _check_text(text)
        cache = self._cache
        out: list[int] = []
        for chunk in CHUNK_PATTERN.findall(text):
            ids = cache.get(chunk)
            if ids is None:
                if len(cache) >= self._CACHE_LIMIT:
                    cache.clear()
                ids = cache[chunk] = self._encode_chunk(chunk)
            out.extend(ids)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        ids = _as_id_list(ids)
        _check_ids_in_range(ids, self.vocab_size)
        return b"".join(self._token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"
