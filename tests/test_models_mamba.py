"""seqlib.models.mamba and seqlib.models.norm: RMSNorm equals PyTorch's; the Mamba block's
step() equals forward() token by token (float64 to 1e-12, float32 to 1e-5), with and without
selection; one pass equals two halves with the state handed on; every backend gives the same
block output; the language model trains with fit and samples; bad inputs are refused."""

import pytest
import torch
from torch import nn

from seqlib.decoding import sample
from seqlib.models.mamba import MambaBlock, MambaLM, MambaState
from seqlib.models.norm import GatedRMSNorm, RMSNorm
from seqlib.train import fit, lm_batches

TOL64 = 1e-12
TOL32 = 1e-5


def _block(selective=True, dtype=torch.float64, **options):
    torch.manual_seed(0)
    return MambaBlock(12, d_state=4, selective=selective, **options).to(dtype)


def _run_steps(model, xs, state):
    outputs = []
    for t in range(xs.shape[1]):
        y, state = model.step(xs[:, t], state)
        outputs.append(y)
    return torch.stack(outputs, dim=1), state


def test_rms_norm_equals_torch_in_float64(generator):
    ours, theirs = RMSNorm(10, eps=1e-6).double(), nn.RMSNorm(10, eps=1e-6).double()
    with torch.no_grad():
        ours.weight.copy_(torch.randn(10, generator=generator))
        theirs.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 10, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=TOL64)


def test_rms_norm_keeps_the_dtype_and_computes_in_float32(generator):
    x = 300 * torch.randn(4, 64, generator=generator)
    got = RMSNorm(64)(x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), RMSNorm(64)(x.bfloat16().float()), rtol=1e-2,
                               atol=1e-2)


@pytest.mark.parametrize("group_size", [None, 4])
def test_gated_rms_norm_normalises_the_gated_input(group_size, generator):
    x, z = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=generator).unbind(0)
    norm = GatedRMSNorm(8, eps=1e-6, group_size=group_size).double()
    gated = (x * torch.sigmoid(z) * z).unflatten(-1, (8 // (group_size or 8), -1))
    expected = gated / gated.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    torch.testing.assert_close(norm(x, z), expected.flatten(-2), rtol=0, atol=TOL64)


@pytest.mark.parametrize("selective", [True, False])
@pytest.mark.parametrize("length", [1, 7, 64])
def test_block_step_equals_forward_in_float64(selective, length, generator):
    block = _block(selective)
    x = torch.randn(2, length, 12, dtype=torch.float64, generator=generator)
    y, final = block.forward_with_state(x)
    stepped, state = _run_steps(block, x, block.init_state(2))
    torch.testing.assert_close(stepped, y, rtol=0, atol=TOL64)
    torch.testing.assert_close(state.ssm, final.ssm, rtol=0, atol=TOL64)
    torch.testing.assert_close(state.conv, final.conv, rtol=0, atol=TOL64)


def test_block_step_equals_forward_in_float32(generator):
    block = _block(dtype=torch.float32)
    x = torch.randn(2, 30, 12, generator=generator)
    stepped, _ = _run_steps(block, x, block.init_state(2))
    assert (stepped - block(x)).abs().max() < TOL32


@pytest.mark.parametrize("selective", [True, False])
def test_two_halves_with_the_state_handed_on_equal_one_pass(selective, generator):
    block = _block(selective)
    x = torch.randn(2, 21, 12, dtype=torch.float64, generator=generator)
    y, final = block.forward_with_state(x)
    y1, s1 = block.forward_with_state(x[:, :2])  # shorter than the convolution's history
    y2, s2 = block.forward_with_state(x[:, 2:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=0, atol=TOL64)
    torch.testing.assert_close(s2.ssm, final.ssm, rtol=0, atol=TOL64)


def test_block_is_causal(generator):
    block = _block()
    x = torch.randn(1, 16, 12, dtype=torch.float64, generator=generator)
    changed = x.clone()
    changed[:, 9:] += 1.0
    torch.testing.assert_close(block(changed)[:, :9], block(x)[:, :9], rtol=0, atol=0)
    assert (block(changed)[:, 9:] - block(x)[:, 9:]).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["reference", "parallel", "triton"])
def test_every_backend_gives_the_same_block(backend, generator):
    if backend == "triton":
        pytest.importorskip("triton")
    block = _block(dtype=torch.float32, backend=backend)
    x = torch.randn(2, 9, 12, generator=generator)
    expected = _block(dtype=torch.float64, backend="reference")(x.double())
    assert (block(x).double() - expected).abs().max() < 1e-5


def test_selection_depends_on_the_input_only_when_selective(generator):
    x = torch.randn(2, 6, 12, dtype=torch.float64, generator=generator)
    fixed, chosen = _block(False).scan_inputs(x), _block(True).scan_inputs(x)
    assert fixed["delta"].shape == chosen["delta"].shape == (2, 24, 6)
    assert torch.equal(fixed["delta"][0, :, :1].expand(-1, 6), fixed["delta"][0])
    assert torch.equal(fixed["B"][0], fixed["B"][1])
    assert chosen["delta"].std(dim=2).min() > 0
    assert bool((chosen["delta"] > 0).all()) and bool((chosen["A"] < 0).all())


@pytest.mark.parametrize("selective", [True, False])
def test_gradients_reach_every_parameter(selective, generator):
    block = _block(selective)
    block(torch.randn(2, 8, 12, dtype=torch.float64, generator=generator)).square().sum(
    ).backward()
    for name, parameter in block.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, name


def test_step_never_mutates_the_state(generator):
    block = _block()
    state = MambaState(*(torch.randn(s.shape, dtype=s.dtype, generator=generator)
                         for s in block.init_state(2)))
    saved = [s.clone() for s in state]
    block.step(torch.randn(2, 12, dtype=torch.float64, generator=generator), state)
    assert all(torch.equal(a, b) for a, b in zip(state, saved))


def test_language_model_step_equals_forward(generator):
    torch.manual_seed(0)
    model = MambaLM(11, d_model=16, n_layers=2, d_state=4).double()
    ids = torch.randint(0, 11, (3, 10), generator=generator)
    logits, final = model.forward_with_state(ids)
    stepped, state = _run_steps(model, ids, model.init_state(3))
    torch.testing.assert_close(stepped, logits, rtol=0, atol=TOL64)
    torch.testing.assert_close(state[1].ssm, final[1].ssm, rtol=0, atol=TOL64)


def test_language_model_learns_with_fit_and_samples():
    tokens = torch.arange(400) % 5
    torch.manual_seed(0)
    model = MambaLM(5, d_model=16, n_layers=1, d_state=4)
    history = fit(model, lm_batches(tokens, 8, 12), steps=60, lr=1e-2, progress=False)
    assert history.train_loss[-1] < 0.25 * history.train_loss[0]
    assert sample(model, [0, 1], 6, temperature=0) == [2, 3, 4, 0, 1, 2]


@pytest.mark.parametrize("call, message", [
    (lambda b, m: b(torch.randn(2, 5, 11)), r"x must have shape \(b, l, d_model\)"),
    (lambda b, m: b(torch.randn(5, 12)), r"x must have shape \(b, l, d_model\)"),
    (lambda b, m: b.step(torch.randn(2, 1, 12), b.init_state(2)), r"x_t must have shape"),
    (lambda b, m: b.step(torch.randn(3, 12), b.init_state(2)), r"state.conv must have shape"),
    (lambda b, m: b.forward_with_state(torch.randn(2, 4, 12), (1, 2)), r"MambaState"),
    (lambda b, m: MambaBlock(0), r"d_model"),
    (lambda b, m: m(torch.tensor([[0, 7]])), r"ids in \[0, 6\]"),
    (lambda b, m: m.step(torch.tensor([0]), []), r"list of 1 block states"),
    (lambda b, m: GatedRMSNorm(8, group_size=3), r"group_size"),
])
def test_bad_inputs_name_the_argument(call, message):
    block, model = MambaBlock(12, d_state=4), MambaLM(7, d_model=8, n_layers=1)
    with pytest.raises((ValueError, TypeError), match=message):
        call(block, model)


def test_set_backend_reaches_every_block_and_keeps_the_output(generator):
    torch.manual_seed(0)
    model = MambaLM(7, d_model=8, n_layers=2, d_state=4)
    ids = torch.randint(0, 7, (2, 12), generator=generator)
    before = model(ids)
    assert model.set_backend("reference") is model
    assert [layer.block.backend for layer in model.layers] == ["reference", "reference"]
    torch.testing.assert_close(model(ids), before, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="backend must be None or one of"):
        model.set_backend("fastest")(ids)


@pytest.mark.parametrize("call, message", [
    (lambda: MambaBlock(8)(torch.randn(1, 3, 8, dtype=torch.float64)),
     r"x has dtype torch.float64.*parameters are torch.float32"),
    (lambda: MambaBlock(8).step(torch.randn(1, 8, dtype=torch.float64),
                                MambaBlock(8).init_state(1)), r"x_t has dtype"),
    (lambda: MambaBlock(8, selective="no"), r"selective must be True or False"),
    (lambda: GatedRMSNorm(8)(torch.randn(2, 8), None), r"z must be a torch.Tensor"),
])
def test_mixed_dtypes_and_bad_options_are_refused(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@pytest.mark.parametrize("selective", [True, False])
def test_empty_sequence_passes_the_state_through(selective, generator):
    block = _block(selective)
    _, state = block.forward_with_state(
        torch.randn(2, 5, 12, dtype=torch.float64, generator=generator))
    y, same = block.forward_with_state(torch.zeros(2, 0, 12, dtype=torch.float64), state)
    assert y.shape == (2, 0, 12)
    assert all(torch.equal(a, b) for a, b in zip(same, state))
    logits = MambaLM(5, d_model=8, n_layers=1)(torch.zeros(1, 0, dtype=torch.long))
    assert logits.shape == (1, 0, 5)
