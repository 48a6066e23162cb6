"""The graders of exercise 2 are proven: each check passes correct solutions (written here
independently of the graders' references, two per check where there are two natural ways) and
rejects the plausible wrong ones with a message that names the case and the likely mistake.

Mutants: an off-by-one in the receptive field, k·r instead of (k-1)·r, forgotten dilations;
padding on the wrong side (the output reads the future), "same" padding, padding k-1 instead
of (k-1)·dilation, a flipped kernel (true convolution), a missing bias, a library convolution;
an off-by-one or ignored kernel size in the number of layers; a step that mutates its buffer,
ignores the dilation, puts the newest input at the wrong end, or returns the wrong shapes.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from grader_proofs import (
    assert_check_passes,
    assert_check_rejects,
    assert_stub_reads_as_not_attempted,
)

from seqlib.grading import (
    check_causal_conv1d,
    check_conv_step,
    check_layers_needed,
    check_receptive_field,
    ex02,
)

CHECKS = [getattr(ex02, name) for name in ex02.__all__]

# ---------------------------------------------------------------------------------------------
# Correct solutions


def receptive_field(kernel_sizes, dilations):
    field = 1
    for k, r in zip(kernel_sizes, dilations):
        field += (k - 1) * r
    return field


def causal_conv1d_loops(x, weight, bias, dilation):
    b, length, _ = x.shape
    d_out, _, k = weight.shape
    y = bias.expand(b, length, d_out).clone()
    for t in range(length):
        for j in range(k):
            s = t - (k - 1 - j) * dilation
            if s >= 0:
                y[:, t] = y[:, t] + x[:, s] @ weight[:, :, j].T
    return y


def causal_conv1d_unfold(x, weight, bias, dilation):
    k = weight.shape[-1]
    span = (k - 1) * dilation
    x_pad = F.pad(x, (0, 0, span, 0))
    taps = x_pad.unfold(1, span + 1, 1)[..., ::dilation]  # (b, l, d_in, k)
    return torch.einsum("blik,oik->blo", taps, weight) + bias


def layers_needed_closed_form(length, kernel_size, dilated):
    if dilated:
        n = 0
        while 1 + (kernel_size - 1) * (2**n - 1) < length:
            n += 1
        return n
    return -(-(length - 1) // (kernel_size - 1))  # integer ceiling


def conv_step(x_t, buffer, weight, bias, dilation):
    window = torch.cat([buffer, x_t.unsqueeze(1)], dim=1)
    y_t = bias.clone()
    for j in range(weight.shape[-1]):
        y_t = y_t + window[:, j * dilation] @ weight[:, :, j].T
    return y_t, window[:, 1:]


SOLUTIONS = [
    (check_receptive_field, receptive_field),
    (check_causal_conv1d, causal_conv1d_loops),
    (check_causal_conv1d, causal_conv1d_unfold),
    (check_layers_needed, layers_needed_closed_form),
    (check_conv_step, conv_step),
]

# ---------------------------------------------------------------------------------------------
# Mutants


def rf_off_by_one(kernel_sizes, dilations):
    return sum((k - 1) * r for k, r in zip(kernel_sizes, dilations))


def rf_k_times_r(kernel_sizes, dilations):
    return 1 + sum(k * r for k, r in zip(kernel_sizes, dilations))


def rf_no_dilation(kernel_sizes, dilations):
    return 1 + sum(k - 1 for k in kernel_sizes)


def rf_product(kernel_sizes, dilations):
    return math.prod((k - 1) * r + 1 for k, r in zip(kernel_sizes, dilations))


def _conv_with_left_padding(x, weight, bias, dilation, left):
    """A loop convolution reading x_{t + j·r - left}: left = (k-1)·r is right."""
    b, length, _ = x.shape
    d_out, _, k = weight.shape
    y = bias.expand(b, length, d_out).clone()
    for t in range(length):
        for j in range(k):
            s = t + j * dilation - left
            if 0 <= s < length:
                y[:, t] = y[:, t] + x[:, s] @ weight[:, :, j].T
    return y


def conv_padding_on_the_right(x, weight, bias, dilation):
    return _conv_with_left_padding(x, weight, bias, dilation, 0)


def conv_same_padding(x, weight, bias, dilation):
    k = weight.shape[-1]
    return _conv_with_left_padding(x, weight, bias, dilation, (k - 1) * dilation // 2)


def conv_padding_ignores_dilation(x, weight, bias, dilation):
    k = weight.shape[-1]
    return _conv_with_left_padding(x, weight, bias, dilation, k - 1)


def conv_short_output(x, weight, bias, dilation):
    k = weight.shape[-1]
    x_pad = F.pad(x, (0, 0, k - 1, 0))  # too little padding: the output is too short
    taps = x_pad.unfold(1, (k - 1) * dilation + 1, 1)[..., ::dilation]
    return torch.einsum("blik,oik->blo", taps, weight) + bias


def conv_flipped_kernel(x, weight, bias, dilation):
    return causal_conv1d_loops(x, weight.flip(-1), bias, dilation)


def conv_without_bias(x, weight, bias, dilation):
    return causal_conv1d_loops(x, weight, torch.zeros_like(bias), dilation)


def conv_ignores_dilation(x, weight, bias, dilation):
    return causal_conv1d_loops(x, weight, bias, 1)


def conv_library(x, weight, bias, dilation):
    span = (weight.shape[-1] - 1) * dilation
    y = F.conv1d(F.pad(x.transpose(1, 2), (span, 0)), weight, bias, dilation=dilation)
    return y.transpose(1, 2)


def conv_float64_always(x, weight, bias, dilation):
    return causal_conv1d_loops(x.double(), weight.double(), bias.double(), dilation)


def layers_strict(length, kernel_size, dilated):
    n = 0
    while 1 + (kernel_size - 1) * ((2**n - 1) if dilated else n) <= length:
        n += 1
    return n


def layers_forgets_the_one(length, kernel_size, dilated):
    if dilated:
        return layers_needed_closed_form(length, kernel_size, True)
    return math.ceil(length / (kernel_size - 1))


def layers_ignore_kernel_when_dilated(length, kernel_size, dilated):
    if dilated:
        return math.ceil(math.log2(length))
    return layers_needed_closed_form(length, kernel_size, False)


def layers_floor(length, kernel_size, dilated):
    if dilated:
        return layers_needed_closed_form(length, kernel_size, True)
    return (length - 1) // (kernel_size - 1)


def step_mutates_buffer(x_t, buffer, weight, bias, dilation):
    y_t, new_buffer = conv_step(x_t, buffer, weight, bias, dilation)
    if buffer.shape[1]:
        buffer.copy_(new_buffer)  # shifts the caller's buffer in place
    return y_t, buffer


def step_ignores_dilation(x_t, buffer, weight, bias, dilation):
    k = weight.shape[-1]
    window = torch.cat([buffer, x_t.unsqueeze(1)], dim=1)
    taps = window[:, -k:]  # the last k rows, whatever the dilation
    return torch.einsum("bji,oij->bo", taps, weight) + bias, window[:, 1:]


def step_newest_first(x_t, buffer, weight, bias, dilation):
    window = torch.cat([x_t.unsqueeze(1), buffer], dim=1)  # newest at the front
    y_t = torch.einsum("bji,oij->bo", window[:, ::dilation].flip(1), weight) + bias
    return y_t, window[:, :-1]


def step_without_bias(x_t, buffer, weight, bias, dilation):
    y_t, new_buffer = conv_step(x_t, buffer, weight, bias, dilation)
    return y_t - bias, new_buffer


def step_grows_buffer(x_t, buffer, weight, bias, dilation):
    y_t, _ = conv_step(x_t, buffer, weight, bias, dilation)
    return y_t, torch.cat([buffer, x_t.unsqueeze(1)], dim=1)  # never drops the oldest


def step_returns_only_output(x_t, buffer, weight, bias, dilation):
    return conv_step(x_t, buffer, weight, bias, dilation)[0]


MUTANTS = [
    (check_receptive_field, rf_off_by_one, ["case 1 of 7", "expected 3, got 2", "start from 1"]),
    (check_receptive_field, rf_k_times_r, ["expected 3, got 4", "not by k"]),
    (check_receptive_field, rf_no_dilation, ["case 3 of 7", "dilations are missing"]),
    (check_receptive_field, rf_product, ["case 2 of 7", "do not multiply"]),
    (check_causal_conv1d, conv_padding_on_the_right, ["case 1 of 6", "at index (0, 0, 0)",
                                                      "FUTURE"]),
    (check_causal_conv1d, conv_same_padding, ["case 1 of 6", "'same' padding"]),
    (check_causal_conv1d, conv_padding_ignores_dilation, ["case 4 of 6",
                                                          "you padded k - 1 zeros"]),
    (check_causal_conv1d, conv_short_output, ["case 4 of 6", "shape (2, 7, 3) instead of",
                                              "exactly as long as the input"]),
    (check_causal_conv1d, conv_flipped_kernel, ["case 1 of 6", "expected 100, got 1",
                                                "flipped"]),
    (check_causal_conv1d, conv_without_bias, ["case 2 of 6", "bias is missing"]),
    (check_causal_conv1d, conv_ignores_dilation, ["case 4 of 6", "`dilation` positions apart"]),
    (check_causal_conv1d, conv_library, ["calls torch.nn.functional.conv1d"]),
    (check_causal_conv1d, conv_float64_always, ["case 6 of 6", "dtype float64 instead of"
                                                " float32", "x's dtype"]),
    (check_layers_needed, layers_strict, ["case 1 of 11", "expected 4, got 5",
                                          "EQUALS the length"]),
    (check_layers_needed, layers_forgets_the_one, ["case 1 of 11", "expected 4, got 5"]),
    (check_layers_needed, layers_ignore_kernel_when_dilated, ["case 8 of 11",
                                                              "expected 9, got 10",
                                                              "wider kernel"]),
    (check_layers_needed, layers_floor, ["case 2 of 11", "expected 5, got 4", "too few"]),
    (check_conv_step, step_mutates_buffer, ["case 1 of 5", "changed the buffer it was given"]),
    (check_conv_step, step_ignores_dilation, ["case 3 of 5", "window[:, ::dilation]"]),
    (check_conv_step, step_newest_first, ["case 1 of 5", "oldest first", "row 0 differs"]),
    (check_conv_step, step_without_bias, ["case 2 of 5", "bias is missing"]),
    (check_conv_step, step_grows_buffer, ["case 1 of 5", "the new buffer is a tensor of shape"
                                          " (1, 3, 1)"]),
    (check_conv_step, step_returns_only_output, ["must return a pair (y_t, new_buffer)"]),
]


def test_every_check_has_a_solution_and_two_mutants():
    assert {check for check, _ in SOLUTIONS} == set(CHECKS)
    for check in CHECKS:
        assert sum(m[0] is check for m in MUTANTS) >= 2, f"{check.__name__}: too few mutants"


@pytest.mark.parametrize("check, solution", SOLUTIONS,
                         ids=[f"{c.__name__}-{s.__name__}" for c, s in SOLUTIONS])
def test_check_passes_a_correct_solution(check, solution, capsys):
    assert_check_passes(check, solution, capsys)


@pytest.mark.parametrize("check, mutant, words", MUTANTS,
                         ids=[f"{m[0].__name__}-{m[1].__name__}" for m in MUTANTS])
def test_check_rejects_a_wrong_solution(check, mutant, words, capsys):
    assert_check_rejects(check, mutant, words, capsys)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_not_implemented_reads_as_not_attempted(check):
    assert_stub_reads_as_not_attempted(check)


def test_the_references_agree_with_seqlib():
    from seqlib.models import cnn

    g = torch.Generator().manual_seed(0)
    for k, r in [(1, 1), (3, 1), (3, 2), (4, 3)]:
        x = torch.randn(2, 9, 3, generator=g, dtype=torch.double)
        w = torch.randn(4, 3, k, generator=g, dtype=torch.double)
        b = torch.randn(4, generator=g, dtype=torch.double)
        torch.testing.assert_close(ex02._causal_conv1d_reference(x, w, b, r),
                                   cnn.conv1d(x, w, b, dilation=r))
    for length in (1, 2, 9, 10, 1000, 1025):
        for k in (2, 3, 5):
            for dilated in (False, True):
                assert (ex02._layers_needed_reference(length, k, dilated)
                        == cnn.layers_needed(length, k, dilated))
    assert ex02._receptive_field_reference([3, 2], [1, 4]) == cnn.receptive_field([3, 2], 2,
                                                                                  [1, 4])


def test_checks_leave_global_state_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    check_causal_conv1d(causal_conv1d_unfold)
    check_conv_step(conv_step)
    assert torch.equal(torch.rand(3), expected)
