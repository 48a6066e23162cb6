"""The graders of exercise 5 are proven: each check passes a correct solution and rejects
plausible wrong ones (mutants) with a message that says what went wrong.

The correct solutions here are written independently of the graders' references (per-gate row
slices instead of chunks, a log-space running product), and the mutants are the mistakes
students make with LSTM and GRU cells: the wrong gate order, a sigmoid where a tanh belongs, a
missing bias, the GRU's update gate mixing the wrong way, the reset gate before the matrix
product instead of after, calling the library's fused cells.
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
from torch import nn

from seqlib.grading import (
    check_count_lstm_parameters,
    check_forget_gate_retention,
    check_gru_cell,
    check_lstm_cell,
    ex05,
)

CHECKS = [getattr(ex05, name) for name in ex05.__all__]

# ---------------------------------------------------------------------------------------------
# Correct solutions, one per check


def _rows(t, k, d):
    """Block k (k-th group of d rows) of a stacked PyTorch weight or bias."""
    return t[k * d:(k + 1) * d]


def lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh):
    d = h.shape[-1]

    def pre(k):
        return (x @ _rows(W_ih, k, d).T + _rows(b_ih, k, d)
                + h @ _rows(W_hh, k, d).T + _rows(b_hh, k, d))

    i, f, g, o = torch.sigmoid(pre(0)), torch.sigmoid(pre(1)), torch.tanh(pre(2)), torch.sigmoid(
        pre(3))
    c_new = f * c + i * g
    return o * torch.tanh(c_new), c_new


def gru_cell(x, h, W_ih, W_hh, b_ih, b_hh):
    d = h.shape[-1]

    def part(k):
        return (x @ _rows(W_ih, k, d).T + _rows(b_ih, k, d),
                h @ _rows(W_hh, k, d).T + _rows(b_hh, k, d))

    (r_x, r_h), (z_x, z_h), (n_x, n_h) = part(0), part(1), part(2)
    r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    return n + z * (h - n)


def count_lstm_parameters(d_in, d_hidden):
    return sum(p.numel() for p in nn.LSTM(d_in, d_hidden).parameters())


def forget_gate_retention(f):
    return torch.exp(torch.cumsum(torch.log(f), dim=1))


SOLUTIONS = {
    check_lstm_cell: lstm_cell,
    check_gru_cell: gru_cell,
    check_count_lstm_parameters: count_lstm_parameters,
    check_forget_gate_retention: forget_gate_retention,
}

# ---------------------------------------------------------------------------------------------
# Mutants


def lstm_reordered(order):
    """An LSTM cell that reads the four blocks in the given order instead of i, f, g, o."""
    def cell(x, h, c, W_ih, W_hh, b_ih, b_hh):
        blocks = dict(zip(order, (x @ W_ih.T + b_ih + h @ W_hh.T + b_hh).chunk(4, dim=-1)))
        c_new = torch.sigmoid(blocks["f"]) * c + torch.sigmoid(blocks["i"]) * torch.tanh(
            blocks["g"])
        return torch.sigmoid(blocks["o"]) * torch.tanh(c_new), c_new
    return cell


def lstm_sigmoid_candidate(x, h, c, W_ih, W_hh, b_ih, b_hh):
    i, f, g, o = torch.sigmoid(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh).chunk(4, dim=-1)
    c_new = f * c + i * g
    return o * torch.tanh(c_new), c_new


def lstm_one_bias(x, h, c, W_ih, W_hh, b_ih, b_hh):
    return lstm_cell(x, h, c, W_ih, W_hh, b_ih, torch.zeros_like(b_hh))


def lstm_h_without_tanh(x, h, c, W_ih, W_hh, b_ih, b_hh):
    i, f, g, o = (x @ W_ih.T + b_ih + h @ W_hh.T + b_hh).chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * c_new, c_new


def lstm_returns_c_first(*args):
    h_new, c_new = lstm_cell(*args)
    return c_new, h_new


def lstm_library(x, h, c, W_ih, W_hh, b_ih, b_hh):
    return torch.lstm_cell(x, (h, c), W_ih, W_hh, b_ih, b_hh)


def lstm_nn_module(x, h, c, W_ih, W_hh, b_ih, b_hh):
    module = nn.LSTMCell(x.shape[-1], h.shape[-1], dtype=x.dtype)
    with torch.no_grad():
        for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                               (W_ih, W_hh, b_ih, b_hh)):
            getattr(module, name).copy_(value)
    h_new, c_new = module(x, (h, c))
    return h_new.detach(), c_new.detach()


def lstm_seqlib(x, h, c, W_ih, W_hh, b_ih, b_hh):
    from seqlib.models.rnn import LSTMCell

    cell = LSTMCell(x.shape[-1], h.shape[-1]).to(x.dtype)
    with torch.no_grad():
        for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                               (W_ih, W_hh, b_ih, b_hh)):
            getattr(cell, name).copy_(value)
        return cell(x, (h, c))


def lstm_in_float64(*args):
    return tuple(t.double() for t in lstm_cell(*(a.double() for a in args)))


def lstm_updates_c_in_place(x, h, c, W_ih, W_hh, b_ih, b_hh):
    h_new, c_new = lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh)
    c.copy_(c_new)
    return h_new, c


def gru_mixing_reversed(x, h, W_ih, W_hh, b_ih, b_hh):
    d = h.shape[-1]
    r_x, z_x, n_x = (x @ W_ih.T + b_ih).chunk(3, dim=-1)
    r_h, z_h, n_h = (h @ W_hh.T + b_hh).chunk(3, dim=-1)
    r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    assert n.shape[-1] == d
    return z * n + (1 - z) * h


def gru_reset_before(x, h, W_ih, W_hh, b_ih, b_hh):
    d = h.shape[-1]
    r_x, z_x, n_x = (x @ W_ih.T + b_ih).chunk(3, dim=-1)
    r = torch.sigmoid(r_x + h @ _rows(W_hh, 0, d).T + _rows(b_hh, 0, d))
    z = torch.sigmoid(z_x + h @ _rows(W_hh, 1, d).T + _rows(b_hh, 1, d))
    n = torch.tanh(n_x + (r * h) @ _rows(W_hh, 2, d).T + _rows(b_hh, 2, d))
    return (1 - z) * n + z * h


def gru_order_zrn(x, h, W_ih, W_hh, b_ih, b_hh):
    z_x, r_x, n_x = (x @ W_ih.T + b_ih).chunk(3, dim=-1)
    z_h, r_h, n_h = (h @ W_hh.T + b_hh).chunk(3, dim=-1)
    r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    return (1 - z) * n + z * h


def gru_no_hidden_bias(x, h, W_ih, W_hh, b_ih, b_hh):
    return gru_cell(x, h, W_ih, W_hh, b_ih, torch.zeros_like(b_hh))


def gru_sigmoid_candidate(x, h, W_ih, W_hh, b_ih, b_hh):
    r_x, z_x, n_x = (x @ W_ih.T + b_ih).chunk(3, dim=-1)
    r_h, z_h, n_h = (h @ W_hh.T + b_hh).chunk(3, dim=-1)
    r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
    n = torch.sigmoid(n_x + r * n_h)
    return (1 - z) * n + z * h


def gru_library(x, h, W_ih, W_hh, b_ih, b_hh):
    return torch.gru_cell(x, h, W_ih, W_hh, b_ih, b_hh)


def gru_seqlib(x, h, W_ih, W_hh, b_ih, b_hh):
    from seqlib.models.rnn import GRUCell

    cell = GRUCell(x.shape[-1], h.shape[-1]).to(x.dtype)
    with torch.no_grad():
        for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                               (W_ih, W_hh, b_ih, b_hh)):
            getattr(cell, name).copy_(value)
        return cell(x, h)


def retention_final_only(f):
    return torch.prod(f, dim=1)


def retention_sum(f):
    return torch.cumsum(f, dim=1)


def retention_exclusive(f):
    return torch.cumprod(F.pad(f, (0, 0, 1, 0), value=1.0)[:, :-1], dim=1)


def retention_wrong_axis(f):
    return torch.cumprod(f, dim=-1)


def retention_mean_gate(f):
    steps = torch.arange(1, f.shape[1] + 1, dtype=f.dtype).view(1, -1, 1)
    return f.mean(dim=1, keepdim=True) ** steps


MUTANTS = [
    (check_lstm_cell, lstm_reordered("ifog"), ["case 1 of 5", "gate order", "i, f, g, o"]),
    (check_lstm_cell, lstm_reordered("figo"), ["values differ", "gate order"]),
    (check_lstm_cell, lstm_sigmoid_candidate, ["values differ", "uses tanh, not a sigmoid"]),
    (check_lstm_cell, lstm_one_bias, ["values differ", "both b_ih and b_hh"]),
    (check_lstm_cell, lstm_h_without_tanh, ["at index (0, 0,", "o * tanh(c_new)"]),
    (check_lstm_cell, lstm_returns_c_first, ["values differ at index (0,"]),
    (check_lstm_cell, lstm_library, ["calls torch.lstm_cell"]),
    (check_lstm_cell, lstm_nn_module, ["calls torch.lstm_cell"]),
    (check_lstm_cell, lstm_seqlib, ["calls seqlib.models.rnn.LSTMCell"]),
    (check_lstm_cell, lstm_in_float64, ["case 5 of 5", "dtype float64 instead of float32",
                                        "inputs' dtype"]),
    (check_lstm_cell, lstm_updates_c_in_place, ["changed its input `c` in place"]),
    (check_lstm_cell, lambda *args: lstm_cell(*args)[0], ["tuple (h_new, c_new)"]),
    (check_gru_cell, gru_mixing_reversed, ["case 1 of 5", "wrong way round", "OLD state"]),
    (check_gru_cell, gru_reset_before, ["values differ", "AFTER the matrix product"]),
    (check_gru_cell, gru_order_zrn, ["values differ", "r, z, n"]),
    (check_gru_cell, gru_no_hidden_bias, ["values differ", "a bias is missing"]),
    (check_gru_cell, gru_sigmoid_candidate, ["values differ", "uses tanh"]),
    (check_gru_cell, gru_library, ["calls torch.gru_cell"]),
    (check_gru_cell, gru_seqlib, ["calls seqlib.models.rnn.GRUCell"]),
    (check_count_lstm_parameters, lambda e, d: 4 * (e * d + d * d + d),
     ["expected 200, got 180", "two, b_ih and b_hh"]),
    (check_count_lstm_parameters, lambda e, d: 3 * (e * d + d * d + 2 * d),
     ["expected 200, got 150", "GRU's count"]),
    (check_count_lstm_parameters, lambda e, d: 4 * (2 * e * d + 2 * d),
     ["expected 200, got 160", "(4 * d_hidden, d_hidden)"]),
    (check_count_lstm_parameters, lambda e, d: e * d + d * d + 2 * d,
     ["expected 200, got 50", "four gates"]),
    (check_count_lstm_parameters, lambda e, d: float(4 * (e * d + d * d + 2 * d) + 1),
     ["case 1 of 5", "weight_ih (4d, e)"]),
    (check_forget_gate_retention, retention_final_only, ["shape (1, 1) instead of (1, 4, 1)",
                                                          "EVERY step"]),
    (check_forget_gate_retention, retention_sum, ["expected 0.25, got 1", "multiplies"]),
    (check_forget_gate_retention, retention_exclusive, ["expected 0.5, got 1", "off by one"]),
    (check_forget_gate_retention, retention_wrong_axis, ["case 1 of 5", "over TIME"]),
    (check_forget_gate_retention, retention_mean_gate, ["case 2 of 5", "values differ"]),
]


def test_every_check_has_a_solution_and_two_mutants():
    assert set(SOLUTIONS) == set(CHECKS)
    for check in CHECKS:
        assert sum(m[0] is check for m in MUTANTS) >= 2, f"{check.__name__}: too few mutants"


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_check_passes_a_correct_solution(check, capsys):
    assert_check_passes(check, SOLUTIONS[check], capsys)


@pytest.mark.parametrize("check, mutant, words", MUTANTS,
                         ids=[f"{m[0].__name__}-{i}" for i, m in enumerate(MUTANTS)])
def test_check_rejects_a_wrong_solution(check, mutant, words, capsys):
    assert_check_rejects(check, mutant, words, capsys)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_not_implemented_reads_as_not_attempted(check):
    assert_stub_reads_as_not_attempted(check)


def test_refusing_seqlib_cells_is_undone_after_the_check():
    from seqlib.models.rnn import GRUCell, LSTMCell

    with pytest.raises(AssertionError):
        check_lstm_cell(lstm_seqlib)
    with pytest.raises(AssertionError):
        check_gru_cell(gru_seqlib)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    LSTMCell(3, 4)(x, (h, h))  # the cells work again
    GRUCell(3, 4)(x, h)


def test_the_cells_agree_with_pytorch():
    # the references that the checks hold students to are PyTorch's cells
    g = torch.Generator().manual_seed(0)
    x, h, c = (torch.randn(3, n, generator=g, dtype=torch.float64) for n in (5, 4, 4))
    lstm, gru = nn.LSTMCell(5, 4, dtype=torch.float64), nn.GRUCell(5, 4, dtype=torch.float64)
    weights = [lambda m: (m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh)][0]
    with torch.no_grad():
        h_ref, c_ref = lstm(x, (h, c))
        got = ex05._lstm_reference(x, h, c, *weights(lstm))
        assert torch.allclose(got[0], h_ref, atol=1e-12)
        assert torch.allclose(got[1], c_ref, atol=1e-12)
        assert torch.allclose(ex05._gru_reference(x, h, *weights(gru)), gru(x, h), atol=1e-12)
    assert ex05._count_reference(10, 20) == sum(p.numel() for p in nn.LSTM(10, 20).parameters())
    assert math.isclose(ex05._retention_reference(torch.full((1, 3, 1), 0.5))[0, -1, 0].item(),
                        0.125)
