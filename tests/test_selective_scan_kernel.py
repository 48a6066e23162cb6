"""seqlib's Triton selective-scan kernels against the float64 reference.

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1) on small shapes; with a GPU the same configurations run on CUDA with more
channels and longer sequences. Every comparison uses DESIGN.md's accuracy rule: for the output,
the last state and each gradient, the kernel's largest error against the float64 reference is
at most twice the error of the PyTorch reference computed in the input dtype, plus 1e-5; every
value is finite.
"""

import itertools
import zlib

import pytest
import torch

from seqlib.ops.selective_scan import selective_scan_fn, selective_scan_reference

triton = pytest.importorskip("triton")  # Linux-only dependency: absent on macOS laptops

from seqlib.ops.selective_scan import triton_fwd  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(
        not triton_fwd.INTERPRETING, reason="CPU kernels need TRITON_INTERPRET=1 (GPU present)")),
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="GPU-sized shapes need CUDA")),
]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Every option and its levels. Lengths cross the 64-step chunks of the backward (64, 100, 257);
# "sliced" inputs have a length stride of 2, "transposed" ones are (b, l, d) in memory; groups
# None is the (b, n, l) layout of B and C, 1 and 2 the grouped (b, g, n, l) one; grad "sum" is
# the zero-stride gradient of out.sum().backward(), "random" a random gradient for the output
# and for the last state.
LEVELS = {
    "l": (1, 7, 64, 100, 257), "n": (4, 16), "dtype": ("fp32", "fp16", "bf16"),
    "layout": ("contiguous", "transposed", "sliced"), "groups": (None, 1, 2), "D": (False, True),
    "z": (False, True), "bias": (False, True), "softplus": (False, True),
    "grad": ("random", "sum"), "b": (1, 2), "init": (False, True),
}
OPTIONS = tuple(LEVELS)


def covering_configurations(levels: dict, full: tuple[str, ...]) -> list[tuple]:
    """A deterministic greedy covering array: every combination of the ``full`` options, and
    every pair of values of any two options, appears in at least one configuration (far fewer
    than the full product). Each row starts from a combination (or an uncovered pair) and takes,
    option by option, the value that covers the most pairs not yet covered."""
    names = list(levels)
    todo = {(i, a, j, b) for i, j in itertools.combinations(range(len(names)), 2)
            for a in levels[names[i]] for b in levels[names[j]]}

    def gain(k, v, row, todo):
        return sum(((min(k, m), v if k < m else w, max(k, m), w if k < m else v) in todo)
                   for m, w in row.items())

    seeds = [dict(zip([names.index(f) for f in full], combo))
             for combo in itertools.product(*(levels[f] for f in full))]
    configs = []
    while todo or seeds:
        if seeds:
            row = seeds.pop(0)
        else:
            i, a, j, b = min(todo, key=repr)
            row = {i: a, j: b}
        for k in range(len(names)):
            if k not in row:  # ties go round the levels, so no value is everyone's default
                vals = levels[names[k]]
                shift = (len(configs) + k) % len(vals)
                vals = vals[shift:] + vals[:shift]
                row[k] = max(vals, key=lambda v, k=k: gain(k, v, row, todo))
        config = tuple(row[k] for k in range(len(names)))
        todo -= {(i, config[i], j, config[j])
                 for i, j in itertools.combinations(range(len(names)), 2)}
        configs.append(config)
    return configs


CONFIGS = covering_configurations(LEVELS, ("l", "dtype", "layout")) + [
    # mamba_ssm#352/#368: lengths off the chunk edges with delta_bias and softplus together
    (257, 16, "fp32", "contiguous", None, True, True, True, True, "random", 1, False),
    (65, 4, "bf16", "sliced", 2, True, True, True, True, "sum", 2, True),
]


def test_configurations_cover_every_pair_of_options():
    assert 30 <= len(CONFIGS) <= 50
    for i, name in enumerate(OPTIONS):  # each value of each option in a fair share of them
        for value in LEVELS[name]:
            share = sum(c[i] == value for c in CONFIGS) / len(CONFIGS)
            assert share >= 0.5 / len(LEVELS[name]), (name, value, share)
    full = {(c[0], c[2], c[3]) for c in CONFIGS}
    assert full >= set(itertools.product(LEVELS["l"], LEVELS["dtype"], LEVELS["layout"]))
    for (i, a), (j, b) in itertools.combinations(enumerate(OPTIONS), 2):
        seen = {(c[i], c[j]) for c in CONFIGS}
        missing = set(itertools.product(LEVELS[a], LEVELS[b])) - seen
        assert not missing, f"no configuration has ({a}, {b}) = {sorted(missing, key=str)[:5]}"


def make(shape, dtype, layout, device, gen, scale=1.0, positive=False):
    """A random tensor of ``shape`` (..., l), laid out as asked: contiguous, transposed (the
    last two dimensions swapped in memory) or every other element of a twice-as-long l."""
    if layout == "transposed":
        base = (*shape[:-2], shape[-1], shape[-2])
    elif layout == "sliced":
        base = (*shape[:-1], 2 * shape[-1])
    else:
        base = shape
    x = torch.randn(*base, generator=gen) * scale
    x = (x.abs() if positive else x).to(device=device, dtype=dtype)
    if layout == "transposed":
        return x.transpose(-1, -2)
    return x[..., ::2] if layout == "sliced" else x


def make_inputs(cfg, device, gen, d=None):
    length, n, dtype, layout, groups, has_d, has_z, has_bias, softplus, grad, b, init = cfg
    d = d or (4 if device == "cpu" else 64)
    length = length if device == "cpu" else 8 * length + 3
    dt = DTYPES[dtype]
    bc = (b, n, length) if groups is None else (b, groups, n, length)
    x = {
        "u": make((b, d, length), dt, layout, device, gen),
        # without softplus, delta is taken as a step size already (positive), as in Mamba
        "delta": make((b, d, length), dt, layout, device, gen, 0.5, positive=not softplus),
        # A, D and delta_bias are fp32 parameters beside 16-bit activations, as in Mamba
        "A": (-0.1 - 1.9 * torch.rand(d, n, generator=gen)).to(device),
        "B": make(bc, dt, layout, device, gen), "C": make(bc, dt, layout, device, gen),
        "D": torch.randn(d, generator=gen).to(device) if has_d else None,
        "z": make((b, d, length), dt, layout, device, gen) if has_z else None,
        "delta_bias": make((d,), torch.float32, "contiguous", device, gen, 0.5,
                           positive=not softplus) if has_bias else None,
        "initial_state": torch.randn(b, d, n, generator=gen).to(device) if init else None,
    }
    if grad == "random":
        upstream = (torch.randn(b, d, length, generator=gen).to(device, dt),
                    torch.randn(b, d, n, generator=gen).to(device))
    else:
        upstream = None
    return x, softplus, upstream


def forward_backward(x, softplus, upstream, backend, cast=None):
    """out, last state and the gradients of every tensor input (in the order of ``x``)."""
    names = [k for k, v in x.items() if v is not None]
    leaves = {k: (x[k].to(cast) if cast else x[k]).detach().requires_grad_(True) for k in names}
    args = {k: leaves.get(k) for k in x}
    out, last = selective_scan_fn(**args, delta_softplus=softplus, return_last_state=True,
                                  backend=backend)
    inputs = [leaves[k] for k in names]
    if upstream is None:
        grads = torch.autograd.grad(out.sum(), inputs)
    else:
        dout, dlast = upstream
        grads = torch.autograd.grad((out, last), inputs, (dout.to(out.dtype),
                                                          dlast.to(last.dtype)))
    return dict(zip(["out", "last_state", *[f"d{k}" for k in names]],
                    [out.detach(), last.detach(), *grads]))


def check_accuracy(kernel, exact, lowp, what):
    """DESIGN.md's accuracy rule for every output and gradient."""
    assert kernel.keys() == exact.keys()
    for name in kernel:
        got, want, base = kernel[name], exact[name], lowp[name]
        assert got.shape == want.shape and got.dtype == base.dtype, (
            f"{what}: {name} has shape {tuple(got.shape)} {got.dtype}, expected "
            f"{tuple(want.shape)} {base.dtype}")
        assert torch.isfinite(got).all(), f"{what}: {name} has non-finite values"
        err = (got.double() - want).abs().max().item() if got.numel() else 0.0
        base_err = (base.double() - want).abs().max().item() if got.numel() else 0.0
        assert err <= 2 * base_err + 1e-5, (
            f"{what}: {name} max error {err:.3g} > 2 x reference error {base_err:.3g} + 1e-5")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_kernel_forward_and_gradients_follow_the_accuracy_rule(cfg, device):
    gen = torch.Generator().manual_seed(zlib.crc32(repr(cfg).encode()))
    x, softplus, upstream = make_inputs(cfg, device, gen)
    kernel = forward_backward(x, softplus, upstream, "triton")
    exact = forward_backward(x, softplus, upstream, "reference", cast=torch.float64)
    lowp = forward_backward(x, softplus, upstream, "reference")
    check_accuracy(kernel, exact, lowp, f"config {cfg}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("groups", [None, 2])
def test_kernel_with_several_channel_blocks_per_group(groups, device):
    # 74 channels (2 x 37): each group needs several blocks of channels, the last one cut
    # short, and the blocks of a group add their dB and dC into the same place
    gen = torch.Generator().manual_seed(4)
    cfg = (7, 4, "fp32", "contiguous", groups, True, True, True, True, "random", 1, False)
    x, softplus, upstream = make_inputs(cfg, device, gen, d=74)
    dg = 74 // (groups or 1)
    block_d = triton_fwd.block_sizes(dg, 4)[0]
    assert dg > block_d and dg % block_d != 0
    kernel = forward_backward(x, softplus, upstream, "triton")
    exact = forward_backward(x, softplus, upstream, "reference", cast=torch.float64)
    lowp = forward_backward(x, softplus, upstream, "reference")
    check_accuracy(kernel, exact, lowp, f"d=74, groups={groups}")


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_is_one_pass_equal_to_two_halves_with_the_state_handed_on(device):
    gen = torch.Generator().manual_seed(5)
    cfg = (100, 4, "fp32", "contiguous", 2, True, True, True, True, "sum", 1, False)
    x, _, _ = make_inputs(cfg, device, gen)
    length = x["u"].shape[-1]
    out, last = selective_scan_fn(**x, delta_softplus=True, return_last_state=True,
                                  backend="triton")
    cut = length // 2 + 3  # not on a chunk edge

    def piece(sl, init):
        p = {k: (v[..., sl] if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}
        p["initial_state"] = init
        return selective_scan_fn(**p, delta_softplus=True, return_last_state=True,
                                 backend="triton")

    out1, mid = piece(slice(0, cut), None)
    out2, last2 = piece(slice(cut, None), mid)
    torch.testing.assert_close(torch.cat([out1, out2], -1), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last2, last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_without_gradients_or_last_state_and_through_backend_none(device):
    gen = torch.Generator().manual_seed(6)
    cfg = (7, 16, "fp16", "transposed", None, True, False, True, True, "sum", 2, False)
    x, _, _ = make_inputs(cfg, device, gen)
    out = selective_scan_fn(**x, delta_softplus=True, backend="triton")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float16
    want = selective_scan_reference(**{k: (v.double() if v is not None else None)
                                       for k, v in x.items()}, delta_softplus=True)
    lowp = selective_scan_reference(**x, delta_softplus=True)
    err = (out.double() - want).abs().max().item()
    assert err <= 2 * (lowp.double() - want).abs().max().item() + 1e-5
    if device == "cuda":  # backend=None picks the kernel for CUDA tensors
        torch.testing.assert_close(selective_scan_fn(**x, delta_softplus=True), out)


def test_only_the_last_state_used_gives_gradients_too():
    if not (triton_fwd.INTERPRETING or CUDA):
        pytest.skip("needs the interpreter or a GPU")
    device = "cuda" if CUDA and not triton_fwd.INTERPRETING else "cpu"
    gen = torch.Generator().manual_seed(7)
    cfg = (9, 4, "fp32", "contiguous", None, False, True, False, True, "sum", 1, True)
    x, _, _ = make_inputs(cfg, device, gen)
    grads = {}
    for backend in ("triton", "reference"):
        leaves = {k: v.detach().requires_grad_(True) for k, v in x.items() if v is not None}
        _, last = selective_scan_fn(**{k: leaves.get(k) for k in x}, delta_softplus=True,
                                    return_last_state=True, backend=backend)
        last.sum().backward()
        grads[backend] = {k: v.grad for k, v in leaves.items()}
    for k, g in grads["triton"].items():
        want = grads["reference"][k]
        if want is None:  # the last state does not depend on C or z: autograd leaves None
            want = torch.zeros_like(x[k])
        assert g is not None, k
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-5, msg=k)


def test_triton_backend_rejects_float64_and_cpu_outside_the_interpreter(monkeypatch):
    gen = torch.Generator().manual_seed(8)
    cfg = (3, 4, "fp32", "contiguous", None, False, False, False, False, "sum", 1, False)
    x = make_inputs(cfg, "cpu", gen)[0]
    x64 = {k: (v.double() if v is not None else None) for k, v in x.items()}
    if triton_fwd.INTERPRETING:
        with pytest.raises(ValueError, match="float64"):
            selective_scan_fn(**x64, backend="triton")
    monkeypatch.setattr(triton_fwd, "INTERPRETING", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        selective_scan_fn(**x, backend="triton")


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_benchmark_gpu_rows_check_agreement_before_timing(pass_):
    # the GPU benchmark's per-shape code on a tiny shape, under the interpreter (no timing
    # claims: it checks that providers are compared with seqlib and that rows are filled in)
    if not triton_fwd.INTERPRETING:
        pytest.skip("runs the interpreter on the CPU")
    from seqlib.ops.selective_scan import benchmark

    providers = {k: v for k, v in benchmark._providers().items()
                 if k in ("seqlib", "parallel", "reference")}
    gen = torch.Generator().manual_seed(9)
    rows = benchmark._gpu_case(providers, 1, 4, 8, pass_, torch.device("cpu"), gen)
    by_name = {r["provider"]: r for r in rows}
    assert by_name["seqlib"]["ms"] > 0 and "speedup_vs" in by_name["seqlib"]
    assert by_name["parallel"]["disagreement"] < benchmark.AGREEMENT_TOLERANCE
    if pass_ == "fwd":
        assert by_name["reference"]["disagreement"] < benchmark.AGREEMENT_TOLERANCE
    else:
        assert "forward only" in by_name["reference"]["skipped"]

    def wrong(*args, **kwargs):  # a scan that forgot delta_bias disagrees and is not timed
        kwargs["delta_bias"] = None
        return providers["parallel"](*args, **kwargs)

    rows = benchmark._gpu_case({"seqlib": providers["seqlib"], "wrong": wrong}, 1, 4, 8, pass_,
                               torch.device("cpu"), gen)
    assert "disagrees with seqlib" in rows[1]["skipped"] and "ms" not in rows[1]


def test_kernel_on_an_empty_sequence_returns_the_initial_state():
    if not triton_fwd.INTERPRETING:
        pytest.skip("runs the interpreter on the CPU")
    gen = torch.Generator().manual_seed(10)
    cfg = (0, 4, "fp32", "contiguous", None, True, True, True, True, "sum", 2, True)
    x, _, _ = make_inputs(cfg, "cpu", gen)
    leaves = {k: v.detach().requires_grad_(True) for k, v in x.items()}
    out, last = selective_scan_fn(**leaves, delta_softplus=True, return_last_state=True,
                                  backend="triton")
    assert out.shape == (2, 4, 0)
    assert torch.equal(last, x["initial_state"])
    (out.sum() + (last * 3).sum()).backward()
    assert torch.equal(leaves["initial_state"].grad, torch.full_like(last, 3.0))
    assert not leaves["A"].grad.any()
