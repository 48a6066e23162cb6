"""seqlib.models.mamba2: the Mamba2 block's step() equals forward() token by token (float64 to
1e-12, float32 to 1e-5) for lengths across chunk edges and for 1 and 2 groups; one pass equals
two halves with the state handed on; every SSD backend gives the same block; the language
model trains with fit and samples; bad configurations and inputs are refused."""

import pytest
import torch

from seqlib.decoding import sample
from seqlib.models.mamba2 import Mamba2Block, Mamba2LM, Mamba2State
from seqlib.train import fit, lm_batches

TOL64 = 1e-12
TOL32 = 1e-5


def _block(n_groups=1, dtype=torch.float64, **options):
    torch.manual_seed(0)
    return Mamba2Block(16, d_state=8, head_dim=8, n_groups=n_groups, chunk_size=16,
                       **options).to(dtype)


def _run_steps(model, xs, state):
    outputs = []
    for t in range(xs.shape[1]):
        y, state = model.step(xs[:, t], state)
        outputs.append(y)
    return torch.stack(outputs, dim=1), state


@pytest.mark.parametrize("n_groups", [1, 2])
@pytest.mark.parametrize("length", [1, 16, 33])
def test_block_step_equals_forward_in_float64(n_groups, length, generator):
    block = _block(n_groups)
    x = torch.randn(2, length, 16, dtype=torch.float64, generator=generator)
    y, final = block.forward_with_state(x)
    stepped, state = _run_steps(block, x, block.init_state(2))
    torch.testing.assert_close(stepped, y, rtol=0, atol=TOL64)
    torch.testing.assert_close(state.ssm, final.ssm, rtol=0, atol=TOL64)
    torch.testing.assert_close(state.conv, final.conv, rtol=0, atol=TOL64)


def test_block_step_equals_forward_in_float32(generator):
    block = _block(dtype=torch.float32)
    x = torch.randn(2, 40, 16, generator=generator)
    stepped, _ = _run_steps(block, x, block.init_state(2))
    assert (stepped - block(x)).abs().max() < TOL32


def test_two_halves_with_the_state_handed_on_equal_one_pass(generator):
    block = _block(2)
    x = torch.randn(2, 45, 16, dtype=torch.float64, generator=generator)
    y, final = block.forward_with_state(x)
    y1, s1 = block.forward_with_state(x[:, :19])  # the cut falls inside a chunk
    y2, s2 = block.forward_with_state(x[:, 19:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=0, atol=TOL64)
    torch.testing.assert_close(s2.ssm, final.ssm, rtol=0, atol=TOL64)


def test_block_is_causal(generator):
    block = _block()
    x = torch.randn(1, 40, 16, dtype=torch.float64, generator=generator)
    changed = x.clone()
    changed[:, 21:] -= 1.0
    torch.testing.assert_close(block(changed)[:, :21], block(x)[:, :21], rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", "quadratic", "chunked", "triton"])
def test_every_backend_gives_the_same_block(backend, generator):
    if backend == "triton":
        pytest.importorskip("triton")
    block = _block(2, dtype=torch.float32, backend=backend)
    x = torch.randn(2, 21, 16, generator=generator)
    expected = _block(2, dtype=torch.float64, backend="reference")(x.double())
    assert (block(x).double() - expected).abs().max() < 1e-5


def test_gradients_reach_every_parameter(generator):
    block = _block(2)
    block(torch.randn(2, 20, 16, dtype=torch.float64, generator=generator)).square().sum(
    ).backward()
    for name, parameter in block.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, name


def test_step_never_mutates_the_state(generator):
    block = _block()
    state = Mamba2State(*(torch.randn(s.shape, dtype=s.dtype, generator=generator)
                          for s in block.init_state(2)))
    saved = [s.clone() for s in state]
    block.step(torch.randn(2, 16, dtype=torch.float64, generator=generator), state)
    assert all(torch.equal(a, b) for a, b in zip(state, saved))


def test_language_model_step_equals_forward(generator):
    torch.manual_seed(0)
    model = Mamba2LM(11, d_model=16, n_layers=2, d_state=8, head_dim=8,
                     chunk_size=16).double()
    ids = torch.randint(0, 11, (3, 20), generator=generator)
    logits, final = model.forward_with_state(ids)
    stepped, state = _run_steps(model, ids, model.init_state(3))
    torch.testing.assert_close(stepped, logits, rtol=0, atol=TOL64)
    torch.testing.assert_close(state[0].ssm, final[0].ssm, rtol=0, atol=TOL64)


def test_language_model_learns_with_fit_and_samples():
    tokens = torch.arange(400) % 5
    torch.manual_seed(0)
    model = Mamba2LM(5, d_model=16, n_layers=1, d_state=8, head_dim=8, chunk_size=16)
    history = fit(model, lm_batches(tokens, 8, 12), steps=60, lr=1e-2, progress=False)
    assert history.train_loss[-1] < 0.25 * history.train_loss[0]
    assert sample(model, [0, 1], 6, temperature=0) == [2, 3, 4, 0, 1, 2]


@pytest.mark.parametrize("call, message", [
    (lambda b: b(torch.randn(2, 5, 15)), r"x must have shape \(b, l, d_model\)"),
    (lambda b: b.step(torch.randn(2, 16), b.init_state(3)), r"state.conv must have shape"),
    (lambda b: b.step(torch.randn(2, 16), Mamba2State(b.init_state(2).conv,
                                                       torch.zeros(2, 4, 8, 9))),
     r"state.ssm must have shape \(2, 4, 8, 8\)"),
    (lambda b: Mamba2Block(16, head_dim=12), r"head_dim=12 must divide"),
    (lambda b: Mamba2Block(16, head_dim=8, n_groups=3), r"n_groups=3 must divide the 4 heads"),
    (lambda b: Mamba2Block(16, head_dim=8, chunk_size=24), r"chunk_size must be a power of two"),
    (lambda b: b(torch.randn(1, 4, 16, dtype=torch.float64)), r"x has dtype torch.float64"),
])
def test_bad_inputs_name_the_argument(call, message):
    block = _block(dtype=torch.float32)
    with pytest.raises((ValueError, TypeError), match=message):
        call(block)


def test_empty_sequence_passes_the_state_through(generator):
    block = _block()
    _, state = block.forward_with_state(
        torch.randn(2, 5, 16, dtype=torch.float64, generator=generator))
    y, same = block.forward_with_state(torch.zeros(2, 0, 16, dtype=torch.float64), state)
    assert y.shape == (2, 0, 16)
    assert all(torch.equal(a, b) for a, b in zip(same, state))
