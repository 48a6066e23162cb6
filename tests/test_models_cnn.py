import pytest
import torch
import torch.nn.functional as F

from seqlib.decoding import sample
from seqlib.models.cnn import (
    CausalConv1d,
    CNNLanguageModel,
    conv1d,
    layers_needed,
    receptive_field,
    stack_dilations,
)
from seqlib.train import fit, lm_batches


def torch_conv(x, weight, bias, dilation, causal):
    """F.conv1d in PyTorch's (b, d, l) layout, padded the way conv1d promises."""
    span = (weight.shape[-1] - 1) * dilation
    if causal:
        x_pad = F.pad(x.transpose(1, 2), (span, 0))
        return F.conv1d(x_pad, weight, bias, dilation=dilation).transpose(1, 2)
    y = F.conv1d(x.transpose(1, 2), weight, bias, dilation=dilation, padding="same")
    return y.transpose(1, 2)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("k, dilation", [(1, 1), (2, 1), (3, 1), (4, 2), (5, 3), (3, 4)])
def test_conv1d_equals_torch_in_float64(k, dilation, causal, generator):
    x = torch.randn(2, 13, 3, generator=generator, dtype=torch.double)
    weight = torch.randn(5, 3, k, generator=generator, dtype=torch.double)
    bias = torch.randn(5, generator=generator, dtype=torch.double)
    for b in (bias, None):
        expected = torch_conv(x, weight, b, dilation, causal)
        got = conv1d(x, weight, b, dilation=dilation, causal=causal)
        assert got.shape == (2, 13, 5)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_conv1d_equals_nn_conv1d_with_copied_weights(generator):
    layer = torch.nn.Conv1d(4, 6, 3, dilation=2, padding="same").double()
    x = torch.randn(3, 10, 4, generator=generator, dtype=torch.double)
    got = conv1d(x, layer.weight, layer.bias, dilation=2, causal=False)
    expected = layer(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_conv1d_works_on_non_contiguous_inputs(generator):
    x = torch.randn(2, 4, 9, generator=generator, dtype=torch.double).transpose(1, 2)
    weight = torch.randn(2, 4, 3, generator=generator, dtype=torch.double)
    torch.testing.assert_close(conv1d(x, weight), torch_conv(x, weight, None, 1, True))


@pytest.mark.parametrize("k, dilation", [(2, 1), (3, 2), (4, 3)])
def test_causal_output_never_depends_on_the_future(k, dilation, generator):
    x = torch.randn(1, 12, 2, generator=generator, dtype=torch.double, requires_grad=True)
    weight = torch.randn(3, 2, k, generator=generator, dtype=torch.double)
    y = conv1d(x, weight, dilation=dilation)
    for t in range(12):
        (grad,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        seen = grad[0].abs().sum(-1) > 0
        expected = torch.zeros(12, dtype=torch.bool)
        expected[[s for s in range(t - (k - 1) * dilation, t + 1, dilation) if s >= 0]] = True
        assert torch.equal(seen, expected), t


def test_receptive_field_formula():
    assert receptive_field(3, 0) == 1
    assert receptive_field(3, 4) == 9
    assert receptive_field(2, 4, [1, 2, 4, 8]) == 16
    assert receptive_field([3, 5], 2, [1, 2]) == 1 + 2 + 8
    assert stack_dilations(4, True) == [1, 2, 4, 8]
    assert stack_dilations(3, False) == [1, 1, 1]


@pytest.mark.parametrize("k, n, dilated", [(2, 3, False), (3, 3, True), (2, 4, True),
                                           (4, 2, False)])
def test_model_receptive_field_equals_the_measured_one(k, n, dilated, generator):
    torch.manual_seed(0)
    model = CNNLanguageModel(7, 4, 6, kernel_size=k, n_layers=n, dilated=dilated).double()
    length = model.receptive_field + 6
    x = torch.randint(0, 7, (1, length), generator=generator)
    last = length - 1
    reached = []
    for s in range(length):
        changed = x.clone()
        changed[0, s] = (x[0, s] + 1) % 7
        diff = (model(changed) - model(x)).abs().amax(-1)[0]
        assert (diff[:s] == 0).all(), f"changing token {s} changed an earlier output"
        if diff[last] > 0:
            reached.append(s)
    assert reached == list(range(last - model.receptive_field + 1, last + 1))


@pytest.mark.parametrize("length, k", [(1, 2), (2, 2), (9, 3), (10, 3), (100, 2), (1000, 3),
                                       (1025, 2), (1026, 5)])
def test_layers_needed_is_the_smallest_sufficient_depth(length, k):
    for dilated in (False, True):
        n = layers_needed(length, k, dilated)
        assert receptive_field(k, n, stack_dilations(n, dilated)) >= length
        assert n == 0 or receptive_field(k, n - 1, stack_dilations(n - 1, dilated)) < length


@pytest.mark.parametrize("k, n, dilated", [(3, 3, False), (2, 4, True), (1, 2, False),
                                           (4, 3, True)])
def test_step_equals_forward(k, n, dilated, generator):
    torch.manual_seed(0)
    model = CNNLanguageModel(9, 5, 8, kernel_size=k, n_layers=n, dilated=dilated)
    x = torch.randint(0, 9, (3, 20), generator=generator)
    full = model(x)
    state = model.init_state(3)
    for t in range(x.shape[1]):
        kept = state.clone()
        logits, new_state = model.step(x[:, t], state)
        assert torch.equal(state, kept), "step changed the state it was given"
        torch.testing.assert_close(logits, full[:, t], rtol=0, atol=1e-5)
        state = new_state
    assert full.shape == (3, 20, 9)


def test_causal_conv_layer_step_equals_forward(generator):
    torch.manual_seed(0)
    layer = CausalConv1d(3, 4, kernel_size=3, dilation=2).double()
    x = torch.randn(2, 9, 3, generator=generator, dtype=torch.double)
    full, buffer = layer(x), layer.init_buffer(2)
    for t in range(9):
        y_t, buffer = layer.step(x[:, t], buffer)
        torch.testing.assert_close(y_t, full[:, t], rtol=0, atol=1e-12)


def test_gradients_reach_every_parameter_and_match_finite_differences(generator):
    torch.manual_seed(0)
    model = CNNLanguageModel(5, 3, 4, kernel_size=2, n_layers=2, dilated=True).double()
    x = torch.randint(0, 5, (2, 6), generator=generator)
    model(x).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    w = torch.randn(2, 2, 3, generator=generator, dtype=torch.double, requires_grad=True)
    xs = torch.randn(1, 5, 2, generator=generator, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: conv1d(a, b, dilation=2), (xs, w))


def test_plugs_into_fit_and_sample():
    torch.manual_seed(0)
    tokens = torch.arange(200) % 4  # 0 1 2 3 0 1 2 3 ...: next token is a function of this one
    model = CNNLanguageModel(4, 4, 8, kernel_size=2, n_layers=2)
    history = fit(model, lm_batches(tokens, 8, 16), steps=60, lr=2e-2, progress=False)
    assert history.train_loss[-1] < 0.2 * history.train_loss[0]
    new = sample(model, [0, 1], 6, temperature=0)
    assert new == [2, 3, 0, 1, 2, 3]


@pytest.mark.parametrize("call, message", [
    (lambda: conv1d(torch.zeros(2, 5), torch.zeros(1, 2, 3)), r"x must have shape \(b, l, d_in"),
    (lambda: conv1d(torch.zeros(1, 5, 3), torch.zeros(1, 2, 3)), r"x must have shape"),
    (lambda: conv1d(torch.zeros(1, 5, 2), torch.zeros(2, 3)), r"weight must have shape"),
    (lambda: conv1d(torch.zeros(1, 5, 2), torch.zeros(4, 2, 3), torch.zeros(3)),
     r"bias must be None or have shape \(d_out,\) = \(4,\), got \(3,\)"),
    (lambda: conv1d(torch.zeros(1, 5, 2), torch.zeros(4, 2, 3), dilation=0), "dilation"),
    (lambda: conv1d(torch.zeros(1, 5, 2), torch.zeros(4, 2, 3).double()), "weight must have"),
    (lambda: receptive_field(3, 2, [1]), "dilations must hold n_layers = 2"),
    (lambda: receptive_field([3, 3, 3], 2), "kernel_size must hold"),
    (lambda: layers_needed(10, 1, True), "kernel_size must be an int >= 2"),
    (lambda: layers_needed(0, 3, True), "length"),
    (lambda: CNNLanguageModel(5, n_layers=0), "n_layers"),
    (lambda: CNNLanguageModel(5)(torch.tensor([[0, 7]])), r"x holds ids"),
    (lambda: CNNLanguageModel(5)(torch.tensor([0, 1])), r"x must have shape \(b, l\)"),
    (lambda: CNNLanguageModel(5).step(torch.tensor([0]), torch.zeros(1, 4, 1, 64)),
     r"state must have shape \(b, n_layers, w, d_hidden\) = \(1, 4, 2, 64\)"),
    (lambda: CausalConv1d(2, 3, 2).step(torch.zeros(1, 3), torch.zeros(1, 1, 2)),
     r"x_t must have shape \(b, d_in\)"),
])
def test_bad_inputs_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
