"""The graders are proven: each check passes a correct solution and rejects plausible wrong ones
(mutants) with a message that says what was expected and where the answer went wrong.

The correct solutions here are written independently of the graders' references, and the
mutants are the mistakes students make: off-by-one, transposed counts, duplicates counted once,
a missing max-subtraction, the sum instead of the mean, log base 2, wrong dtype or shape.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from grader_proofs import (
    assert_check_passes,
    assert_check_rejects,
    assert_stub_reads_as_not_attempted,
)

from seqlib.grading import (
    CHECKS,
    Case,
    Check,
    check_bigram_counts,
    check_bigram_probabilities,
    check_cross_entropy,
    check_one_hot,
    find_mismatch,
    first_difference,
    run_check,
)

# ---------------------------------------------------------------------------------------------
# Correct solutions, one per check


def one_hot(ids, vocab_size):
    return F.one_hot(ids, vocab_size).float()


def bigram_counts(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)
    for current, following in zip(ids[:-1].tolist(), ids[1:].tolist()):
        counts[current, following] += 1
    return counts


def bigram_probabilities(counts, alpha):
    smoothed = counts.to(torch.float32) + alpha
    return smoothed / smoothed.sum(dim=-1, keepdim=True)


def cross_entropy(logits, targets):
    flat = logits.reshape(-1, logits.shape[-1])
    shifted = flat - flat.max(dim=1, keepdim=True).values
    log_norm = shifted.exp().sum(dim=1).log()
    picked = shifted[torch.arange(len(flat)), targets.reshape(-1)]
    return (log_norm - picked).mean()


SOLUTIONS = {
    check_one_hot: one_hot,
    check_bigram_counts: bigram_counts,
    check_bigram_probabilities: bigram_probabilities,
    check_cross_entropy: cross_entropy,
}

# ---------------------------------------------------------------------------------------------
# Mutants: (check, wrong function, words the failure message must contain)


def counts_transposed(ids, v):
    return bigram_counts(ids, v).T


def counts_without_duplicates(ids, v):
    counts = torch.zeros(v, v, dtype=torch.long)
    counts[ids[:-1], ids[1:]] += 1  # fancy-index assignment drops repeated pairs
    return counts


def counts_wrapping_around(ids, v):
    return bigram_counts(torch.cat([ids, ids[:1]]), v)


def counts_missing_last_pair(ids, v):
    return bigram_counts(ids[:-1], v)


def counts_as_floats(ids, v):
    return bigram_counts(ids, v).float()


def probabilities_by_column(counts, alpha):
    smoothed = counts.float() + alpha
    return smoothed / smoothed.sum(dim=0, keepdim=True)


def probabilities_broadcast_bug(counts, alpha):
    smoothed = counts.float() + alpha
    return smoothed / smoothed.sum(dim=1)


def probabilities_alpha_once(counts, alpha):
    return (counts.float() + alpha) / (counts.sum(dim=1, keepdim=True) + alpha)


def probabilities_integer_division(counts, alpha):
    return (counts + 1) // (counts.sum(dim=1, keepdim=True) + counts.shape[1])


def cross_entropy_no_max(logits, targets):
    log_probs = logits - logits.exp().sum(-1, keepdim=True).log()
    return -log_probs.gather(-1, targets.unsqueeze(-1)).mean()


def cross_entropy_log_of_softmax(logits, targets):
    probs = logits.softmax(-1)
    return -probs.log().gather(-1, targets.unsqueeze(-1)).mean()


def cross_entropy_sum(logits, targets):
    return cross_entropy(logits, targets) * targets.numel()


def cross_entropy_bits(logits, targets):
    return cross_entropy(logits, targets) / math.log(2)


def cross_entropy_library(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def cross_entropy_detached(logits, targets):
    return cross_entropy(logits, targets).detach()


def cross_entropy_float32(logits, targets):
    return cross_entropy(logits.float(), targets)


def cross_entropy_only_2d(logits, targets):
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    log_probs = shifted - shifted.exp().sum(-1, keepdim=True).log()
    return -log_probs[torch.arange(len(targets)), targets].mean()


MUTANTS = [
    (check_one_hot, lambda ids, v: F.one_hot(ids, v), ["dtype int64 instead of float32",
                                                       ".float()"]),
    (check_one_hot, lambda ids, v: one_hot(ids, v).transpose(-1, -2), ["shape", "swapped"]),
    (check_one_hot, lambda ids, v: one_hot((ids + 1) % v, v), ["values differ at index",
                                                               "expected 1, got 0"]),
    (check_one_hot, lambda ids, v: one_hot(ids, v).reshape(-1, v), ["shape (6, 4)",
                                                                    "ids' own axes"]),
    (check_bigram_counts, counts_transposed, ["at index (0, 1)", "transposed"]),
    (check_bigram_counts, counts_without_duplicates, ["expected 2, got 1", "accumulate"]),
    (check_bigram_counts, counts_wrapping_around, ["at index (1, 0)", "wrap around"]),
    (check_bigram_counts, counts_missing_last_pair, ["expected 2, got 1", "l - 1 pairs"]),
    (check_bigram_counts, counts_as_floats, ["dtype float32 instead of int64", "torch.long"]),
    (check_bigram_probabilities, probabilities_by_column, ["at index (0, 0)",
                                                           "normalised columns"]),
    (check_bigram_probabilities, probabilities_broadcast_bug, ["values differ", "COLUMN"]),
    (check_bigram_probabilities, probabilities_alpha_once, ["values differ",
                                                            "alpha * vocab_size"]),
    (check_bigram_probabilities, probabilities_integer_division, ["floating-point dtype",
                                                                  "integer division"]),
    (check_cross_entropy, cross_entropy_no_max, ["case 4 of 6", "got inf", "row maximum"]),
    (check_cross_entropy, cross_entropy_log_of_softmax, ["got inf", "row maximum"]),
    (check_cross_entropy, cross_entropy_sum, ["expected 1.87", "SUM over positions"]),
    (check_cross_entropy, cross_entropy_bits, ["expected 1.74", "nats"]),
    (check_cross_entropy, cross_entropy_library, ["calls torch.nn.functional.cross_entropy"]),
    (check_cross_entropy, cross_entropy_detached, ["case 6 of 6", "no gradient flows"]),
    (check_cross_entropy, cross_entropy_float32, ["dtype float32 instead of float64",
                                                  "logits' dtype"]),
    (check_cross_entropy, cross_entropy_only_2d, ["case 3 of 6", "raised IndexError"]),
]


# Exercise 1's checks are proven here; every other exercise's in tests/test_graders_exNN.py.
EX01_CHECKS = [check for check in CHECKS if check.__module__.endswith(".ex01")]


def test_every_check_of_every_exercise_has_its_proofs():
    tests = Path(__file__).resolve().parent
    for check in CHECKS:
        number = check.__module__.rsplit(".", 1)[-1]  # "ex01", "ex02", ...
        proofs = tests / ("test_graders.py" if number == "ex01" else f"test_graders_{number}.py")
        assert proofs.exists(), f"{check.__name__}: no {proofs.name} proves it rejects mutants"
        assert check.__name__ in proofs.read_text(), f"{proofs.name} never uses {check.__name__}"


def test_every_check_has_a_solution_and_two_mutants():
    assert set(SOLUTIONS) == set(EX01_CHECKS)
    for check in EX01_CHECKS:
        assert sum(m[0] is check for m in MUTANTS) >= 2, f"{check.__name__}: too few mutants"


@pytest.mark.parametrize("check", EX01_CHECKS, ids=lambda c: c.__name__)
def test_check_passes_a_correct_solution(check, capsys):
    assert_check_passes(check, SOLUTIONS[check], capsys)


@pytest.mark.parametrize("check, mutant, words", MUTANTS,
                         ids=[f"{m[0].__name__}-{i}" for i, m in enumerate(MUTANTS)])
def test_check_rejects_a_wrong_solution(check, mutant, words, capsys):
    assert_check_rejects(check, mutant, words, capsys)


def test_value_failures_show_expected_and_returned_values():
    with pytest.raises(AssertionError) as failure:
        check_bigram_counts(counts_transposed)
    message = str(failure.value)
    assert "expected: int64 tensor of shape (3, 3)" in message
    assert "got:      int64 tensor of shape (3, 3)" in message
    assert "6 of 9 entries differ" in message


@pytest.mark.parametrize("check", EX01_CHECKS, ids=lambda c: c.__name__)
def test_not_implemented_reads_as_not_attempted(check):
    assert_stub_reads_as_not_attempted(check)


def test_other_exceptions_are_reported_with_their_type_and_chained():
    def broken(ids, vocab_size):
        return ids.reshape(vocab_size, -1)

    with pytest.raises(AssertionError, match=r"case 1 of 5 .*raised RuntimeError") as failure:
        check_one_hot(broken)
    assert isinstance(failure.value.__cause__, RuntimeError)


def test_returning_nothing_or_numpy_is_explained():
    with pytest.raises(AssertionError, match="returned None: is a `return` statement missing"):
        check_bigram_counts(lambda ids, v: None)
    with pytest.raises(AssertionError, match="returned a numpy .* torch.from_numpy"):
        check_bigram_counts(lambda ids, v: bigram_counts(ids, v).numpy())


def test_changing_an_input_in_place_is_reported():
    def sorts_in_place(counts, alpha):
        counts += 0 if alpha else 1  # mutates the caller's tensor when alpha == 0
        return bigram_probabilities(counts, alpha)

    with pytest.raises(AssertionError, match="changed its input `counts` in place"):
        check_bigram_probabilities(sorts_in_place)


def test_passing_something_else_than_a_function_is_explained():
    with pytest.raises(AssertionError, match=r"needs your function.*check_one_hot\(one_hot\)"):
        check_one_hot(torch.zeros(3))


def test_swallowed_forbidden_call_is_still_caught():
    def hides_library_call(logits, targets):
        try:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        except Exception:
            return cross_entropy(logits, targets)

    with pytest.raises(AssertionError, match="calls torch.nn.functional.cross_entropy"):
        check_cross_entropy(hides_library_call)


def test_checks_leave_global_state_alone():
    # checks build their own generators: the student's random stream is not disturbed
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    check_cross_entropy(cross_entropy)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------------------------
# The generic helpers


def test_first_difference_finds_the_first_index_in_row_major_order():
    expected = np.zeros((3, 4))
    got = expected.copy()
    got[2, 0] = got[1, 3] = 5.0
    assert first_difference(expected, got) == ((1, 3), 2)
    assert first_difference(expected, expected.copy()) is None
    assert first_difference(expected, expected + 1e-9, atol=1e-6) is None


def test_first_difference_treats_nan_as_equal_only_to_nan():
    expected = np.array([1.0, np.nan, np.inf])
    assert first_difference(expected, expected.copy()) is None
    assert first_difference(expected, np.array([1.0, 0.0, np.inf])) == ((1,), 1)
    assert first_difference(expected, np.array([1.0, np.nan, -np.inf])) == ((2,), 1)


def test_find_mismatch_on_tensors_arrays_and_numbers():
    a = torch.arange(6.0).reshape(2, 3)
    assert find_mismatch(a, a.clone()) is None
    assert "shape (3, 2) instead of (2, 3) (the axes look swapped)" in find_mismatch(
        a, a.T.contiguous()).summary
    assert find_mismatch(a, a.double()).summary == "dtype float64 instead of float32"
    assert find_mismatch(a, a.double(), dtype="floating") is None
    assert "at index (1, 2): expected 5, got 7" in find_mismatch(
        a, torch.tensor([[0.0, 1, 2], [3, 4, 7]])).summary
    assert find_mismatch(np.ones(3), np.ones(3) + 1e-12, atol=1e-9) is None
    assert "expected a torch.Tensor" in find_mismatch(a, a.numpy()).summary
    assert find_mismatch(2.5, 2.5 + 1e-9, atol=1e-6) is None
    assert find_mismatch(2.5, torch.tensor(2.5)) is None
    assert find_mismatch(2.5, 3.0).summary == "expected 2.5, got 3"
    assert "expected a number" in find_mismatch(2.5, "2.5").summary
    with pytest.raises(ValueError, match="dtype must be"):
        find_mismatch(a, a, dtype="strict")


def test_run_check_stops_at_the_first_failing_case_and_names_it():
    cases = [Case("zero", {"x": torch.tensor(0.0)}), Case("two", {"x": torch.tensor(2.0)}),
             Case("three", {"x": torch.tensor(3.0)})]
    check = Check(title="double", reference=lambda x: 2 * x, cases=cases, hint="times two")
    with pytest.raises(AssertionError) as failure:
        run_check(check, lambda x: x * x)  # right at 0 and 2, wrong at 3
    first_line = str(failure.value).splitlines()[0]
    assert first_line == "double, case 3 of 3 (three): values differ: expected 6, got 9"
