"""seqlib.ops.selective_scan: the PyTorch forms against each other in float64, gradcheck on the
reference, the single-step update against the full scan, one pass against two halves with the
state handed on, the public function's checks and its backend choice.

The Triton kernels are tested in test_selective_scan_kernel.py.
"""

import pytest
import torch

from seqlib.ops import selective_scan as ss
from seqlib.ops.selective_scan import (
    cpu_backend,
    selective_scan_fn,
    selective_scan_parallel,
    selective_scan_reference,
    selective_state_update,
)

F64 = torch.float64


def make_inputs(b, d, n, length, gen, *, groups=None, dtype=F64, D=False, z=False, bias=False):
    """Seeded inputs; A in [-2, -0.1) (a decaying state), delta around 0 (softplus ~ 0.7)."""
    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)

    bc = (b, n, length) if groups is None else (b, groups, n, length)
    return dict(
        u=rand(b, d, length), delta=rand(b, d, length) * 0.5,
        A=(-0.1 - 1.9 * torch.rand(d, n, generator=gen, dtype=F64)).to(dtype),
        B=rand(*bc), C=rand(*bc), D=rand(d) if D else None, z=rand(b, d, length) if z else None,
        delta_bias=rand(d) * 0.5 if bias else None)


# (b, d, n, l, groups, D, z, delta_bias, softplus)
CASES = [
    (1, 1, 1, 1, None, False, False, False, False),
    (2, 4, 3, 7, None, True, False, False, True),
    (1, 6, 4, 33, 3, False, True, True, True),
    (2, 8, 16, 64, 2, True, True, True, False),
    (1, 3, 5, 100, None, True, True, False, True),
    (2, 4, 4, 257, 4, True, False, True, True),
    (1, 2, 2, 0, None, True, True, True, True),   # empty sequence
    (2, 5, 7, 17, 1, False, False, True, False),  # one group in the grouped layout
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_and_parallel_agree_in_float64(case, generator):
    b, d, n, length, g, has_d, has_z, has_bias, softplus = case
    x = make_inputs(b, d, n, length, generator, groups=g, D=has_d, z=has_z, bias=has_bias)
    out_r, last_r = selective_scan_reference(**x, delta_softplus=softplus, return_last_state=True)
    out_p, last_p = selective_scan_parallel(**x, delta_softplus=softplus, return_last_state=True)
    assert out_r.shape == (b, d, length) and last_r.shape == (b, d, n)
    assert out_r.dtype == F64 and last_r.dtype == F64
    torch.testing.assert_close(out_p, out_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last_p, last_r, rtol=1e-10, atol=1e-10)


def test_reference_matches_the_recurrence_written_by_hand(generator):
    # one channel, one state, three steps: x_t = exp(dt A) x_{t-1} + dt B u, y = C x + D u
    x = make_inputs(1, 1, 1, 3, generator, D=True)
    dt = x["delta"][0, 0]
    a, u, B, C, D = x["A"][0, 0], x["u"][0, 0], x["B"][0, 0], x["C"][0, 0], x["D"][0]
    state, want = 0.0, []
    for t in range(3):
        state = torch.exp(dt[t] * a) * state + dt[t] * B[t] * u[t]
        want.append(C[t] * state + D * u[t])
    got = selective_scan_reference(**x)
    torch.testing.assert_close(got[0, 0], torch.stack(want), rtol=1e-12, atol=1e-12)


def test_groups_give_channel_i_the_group_i_over_d_by_g(generator):
    # grouped B, C of 2 groups over 4 channels equal the ungrouped call per pair of channels
    x = make_inputs(1, 4, 3, 9, generator, groups=2)
    out = selective_scan_reference(**x)
    for grp in range(2):
        ch = slice(2 * grp, 2 * grp + 2)
        one = selective_scan_reference(x["u"][:, ch], x["delta"][:, ch], x["A"][ch],
                                       x["B"][:, grp], x["C"][:, grp])
        torch.testing.assert_close(out[:, ch], one, rtol=0, atol=0)


@pytest.mark.parametrize("form", [selective_scan_reference, selective_scan_parallel],
                         ids=["reference", "parallel"])
def test_gradcheck_in_float64(form, generator):
    x = make_inputs(1, 2, 2, 5, generator, groups=2, D=True, z=True, bias=True)
    init = torch.randn(1, 2, 2, generator=generator, dtype=F64)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = [x[k].clone().requires_grad_(True) for k in names] + [init.requires_grad_(True)]

    def f(*args):
        out, last = form(*args[:8], delta_softplus=True, return_last_state=True,
                         initial_state=args[8])
        return out, last

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("groups", [None, 2])
def test_state_update_step_by_step_equals_the_full_scan(groups, generator):
    b, d, n, length = 2, 4, 3, 11
    x = make_inputs(b, d, n, length, generator, groups=groups, D=True, z=True, bias=True)
    out, last = selective_scan_fn(**x, delta_softplus=True, return_last_state=True,
                                  backend="parallel")
    state = torch.zeros(b, d, n, dtype=F64)
    for t in range(length):
        prev, before = state, state.clone()
        args = [x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t], x["C"][..., t]]
        out_t, state = selective_state_update(state, *args, D=x["D"], z_t=x["z"][..., t],
                                              delta_bias=x["delta_bias"], delta_softplus=True)
        assert torch.equal(prev, before)  # the state passed in is left as it was
        torch.testing.assert_close(out_t, out[..., t], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, last, rtol=1e-10, atol=1e-10)


def test_state_update_never_modifies_its_inputs(generator):
    x = make_inputs(2, 4, 3, 1, generator, D=True, z=True, bias=True)
    state = torch.randn(2, 4, 3, generator=generator, dtype=torch.float32)
    args = [state, x["u"][..., 0], x["delta"][..., 0], x["A"], x["B"][..., 0], x["C"][..., 0],
            x["D"], x["z"][..., 0], x["delta_bias"]]
    copies = [a.clone() for a in args]
    out_t, new = selective_state_update(*args, delta_softplus=True)
    assert new.dtype == torch.float32 and new.shape == (2, 4, 3) and out_t.shape == (2, 4)
    assert not torch.equal(new, state)
    for a, c in zip(args, copies):
        assert torch.equal(a, c)


@pytest.mark.parametrize("backend", ["reference", "parallel"])
@pytest.mark.parametrize("split", [1, 6, 12])
def test_one_pass_equals_two_halves_with_the_state_handed_on(backend, split, generator):
    x = make_inputs(2, 4, 5, 13, generator, groups=2, D=True, z=True, bias=True)
    out, last = selective_scan_fn(**x, delta_softplus=True, return_last_state=True,
                                  backend=backend)

    def piece(sl):
        p = {k: (v[..., sl] if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}
        return p

    out1, mid = selective_scan_fn(**piece(slice(0, split)), delta_softplus=True,
                                  return_last_state=True, backend=backend)
    out2, last2 = selective_scan_fn(**piece(slice(split, None)), delta_softplus=True,
                                    return_last_state=True, initial_state=mid, backend=backend)
    torch.testing.assert_close(torch.cat([out1, out2], -1), out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last2, last, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_keep_an_fp32_state_and_return_u_dtype(dtype, generator):
    x = make_inputs(1, 4, 3, 20, generator, dtype=dtype, D=True, z=True)
    x["A"] = x["A"].float()  # mamba's A is an fp32 parameter beside 16-bit activations
    exact = selective_scan_reference(**{k: (v.double() if v is not None else None)
                                        for k, v in x.items()}, delta_softplus=True)
    for backend in ("reference", "parallel"):
        out, last = selective_scan_fn(**x, delta_softplus=True, return_last_state=True,
                                      backend=backend)
        assert out.dtype == dtype and last.dtype == torch.float32
        err = (out.double() - exact).abs().max().item()
        assert err <= 2 * exact.abs().max().item() * torch.finfo(dtype).eps + 1e-6


def test_long_sequences_stay_finite():
    # 4096 steps with strong decay: products of decays underflow to 0, which is their limit
    gen = torch.Generator().manual_seed(0)
    x = make_inputs(1, 2, 4, 4096, gen, dtype=torch.float32)
    x["A"] = x["A"] * 50
    out_r = selective_scan_reference(**x, delta_softplus=True)
    out_p = selective_scan_parallel(**x, delta_softplus=True)
    assert torch.isfinite(out_p).all()
    torch.testing.assert_close(out_p, out_r, rtol=1e-4, atol=1e-4)


def test_non_contiguous_inputs_work(generator):
    x = make_inputs(2, 4, 3, 10, generator, groups=2, D=True, z=True, bias=True)
    want = selective_scan_reference(**x, delta_softplus=True)
    strided = {k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if v is not None and
                   v.ndim >= 2 else v) for k, v in x.items()}
    assert not strided["u"].is_contiguous()
    for backend in ("reference", "parallel"):
        got = selective_scan_fn(**strided, delta_softplus=True, backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_backend_none_on_the_cpu_follows_the_measured_crossover(generator, monkeypatch):
    assert cpu_backend(2, 64, 16, 256) == "parallel"
    assert cpu_backend(2, 64, 16, 1024) == "reference"
    assert cpu_backend(64, 64, 16, 16) == "reference"
    calls = []
    monkeypatch.setattr(ss, "selective_scan_parallel",
                        lambda *a, **k: calls.append("parallel") or selective_scan_parallel(*a,
                                                                                           **k))
    x = make_inputs(1, 2, 2, 5, generator)
    selective_scan_fn(**x)
    assert calls == ["parallel"]


BAD = [  # (argument, replacement builder, words the message must contain)
    ("u", lambda x: x["u"][0], ["u", "(b, d, l)", "(4, 10)"]),
    ("delta", lambda x: x["delta"][:, :, :9], ["delta", "(b, d, l)", "(2, 4, 10)", "(2, 4, 9)"]),
    ("A", lambda x: x["A"][:3], ["A", "(d, n)", "(3, 3)"]),
    ("B", lambda x: x["B"][:, :, :2], ["B", "(2, 3, 10)"]),
    ("C", lambda x: torch.zeros(2, 3, 3, 10, dtype=F64), ["C", "g=3", "d=4", "(2, 3, 3, 10)"]),
    ("D", lambda x: torch.zeros(5, dtype=F64), ["D", "(d,)", "(4,)", "(5,)"]),
    ("z", lambda x: torch.zeros(2, 4, 11, dtype=F64), ["z", "(2, 4, 10)", "(2, 4, 11)"]),
    ("delta_bias", lambda x: torch.zeros(4, 1, dtype=F64), ["delta_bias", "(4,)", "(4, 1)"]),
    ("delta", lambda x: x["delta"].float(), ["delta", "torch.float32", "u has"]),
    ("u", lambda x: x["u"].long(), ["u", "torch.int64"]),
    ("initial_state", lambda x: torch.zeros(2, 4, 2), ["initial_state", "(2, 4, 3)", "(2, 4, 2)"]),
]


@pytest.mark.parametrize("name,bad,words", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_inputs_raise_value_errors_naming_argument_and_shapes(name, bad, words, generator):
    x = make_inputs(2, 4, 3, 10, generator, D=True, z=True, bias=True)
    x[name] = bad(x)
    if name == "u":
        x["delta"], x["z"] = x["delta"][..., : x["u"].shape[-1]], None
    with pytest.raises(ValueError) as err:
        selective_scan_fn(**x, backend="reference")
    for w in words:
        assert w in str(err.value), f"{w!r} missing from: {err.value}"


def test_bad_backend_name_and_bad_step_inputs(generator):
    x = make_inputs(1, 2, 2, 3, generator)
    with pytest.raises(ValueError, match="backend must be None or one of"):
        selective_scan_fn(**x, backend="cuda")
    state = torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match=r"state must have shape \(b, d, n\) = \(1, 2, 2\)"):
        selective_state_update(state[0], x["u"][..., 0], x["delta"][..., 0], x["A"],
                               x["B"][..., 0], x["C"][..., 0])
    with pytest.raises(ValueError, match=r"B_t|B must have shape"):
        selective_state_update(state, x["u"][..., 0], x["delta"][..., 0], x["A"],
                               x["B"], x["C"][..., 0])


def test_triton_backend_says_why_it_cannot_run(generator, monkeypatch):
    import sys

    x = make_inputs(1, 2, 2, 3, generator, dtype=torch.float32)
    monkeypatch.setitem(sys.modules, "triton", None)  # as on a machine without Triton
    with pytest.raises(RuntimeError, match="needs the triton package"):
        selective_scan_fn(**x, backend="triton")


def test_benchmark_counts_the_anchors_roofline_and_runs_on_the_cpu():
    from seqlib.ops.selective_scan import benchmark

    # anchors-h100.md: roofline forward at (4, 2048, 2048), n = 16, bf16 is 0.034 ms at 3 TB/s
    ms = benchmark.min_bytes(4, 2048, 2048, 16, 2, "fwd") / benchmark.ROOFLINE_BYTES_PER_S * 1e3
    assert abs(ms - 0.034) < 0.0005
    record = benchmark.run(torch.device("cpu"), quick=True)
    assert {r["provider"] for r in record["rows"]} == {"reference", "parallel"}
    assert all(r["ms"] > 0 and r["peak_bytes"] >= 0 for r in record["rows"])
    assert record["backend_none_picks"] == {"64": "parallel", "128": "parallel"}
    record["device"] = {"name": "cpu", "type": "cpu"}
    table = benchmark.summarize(record)
    assert "parallel" in table and "fwd+bwd" in table
