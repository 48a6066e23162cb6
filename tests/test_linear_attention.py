"""seqlib.ops.linear_attention: causal linear attention through the SSD code path, against its own
quadratic definition (masked q k^T v), with carried state, gradients and bad inputs."""

import math

import pytest
import torch

from seqlib.ops.linear_attention import linear_attention, linear_attention_quadratic

F64 = torch.float64
BACKENDS = ["reference", "quadratic", "chunked", None]


def rand(*shape, gen, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def masked_definition(q, k, v, scale, s0=None):
    """y_t = scale * sum_{s <= t} (q_t . k_s) v_s (+ scale * q_t S_0), by an explicit loop."""
    b, h, length, _ = q.shape
    out = torch.zeros(b, h, length, v.shape[-1], dtype=F64)
    for t in range(length):
        for s in range(t + 1):
            out[:, :, t] += (q[:, :, t] * k[:, :, s]).sum(-1, keepdim=True) * v[:, :, s]
        if s0 is not None:
            out[:, :, t] += torch.einsum("bhk,bhkv->bhv", q[:, :, t], s0)
    return scale * out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length, dk, dv, initial, scale", [(1, 4, 4, False, None),
                                                            (33, 8, 5, True, 0.7),
                                                            (70, 4, 6, False, None),
                                                            (64, 16, 8, True, None)])
def test_matches_the_masked_quadratic_definition_in_float64(backend, length, dk, dv, initial,
                                                            scale, generator):
    q, k = rand(2, 3, length, dk, gen=generator), rand(2, 3, length, dk, gen=generator)
    v = rand(2, 3, length, dv, gen=generator)
    s0 = rand(2, 3, dk, dv, gen=generator) if initial else None
    out, state = linear_attention(q, k, v, scale=scale, initial_state=s0,
                                  return_final_state=True, backend=backend)
    used = 1 / math.sqrt(dk) if scale is None else scale
    assert out.shape == (2, 3, length, dv) and out.dtype == F64 and state.shape == (2, 3, dk, dv)
    want = masked_definition(q, k, v, used, s0)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    want_state = torch.einsum("bhlk,bhlv->bhkv", k, v) + (0 if s0 is None else s0)
    torch.testing.assert_close(state, want_state, rtol=1e-10, atol=1e-12)
    q_out, q_state = linear_attention_quadratic(q, k, v, scale, s0, return_final_state=True)
    torch.testing.assert_close(q_out, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(q_state, want_state, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["quadratic", "chunked"])
def test_one_pass_equals_two_halves_with_the_state_handed_on(backend, generator):
    q, k, v = (rand(1, 2, 90, 8, gen=generator) for _ in range(3))
    whole, whole_state = linear_attention(q, k, v, return_final_state=True, backend=backend)
    first, mid = linear_attention(q[:, :, :37], k[:, :, :37], v[:, :, :37],
                                  return_final_state=True, backend=backend)
    second, end = linear_attention(q[:, :, 37:], k[:, :, 37:], v[:, :, 37:], initial_state=mid,
                                   return_final_state=True, backend=backend)
    torch.testing.assert_close(torch.cat([first, second], 2), whole, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(end, whole_state, rtol=1e-10, atol=1e-12)


def test_gradcheck_in_float64(generator):
    q, k = rand(1, 2, 6, 3, gen=generator), rand(1, 2, 6, 3, gen=generator)
    v, s0 = rand(1, 2, 6, 2, gen=generator), rand(1, 2, 3, 2, gen=generator)
    leaves = [t.requires_grad_(True) for t in (q, k, v, s0)]

    def fn(q, k, v, s0):
        return linear_attention(q, k, v, initial_state=s0, return_final_state=True)

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_dtypes_and_accuracy(dtype, generator):
    q, k, v = (rand(1, 2, 50, 16, gen=generator, dtype=dtype) for _ in range(3))
    out, state = linear_attention(q, k, v, return_final_state=True)
    assert out.dtype == dtype and state.dtype == torch.float32
    exact = linear_attention_quadratic(q.double(), k.double(), v.double())
    low = linear_attention_quadratic(q, k, v)
    err, ref_err = (out.double() - exact).abs().max(), (low.double() - exact).abs().max()
    assert torch.isfinite(out).all() and err <= 2 * ref_err + 1e-5


def test_non_contiguous_inputs(generator):
    q = rand(2, 9, 3, 8, gen=generator).transpose(1, 2)      # (b, h, l, d) view of (b, l, h, d)
    k = rand(2, 3, 9, 16, gen=generator)[..., ::2]
    v = rand(2, 9, 3, 4, gen=generator).transpose(1, 2)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    torch.testing.assert_close(linear_attention(q, k, v), masked_definition(q, k, v, 8 ** -0.5),
                               rtol=1e-10, atol=1e-12)


def _args(**changes):
    args = dict(q=torch.zeros(2, 3, 5, 4), k=torch.zeros(2, 3, 5, 4), v=torch.zeros(2, 3, 5, 6))
    args.update(changes)
    return args


BAD_INPUTS = [
    (_args(q=torch.zeros(3, 5, 4)), r"q must have shape \(b, h, l, dk\), got shape \(3, 5, 4\)"),
    (_args(k=torch.zeros(2, 3, 5, 3)), r"k must have the shape of q, \(b, h, l, dk\) = "
                                       r"\(2, 3, 5, 4\), got shape \(2, 3, 5, 3\)"),
    (_args(v=torch.zeros(2, 3, 4, 6)), r"v must have shape \(b, h, l, dv\) = \(2, 3, 5, dv\), "
                                       r"got shape \(2, 3, 4, 6\)"),
    (_args(v=torch.zeros(2, 3, 5, 6, dtype=F64)), r"v has dtype torch.float64"),
    (_args(q=torch.zeros(2, 3, 5, 4, dtype=torch.int64), k=torch.zeros(2, 3, 5, 4,
                                                                       dtype=torch.int64)),
     r"q must be float16"),
    (_args(initial_state=torch.zeros(2, 3, 6, 4)),
     r"initial_state must have shape \(b, h, dk, dv\) = \(2, 3, 4, 6\), got shape \(2, 3, 6, 4\)"),
    (_args(scale=float("inf")), r"scale must be None"),
    (_args(scale=0), r"scale must be None \(1/sqrt\(dk\)\) or a positive finite number, got 0"),
    (_args(backend="tiled"), r"backend must be None or one of"),
    (_args(return_final_state="yes"), r"return_final_state must be a bool"),
]


@pytest.mark.parametrize("args, pattern", BAD_INPUTS, ids=[p[:40] for _, p in BAD_INPUTS])
def test_bad_inputs_raise_value_errors(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        linear_attention(**args)
