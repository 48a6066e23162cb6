"""seqlib.ops.ssd: the three PyTorch forms of the SSD scan against each other, gradients, carried
state, the single-step update, the public function's checks and backend choice.

The forms: the sequential recurrence (the definition), the quadratic form and the chunked
algorithm. They must agree to float64 precision on lengths that are and are not multiples of
the chunk, with every option on and off (the pairs of options are covered by CASES).
"""

import itertools

import pytest
import torch

import seqlib.ops.ssd as ssd_module
from seqlib.ops.ssd import (
    mamba_chunk_scan_combined,
    segsum,
    ssd_chunked,
    ssd_quadratic,
    ssd_reference,
    ssd_state_update,
)
from seqlib.ops.ssd.reference import (
    chunk_cumsum_ref,
    chunk_scan_ref,
    chunk_state_ref,
    state_passing_ref,
)

F64 = torch.float64


def rand(*shape, gen, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def make_inputs(b, length, h, p, g, n, gen, dtype=F64, D=None, z=False, dt_bias=False,
                softplus=False, initial=False):
    """Seeded arguments of one scan: dt such that dt' > 0 (softplus or a positive dt), A < 0."""
    x = rand(b, length, h, p, gen=gen, dtype=dtype)
    if softplus:
        dt = rand(b, length, h, gen=gen) - 1.0
    else:
        dt = torch.rand(b, length, h, generator=gen, dtype=F64) * 0.5 + 0.05
    A = -(torch.rand(h, generator=gen, dtype=F64) * 2 + 0.1)
    B, C = rand(b, length, g, n, gen=gen, dtype=dtype), rand(b, length, g, n, gen=gen, dtype=dtype)
    kwargs = dict(dt_softplus=softplus)
    if D == "h":
        kwargs["D"] = rand(h, gen=gen)
    elif D == "hp":
        kwargs["D"] = rand(h, p, gen=gen)
    if z:
        kwargs["z"] = rand(b, length, h, p, gen=gen, dtype=dtype)
    if dt_bias:
        kwargs["dt_bias"] = rand(h, gen=gen) * 0.5 + (0.0 if softplus else 0.6)
    if initial:
        kwargs["initial_states"] = rand(b, h, p, n, gen=gen, dtype=F64 if dtype == F64
                                        else torch.float32)
    return (x, dt, A, B, C), kwargs


# (length, chunk, g, D, z, dt_bias, softplus, initial): pairwise coverage of the options
CASES = [
    (1, 16, 1, None, False, False, False, False),
    (1, 64, 2, "h", True, True, True, True),
    (33, 16, 2, "hp", False, True, True, False),
    (33, 64, 1, None, True, True, False, True),
    (64, 16, 1, "h", False, False, True, True),
    (64, 64, 2, "hp", True, False, False, False),
    (200, 16, 2, None, True, False, True, True),
    (200, 64, 1, "hp", False, True, True, True),
    (33, 16, 1, "h", True, True, True, False),
    (200, 64, 2, "h", False, False, False, True),
    (64, 16, 2, None, False, True, False, True),
    (1, 16, 2, "hp", True, False, True, True),
    (33, 64, 2, None, False, False, True, True),
    (64, 64, 1, "hp", True, True, True, True),
]


def test_cases_cover_every_pair_of_options():
    values = [set(case[i] for case in CASES) for i in range(8)]
    assert values[0] == {1, 33, 64, 200} and values[1] == {16, 64} and values[2] == {1, 2}
    assert values[3] == {None, "h", "hp"} and all(v == {False, True} for v in values[4:])
    for i, j in itertools.combinations(range(1, 8), 2):
        seen = {(case[i], case[j]) for case in CASES}
        assert seen == set(itertools.product(values[i], values[j])), (i, j)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_three_forms_agree_in_float64(case, generator):
    length, chunk, g, D, z, dt_bias, softplus, initial = case
    args, kwargs = make_inputs(2, length, 4, 3, g, 5, generator, D=D, z=z, dt_bias=dt_bias,
                               softplus=softplus, initial=initial)
    want, want_state = ssd_reference(*args, **kwargs, return_final_states=True)
    assert want.dtype == F64 and want.shape == (2, length, 4, 3)
    assert want_state.shape == (2, 4, 3, 5)
    got = {
        "quadratic": ssd_quadratic(*args, **kwargs, return_final_states=True),
        "chunked": ssd_chunked(*args, chunk, **kwargs, return_final_states=True),
    }
    for backend in ("reference", "quadratic", "chunked", None):
        got[f"public-{backend}"] = mamba_chunk_scan_combined(
            *args, chunk, **kwargs, return_final_states=True, backend=backend)
    for name, (out, state) in got.items():
        torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12,
                                   msg=lambda m, name=name: f"{name} out: {m}")
        torch.testing.assert_close(state, want_state, rtol=1e-10, atol=1e-12,
                                   msg=lambda m, name=name: f"{name} state: {m}")


def test_recurrence_matches_a_hand_computed_example():
    """One head, p = n = 1, no options: S_t = exp(dt A) S_{t-1} + dt x_t B_t, y_t = S_t C_t."""
    x = torch.tensor([1.0, 2.0, -1.0], dtype=F64).reshape(1, 3, 1, 1)
    dt = torch.tensor([0.5, 1.0, 2.0], dtype=F64).reshape(1, 3, 1)
    A = torch.tensor([-1.0], dtype=F64)
    B = torch.tensor([1.0, 0.5, 2.0], dtype=F64).reshape(1, 3, 1, 1)
    C = torch.tensor([2.0, 1.0, -1.0], dtype=F64).reshape(1, 3, 1, 1)
    s, ys = 0.0, []
    for xt, dtt, bt, ct in zip(x.flatten().tolist(), dt.flatten().tolist(),
                               B.flatten().tolist(), C.flatten().tolist()):
        s = torch.exp(torch.tensor(-dtt, dtype=F64)).item() * s + dtt * xt * bt
        ys.append(s * ct)
    for fn in (ssd_reference, ssd_quadratic, lambda *a: ssd_chunked(*a, 16)):
        assert fn(x, dt, A, B, C).flatten().tolist() == pytest.approx(ys, rel=1e-12)


def test_segsum_gives_the_decay_mask(generator):
    a = -torch.rand(2, 7, generator=generator, dtype=F64)
    L = torch.exp(segsum(a))
    for t in range(7):
        for s in range(7):
            want = torch.exp(a[:, s + 1:t + 1].sum(-1)) if s <= t else torch.zeros(2, dtype=F64)
            torch.testing.assert_close(L[:, t, s], want, rtol=1e-14, atol=0)


def test_chunked_stages_compose_the_state_by_hand(generator):
    """Stage 2 + 3 by hand: the entering state of chunk k is the reference's state at the end of
    chunk k - 1, and padded positions (dt' = 0 after bias and softplus) change nothing."""
    (x, dt, A, B, C), kw = make_inputs(1, 40, 2, 3, 1, 4, generator, dt_bias=True, softplus=True)
    chunk = 16
    dtp, cums = chunk_cumsum_ref(dt, A, kw["dt_bias"], True, chunk, F64)
    assert dtp.shape == (1, 2, 3, 16) and (dtp[..., 2, 8:] == 0).all()
    assert (dtp[..., :2, :] > 0).all() and (dtp[..., 2, :8] > 0).all()
    pad = 48 - 40
    xc = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)).reshape(1, 3, 16, 2, 3)
    Bc = torch.nn.functional.pad(B, (0, 0, 0, 0, 0, pad)).reshape(1, 3, 16, 1, 4).expand(
        1, 3, 16, 2, 4)
    Cc = torch.nn.functional.pad(C, (0, 0, 0, 0, 0, pad)).reshape(1, 3, 16, 1, 4).expand(
        1, 3, 16, 2, 4)
    entering, final = state_passing_ref(chunk_state_ref(xc, Bc, dtp, cums), cums,
                                        torch.zeros(1, 2, 3, 4, dtype=F64))
    for k in range(3):
        if k == 0:
            assert (entering[:, 0] == 0).all()
            continue
        _, want = ssd_reference(x[:, :16 * k], dt[:, :16 * k], A, B[:, :16 * k], C[:, :16 * k],
                                dt_bias=kw["dt_bias"], dt_softplus=True, return_final_states=True)
        torch.testing.assert_close(entering[:, k], want, rtol=1e-12, atol=1e-12)
    _, want = ssd_reference(x, dt, A, B, C, dt_bias=kw["dt_bias"], dt_softplus=True,
                            return_final_states=True)
    torch.testing.assert_close(final, want, rtol=1e-12, atol=1e-12)
    y = chunk_scan_ref(xc, Bc, Cc, dtp, cums, entering).reshape(1, 48, 2, 3)[:, :40]
    torch.testing.assert_close(y, ssd_reference(x, dt, A, B, C, dt_bias=kw["dt_bias"],
                                                dt_softplus=True), rtol=1e-12, atol=1e-12)


def _leaves(args, kwargs):
    args = [t.detach().clone().requires_grad_(True) for t in args]
    kwargs = {k: (v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v)
              for k, v in kwargs.items()}
    return args, kwargs


def _grads(fn, args, kwargs, upstream_out, upstream_state):
    args, kwargs = _leaves(args, kwargs)
    out, state = fn(*args, **kwargs, return_final_states=True)
    tensors = args + [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
    loss = (out * upstream_out).sum() + (state * upstream_state).sum()
    return [out, state, *torch.autograd.grad(loss, tensors)]


@pytest.mark.parametrize("length, chunk", [(33, 16), (17, 64), (64, 16)])
def test_chunked_gradients_match_the_recurrence_with_padding_and_softplus(length, chunk,
                                                                          generator):
    """mamba#352/#368: padded positions with dt_bias and softplus must not leak into the outputs,
    the final state or any gradient (dt_bias's above all)."""
    args, kwargs = make_inputs(2, length, 4, 3, 2, 5, generator, D="hp", z=True, dt_bias=True,
                               softplus=True, initial=True)
    up_out, up_state = rand(2, length, 4, 3, gen=generator), rand(2, 4, 3, 5, gen=generator)
    want = _grads(ssd_reference, args, kwargs, up_out, up_state)
    got = _grads(lambda *a, **k: ssd_chunked(*a, chunk, **k), args, kwargs, up_out, up_state)
    names = ["out", "state", "dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinitial"]
    assert len(got) == len(names)
    for name, g, w in zip(names, got, want):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("form", ["reference", "quadratic", "chunked"])
def test_gradcheck_in_float64(form, generator):
    args, kwargs = make_inputs(1, 5, 2, 2, 1, 3, generator, D="h", z=True, dt_bias=True,
                               softplus=True, initial=True)
    args, kwargs = _leaves(args, kwargs)
    names = list(kwargs)
    tensors = [kwargs[k] for k in names if isinstance(kwargs[k], torch.Tensor)]

    def fn(*ts):
        x, dt, A, B, C, *rest = ts
        kw = dict(zip([k for k in names if isinstance(kwargs[k], torch.Tensor)], rest))
        kw["dt_softplus"] = True
        return mamba_chunk_scan_combined(x, dt, A, B, C, 16, **kw, return_final_states=True,
                                         backend=form)

    assert torch.autograd.gradcheck(fn, (*args, *tensors))


@pytest.mark.parametrize("length, cut", [(50, 20), (64, 32), (33, 1), (40, 0)])
@pytest.mark.parametrize("backend", ["reference", "quadratic", "chunked"])
def test_one_pass_equals_two_halves_with_the_state_handed_on(length, cut, backend, generator):
    """fla#285: carrying the state across calls gives exactly the single pass, and gradients flow
    through the handed-on state into the first half's inputs."""
    (x, dt, A, B, C), kw = make_inputs(2, length, 4, 3, 2, 5, generator, D="h", z=True,
                                       dt_bias=True, softplus=True, initial=True)
    z, s0 = kw.pop("z"), kw.pop("initial_states")
    whole, whole_state = mamba_chunk_scan_combined(x, dt, A, B, C, 16, z=z, initial_states=s0,
                                                   return_final_states=True, backend=backend,
                                                   **kw)
    x1 = x.clone().requires_grad_(True)
    first, mid = mamba_chunk_scan_combined(x1[:, :cut], dt[:, :cut], A, B[:, :cut], C[:, :cut],
                                           16, z=z[:, :cut], initial_states=s0,
                                           return_final_states=True, backend=backend, **kw)
    second, end = mamba_chunk_scan_combined(x1[:, cut:], dt[:, cut:], A, B[:, cut:], C[:, cut:],
                                            16, z=z[:, cut:], initial_states=mid,
                                            return_final_states=True, backend=backend, **kw)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(end, whole_state, rtol=1e-10, atol=1e-12)
    x2 = x.clone().requires_grad_(True)
    (g_split,) = torch.autograd.grad(end.sum() + second.sum(), x1)
    out2, end2 = mamba_chunk_scan_combined(x2, dt, A, B, C, 16, z=z, initial_states=s0,
                                           return_final_states=True, backend=backend, **kw)
    (g_whole,) = torch.autograd.grad(end2.sum() + out2[:, cut:].sum(), x2)
    torch.testing.assert_close(g_split, g_whole, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("g, D, z, dt_bias, softplus", [(1, None, False, False, False),
                                                        (2, "hp", True, True, True),
                                                        (4, "h", False, True, True)])
def test_single_step_equals_the_scan_token_by_token(g, D, z, dt_bias, softplus, generator):
    (x, dt, A, B, C), kw = make_inputs(2, 9, 4, 3, g, 5, generator, D=D, z=z, dt_bias=dt_bias,
                                       softplus=softplus, initial=True)
    want, want_state = mamba_chunk_scan_combined(x, dt, A, B, C, 16, **kw,
                                                 return_final_states=True)
    state = kw.pop("initial_states")
    z = kw.pop("z", None)
    softplus = kw.pop("dt_softplus")
    for t in range(9):
        before = state.clone()
        inputs = [x[:, t], dt[:, t], B[:, t], C[:, t]]
        copies = [i.clone() for i in inputs]
        out, state_new = ssd_state_update(state, x[:, t], dt[:, t], A, B[:, t], C[:, t],
                                          z_t=None if z is None else z[:, t],
                                          dt_softplus=softplus, **kw)
        assert torch.equal(state, before), "the state passed in must not be modified"
        assert all(torch.equal(i, c) for i, c in zip(inputs, copies))
        torch.testing.assert_close(out, want[:, t], rtol=1e-12, atol=1e-12)
        state = state_new
    torch.testing.assert_close(state, want_state, rtol=1e-12, atol=1e-12)


def test_single_step_keeps_the_dtypes():
    state = torch.zeros(1, 2, 4, 3)
    out, new = ssd_state_update(state, torch.ones(1, 2, 4, dtype=torch.bfloat16),
                                torch.ones(1, 2), -torch.ones(2),
                                torch.ones(1, 1, 3, dtype=torch.bfloat16),
                                torch.ones(1, 1, 3, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and new.dtype == torch.float32
    assert torch.allclose(new, torch.ones(1, 2, 4, 3)) and torch.allclose(out.float(),
                                                                         torch.full((1, 2, 4), 3.))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_keeps_the_accuracy_rule_and_dtypes(dtype, generator):
    """The chunked form accumulates in fp32 like the recurrence: outputs in x's dtype, states in
    fp32, and every value within the accuracy rule of the reference run on the same inputs. The
    parameters (dt, A, D, dt_bias) are fp32 as in Mamba2 models; their gradients and the state are
    fp32 sums over the whole sequence, so their absolute slack 1e-5 is relative to their size."""
    args, kwargs = make_inputs(1, 70, 2, 8, 1, 16, generator, dtype, D="h", z=True, dt_bias=True,
                               softplus=True, initial=True)
    args = [a.float() if a.dtype == F64 else a for a in args]
    kwargs = {k: (v.float() if isinstance(v, torch.Tensor) and v.dtype == F64 else v)
              for k, v in kwargs.items()}
    exact_args = [a.double() for a in args]
    exact_kw = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    up_out = rand(1, 70, 2, 8, gen=generator, dtype=dtype)
    up_state = rand(1, 2, 8, 16, gen=generator, dtype=torch.float32)
    exact = _grads(ssd_reference, exact_args, exact_kw, up_out.double(), up_state.double())
    low = _grads(ssd_reference, args, kwargs, up_out, up_state)
    chunked = _grads(lambda *a, **k: ssd_chunked(*a, 32, **k), args, kwargs, up_out, up_state)
    assert chunked[0].dtype == dtype and chunked[1].dtype == torch.float32
    for i, (c, r, e) in enumerate(zip(chunked, low, exact)):
        assert c.dtype == r.dtype and torch.isfinite(c).all()
        err, ref_err = (c.double() - e).abs().max(), (r.double() - e).abs().max()
        slack = 1e-5 * (1.0 if c.dtype == dtype else max(1.0, e.abs().max().item()))
        assert err <= 2 * ref_err + slack, f"value {i}: {err:.3g} vs reference {ref_err:.3g}"


@pytest.mark.parametrize("backend", ["reference", "quadratic", "chunked"])
def test_non_contiguous_inputs(backend, generator):
    (x, dt, A, B, C), kw = make_inputs(2, 21, 4, 3, 2, 5, generator, D="hp", z=True,
                                       dt_bias=True, softplus=True, initial=True)
    views = [x.transpose(0, 1).contiguous().transpose(0, 1),            # batch-minor strides
             strided(dt), strided(A),                                   # stride 2 in h
             B.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3),
             strided(C)]
    assert not any(v.is_contiguous() for v in views)
    got = mamba_chunk_scan_combined(*views, 16, **kw, backend=backend)
    want = ssd_reference(*[v.contiguous() for v in views], **kw)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("length, expected", [(5, "ssd_quadratic"), (16, "ssd_quadratic"),
                                              (17, "ssd_chunked")])
def test_backend_none_on_the_cpu_picks_by_length(length, expected, generator, monkeypatch):
    calls = []
    real = getattr(ssd_module, expected)
    monkeypatch.setattr(ssd_module, expected, lambda *a, **k: calls.append(1) or real(*a, **k))
    args, _ = make_inputs(1, length, 2, 2, 1, 3, generator)
    mamba_chunk_scan_combined(*args, 16)
    assert calls == [1]


def strided(t):
    """t's values in a view whose last dimension has stride 2."""
    buffer = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
    buffer[..., ::2] = t
    return buffer[..., ::2]


def _args(**changes):
    """Arguments of a valid call (b=2, l=7, h=4, p=3, g=2, n=5) with some of them changed."""
    args = dict(x=torch.zeros(2, 7, 4, 3), dt=torch.zeros(2, 7, 4), A=torch.zeros(4),
                B=torch.zeros(2, 7, 2, 5), C=torch.zeros(2, 7, 2, 5), chunk_size=16)
    args.update(changes)
    return args


BAD_INPUTS = [  # (arguments, exception, pattern the message must match)
    (_args(x=torch.zeros(7, 4, 3)), ValueError,
     r"x must have shape \(b, l, h, p\) = \(b, l, h, p\), got shape \(7, 4, 3\)"),
    (_args(dt=torch.zeros(2, 6, 4)), ValueError,
     r"dt must have shape \(b, l, h\) = \(2, 7, 4\), got shape \(2, 6, 4\)"),
    (_args(dt=torch.zeros(2, 7, 4, 1)), ValueError, r"dt must have shape"),
    (_args(A=torch.zeros(4, 5)), ValueError,
     r"A must have shape \(h\) = \(4\), got shape \(4, 5\)"),
    (_args(B=torch.zeros(2, 7, 3, 5), C=torch.zeros(2, 7, 3, 5)), ValueError,
     r"B has g=3 groups, which does not divide the h=4 heads of x.*h % g == 0, got shape "
     r"\(2, 7, 3, 5\)"),
    (_args(B=torch.zeros(2, 7, 0, 5), C=torch.zeros(2, 7, 0, 5)), ValueError, r"g=0"),
    (_args(B=torch.zeros(2, 8, 2, 5)), ValueError,
     r"B must have shape \(b, l, g, n\) = \(2, 7, g, n\), got shape \(2, 8, 2, 5\)"),
    (_args(C=torch.zeros(2, 7, 2, 4)), ValueError,
     r"C must have shape \(b, l, g, n\) = \(2, 7, 2, 5\), got shape \(2, 7, 2, 4\)"),
    (_args(D=torch.zeros(3)), ValueError,
     r"D must have shape \(h\) = \(4\) or \(h, p\) = \(4, 3\), got shape \(3\)"),
    (_args(z=torch.zeros(2, 7, 4)), ValueError,
     r"z must have shape \(b, l, h, p\) = \(2, 7, 4, 3\)"),
    (_args(dt_bias=torch.zeros(2)), ValueError, r"dt_bias must have shape \(h\) = \(4\)"),
    (_args(initial_states=torch.zeros(2, 4, 5, 3)), ValueError,
     r"initial_states must have shape \(b, h, p, n\) = \(2, 4, 3, 5\), got shape \(2, 4, 5, 3\)"),
    (_args(x=torch.zeros(2, 7, 4, 3, dtype=torch.int32)), ValueError,
     r"x must be float16, bfloat16, float32 or float64, got torch.int32"),
    (_args(B=torch.zeros(2, 7, 2, 5, dtype=F64)), ValueError,
     r"B has dtype torch.float64 \(shape \(2, 7, 2, 5\)\) but x has torch.float32"),
    (_args(C=torch.zeros(2, 7, 2, 5, device="meta")), ValueError,
     r"C is on meta \(shape \(2, 7, 2, 5\)\) but x is on cpu"),
    (_args(x=torch.zeros(2, 7, 0, 3)), ValueError, r"h >= 1 heads"),
    (_args(chunk_size=24), ValueError, r"chunk_size must be a power of two from 16 to 256, got 24"),
    (_args(chunk_size=8), ValueError, r"chunk_size must be a power of two"),
    (_args(chunk_size=512), ValueError, r"chunk_size must be a power of two"),
    (_args(chunk_size=16.0), ValueError, r"chunk_size must be a power of two"),
    (_args(dt_softplus=1), ValueError, r"dt_softplus must be a bool"),
    (_args(backend="triton-ish"), ValueError, r"backend must be None or one of"),
    (_args(x=[[1.0]]), TypeError, r"x must be a torch.Tensor"),
]


@pytest.mark.parametrize("args, error, pattern", BAD_INPUTS,
                         ids=[p[:40] for _, _, p in BAD_INPUTS])
def test_bad_inputs_raise_the_documented_error(args, error, pattern):
    with pytest.raises(error, match=pattern):
        mamba_chunk_scan_combined(**args)


STEP_BAD = [
    (dict(state=torch.zeros(2, 4, 3)), r"state must have shape \(b, h, p, n\) = \(2, 4, 3, 5\)"),
    (dict(B_t=torch.zeros(2, 3, 5), C_t=torch.zeros(2, 3, 5)), r"B_t has g=3 groups"),
    (dict(dt_t=torch.zeros(2, 7, 4)), r"dt_t must have shape \(b, h\) = \(2, 4\)"),
    (dict(D=torch.zeros(4, 4)), r"D must have shape \(h\) = \(4\) or \(h, p\) = \(4, 3\)"),
]


@pytest.mark.parametrize("changes, pattern", STEP_BAD, ids=[p[:30] for _, p in STEP_BAD])
def test_single_step_bad_inputs(changes, pattern):
    args = dict(state=torch.zeros(2, 4, 3, 5), x_t=torch.zeros(2, 4, 3), dt_t=torch.zeros(2, 4),
                A=torch.zeros(4), B_t=torch.zeros(2, 2, 5), C_t=torch.zeros(2, 2, 5))
    args.update(changes)
    with pytest.raises(ValueError, match=pattern):
        ssd_state_update(**args)


_FORCED_TRITON = """
import sys, torch
{prelude}
from seqlib.ops.ssd import mamba_chunk_scan_combined
args = (torch.zeros(1, 3, 2, 4), torch.zeros(1, 3, 2), torch.zeros(2), torch.zeros(1, 3, 1, 4),
        torch.zeros(1, 3, 1, 4), 16)
try:
    mamba_chunk_scan_combined(*args, backend="triton")
except RuntimeError as error:
    print("RuntimeError:", error)
print("default:", mamba_chunk_scan_combined(*args).shape)
"""


@pytest.mark.parametrize("prelude, message", [
    ("sys.modules['triton'] = None", "needs the triton package, which is not installed"),
    ("import triton", "run on the CPU only under Triton's interpreter"),
])
def test_forced_triton_backend_says_why_it_cannot_run(prelude, message):
    """backend='triton' raises RuntimeError without triton, and on CPU tensors outside the
    interpreter; backend=None still works (the chunked form)."""
    import os
    import subprocess
    import sys

    if prelude == "import triton":
        pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run([sys.executable, "-c", _FORCED_TRITON.format(prelude=prelude)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "RuntimeError: backend='triton'" in result.stdout and message in result.stdout, \
        result.stdout
    assert "default: torch.Size([1, 3, 2, 4])" in result.stdout


def test_importing_the_ops_does_not_import_triton():
    import subprocess
    import sys

    code = ("import sys, seqlib.ops.ssd, seqlib.ops.ssd.benchmark, seqlib.ops.linear_attention; "
            "print('triton' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def test_cpu_benchmark_measures_every_pytorch_form():
    """The benchmark's CPU body (``python -m seqlib.bench ssd --quick`` off the GPU), without
    timing claims: every form is measured at every length and pass, and the summary prints."""
    from seqlib.ops.ssd import benchmark

    assert benchmark.ssd_flops(1, 10, 1, 2, 3, 16, "fwd") == 2 * 10 * (16 * 5 + 2 * 2 * 3)
    record = benchmark.run(torch.device("cpu"), quick=True)
    seen = {(r["provider"], r["l"], r["pass"]) for r in record["rows"]}
    assert seen == {(b, n, p) for b in ("reference", "quadratic", "chunked") for n in (128, 256)
                    for p in ("fwd", "fwd+bwd")}
    assert all(r["ms"] > 0 and r["peak_bytes"] >= 0 for r in record["rows"])
    record["device"] = {"name": "test cpu", "type": "cpu"}
    assert "chunked" in benchmark.summarize(record)
