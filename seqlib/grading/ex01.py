"""Checks for exercise 1 (sequences, tokens, the bigram language model, cross-entropy).

Each ``check_*`` takes the student's function, runs it on seeded inputs built here (never the
student's own data), and compares it with a reference written in this module. Shapes use the
book's letters: l sequence length, b batch, v vocabulary size.

- `check_one_hot`: ``one_hot(ids, vocab_size)`` -> float32 tensor of shape ids.shape + (v,)
- `check_bigram_counts`: ``bigram_counts(ids, vocab_size)`` -> int64 (v, v) counts,
  row = current token, column = next token
- `check_bigram_probabilities`: ``bigram_probabilities(counts, alpha)`` -> add-alpha smoothed
  next-token distributions, one per row
- `check_cross_entropy`: ``cross_entropy(logits, targets)`` -> mean negative log-likelihood in
  nats, written from scratch and stable for large logits
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .core import Case, Check, Hint, WrongAnswer, run_check

__all__ = [
    "check_bigram_counts",
    "check_bigram_probabilities",
    "check_cross_entropy",
    "check_one_hot",
]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    """True when b has a's shape and values (used by hints to recognise a known mistake)."""
    return a.shape == b.shape and torch.allclose(b.double(), a.double(), rtol=rtol, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# one-hot vectors


def _one_hot_reference(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    encoded = torch.zeros(*ids.shape, vocab_size, dtype=torch.float32)
    return encoded.scatter_(-1, ids.unsqueeze(-1), 1.0)


def _one_hot_cases() -> list[Case]:
    g = _generator(101)
    return [
        Case("a sequence of 6 ids, vocabulary of 7",
             {"ids": torch.randint(0, 7, (6,), generator=g), "vocab_size": 7}),
        Case("every id of a vocabulary of 5, in reverse order",
             {"ids": torch.arange(4, -1, -1), "vocab_size": 5}),
        Case("a batch of 2 sequences of 3 ids",
             {"ids": torch.randint(0, 4, (2, 3), generator=g), "vocab_size": 4}),
        Case("an empty sequence", {"ids": torch.zeros(0, dtype=torch.long), "vocab_size": 3}),
        Case("a vocabulary of a single token",
             {"ids": torch.zeros(4, dtype=torch.long), "vocab_size": 1}),
    ]


_ONE_HOT_HINTS = (
    Hint("F.one_hot returns int64; a network's first layer multiplies floats, so convert"
         " with .float()", lambda e, g, a: g.dtype == torch.int64 and _same(e, g)),
    Hint("the one-hot axis (size vocab_size) must be the last one, added after ids' own axes",
         lambda e, g, a: g.shape != e.shape and sorted(g.shape) == sorted(e.shape)),
    Hint("keep ids' own axes: the result has shape ids.shape + (vocab_size,), one more axis"
         " than ids", lambda e, g, a: g.ndim != e.ndim),
    Hint("each row must hold a single 1, in the column given by the id itself (ids start at 0)",
         lambda e, g, a: g.shape == e.shape and torch.equal(g.sum(-1), e.sum(-1))),
)


def check_one_hot(one_hot) -> None:
    """Check ``one_hot(ids, vocab_size)``: float32, shape ids.shape + (vocab_size,)."""
    run_check(Check(
        title="one-hot", reference=_one_hot_reference, cases=_one_hot_cases(),
        hint="out[..., t, i] is 1.0 when ids[..., t] == i, else 0.0; dtype float32",
        hints=_ONE_HOT_HINTS, example="check_one_hot(one_hot)"), one_hot)


# ---------------------------------------------------------------------------------------------
# bigram counts


def _bigram_counts_reference(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    pair_codes = ids[:-1] * vocab_size + ids[1:]  # one code per (current, next) pair
    counts = torch.bincount(pair_codes, minlength=vocab_size * vocab_size)
    return counts.view(vocab_size, vocab_size)


def _bigram_counts_cases() -> list[Case]:
    g = _generator(202)
    return [
        Case("ids [0, 1, 1, 2, 0, 1], vocabulary of 3",
             {"ids": torch.tensor([0, 1, 1, 2, 0, 1]), "vocab_size": 3}),
        Case("a repeated token [2, 2, 2, 2], vocabulary of 3",
             {"ids": torch.tensor([2, 2, 2, 2]), "vocab_size": 3}),
        Case("a single token: no pairs at all",
             {"ids": torch.tensor([3]), "vocab_size": 5}),
        Case("an empty sequence", {"ids": torch.zeros(0, dtype=torch.long), "vocab_size": 4}),
        Case("300 random ids, vocabulary of 10",
             {"ids": torch.randint(0, 10, (300,), generator=g), "vocab_size": 10}),
    ]


_COUNT_HINTS = (
    Hint("counts are whole numbers: create the matrix with dtype=torch.long",
         lambda e, g, a: g.dtype != torch.long),
    Hint("your matrix looks transposed: row = current token ids[t], column = next token"
         " ids[t + 1]", lambda e, g, a: _same(e.T, g)),
    Hint("pairs are missing: a sequence of length l has l - 1 pairs (ids[t], ids[t + 1]), and"
         " a pair that occurs several times counts each time (`counts[a, b] += 1` with index"
         " tensors adds 1 once per distinct pair; use index_put_(..., accumulate=True))",
         lambda e, g, a: g.shape == e.shape and g.sum() < e.sum()),
    Hint("too many pairs: there are len(ids) - 1 pairs (ids[t], ids[t + 1]); the last token"
         " has no successor and the sequence does not wrap around",
         lambda e, g, a: g.shape == e.shape and g.sum() > e.sum()),
)


def check_bigram_counts(bigram_counts) -> None:
    """Check ``bigram_counts(ids, vocab_size)``: int64 (v, v), counts[i, j] = #{t: ids[t] = i,
    ids[t + 1] = j}."""
    run_check(Check(
        title="bigram counts", reference=_bigram_counts_reference,
        cases=_bigram_counts_cases(),
        hint="counts[i, j] = number of positions t with ids[t] == i and ids[t + 1] == j",
        hints=_COUNT_HINTS, example="check_bigram_counts(bigram_counts)"), bigram_counts)


# ---------------------------------------------------------------------------------------------
# smoothed bigram probabilities


def _bigram_probabilities_reference(counts: torch.Tensor, alpha: float) -> torch.Tensor:
    smoothed = counts.double() + alpha
    return smoothed / smoothed.sum(dim=1, keepdim=True)


def _bigram_probabilities_cases() -> list[Case]:
    g = _generator(303)
    return [
        Case("small counts, alpha = 1",
             {"counts": torch.tensor([[0, 2, 1], [3, 0, 0], [1, 1, 4]]), "alpha": 1.0}),
        Case("alpha = 0 (maximum likelihood), every row seen",
             {"counts": torch.tensor([[5, 1], [2, 6]]), "alpha": 0.0}),
        Case("alpha = 0.5 and a token never seen as the current one (row of zeros)",
             {"counts": torch.tensor([[4, 0, 1, 0], [0, 0, 0, 0], [1, 2, 0, 7], [0, 3, 3, 0]]),
              "alpha": 0.5}),
        Case("random counts, vocabulary of 12, alpha = 0.1",
             {"counts": torch.randint(0, 50, (12, 12), generator=g), "alpha": 0.1}),
        Case("a vocabulary of a single token", {"counts": torch.tensor([[9]]), "alpha": 1.0}),
    ]


def _sums_to_one(x: torch.Tensor, dim: int) -> bool:
    sums = x.double().sum(dim)
    return torch.allclose(sums, torch.ones_like(sums))


def _divided_columns_by_row_sums(got: torch.Tensor, args: dict) -> bool:
    smoothed = args["counts"].double() + args["alpha"]
    return _same(smoothed / smoothed.sum(dim=1), got)  # (v, v) / (v,) broadcasts over rows


_PROBABILITY_HINTS = (
    Hint("integer division truncates: convert the counts to float before dividing",
         lambda e, g, a: not g.is_floating_point()),
    Hint("dividing a (v, v) matrix by a (v,) vector of row sums divides each COLUMN j by the"
         " sum of row j; keep the axis with sum(dim=1, keepdim=True)",
         lambda e, g, a: _divided_columns_by_row_sums(g, a)),
    Hint("you normalised columns; each ROW i is the distribution of the token after i, so"
         " divide by row sums", lambda e, g, a: _sums_to_one(g, 0) and not _sums_to_one(g, 1)),
    Hint("rows must sum to 1: the denominator is the row's count plus alpha * vocab_size",
         lambda e, g, a: not _sums_to_one(g, 1)),
)


def check_bigram_probabilities(bigram_probabilities) -> None:
    """Check ``bigram_probabilities(counts, alpha)``: P[i, j] = (counts[i, j] + alpha) /
    (sum_k counts[i, k] + alpha * v), any floating dtype."""
    run_check(Check(
        title="bigram probabilities", reference=_bigram_probabilities_reference,
        cases=_bigram_probabilities_cases(), rtol=1e-5, atol=1e-7, dtype="floating",
        hint="P[i, j] = (counts[i, j] + alpha) / (sum over k of counts[i, k] + alpha * v)",
        hints=_PROBABILITY_HINTS, example="check_bigram_probabilities(bigram_probabilities)"),
        bigram_probabilities)


# ---------------------------------------------------------------------------------------------
# cross-entropy from scratch

_LIBRARY_LOSSES = {
    F.cross_entropy: "torch.nn.functional.cross_entropy",
    F.nll_loss: "torch.nn.functional.nll_loss",
    F.log_softmax: "torch.nn.functional.log_softmax",
    torch.log_softmax: "torch.log_softmax",
    torch.Tensor.log_softmax: "Tensor.log_softmax",
    torch.special.log_softmax: "torch.special.log_softmax",
    torch.logsumexp: "torch.logsumexp",
    torch.Tensor.logsumexp: "Tensor.logsumexp",
    torch.special.logsumexp: "torch.special.logsumexp",
}


def _cross_entropy_reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    wide = logits.double()
    picked = wide.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (torch.logsumexp(wide, dim=-1) - picked).mean().to(logits.dtype)


def _logits_gradient(function, args) -> torch.Tensor:
    """Probe: the gradient of the loss with respect to the logits."""
    logits = args["logits"].clone().requires_grad_(True)
    loss = function(logits, args["targets"])
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        raise WrongAnswer("no gradient flows from the loss back to the logits (avoid .item(),"
                          " .detach(), numpy and torch.no_grad inside the function)")
    loss.backward()
    return logits.grad


def _cross_entropy_cases() -> list[Case]:
    g = _generator(404)

    def logits(*shape, scale=1.0, dtype=torch.float32):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    big = logits(4, 6, scale=1000.0)
    return [
        Case("one position, 3 classes",
             {"logits": torch.tensor([[2.0, -1.0, 0.5]]), "targets": torch.tensor([2])}),
        Case("8 positions, 5 classes",
             {"logits": logits(8, 5), "targets": torch.randint(0, 5, (8,), generator=g)}),
        Case("a batch of 2 sequences of 4 positions, 6 classes: the mean over all 8",
             {"logits": logits(2, 4, 6), "targets": torch.randint(0, 6, (2, 4), generator=g)}),
        Case("large logits, about +-1000",
             {"logits": big, "targets": big.argmin(dim=-1)}),
        Case("float64 logits: the result keeps their dtype",
             {"logits": logits(5, 3, dtype=torch.float64),
              "targets": torch.randint(0, 3, (5,), generator=g)}),
        Case("the gradient with respect to the logits",
             {"logits": logits(3, 4, dtype=torch.float64),
              "targets": torch.tensor([0, 3, 1])}, probe=_logits_gradient),
    ]


def _is_finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def _ratio_is_whole(expected: torch.Tensor, got: torch.Tensor) -> bool:
    ratio = got.item() / expected.item()
    return ratio > 1.5 and abs(ratio - round(ratio)) < 1e-4


_CROSS_ENTROPY_HINTS = (
    Hint("return the loss in the logits' dtype (compute in it, or convert back with .to)",
         lambda e, g, a: g.dtype != e.dtype),
    Hint("exp(1000) overflows and a probability that underflows to 0 has log -inf: compute"
         " log-probabilities directly as x - m - log(sum(exp(x - m))) with m the row maximum",
         lambda e, g, a: _is_finite(e) and not _is_finite(g)),
    Hint("this looks like the SUM over positions; cross-entropy here is the MEAN",
         lambda e, g, a: e.numel() == 1 and _ratio_is_whole(e, g)),
    Hint("this is in bits (log base 2); the book measures cross-entropy in nats (natural log)",
         lambda e, g, a: e.numel() == 1 and math.isclose(g.item(), e.item() / math.log(2),
                                                         rel_tol=1e-4)),
)


def check_cross_entropy(cross_entropy) -> None:
    """Check ``cross_entropy(logits, targets)``: logits (..., v), targets (...) -> 0-dim tensor,
    the mean of -log softmax(logits)[target] in nats, computed without library losses."""
    run_check(Check(
        title="cross-entropy", reference=_cross_entropy_reference,
        cases=_cross_entropy_cases(), rtol=1e-5, atol=1e-6,
        hint="loss = mean over positions of logsumexp(logits) - logits[target], with the"
             " row maximum subtracted before exp; accept any number of leading axes",
        hints=_CROSS_ENTROPY_HINTS, forbidden=_LIBRARY_LOSSES,
        example="check_cross_entropy(cross_entropy)"), cross_entropy)
