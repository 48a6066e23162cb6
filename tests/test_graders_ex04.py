"""The graders of exercise 4 are proven: each check passes a correct solution and rejects
plausible wrong ones (mutants) with a message that names the mistake.

The correct solutions here are written independently of the graders' references (autograd for
the Jacobian, explicit matrices for the gradients); the mutants are the mistakes students make:
a missing tanh derivative, a transposed W_h, the factor of the wrong state, the largest singular
value for the spectral radius, per-tensor instead of global clipping, clipping that scales up.
"""

import math

import pytest
import torch
from grader_proofs import assert_check_passes, assert_check_rejects

from seqlib.grading import (
    check_clip_grad_norm,
    check_hidden_gradients,
    check_rnn_jacobian,
    check_spectral_radius,
)
from seqlib.grading.ex04 import __all__ as EX04_CHECKS

# ---------------------------------------------------------------------------------------------
# Correct solutions, one per check


def rnn_jacobian(h_t, W_h):
    """Through autograd: the Jacobian of h -> tanh(W_h h + c) where tanh(W_h h + c) = h_t."""
    if h_t.ndim > 1:
        return torch.stack([rnn_jacobian(h, W_h) for h in h_t])
    pre_t = torch.atanh(h_t.double())  # the pre-activation that produced h_t
    h_prev = torch.zeros_like(pre_t)
    c = pre_t - W_h.double() @ h_prev
    jac = torch.autograd.functional.jacobian(lambda h: torch.tanh(W_h.double() @ h + c), h_prev)
    return jac.to(h_t.dtype)


def hidden_gradients(hs, W_h, grad_last):
    grads = torch.empty_like(hs)
    grads[-1] = grad_last
    for t in range(hs.shape[0] - 1, 0, -1):
        jacobian = torch.diag(1 - hs[t] ** 2) @ W_h
        grads[t - 1] = jacobian.T @ grads[t]
    return grads


def spectral_radius(W):
    return torch.linalg.eigvals(W).abs().max().item()


def clip_grad_norm(grads, max_norm):
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    scale = min(1.0, max_norm / (float(norm) + 1e-12))
    return [g * scale for g in grads]


SOLUTIONS = {
    check_rnn_jacobian: rnn_jacobian,
    check_hidden_gradients: hidden_gradients,
    check_spectral_radius: spectral_radius,
    check_clip_grad_norm: clip_grad_norm,
}

# ---------------------------------------------------------------------------------------------
# Mutants


def jacobian_without_derivative(h_t, W_h):
    return W_h.expand(*h_t.shape, h_t.shape[-1]).clone()


def jacobian_transposed(h_t, W_h):
    return (1 - h_t**2).unsqueeze(-1) * W_h.T


def jacobian_scaling_columns(h_t, W_h):
    return W_h * (1 - h_t**2).unsqueeze(-2)


def jacobian_tanh_twice(h_t, W_h):
    return (1 - torch.tanh(h_t) ** 2).unsqueeze(-1) * W_h


def jacobian_not_squared(h_t, W_h):
    return (1 - h_t).unsqueeze(-1) * W_h


def jacobian_with_torch_diag(h_t, W_h):
    return torch.diag(1 - h_t**2) @ W_h  # right for one state, wrong for a batch


def jacobian_in_float64(h_t, W_h):
    return (1 - h_t.double() ** 2).unsqueeze(-1) * W_h.double()


def gradients_not_transposed(hs, W_h, grad_last):
    grads = [grad_last]
    for t in range(hs.shape[0] - 1, 0, -1):
        grads.append(W_h @ ((1 - hs[t] ** 2) * grads[-1]))
    return torch.stack(grads[::-1])


def gradients_previous_state(hs, W_h, grad_last):
    grads = [grad_last]
    for t in range(hs.shape[0] - 1, 0, -1):
        grads.append(((1 - hs[t - 1] ** 2) * grads[-1]) @ W_h)
    return torch.stack(grads[::-1])


def gradients_without_derivative(hs, W_h, grad_last):
    grads = [grad_last]
    for _ in range(hs.shape[0] - 1):
        grads.append(grads[-1] @ W_h)
    return torch.stack(grads[::-1])


def gradients_reversed(hs, W_h, grad_last):
    return hidden_gradients(hs, W_h, grad_last).flip(0)


def gradients_missing_h0(hs, W_h, grad_last):
    return hidden_gradients(hs, W_h, grad_last)[1:]


def radius_singular_value(W):
    return torch.linalg.matrix_norm(W, ord=2).item()


def radius_symmetric_solver(W):
    return torch.linalg.eigvalsh(W).abs().max().item()


def radius_real_part(W):
    return torch.linalg.eigvals(W).real.abs().max().item()


def radius_no_absolute_value(W):
    return torch.linalg.eigvals(W).real.max().item()


def radius_diagonal(W):
    return W.diagonal().abs().max().item()


def clip_per_tensor(grads, max_norm):
    return [g * min(1.0, max_norm / float(g.norm())) for g in grads]


def clip_always(grads, max_norm):
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
    return [g * (max_norm / norm) for g in grads]


def clip_sum_of_norms(grads, max_norm):
    norm = sum(float(g.norm()) for g in grads)
    return [g * min(1.0, max_norm / norm) for g in grads]


def clip_without_sqrt(grads, max_norm):
    norm = sum(float((g**2).sum()) for g in grads)
    return [g * min(1.0, max_norm / norm) for g in grads]


def clip_in_place(grads, max_norm):
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
    for g in grads:
        g.mul_(min(1.0, max_norm / norm))
    return grads


def clip_with_pytorch(grads, max_norm):
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    return [p.grad for p in params]


def clip_with_total_norm_helper(grads, max_norm):
    norm = float(torch._foreach_norm(grads)[0]) if len(grads) == 1 else float(
        torch.stack(torch._foreach_norm(grads)).norm())
    return [g * min(1.0, max_norm / norm) for g in grads]


def clip_returning_one_tensor(grads, max_norm):
    return torch.cat([g.reshape(-1) for g in clip_grad_norm(grads, max_norm)])


MUTANTS = [
    (check_rnn_jacobian, jacobian_without_derivative, ["case 1 of 5", "derivative is missing"]),
    (check_rnn_jacobian, jacobian_transposed, ["case 1 of 5", "looks transposed"]),
    (check_rnn_jacobian, jacobian_scaling_columns, ["case 1 of 5", "COLUMNS"]),
    (check_rnn_jacobian, jacobian_tanh_twice, ["case 1 of 5", "not 1 - tanh(h_t)^2"]),
    (check_rnn_jacobian, jacobian_not_squared, ["case 1 of 5", "(squared)"]),
    (check_rnn_jacobian, jacobian_with_torch_diag, ["case 4 of 5", "torch.diag_embed"]),
    (check_rnn_jacobian, jacobian_in_float64, ["case 5 of 5", "dtype float64 instead of float32"]),
    (check_hidden_gradients, gradients_not_transposed, ["case 1 of 5", "TRANSPOSED Jacobian"]),
    (check_hidden_gradients, gradients_previous_state, ["case 1 of 5", "PRODUCED h_t"]),
    (check_hidden_gradients, gradients_without_derivative, ["case 1 of 5",
                                                            "derivative is missing"]),
    (check_hidden_gradients, gradients_reversed, ["case 1 of 5", "look reversed"]),
    (check_hidden_gradients, gradients_missing_h0, ["case 1 of 5", "shape (1, 2) instead of"
                                                    " (2, 2)", "(l + 1, h)"]),
    (check_spectral_radius, radius_singular_value, ["case 3 of 6", "SINGULAR value"]),
    (check_spectral_radius, radius_symmetric_solver, ["case 3 of 6", "SYMMETRIC"]),
    (check_spectral_radius, radius_real_part, ["case 3 of 6", "modulus"]),
    (check_spectral_radius, radius_no_absolute_value, ["case 2 of 6", "ABSOLUTE value"]),
    (check_spectral_radius, radius_diagonal, ["case 3 of 6", "triangular"]),
    (check_clip_grad_norm, clip_per_tensor, ["case 1 of 5", "GLOBAL"]),
    (check_clip_grad_norm, clip_always, ["case 2 of 5", "scales DOWN"]),
    (check_clip_grad_norm, clip_sum_of_norms, ["case 1 of 5", "not the sum of the tensors'"]),
    (check_clip_grad_norm, clip_without_sqrt, ["case 1 of 5", "exactly max_norm"]),
    (check_clip_grad_norm, clip_in_place, ["case 1 of 5", "in place"]),
    (check_clip_grad_norm, clip_with_pytorch, ["case 1 of 5", "write yourself"]),
    (check_clip_grad_norm, clip_with_total_norm_helper, ["case 1 of 5", "torch._foreach_norm"]),
    (check_clip_grad_norm, clip_returning_one_tensor, ["case 1 of 5", "return a list"]),
]


def test_every_check_has_a_solution_and_two_mutants():
    assert {check.__name__ for check in SOLUTIONS} == set(EX04_CHECKS)
    for check in SOLUTIONS:
        assert sum(m[0] is check for m in MUTANTS) >= 2, f"{check.__name__}: too few mutants"


@pytest.mark.parametrize("check", list(SOLUTIONS), ids=lambda c: c.__name__)
def test_check_passes_a_correct_solution(check, capsys):
    assert_check_passes(check, SOLUTIONS[check], capsys)


@pytest.mark.parametrize("check, mutant, words", MUTANTS,
                         ids=[f"{m[0].__name__}-{m[1].__name__}" for m in MUTANTS])
def test_check_rejects_a_wrong_solution(check, mutant, words, capsys):
    assert_check_rejects(check, mutant, words, capsys)


def test_pytorch_clipping_is_restored_after_a_check():
    original = torch.nn.utils.clip_grad_norm_
    with pytest.raises(AssertionError):
        check_clip_grad_norm(clip_with_pytorch)
    assert torch.nn.utils.clip_grad_norm_ is original
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 3.0)
    assert math.isclose(float(torch.nn.utils.clip_grad_norm_([p], 1.0)), 6.0)
