"""The graders of exercise 3 are proven: each check passes correct solutions written
independently of its reference (some built on seqlib's RNN layer and language model) and
rejects the mistakes students make, with a message that names the failing case and the likely
mistake.

Mistakes covered: a missing tanh, a transposed W_h or W_x, a missing bias, sigmoid instead of
tanh, the wrong dtype, PyTorch's own RNN; states shifted by one step, h_0 returned as well, the
state not carried, only the last state returned, time-first axes, h0 changed in place; in
backpropagation through time, only the last step's contribution, no recursion through W_h, a
missing tanh derivative, pairing g_t with h_t, W_h^T instead of W_h on the way back, a
transposed result, and autograd in three forms; in the language model, logits read from the
state before the token, a missing output bias, probabilities or log-probabilities instead of
logits, only the last position, a transposed W_y.
"""

import pytest
import torch
from grader_proofs import (
    assert_check_passes,
    assert_check_rejects,
    assert_stub_reads_as_not_attempted,
)

from seqlib.grading.ex03 import (
    __all__ as EX03_CHECKS,
)
from seqlib.grading.ex03 import (
    check_bptt_grad,
    check_rnn_forward,
    check_rnn_lm_logits,
    check_rnn_step,
)
from seqlib.models.rnn import RNN, RNNLanguageModel

# ---------------------------------------------------------------------------------------------
# Correct solutions, written differently from the references


def rnn_step(x_t, h_prev, W_x, W_h, b):
    return torch.tanh(torch.addmm(b, x_t, W_x.T) + torch.einsum("ij,bj->bi", W_h, h_prev))


def rnn_forward(x, h0, W_x, W_h, b):
    states = torch.empty(x.shape[0], x.shape[1], W_h.shape[0], dtype=x.dtype)
    h = h0
    for t in range(x.shape[1]):
        h = rnn_step(x[:, t], h, W_x, W_h, b)
        states[:, t] = h
    return states


def rnn_forward_with_seqlib(x, h0, W_x, W_h, b):
    layer = RNN(W_x.shape[1], W_h.shape[0]).to(x.dtype)
    with torch.no_grad():
        layer.cell.weight_ih.copy_(W_x)
        layer.cell.weight_hh.copy_(W_h)
        layer.cell.bias_ih.copy_(b)
        layer.cell.bias_hh.zero_()
        return layer(x, h0)[0]


def bptt_grad(x, h0, W_x, W_h, b, grad_states):
    """Column-vector form, one sequence at a time."""
    grad = torch.zeros_like(W_h)
    for i in range(x.shape[0]):
        hs = [h0[i]]
        for t in range(x.shape[1]):
            hs.append(torch.tanh(W_h @ hs[-1] + W_x @ x[i, t] + b))
        back = torch.zeros_like(h0[i])
        for t in range(x.shape[1], 0, -1):
            a_grad = (back + grad_states[i, t - 1]) * (1 - hs[t] ** 2)
            grad += torch.outer(a_grad, hs[t - 1])
            back = W_h.T @ a_grad
    return grad


def rnn_lm_logits(ids, E, W_x, W_h, b, W_y, c):
    one_hot = torch.nn.functional.one_hot(ids, E.shape[0]).to(E.dtype)  # (b, l, v)
    h0 = torch.zeros(ids.shape[0], W_h.shape[0], dtype=E.dtype)
    return rnn_forward(one_hot @ E, h0, W_x, W_h, b) @ W_y.T + c


def rnn_lm_logits_with_seqlib(ids, E, W_x, W_h, b, W_y, c):
    model = RNNLanguageModel(E.shape[0], E.shape[1], W_h.shape[0]).to(E.dtype)
    with torch.no_grad():
        for mine, theirs in [(model.embed.weight, E), (model.rnn.cell.weight_ih, W_x),
                             (model.rnn.cell.weight_hh, W_h), (model.rnn.cell.bias_ih, b),
                             (model.out.weight, W_y), (model.out.bias, c)]:
            mine.copy_(theirs)
        model.rnn.cell.bias_hh.zero_()
        return model(ids)


SOLUTIONS = [
    (check_rnn_step, rnn_step),
    (check_rnn_step, lambda x_t, h, W_x, W_h, b: rnn_forward(x_t[:, None], h, W_x, W_h, b)[:, 0]),
    (check_rnn_forward, rnn_forward),
    (check_rnn_forward, rnn_forward_with_seqlib),
    (check_bptt_grad, bptt_grad),
    (check_rnn_lm_logits, rnn_lm_logits),
    (check_rnn_lm_logits, rnn_lm_logits_with_seqlib),
]

# ---------------------------------------------------------------------------------------------
# Mutants: (check, wrong function, words the failure message must contain)


def step_no_tanh(x_t, h_prev, W_x, W_h, b):
    return h_prev @ W_h.T + x_t @ W_x.T + b


def step_W_h_transposed(x_t, h_prev, W_x, W_h, b):
    return torch.tanh(h_prev @ W_h + x_t @ W_x.T + b)


def step_no_bias(x_t, h_prev, W_x, W_h, b):
    return torch.tanh(h_prev @ W_h.T + x_t @ W_x.T)


def step_sigmoid(x_t, h_prev, W_x, W_h, b):
    return torch.sigmoid(h_prev @ W_h.T + x_t @ W_x.T + b)


def step_W_x_not_transposed(x_t, h_prev, W_x, W_h, b):
    return torch.tanh(h_prev @ W_h.T + x_t @ W_x + b)


def step_float64(x_t, h_prev, W_x, W_h, b):
    return rnn_step(x_t.double(), h_prev.double(), W_x.double(), W_h.double(), b.double())


def step_with_torch_cell(x_t, h_prev, W_x, W_h, b):
    return torch.rnn_tanh_cell(x_t, h_prev, W_x, W_h, b, torch.zeros_like(b))


def forward_shifted(x, h0, W_x, W_h, b):
    states, h = [], h0
    for t in range(x.shape[1]):
        states.append(h)  # kept before the update
        h = rnn_step(x[:, t], h, W_x, W_h, b)
    return torch.stack(states, dim=1)


def forward_with_h0(x, h0, W_x, W_h, b):
    return torch.cat([h0[:, None], rnn_forward(x, h0, W_x, W_h, b)], dim=1)


def forward_no_carry(x, h0, W_x, W_h, b):
    return torch.stack([rnn_step(x[:, t], h0, W_x, W_h, b) for t in range(x.shape[1])], 1)


def forward_last_only(x, h0, W_x, W_h, b):
    return rnn_forward(x, h0, W_x, W_h, b)[:, -1]


def forward_time_first(x, h0, W_x, W_h, b):
    return rnn_forward(x, h0, W_x, W_h, b).transpose(0, 1)


def forward_in_place(x, h0, W_x, W_h, b):
    states = []
    for t in range(x.shape[1]):
        h0.copy_(rnn_step(x[:, t], h0, W_x, W_h, b))  # overwrites the caller's h0
        states.append(h0.clone())
    return torch.stack(states, dim=1)


def forward_with_nn_rnn(x, h0, W_x, W_h, b):
    rnn = torch.nn.RNN(W_x.shape[1], W_h.shape[0], batch_first=True).to(x.dtype)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(W_x)
        rnn.weight_hh_l0.copy_(W_h)
        rnn.bias_ih_l0.copy_(b)
        rnn.bias_hh_l0.zero_()
        return rnn(x, h0[None])[0]


def _bptt(x, h0, W_x, W_h, b, up, *, last_only=False, recursion=True, derivative=True,
          pair_with_h_t=False, back=lambda g, W_h: g @ W_h, transpose=False):
    states = rnn_forward(x, h0, W_x, W_h, b)
    grad = torch.zeros_like(W_h)
    delta = torch.zeros_like(h0)
    for t in reversed(range(x.shape[1])):
        delta = (delta if recursion else 0) + up[:, t]
        g = delta * (1 - states[:, t] ** 2) if derivative else delta
        h_prev = h0 if t == 0 else states[:, t - 1]
        if not last_only or t == x.shape[1] - 1:
            grad = grad + g.T @ (states[:, t] if pair_with_h_t else h_prev)
        delta = back(g, W_h)
    return grad.T if transpose else grad


def bptt_last_only(*args):
    return _bptt(*args, last_only=True)


def bptt_no_recursion(*args):
    return _bptt(*args, recursion=False)


def bptt_no_derivative(*args):
    return _bptt(*args, derivative=False)


def bptt_pairs_h_t(*args):
    return _bptt(*args, pair_with_h_t=True)


def bptt_back_transposed(*args):
    return _bptt(*args, back=lambda g, W_h: g @ W_h.T)


def bptt_result_transposed(*args):
    return _bptt(*args, transpose=True)


def bptt_autograd(x, h0, W_x, W_h, b, up):
    W = W_h.clone().requires_grad_(True)
    (rnn_forward(x, h0, W_x, W, b) * up).sum().backward()
    return W.grad


def bptt_autograd_grad(x, h0, W_x, W_h, b, up):
    W = W_h.clone()
    W.requires_grad = True
    return torch.autograd.grad((rnn_forward(x, h0, W_x, W, b) * up).sum(), W)[0]


def bptt_autograd_functional(x, h0, W_x, W_h, b, up):
    loss = lambda W: (rnn_forward(x, h0, W_x, W, b) * up).sum()
    return torch.autograd.functional.jacobian(loss, W_h)


def lm_stale_state(ids, E, W_x, W_h, b, W_y, c):
    h0 = torch.zeros(ids.shape[0], W_h.shape[0], dtype=E.dtype)
    states = rnn_forward(E[ids], h0, W_x, W_h, b)
    before = torch.cat([h0[:, None], states[:, :-1]], dim=1)  # h_{t-1}: one step late
    return before @ W_y.T + c


def lm_no_output_bias(*args):
    return rnn_lm_logits(*args) - args[-1]


def lm_probabilities(*args):
    return rnn_lm_logits(*args).softmax(-1)


def lm_log_probabilities(*args):
    return rnn_lm_logits(*args).log_softmax(-1)


def lm_last_only(*args):
    return rnn_lm_logits(*args)[:, -1]


def lm_W_y_not_transposed(ids, E, W_x, W_h, b, W_y, c):
    h0 = torch.zeros(ids.shape[0], W_h.shape[0], dtype=E.dtype)
    return rnn_forward(E[ids], h0, W_x, W_h, b) @ W_y + c


def lm_with_nn_rnn(ids, E, W_x, W_h, b, W_y, c):
    h0 = torch.zeros(ids.shape[0], W_h.shape[0], dtype=E.dtype)
    return forward_with_nn_rnn(E[ids], h0, W_x, W_h, b) @ W_y.T + c


MUTANTS = [
    (check_rnn_step, step_no_tanh, ["case 1 of 5", "tanh is missing"]),
    (check_rnn_step, step_W_h_transposed, ["case 1 of 5", "W_h looks transposed"]),
    (check_rnn_step, step_no_bias, ["case 2 of 5", "bias b is missing"]),
    (check_rnn_step, step_sigmoid, ["case 1 of 5", "values differ"]),
    (check_rnn_step, step_W_x_not_transposed, ["case 1 of 5", "raised RuntimeError"]),
    (check_rnn_step, step_float64, ["case 2 of 5", "dtype float64 instead of float32"]),
    (check_rnn_step, step_with_torch_cell, ["calls nn.RNNCell (torch.rnn_tanh_cell)"]),
    (check_rnn_forward, forward_shifted, ["case 1 of 4", "off by one"]),
    (check_rnn_forward, forward_with_h0, ["shape (1, 4, 2) instead of (1, 3, 2)", "not h_0"]),
    (check_rnn_forward, forward_no_carry, ["case 1 of 4", "not from h0"]),
    (check_rnn_forward, forward_last_only, ["shape (1, 2)", "not only the last"]),
    (check_rnn_forward, forward_time_first, ["case 1 of 4", "stack the states along dim=1"]),
    (check_rnn_forward, forward_in_place, ["case 1 of 4", "changed its input `h0` in place"]),
    (check_rnn_forward, forward_with_nn_rnn, ["calls nn.RNN (torch.rnn_tanh)"]),
    (check_bptt_grad, bptt_last_only, ["case 1 of 5", "EVERY step"]),
    (check_bptt_grad, bptt_no_recursion, ["case 1 of 5", "later steps"]),
    (check_bptt_grad, bptt_no_derivative, ["case 1 of 5", "derivative is missing"]),
    (check_bptt_grad, bptt_pairs_h_t, ["case 1 of 5", "not with h_t"]),
    (check_bptt_grad, bptt_back_transposed, ["case 1 of 5", "not g @ W_h.T"]),
    (check_bptt_grad, bptt_result_transposed, ["case 1 of 5", "result is transposed"]),
    (check_bptt_grad, bptt_autograd, ["calls Tensor.requires_grad_ (autograd)"]),
    (check_bptt_grad, bptt_autograd_grad, ["calls the requires_grad setter (autograd)"]),
    (check_bptt_grad, bptt_autograd_functional, ["autograd"]),
    (check_rnn_lm_logits, lm_stale_state, ["case 1 of 4", "state AFTER token t"]),
    (check_rnn_lm_logits, lm_no_output_bias, ["case 1 of 4", "output bias c is missing"]),
    (check_rnn_lm_logits, lm_probabilities, ["case 1 of 4", "not probabilities"]),
    (check_rnn_lm_logits, lm_log_probabilities, ["case 1 of 4", "not log-probabilities"]),
    (check_rnn_lm_logits, lm_last_only, ["shape (1, 4) instead of (1, 3, 4)", "not only the"]),
    (check_rnn_lm_logits, lm_W_y_not_transposed, ["case 1 of 4", "raised RuntimeError"]),
    (check_rnn_lm_logits, lm_with_nn_rnn, ["calls nn.RNN (torch.rnn_tanh)"]),
]

CHECKS = [check_rnn_step, check_rnn_forward, check_bptt_grad, check_rnn_lm_logits]


def test_every_check_has_a_solution_and_two_mutants():
    assert sorted(EX03_CHECKS) == sorted(c.__name__ for c in CHECKS)
    for check in CHECKS:
        assert any(s[0] is check for s in SOLUTIONS), check.__name__
        assert sum(m[0] is check for m in MUTANTS) >= 2, f"{check.__name__}: too few mutants"


@pytest.mark.parametrize("check, solution", SOLUTIONS,
                         ids=[f"{s[0].__name__}-{i}" for i, s in enumerate(SOLUTIONS)])
def test_check_passes_a_correct_solution(check, solution, capsys):
    assert_check_passes(check, solution, capsys)


@pytest.mark.parametrize("check, mutant, words", MUTANTS,
                         ids=[f"{m[0].__name__}-{m[1].__name__}" for m in MUTANTS])
def test_check_rejects_a_wrong_solution(check, mutant, words, capsys):
    assert_check_rejects(check, mutant, words, capsys)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_not_implemented_reads_as_not_attempted(check):
    assert_stub_reads_as_not_attempted(check)


def test_the_worked_example_is_the_chapters():
    # the first case of the forward check is the chapter's table: h_1 = tanh(0.3, 0.4)
    x = torch.tensor([[[1.0], [-1.0], [2.0]]], dtype=torch.float64)
    W_x = torch.tensor([[0.3], [0.4]], dtype=torch.float64)
    W_h = torch.tensor([[0.5, 0.1], [0.2, 0.6]], dtype=torch.float64)
    states = rnn_forward(x, torch.zeros(1, 2, dtype=torch.float64), W_x, W_h,
                         torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(states[0, 0], torch.tanh(torch.tensor([0.3, 0.4], dtype=torch.float64)))


def test_bptt_reference_equals_autograd():
    # the grader's own reference, checked once against autograd on a random case
    from seqlib.grading.ex03 import _bptt_reference, _random_rnn

    g = torch.Generator().manual_seed(0)
    args = _random_rnn(g, 2, 9, 3, 4, scale_h=1.0)
    up = torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    W = args["W_h"].clone().requires_grad_(True)
    (rnn_forward(args["x"], args["h0"], args["W_x"], W, args["b"]) * up).sum().backward()
    assert torch.allclose(_bptt_reference(*args.values(), up), W.grad, atol=1e-12)


def test_checks_leave_global_state_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    check_bptt_grad(bptt_grad)
    assert torch.equal(torch.rand(3), expected)
