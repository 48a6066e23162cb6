"""A small synthetic English whose sentences test subject-verb agreement at a chosen distance.

Every sentence has the shape::

    the [adjective] SUBJECT <filler: exactly `distance` words> VERB the [adjective] OBJECT .

The main VERB must agree in number with the SUBJECT noun ("the dog ... sees", "the dogs ...
see"). The filler is made of three kinds of pieces, in random order and mix:

- relative clauses, ``that the [adjective..] NOUN VERB`` ("that the cats chase");
- prepositional phrases, ``PREPOSITION the [adjective..] NOUN`` ("near the old birds");
- at most two adverbs, just before the main verb ("often", "never").

The nouns inside the filler are *attractors*: each is singular or plural at random,
independently of the subject, and a relative clause's own verb agrees with its own noun. So the
nearest noun and the nearest verb before the main verb often carry the wrong number, and a model
can only get the agreement right by carrying the subject's number across the whole filler. This
is the test that Linzen, Dupoux & Goldberg (2016) ran on real English.

The knob ``distance`` is the number of words strictly between the subject noun and its verb:
``verb_index - subject_index - 1``. Every word of the filler counts (``that``, ``the``,
adjectives, nouns, the clauses' verbs, prepositions, adverbs); words before the subject or
after the verb do not. Any ``distance >= 0`` can be filled exactly.

Sentences are lowercase; words are separated by single spaces and the final ``"."`` is a word
of its own, so ``text == " ".join(words)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from seqlib.data._checks import check_int

# (singular, plural) pairs, indexed by ``plural`` (False -> 0, True -> 1). Verbs are
# transitive so that a relative clause can leave out its object ("the dog that the cats
# chase": the dog is what they chase).
NOUNS = (
    ("dog", "dogs"), ("cat", "cats"), ("bird", "birds"), ("horse", "horses"),
    ("fox", "foxes"), ("wolf", "wolves"), ("mouse", "mice"), ("child", "children"),
    ("teacher", "teachers"), ("farmer", "farmers"), ("doctor", "doctors"),
    ("pilot", "pilots"), ("robot", "robots"), ("king", "kings"), ("queen", "queens"),
    ("student", "students"),
)
VERBS = (
    ("sees", "see"), ("chases", "chase"), ("likes", "like"), ("follows", "follow"),
    ("knows", "know"), ("helps", "help"), ("watches", "watch"), ("finds", "find"),
    ("admires", "admire"), ("visits", "visit"), ("pushes", "push"), ("fears", "fear"),
)
ADJECTIVES = ("big", "small", "old", "young", "happy", "quiet", "clever", "brave", "lazy")
PREPOSITIONS = ("near", "behind", "beside", "with", "above", "under")
ADVERBS = ("often", "rarely", "never", "always", "quietly", "still")

_MAX_ADVERBS = 2
_MAX_ADJECTIVES = 2  # per noun phrase inside the filler
_PHRASE_MIN = 3  # "near the dog"; a relative clause needs 4: "that the dog sees"
_PHRASE_MAX = 4 + _MAX_ADJECTIVES


@dataclass(frozen=True)
class AgreementSentence:
    """One sentence: its text, its words, where the subject noun and its verb are, and whether
    the subject is plural (``words[verb_index]`` then has the plural form)."""

    text: str
    words: tuple[str, ...]
    subject_index: int
    verb_index: int
    plural: bool

    @property
    def distance(self) -> int:
        """Number of words strictly between the subject noun and its verb."""
        return self.verb_index - self.subject_index - 1


def agreement_vocabulary() -> tuple[str, ...]:
    """Every word a sentence can contain, sorted (handy for a word-level vocabulary)."""
    words = {"the", "that", "."} | set(ADJECTIVES) | set(PREPOSITIONS) | set(ADVERBS)
    for pair in NOUNS + VERBS:
        words.update(pair)
    return tuple(sorted(words))


def _noun_phrase(rng: random.Random, n_adjectives: int) -> tuple[list[str], bool]:
    """``the [adjectives] noun`` with a random number; returns the words and ``plural``."""
    plural = rng.random() < 0.5
    noun = rng.choice(NOUNS)[plural]
    return ["the", *rng.sample(ADJECTIVES, n_adjectives), noun], plural


def _filler_phrase(rng: random.Random, size: int) -> list[str]:
    """A relative clause or a prepositional phrase of exactly ``size`` words (3 to 6)."""
    clause_fits = size >= 4
    phrase_fits = size <= 3 + _MAX_ADJECTIVES
    if clause_fits and (not phrase_fits or rng.random() < 0.5):
        words, plural = _noun_phrase(rng, size - 4)
        return ["that", *words, rng.choice(VERBS)[plural]]
    words, _ = _noun_phrase(rng, size - 3)
    return [rng.choice(PREPOSITIONS), *words]


def _phrase_sizes(rng: random.Random, total: int) -> list[int]:
    """Random sizes in [3, 6] that add up to ``total`` (0 or >= 3)."""
    sizes = []
    while total > 0:
        # Leave a remainder that is 0 or >= 3, so that it can be filled in turn.
        allowed = [s for s in range(_PHRASE_MIN, min(total, _PHRASE_MAX) + 1)
                   if total - s == 0 or total - s >= _PHRASE_MIN]
        size = rng.choice(allowed)
        sizes.append(size)
        total -= size
    return sizes


def _filler(rng: random.Random, distance: int) -> list[str]:
    """Exactly ``distance`` words to put between the subject and its verb."""
    # Adverbs fill the lengths (1 and 2) that phrases cannot; a remainder of 1 or 2 words
    # cannot be filled by phrases, so those adverb counts are excluded.
    adverb_counts = [a for a in range(min(distance, _MAX_ADVERBS) + 1)
                     if distance - a == 0 or distance - a >= _PHRASE_MIN]
    n_adverbs = rng.choice(adverb_counts)
    words = []
    for size in _phrase_sizes(rng, distance - n_adverbs):
        words += _filler_phrase(rng, size)
    return words + rng.sample(ADVERBS, n_adverbs)


def _sentence(rng: random.Random, distance: int) -> AgreementSentence:
    subject, plural = _noun_phrase(rng, rng.randint(0, 1))
    filler = _filler(rng, distance)
    verb = rng.choice(VERBS)[plural]
    obj, _ = _noun_phrase(rng, rng.randint(0, 1))
    words = (*subject, *filler, verb, *obj, ".")
    subject_index = len(subject) - 1
    return AgreementSentence(
        text=" ".join(words),
        words=words,
        subject_index=subject_index,
        verb_index=subject_index + distance + 1,
        plural=plural,
    )


def agreement_sentences(n: int, distance: int, seed: int = 0) -> list[AgreementSentence]:
    """``n`` random sentences whose subject and verb are ``distance`` words apart.

    Subject number, attractor numbers, words and filler structure are drawn with a private
    ``random.Random(seed)``: the same arguments always give the same sentences.

    >>> s = agreement_sentences(1, distance=4, seed=0)[0]
    >>> s.verb_index - s.subject_index - 1
    4
    """
    n = check_int("n", n, 1)
    distance = check_int("distance", distance, 0)
    rng = random.Random(check_int("seed", seed, 0))
    return [_sentence(rng, distance) for _ in range(n)]


def mismatched_twin(sentence: AgreementSentence) -> AgreementSentence:
    """The same sentence with the main verb's number flipped, so that it no longer agrees.

    Everything else is unchanged, including ``plural`` (still the subject's number). A
    language model that has learned agreement should give the original a higher probability
    than its twin: the two differ in exactly one word.
    """
    if not isinstance(sentence, AgreementSentence):
        raise TypeError(f"sentence must be an AgreementSentence, got {type(sentence).__name__}")
    forms = {form: pair for pair in VERBS for form in pair}
    verb = sentence.words[sentence.verb_index]
    if verb not in forms:
        raise ValueError(f"sentence.words[{sentence.verb_index}] = {verb!r} is not a known verb")
    singular, plural = forms[verb]
    flipped = singular if verb == plural else plural
    words = list(sentence.words)
    words[sentence.verb_index] = flipped
    return replace(sentence, words=tuple(words), text=" ".join(words))
