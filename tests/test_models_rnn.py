"""seqlib.models.rnn: every cell and layer equals PyTorch's with copied weights (float64,
outputs, final state and every gradient), step() equals forward(), nothing mutates a state, the
language model trains with fit and samples, and bad inputs are refused with a clear message."""

import pytest
import torch
from torch import nn

from seqlib.decoding import sample
from seqlib.models.rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, RNNLanguageModel
from seqlib.train import fit, lm_batches

TOL64 = 1e-12
KINDS = {
    "rnn": (RNN, RNNCell, nn.RNN, nn.RNNCell),
    "rnn-relu": (RNN, RNNCell, nn.RNN, nn.RNNCell),
    "lstm": (LSTM, LSTMCell, nn.LSTM, nn.LSTMCell),
    "gru": (GRU, GRUCell, nn.GRU, nn.GRUCell),
}


def _options(kind):
    return {"nonlinearity": "relu"} if kind == "rnn-relu" else {}


def _torch_layer(kind, d_in=5, d_hidden=7):
    torch.manual_seed(0)
    return KINDS[kind][2](d_in, d_hidden, batch_first=True, **_options(kind)).double()


def _random_state(kind, batch, d_hidden, generator):
    h = torch.randn(batch, d_hidden, dtype=torch.double, generator=generator)
    if kind == "lstm":
        return h, torch.randn(batch, d_hidden, dtype=torch.double, generator=generator)
    return h


def _to_torch_state(kind, state):
    """Ours (b, h) or (h, c) -> PyTorch's (1, b, h) or ((1, b, h), (1, b, h))."""
    if kind == "lstm":
        return tuple(s[None].clone() for s in state)
    return state[None].clone()


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def _max_diff(a, b):
    return float((a - b).detach().abs().max())


@pytest.mark.parametrize("kind", list(KINDS))
def test_layer_equals_torch_with_copied_weights(kind, generator):
    ref = _torch_layer(kind)
    ours = KINDS[kind][0].from_torch(ref)
    assert ours.cell.weight_hh.dtype == torch.double
    x = torch.randn(3, 9, 5, dtype=torch.double, generator=generator, requires_grad=True)
    state0 = _random_state(kind, 3, 7, generator)
    for s in _flat(state0):
        s.requires_grad_(True)

    out, state = ours(x, state0)
    ref_out, ref_state = ref(x, _to_torch_state(kind, state0))
    assert out.shape == (3, 9, 7)
    assert _max_diff(out, ref_out) < TOL64
    for mine, theirs in zip(_flat(state), _flat(ref_state)):
        assert _max_diff(mine, theirs[0]) < TOL64

    # gradients of a random function of the outputs and the final state
    up_out = torch.randn(out.shape, dtype=torch.double, generator=generator)
    ups = [torch.randn(3, 7, dtype=torch.double, generator=generator) for _ in _flat(state)]
    loss = (out * up_out).sum() + sum((s * u).sum() for s, u in zip(_flat(state), ups))
    inputs = [x, *_flat(state0)]
    ours_params = [ours.cell.weight_ih, ours.cell.weight_hh, ours.cell.bias_ih,
                   ours.cell.bias_hh]
    grads = torch.autograd.grad(loss, inputs + ours_params)
    ref_loss = (ref_out * up_out).sum() + sum(
        (s[0] * u).sum() for s, u in zip(_flat(ref_state), ups))
    ref_params = [ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0]
    ref_grads = torch.autograd.grad(ref_loss, inputs + ref_params)
    names = ["x", "h0", "c0"][: len(inputs)] + ["w_ih", "w_hh", "b_ih", "b_hh"]
    for name, g, rg in zip(names, grads, ref_grads):
        assert _max_diff(g, rg) < TOL64, name


@pytest.mark.parametrize("kind", list(KINDS))
def test_cell_equals_torch_cell(kind, generator):
    torch.manual_seed(1)
    ref = KINDS[kind][3](4, 6, **_options(kind)).double()
    ours = KINDS[kind][1](4, 6, **_options(kind))
    ours.load_from_torch(ref)
    x = torch.randn(2, 4, dtype=torch.double, generator=generator)
    state = _random_state(kind, 2, 6, generator)
    mine = _flat(ours(x, state))
    theirs = _flat(ref(x, state))
    for a, b in zip(mine, theirs):
        assert _max_diff(a, b) < TOL64
    # and the other way round: our weights copied into a fresh PyTorch cell
    fresh = KINDS[kind][3](4, 6, **_options(kind)).double()
    torch.manual_seed(2)
    ours.reset_parameters()
    ours.copy_to_torch(fresh)
    for a, b in zip(_flat(ours(x, state)), _flat(fresh(x, state))):
        assert _max_diff(a, b) < TOL64


@pytest.mark.parametrize("kind", list(KINDS))
def test_to_torch_round_trip(kind, generator):
    torch.manual_seed(3)
    ours = KINDS[kind][0](5, 7, **_options(kind)).double()
    ref = ours.to_torch()
    assert isinstance(ref, KINDS[kind][2]) and ref.batch_first
    x = torch.randn(2, 6, 5, dtype=torch.double, generator=generator)
    assert _max_diff(ours(x)[0], ref(x)[0]) < TOL64


def test_zero_default_state_matches_torch_default(generator):
    ref = _torch_layer("lstm")
    x = torch.randn(2, 4, 5, dtype=torch.double, generator=generator)
    assert _max_diff(LSTM.from_torch(ref)(x)[0], ref(x)[0]) < TOL64


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_step_equals_forward_float32(kind, generator):
    torch.manual_seed(0)
    layer = KINDS[kind][0](5, 8)
    x = torch.randn(3, 12, 5, generator=generator)
    out, final = layer(x)
    state = layer.init_state(3)
    for t in range(12):
        y, state = layer.step(x[:, t], state)
        assert torch.allclose(y, out[:, t], atol=1e-5), t
    for a, b in zip(_flat(state), _flat(final)):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_two_halves_with_the_state_handed_on_equal_one_pass(kind, generator):
    torch.manual_seed(0)
    layer = KINDS[kind][0](4, 6)
    x = torch.randn(2, 10, 4, generator=generator)
    out, final = layer(x)
    out1, mid = layer(x[:, :3])
    out2, end = layer(x[:, 3:], mid)
    assert torch.allclose(torch.cat([out1, out2], 1), out, atol=1e-6)
    for a, b in zip(_flat(end), _flat(final)):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_language_model_step_equals_forward_and_never_mutates(kind, generator):
    torch.manual_seed(0)
    model = RNNLanguageModel(11, d_embed=6, d_hidden=9, cell=kind)
    x = torch.randint(0, 11, (2, 8), generator=generator)
    logits = model(x)
    assert logits.shape == (2, 8, 11)
    state = model.init_state(2)
    for t in range(8):
        kept = [s.clone() for s in _flat(state)]
        step_logits, new_state = model.step(x[:, t], state)
        for s, k in zip(_flat(state), kept):
            assert torch.equal(s, k), "step changed its state in place"
        assert torch.allclose(step_logits, logits[:, t], atol=1e-5), t
        state = new_state
    # forward_with_state carries the state across windows
    first, mid = model.forward_with_state(x[:, :5])
    second, _ = model.forward_with_state(x[:, 5:], mid)
    assert torch.allclose(torch.cat([first, second], 1), logits, atol=1e-5)


def test_layer_forward_never_mutates_its_inputs(generator):
    layer = LSTM(3, 4)
    x = torch.randn(2, 5, 3, generator=generator)
    state = (torch.randn(2, 4, generator=generator), torch.randn(2, 4, generator=generator))
    kept = [x.clone(), state[0].clone(), state[1].clone()]
    layer(x, state)
    layer.step(x[:, 0], state)
    for a, b in zip([x, *state], kept):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["rnn", "gru"])
def test_language_model_learns_with_fit_and_samples(kind):
    # a periodic sequence 0 1 2 3 4 0 1 2 ... is learned to near-zero loss in a few steps
    tokens = torch.arange(400) % 5
    torch.manual_seed(0)
    model = RNNLanguageModel(5, d_embed=8, d_hidden=16, cell=kind)
    history = fit(model, lm_batches(tokens, 8, 12), steps=60, lr=3e-2, progress=False)
    assert history.train_loss[-1] < 0.25 * history.train_loss[0]
    new = sample(model, [0, 1], 6, temperature=0)
    assert new == [2, 3, 4, 0, 1, 2]


def test_empty_sequence_returns_the_initial_state(generator):
    layer = GRU(3, 4)
    state = torch.randn(2, 4, generator=generator)
    out, final = layer(torch.zeros(2, 0, 3), state)
    assert out.shape == (2, 0, 4) and torch.equal(final, state)


@pytest.mark.parametrize("call, message", [
    (lambda: RNN(3, 4)(torch.zeros(2, 5)), r"x must have shape \(b, l, e\).*d_in = 3.*\(2, 5\)"),
    (lambda: RNN(3, 4)(torch.zeros(2, 5, 2)), r"x must have shape \(b, l, e\).*\(2, 5, 2\)"),
    (lambda: RNN(3, 4)(torch.zeros(2, 5, 3), torch.zeros(3, 4)),
     r"state must have shape \(b, h\) = \(2, 4\), got shape \(3, 4\)"),
    (lambda: RNN(3, 4)(torch.zeros(2, 5, 3), torch.zeros(1, 2, 4)),
     r"state must have shape \(b, h\) = \(2, 4\), got shape \(1, 2, 4\)"),
    (lambda: LSTM(3, 4)(torch.zeros(2, 5, 3), torch.zeros(2, 4)),
     r"state must be a tuple \(h, c\)"),
    (lambda: LSTM(3, 4).step(torch.zeros(2, 3), (torch.zeros(2, 4), torch.zeros(2, 5))),
     r"state\[1\] \(c\) must have shape \(b, h\) = \(2, 4\), got shape \(2, 5\)"),
    (lambda: GRU(3, 4).step(torch.zeros(2, 1, 3), torch.zeros(2, 4)),
     r"x_t must have shape \(b, e\).*\(2, 1, 3\)"),
    (lambda: GRUCell(3, 4)(torch.zeros(2, 3, dtype=torch.double)), r"x_t has dtype"),
    (lambda: RNNCell(3, 4, nonlinearity="sigmoid"), r"nonlinearity"),
    (lambda: RNN(0, 4), r"d_in"),
    (lambda: RNNLanguageModel(5, cell="transformer"), r"cell must be one of"),
    (lambda: RNNLanguageModel(5)(torch.zeros(2, 3)), r"x must hold integer token ids"),
    (lambda: RNNLanguageModel(5).step(torch.tensor([[1]]), None), r"x_t must have shape \(b,\)"),
    (lambda: RNN.from_torch(nn.RNN(3, 4, num_layers=2)), r"num_layers=1"),
    (lambda: RNN(3, 4).load_from_torch(nn.RNN(3, 5)), r"weight_ih_l0 has shape"),
    (lambda: RNN(3, 4).load_from_torch(nn.RNN(3, 4, nonlinearity="relu")), r"nonlinearity"),
])
def test_bad_inputs_raise_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_wrong_module_type_is_refused():
    with pytest.raises(TypeError, match="module must be one of LSTM, LSTMCell"):
        LSTM(3, 4).load_from_torch(nn.GRU(3, 4))
