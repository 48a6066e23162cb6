"""seqlib.analysis: the gradients it reports are the true dL/ds_t, checked against the Jacobian
product written out by hand and against PyTorch's own recurrent modules."""

import pytest
import torch
from torch import nn

from seqlib.analysis import gradient_norms_by_distance, state_gradients
from seqlib.models.rnn import GRU, LSTM, RNN


def _layer(cls, d_in=3, d_hidden=5, seed=0):
    torch.manual_seed(seed)
    return cls(d_in, d_hidden).double()


def test_rnn_gradients_are_the_jacobian_product(generator):
    layer = _layer(RNN)
    x = torch.randn(2, 7, 3, generator=generator, dtype=torch.float64)
    u = torch.randn(2, 5, generator=generator, dtype=torch.float64)
    grads = state_gradients(layer, x, direction=u)
    assert grads.shape == (2, 8, 5)
    hs, _ = layer(x)  # (b, l, h): h_1 .. h_l
    W_h = layer.cell.weight_hh.detach()
    g = u
    assert torch.allclose(grads[:, 7], u)
    for t in range(7, 0, -1):  # dL/dh_{t-1} = W_h^T ((1 - h_t^2) * dL/dh_t)
        g = ((1 - hs[:, t - 1].detach() ** 2) * g) @ W_h
        assert torch.allclose(grads[:, t - 1], g, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("cls", [RNN, GRU])
def test_first_gradient_equals_pytorchs_initial_state_gradient(cls, generator):
    layer = _layer(cls)
    x = torch.randn(3, 9, 3, generator=generator, dtype=torch.float64)
    u = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    reference = layer.to_torch()
    h0 = torch.zeros(1, 3, 5, dtype=torch.float64, requires_grad=True)
    out, _ = reference(x, h0)
    (out[:, -1] * u).sum().backward()
    grads = state_gradients(layer, x, direction=u)
    assert torch.allclose(grads[:, 0], h0.grad[0], rtol=1e-10, atol=1e-14)


def test_lstm_cell_state_gradient_equals_pytorchs(generator):
    layer = _layer(LSTM)
    x = torch.randn(2, 6, 3, generator=generator, dtype=torch.float64)
    u = torch.randn(2, 5, generator=generator, dtype=torch.float64)
    reference = layer.to_torch()
    h0 = torch.zeros(1, 2, 5, dtype=torch.float64, requires_grad=True)
    c0 = torch.zeros(1, 2, 5, dtype=torch.float64, requires_grad=True)
    _, (_, c_n) = reference(x, (h0, c0))
    (c_n[0] * u).sum().backward()
    grads = state_gradients(layer, x, part=1, direction=u)
    assert torch.allclose(grads[:, 0], c0.grad[0], rtol=1e-10, atol=1e-14)


def test_norms_by_distance_start_at_one_and_leave_parameters_alone(generator):
    layer = _layer(RNN).float()
    x = torch.randn(4, 12, 3, generator=generator)
    norms = gradient_norms_by_distance(layer, x)
    assert norms.shape == (4, 13)
    assert torch.allclose(norms[:, 0], torch.ones(4))
    grads = state_gradients(layer, x)
    assert torch.allclose(norms, grads.norm(dim=-1).flip(1))
    assert all(p.grad is None for p in layer.parameters())
    # the same seed gives the same default direction
    assert torch.equal(norms, gradient_norms_by_distance(layer, x))


def test_works_when_parameters_are_frozen(generator):
    layer = _layer(RNN).requires_grad_(False)
    x = torch.randn(1, 4, 3, generator=generator, dtype=torch.float64)
    assert torch.isfinite(state_gradients(layer, x)).all()


def test_errors_name_the_problem(generator):
    lstm = _layer(LSTM)
    x = torch.randn(1, 4, 3, generator=generator, dtype=torch.float64)
    with pytest.raises(ValueError, match="part="):
        state_gradients(lstm, x)
    with pytest.raises(ValueError, match="part=2"):
        state_gradients(lstm, x, part=2)
    with pytest.raises(ValueError, match=r"\(b, l, e\)"):
        state_gradients(_layer(RNN), x[0])


def test_matches_nn_rnn_direct(generator):
    # the same measurement on a PyTorch RNN built first, weights copied into seqlib's
    torch.manual_seed(1)
    module = nn.RNN(2, 4, batch_first=True).double()
    layer = RNN.from_torch(module)
    x = torch.randn(2, 5, 2, generator=generator, dtype=torch.float64)
    u = torch.randn(4, generator=generator, dtype=torch.float64)
    h0 = torch.zeros(1, 2, 4, dtype=torch.float64, requires_grad=True)
    out, _ = module(x, h0)
    (out[:, -1] * u).sum().backward()
    assert torch.allclose(state_gradients(layer, x, direction=u)[:, 0], h0.grad[0])
