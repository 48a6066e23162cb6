"""seqlib's Triton SSD kernels (the four forward and five backward stages behind
``function.TritonSSD``) against the float64 recurrence, and each backward stage against autograd
through its PyTorch twin.

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1) on small shapes; with a GPU the same configurations run on CUDA with
lengths eight times longer. Every comparison uses DESIGN.md's accuracy rule: for the output, the
final state and each gradient, the kernel's largest error against the float64 reference is at
most twice the error of the PyTorch reference run on the same inputs in the input dtype, plus
1e-5; every value is finite. One refinement, said here so it is not hidden: the gradients of the
per-head parameters A, D and dt_bias, and those of dt and the initial state, are fp32 sums over
the sequence whose rounding grows with their size (two fp32 algorithms then differ by more than
2x on a coin flip), so their 1e-5 is relative to their largest magnitude; so are the fp32
gradients of fp16/bf16 inputs' fp32 arguments (as in tests/test_ssd.py).
"""

import itertools
import os
import random
import zlib

import pytest
import torch

from seqlib.ops.ssd import mamba_chunk_scan_combined, ssd_reference

triton = pytest.importorskip("triton")  # Linux-only dependency: absent on macOS laptops

from seqlib.ops.ssd import triton_common  # noqa: E402
from seqlib.ops.ssd.reference import (  # noqa: E402
    chunk_cumsum_ref,
    chunk_scan_ref,
    chunk_state_ref,
    state_passing_ref,
)

CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(
        not triton_common.INTERPRETING,
        reason="CPU kernels need TRITON_INTERPRET=1 (GPU present)")),
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="GPU-sized shapes need CUDA")),
]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# The options and their values; CONFIGS covers every pair of values of any two options (checked
# below). Lengths cross the chunk edges; chunk 128 is more than one 64-position block, so the
# kernels' loops over the blocks of a chunk run too; "sliced" inputs have a last-dimension stride
# of 2, "transposed" ones are (l, b)-major views; "sum" is the zero-stride upstream gradient of
# out.sum().backward(); "pn" pairs head dim p with state size n (odd sizes need masks).
OPTIONS = {
    "length": [1, 17, 33, 64, 65, 129],
    "chunk": [16, 32, 64, 128],
    "dtype": ["fp32", "fp16", "bf16"],
    "groups": [1, 2],
    "D": [None, "h", "hp"],
    "z": [False, True],
    "softplus_bias": [False, True],
    "initial": [False, True],
    "layout": ["contiguous", "sliced", "transposed"],
    "upstream": ["random", "sum"],
    "pn": [(8, 16), (24, 20), (64, 32)],
}


def _pairwise(options, seed=0):
    """A small list of configurations covering every pair of values (greedy, seeded)."""
    names = list(options)
    rng = random.Random(seed)
    missing = {(a, va, b, vb) for a, b in itertools.combinations(names, 2)
               for va in options[a] for vb in options[b]}
    configs = []
    while missing:
        best, best_cover = None, -1
        for _ in range(60):
            a, va, b, vb = sorted(missing, key=str)[rng.randrange(len(missing))]
            cand = {n: rng.choice(options[n]) for n in names}
            cand[a], cand[b] = va, vb
            cover = sum((x, cand[x], y, cand[y]) in missing
                        for x, y in itertools.combinations(names, 2))
            if cover > best_cover:
                best, best_cover = cand, cover
        configs.append(best)
        missing -= {(x, best[x], y, best[y]) for x, y in itertools.combinations(names, 2)}
    return configs


CONFIGS = _pairwise(OPTIONS, seed=0) + _pairwise(OPTIONS, seed=1)  # each pair at least twice


def test_configurations_cover_every_pair_of_options():
    assert 30 <= len(CONFIGS) <= 60
    for a, b in itertools.combinations(OPTIONS, 2):
        seen = {(str(c[a]), str(c[b])) for c in CONFIGS}
        assert seen == {(str(x), str(y)) for x in OPTIONS[a] for y in OPTIONS[b]}, (a, b)


def _layout(t, layout):
    if layout == "sliced":
        buffer = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
        buffer[..., ::2] = t
        return buffer[..., ::2]
    if layout == "transposed" and t.ndim >= 3:
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    return t


def make(config, device, gen, heads=None):
    """(tensor arguments in the config's dtype and layout, keyword options, upstream grads)."""
    scale = 8 if device == "cuda" else 1
    b, length, h = 2, config["length"] * scale, heads or (4 if device == "cuda" else 2)
    p, n = config["pn"]
    g = config["groups"]
    dtype = DTYPES[config["dtype"]]

    def rnd(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen).to(dtype)

    softplus = config["softplus_bias"]
    x = rnd(b, length, h, p, dtype=dtype)
    dt = (rnd(b, length, h) - 1.0) if softplus else torch.rand(b, length, h, generator=gen) * 0.3
    dt = dt.to(dtype)
    A = -(torch.rand(h, generator=gen) + 0.2)
    B, C = rnd(b, length, g, n, dtype=dtype), rnd(b, length, g, n, dtype=dtype)
    kwargs = dict(dt_softplus=softplus)
    if config["D"] == "h":
        kwargs["D"] = rnd(h)
    elif config["D"] == "hp":
        kwargs["D"] = rnd(h, p)
    if config["z"]:
        kwargs["z"] = rnd(b, length, h, p, dtype=dtype)
    if softplus:
        kwargs["dt_bias"] = rnd(h) * 0.5
    if config["initial"]:
        kwargs["initial_states"] = rnd(b, h, p, n)
    args = [_layout(t, config["layout"]).to(device) for t in (x, dt, A, B, C)]
    kwargs = {k: _layout(v, config["layout"]).to(device) if isinstance(v, torch.Tensor) else v
              for k, v in kwargs.items()}
    if config["upstream"] == "sum":
        up = None
    else:
        up = (rnd(b, length, h, p, dtype=dtype).to(device), rnd(b, h, p, n).to(device))
    return args, kwargs, up


def forward_backward(fn, args, kwargs, up):
    args = [t.detach().clone().requires_grad_(True) for t in args]
    kwargs = {k: (v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v)
              for k, v in kwargs.items()}
    out, final = fn(*args, **kwargs)
    if up is None:
        (out.sum() + final.sum()).backward()      # zero-stride upstream gradients
    else:
        ((out.double() * up[0].double()).sum() + (final.double() * up[1].double()).sum()).backward()
    names = ["x", "dt", "A", "B", "C"] + [k for k, v in kwargs.items()
                                          if isinstance(v, torch.Tensor)]
    tensors = args + [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
    return dict(zip(["out", "final"] + ["d" + name for name in names],
                    [out, final] + [t.grad for t in tensors]))


#: gradients that are fp32 sums over the whole batch and sequence (A, D, dt_bias) or over the
#: rest of the sequence (dt, through the state's gradient; the initial state)
SUMMED = ("dA", "dD", "ddt_bias", "ddt", "dinitial_states")


def check_accuracy(kernel, exact, lowps, low_dtype, what):
    """The accuracy rule, with "the PyTorch reference's error" taken as the larger error of the
    PyTorch forms (``lowps``: the sequential recurrence and the chunked algorithm, both run in the
    input dtype). The summed gradients (dA, ddt_bias) of the chunked algorithm in fp32 are
    measurably less accurate than the sequential recurrence's, and the kernel computes the
    chunked algorithm, so it is held to the error of that algorithm, not to a different one."""
    for lowp in lowps:
        assert kernel.keys() == exact.keys() == lowp.keys()
    for name in kernel:
        k, e = kernel[name], exact[name]
        assert k is not None and k.dtype == lowps[0][name].dtype, f"{what} {name}: dtype {k.dtype}"
        assert torch.isfinite(k).all(), f"{what} {name} has NaN or inf"
        err = (k.double() - e.double()).abs().max().item()
        ref_err = max((r[name].double() - e.double()).abs().max().item() for r in lowps)
        summed = name in SUMMED or (name.startswith("d") and k.dtype != low_dtype)
        slack = 1e-5 * (max(1.0, e.abs().max().item()) if summed else 1.0)
        assert err <= 2 * ref_err + slack, f"{what} {name}: {err:.3g} vs ref {ref_err:.3g}"


# Inputs are seeded from the configuration (crc32: the same in every process, unlike hash());
# SSD_TEST_SEED shifts every seed, to look for configurations that pass only by luck.
SEED_BASE = int(os.environ.get("SSD_TEST_SEED", "0"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", CONFIGS,
                         ids=["-".join(str(v) for v in c.values()) for c in CONFIGS])
def test_kernel_matches_reference(config, device):
    gen = torch.Generator().manual_seed(SEED_BASE + zlib.crc32(repr(config).encode()))
    args, kwargs, up = make(config, device, gen)
    chunk = config["chunk"]

    def triton_fn(*a, **k):
        return mamba_chunk_scan_combined(*a, chunk, **k, return_final_states=True,
                                         backend="triton")

    def ref_fn(*a, **k):
        return ssd_reference(*a, **k, return_final_states=True)

    kernel = forward_backward(triton_fn, args, kwargs, up)
    exact = forward_backward(ref_fn, [t.double() for t in args],
                             {k: v.double() if isinstance(v, torch.Tensor) else v
                              for k, v in kwargs.items()},
                             None if up is None else tuple(u.double() for u in up))
    def chunked_fn(*a, **k):
        return mamba_chunk_scan_combined(*a, chunk, **k, return_final_states=True,
                                         backend="chunked")

    lowps = [forward_backward(fn, args, kwargs, up) for fn in (ref_fn, chunked_fn)]
    check_accuracy(kernel, exact, lowps, DTYPES[config["dtype"]], str(config))


def _device():
    return "cuda" if CUDA else "cpu"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_each_stage_matches_its_reference_twin(dtype):
    """The stages one by one, on a length that leaves the last chunk part-filled, with bias and
    softplus on: the padded positions must be dt' = 0 exactly."""
    from seqlib.ops.ssd.triton_chunk_cumsum import chunk_cumsum
    from seqlib.ops.ssd.triton_chunk_scan import chunk_scan
    from seqlib.ops.ssd.triton_chunk_state import chunk_state
    from seqlib.ops.ssd.triton_state_passing import state_passing

    gen = torch.Generator().manual_seed(7)
    dev, dt_ = _device(), DTYPES[dtype]
    b, length, h, p, g, n, q = 1, 40, 2, 8, 1, 16, 16
    x = torch.randn(b, length, h, p, generator=gen).to(dt_).to(dev)
    dt = torch.randn(b, length, h, generator=gen).to(dev)
    A, bias = -torch.rand(h, generator=gen).to(dev), torch.randn(h, generator=gen).to(dev)
    B = torch.randn(b, length, g, n, generator=gen).to(dt_).to(dev)
    C = torch.randn(b, length, g, n, generator=gen).to(dt_).to(dev)
    s0 = torch.randn(b, h, p, n, generator=gen).to(dev)
    dt_k, cums_k = chunk_cumsum(dt, A, bias, True, q)
    dt_r, cums_r = chunk_cumsum_ref(dt, A, bias, True, q, torch.float32)
    assert (dt_k[..., 2, 8:] == 0).all()
    torch.testing.assert_close(dt_k, dt_r, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cums_k, cums_r, rtol=1e-5, atol=1e-5)

    def chunked(t):
        pad = torch.nn.functional.pad(t.float(), (0, 0, 0, 0, 0, 48 - length))
        return pad.reshape(b, 3, q, t.shape[2], t.shape[3]).expand(b, 3, q, h, t.shape[3])

    states_k = chunk_state(x, B, dt_k, cums_k)
    states_r = chunk_state_ref(chunked(x), chunked(B), dt_r, cums_r)
    torch.testing.assert_close(states_k, states_r, rtol=1e-4, atol=1e-4)
    entering_k, final_k = state_passing(states_k, cums_k, s0)
    entering_r, final_r = state_passing_ref(states_r, cums_r, s0)
    torch.testing.assert_close(entering_k, entering_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final_k, final_r, rtol=1e-4, atol=1e-4)
    y_k = chunk_scan(x, B, C, dt_k, cums_k, entering_k, None, None).float()
    y_r = chunk_scan_ref(chunked(x), chunked(B), chunked(C), dt_r, cums_r, entering_r)
    y_r = y_r.reshape(b, 48, h, p)[:, :length]
    tol = 1e-4 if dtype == "fp32" else 2e-2 * y_r.abs().max().item()
    torch.testing.assert_close(y_k, y_r, rtol=0, atol=tol)


def test_one_pass_equals_two_halves_with_the_state_handed_on():
    """fla#285 on the kernels: the state out of the first half, handed to the second, gives the
    single pass (in fp32, to fp32 rounding), and gradients flow back through the handed state."""
    gen = torch.Generator().manual_seed(3)
    dev = _device()
    b, length, h, p, g, n, cut = 1, 50, 2, 8, 1, 16, 21
    x = torch.randn(b, length, h, p, generator=gen).to(dev)
    dt = torch.randn(b, length, h, generator=gen).to(dev)
    A, bias = -torch.rand(h, generator=gen).to(dev), torch.randn(h, generator=gen).to(dev)
    B = torch.randn(b, length, g, n, generator=gen).to(dev)
    C = torch.randn(b, length, g, n, generator=gen).to(dev)
    kw = dict(dt_bias=bias, dt_softplus=True, return_final_states=True, backend="triton")
    whole, whole_state = mamba_chunk_scan_combined(x, dt, A, B, C, 16, **kw)
    x1 = x.clone().requires_grad_(True)
    first, mid = mamba_chunk_scan_combined(x1[:, :cut], dt[:, :cut], A, B[:, :cut], C[:, :cut],
                                           16, **kw)
    second, end = mamba_chunk_scan_combined(x1[:, cut:], dt[:, cut:], A, B[:, cut:], C[:, cut:],
                                            16, initial_states=mid, **kw)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(end, whole_state, rtol=1e-5, atol=1e-5)
    end.sum().backward()
    x2 = x.clone().requires_grad_(True)
    _, state2 = mamba_chunk_scan_combined(x2, dt, A, B, C, 16, **kw)
    state2.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)


def test_empty_sequence_returns_the_initial_state():
    dev = _device()
    s0 = torch.randn(1, 2, 8, 16).to(dev)
    out, final = mamba_chunk_scan_combined(
        torch.zeros(1, 0, 2, 8, device=dev), torch.zeros(1, 0, 2, device=dev),
        -torch.ones(2, device=dev), torch.zeros(1, 0, 1, 16, device=dev),
        torch.zeros(1, 0, 1, 16, device=dev), 16, initial_states=s0, return_final_states=True,
        backend="triton")
    assert out.shape == (1, 0, 2, 8) and torch.equal(final, s0)


def test_triton_backend_rejects_float64():
    x = torch.zeros(1, 3, 2, 4, dtype=torch.float64, device=_device())
    with pytest.raises(ValueError, match=r"backend='triton' takes float16, bfloat16 or float32"):
        mamba_chunk_scan_combined(x, torch.zeros(1, 3, 2, dtype=torch.float64, device=x.device),
                                  torch.zeros(2, dtype=torch.float64, device=x.device),
                                  torch.zeros(1, 3, 1, 4, dtype=torch.float64, device=x.device),
                                  torch.zeros(1, 3, 1, 4, dtype=torch.float64, device=x.device),
                                  16, backend="triton")


def test_dot_operands_are_fp32_exactly_where_needed():
    cpu = torch.device("cpu")
    assert triton_common.dot_options(torch.bfloat16, cpu)["DOT_FP32"]  # interpreter: always
    assert triton_common.dot_options(torch.float32, cpu)["DOT_FP32"]
    if CUDA:
        gpu = torch.device("cuda")
        assert triton_common.dot_options(torch.float32, gpu)["DOT_FP32"] is True
        assert triton_common.dot_options(torch.float16, gpu)["DOT_FP32"] is False


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_linear_attention_runs_on_the_kernels(dtype):
    """Linear attention shares the SSD kernels (A = 0, dt = scale): output, final state and
    gradients by the accuracy rule against its float64 quadratic definition."""
    from seqlib.ops.linear_attention import linear_attention, linear_attention_quadratic

    gen = torch.Generator().manual_seed(11)
    dev, dt_ = _device(), DTYPES[dtype]
    q, k, v = (torch.randn(1, 2, 45, 16, generator=gen).to(dt_).to(dev) for _ in range(3))
    s0 = torch.randn(1, 2, 16, 16, generator=gen).to(dev)
    up = torch.randn(1, 2, 45, 16, generator=gen).to(dt_).to(dev)

    def run(fn, *inputs):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        out, state = fn(*leaves)
        ((out.double() * up.double()).sum() + state.double().sum()).backward()
        return dict(out=out, state=state, **{f"d{i}": t.grad for i, t in enumerate(leaves)})

    kernel = run(lambda *a: linear_attention(*a[:3], initial_state=a[3], return_final_state=True,
                                             backend="triton"), q, k, v, s0)
    exact = run(lambda *a: linear_attention_quadratic(*a[:3], None, a[3], True),
                q.double(), k.double(), v.double(), s0.double())
    lowp = run(lambda *a: linear_attention_quadratic(*a[:3], None, a[3], True), q, k, v, s0)
    lowp["state"] = lowp["state"].float()
    for name in kernel:
        kv, e, r = kernel[name], exact[name], lowp[name]
        assert torch.isfinite(kv).all(), name
        err, ref_err = (kv.double() - e).abs().max().item(), (r.double() - e).abs().max().item()
        slack = 1e-5 * (max(1.0, e.abs().max().item()) if name in ("state", "d3") else 1.0)
        assert err <= 2 * ref_err + slack, f"{name}: {err:.3g} vs {ref_err:.3g}"


# ---- the fused backward ------------------------------------------------------------------------

def _base_config(**changes):
    config = dict(length=50, chunk=16, dtype="fp32", groups=1, D="h", z=True,
                  softplus_bias=True, initial=True, layout="contiguous", upstream="random",
                  pn=(8, 16))
    config.update(changes)
    return config


def _all_grads(fn, args, kwargs, loss):
    """Output, final state and every gradient (zeros where none arrives) under ``loss``."""
    args = [t.detach().clone().requires_grad_(True) for t in args]
    kwargs = {k: (v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v)
              for k, v in kwargs.items()}
    out, final = fn(*args, **kwargs)
    loss(out, final).backward()
    leaves = dict(zip(["x", "dt", "A", "B", "C"], args))
    leaves.update({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
    grads = {"d" + k: t.grad if t.grad is not None else torch.zeros_like(t)
             for k, t in leaves.items()}
    return {"out": out, "final": final, **grads}


def _check_against_reference(config, loss, heads=None):
    """The Triton backend against the float64 recurrence by the accuracy rule, under ``loss``;
    returns the kernel's results."""
    gen = torch.Generator().manual_seed(SEED_BASE + zlib.crc32(repr((config, heads)).encode()))
    args, kwargs, _ = make(config, _device(), gen, heads=heads)
    chunk = config["chunk"]

    def triton_fn(*a, **k):
        return mamba_chunk_scan_combined(*a, chunk, **k, return_final_states=True,
                                         backend="triton")

    def ref_fn(*a, **k):
        return ssd_reference(*a, **k, return_final_states=True)

    def chunked_fn(*a, **k):
        return mamba_chunk_scan_combined(*a, chunk, **k, return_final_states=True,
                                         backend="chunked")

    kernel = _all_grads(triton_fn, args, kwargs, loss)
    exact = _all_grads(ref_fn, [t.double() for t in args],
                       {k: v.double() if isinstance(v, torch.Tensor) else v
                        for k, v in kwargs.items()}, loss)
    lowps = [_all_grads(fn, args, kwargs, loss) for fn in (ref_fn, chunked_fn)]
    check_accuracy(kernel, exact, lowps, DTYPES[config["dtype"]], str(config))
    return kernel


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_out_sum_backward_gives_a_zero_stride_gradient(dtype):
    """``out.sum().backward()`` alone: the upstream gradient is one number broadcast with zero
    strides, and no gradient reaches the final state (the backward gets None for it)."""
    strides = []

    def loss(out, final):
        out.register_hook(lambda g: strides.append(g.stride()))
        return out.sum()

    _check_against_reference(_base_config(dtype=dtype), loss)
    assert set(strides[0]) == {0}, strides   # the kernel's run got what this test says


def test_gradient_through_the_final_state_only():
    """Only the final state is used (a later segment's initial state, say): the output gets no
    gradient, and x, dt, A, B, dt_bias and the initial state still get theirs, C, D and z
    none (zeros)."""
    w = torch.randn(2, 2, 8, 16, generator=torch.Generator().manual_seed(5)).to(_device())
    kernel = _check_against_reference(_base_config(length=40),
                                      lambda out, final: (final * w).sum())
    for name in ("dC", "dD", "dz"):
        assert not kernel[name].any(), name


@pytest.mark.parametrize("length, chunk, dtype", [(17, 16, "fp32"), (50, 32, "bf16"),
                                                  (130, 128, "fp32")])
def test_padding_passes_no_gradient(length, chunk, dtype):
    """mamba_ssm#352 and #368: a length that leaves the last chunk part-filled, with dt_bias and
    softplus on. A padded position's dt' is the constant 0, so no gradient may flow from it:
    dt and dt_bias enter only as their sum, so d dt_bias must equal the sum of d dt over batch
    and length. dt_bias is large here, so that a leaked softplus(dt_bias) would be large too."""
    config = _base_config(length=length, chunk=chunk, dtype=dtype, D=None, z=False)
    up = torch.randn(2, length, 2, 8, generator=torch.Generator().manual_seed(length))
    up = up.to(_device())
    bias = torch.full((2,), 3.0, device=_device())

    def loss(out, final):
        return (out.float() * up).sum() + final.sum()

    gen = torch.Generator().manual_seed(SEED_BASE + zlib.crc32(repr(config).encode()))
    args, kwargs, _ = make(config, _device(), gen)
    kwargs["dt_bias"] = bias
    kernel = _all_grads(lambda *a, **k: mamba_chunk_scan_combined(
        *a, chunk, **k, return_final_states=True, backend="triton"), args, kwargs, loss)
    exact = _all_grads(lambda *a, **k: ssd_reference(*a, **k, return_final_states=True),
                       [t.double() for t in args],
                       {k: v.double() if isinstance(v, torch.Tensor) else v
                        for k, v in kwargs.items()}, loss)
    for name, value in kernel.items():
        assert torch.isfinite(value).all(), name
    tol = 1e-4 if dtype == "fp32" else 2e-2
    scale = exact["ddt_bias"].abs().max().item()
    torch.testing.assert_close(kernel["ddt_bias"].double(), exact["ddt_bias"], rtol=0,
                               atol=tol * scale)
    torch.testing.assert_close(kernel["ddt_bias"].double(),
                               kernel["ddt"].double().sum((0, 1)), rtol=0, atol=tol * scale)
    torch.testing.assert_close(kernel["ddt"].double(), exact["ddt"], rtol=0,
                               atol=tol * exact["ddt"].abs().max().item())


@pytest.mark.parametrize("splits", [1, 2])
def test_groups_of_two_heads_share_B_and_C(splits, monkeypatch):
    """g = 2 groups of 2 heads each: dB and dC are sums over the heads of a group. With
    splits=2 the two heads of a group sit in different programs, whose sums the launchers add
    (the path a GPU takes to have enough programs)."""
    from seqlib.ops.ssd import triton_chunk_scan_bwd, triton_chunk_state_bwd

    for module in (triton_chunk_scan_bwd, triton_chunk_state_bwd):
        monkeypatch.setattr(module, "head_splits", lambda *args: splits)
    config = _base_config(length=40, groups=2, dtype="bf16" if splits == 2 else "fp32",
                          D="hp")
    _check_against_reference(config, lambda out, final: (
        (out.double() * torch.linspace(-1, 1, out.shape[1], dtype=torch.float64,
                                       device=out.device)[:, None, None]).sum()
        + final.double().sum()), heads=4)


def _chunks(t, c, q):
    """(b, l, k, m) -> (b, c, q, k, m), zero-padded at the end (differentiable)."""
    pad = torch.nn.functional.pad(t, (0, 0, 0, 0, 0, c * q - t.shape[1]))
    return pad.reshape(t.shape[0], c, q, *t.shape[2:])


@pytest.mark.parametrize("dtype, chunk", [("fp32", 16), ("bf16", 16), ("fp32", 128)])
def test_each_backward_stage_matches_autograd_through_its_twin(dtype, chunk):
    """Every backward kernel against autograd through the stage twins of ``reference.py``
    (``chunk_cumsum_ref`` -> ``chunk_state_ref`` -> ``state_passing_ref`` -> ``chunk_scan_ref``
    -> D and the gate), each kernel fed the twins' own intermediate values and gradients so
    that no error is handed down: the gradient of each entering state, of each chunk's own
    state (and the initial one), of dt' and of the cumulative sums, and of every input. Two
    groups of two heads, a part-filled last chunk, gate, D (h, p), bias and softplus; chunk 128
    has two blocks per chunk. The kernels hand the decay's gradient over in three parts (see
    ``triton_chunk_cumsum_bwd``), whose sum is checked against the twins' reverse cumulative
    sum of d(cumsum)."""
    from seqlib.ops.ssd.reference import _finish, _heads
    from seqlib.ops.ssd.triton_chunk_cumsum_bwd import chunk_cumsum_bwd
    from seqlib.ops.ssd.triton_chunk_scan_bwd import chunk_scan_bwd_dc, chunk_scan_bwd_dstates
    from seqlib.ops.ssd.triton_chunk_state_bwd import chunk_state_bwd
    from seqlib.ops.ssd.triton_state_passing_bwd import state_passing_bwd

    gen = torch.Generator().manual_seed(zlib.crc32(repr(("stages", dtype, chunk)).encode()))
    dev, low = _device(), DTYPES[dtype]
    b, length, h, p, g, n = 1, 40 if chunk == 16 else 150, 4, 8, 2, 16
    c = -(-length // chunk)

    def rnd(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen).to(dtype).to(dev)

    x, z, dout = (rnd(b, length, h, p, dtype=low) for _ in range(3))
    B, C = rnd(b, length, g, n, dtype=low), rnd(b, length, g, n, dtype=low)
    dt, A, bias = rnd(b, length, h) - 1.0, -torch.rand(h, generator=gen).to(dev), rnd(h)
    D, s0, dfinal = rnd(h, p), rnd(b, h, p, n), rnd(b, h, p, n)

    leaves = {k: v.float().clone().requires_grad_(True)
              for k, v in dict(x=x, z=z, B=B, C=C, dt=dt, A=A, bias=bias, D=D, s0=s0).items()}
    dtp_graph, cums_graph = chunk_cumsum_ref(leaves["dt"], leaves["A"], leaves["bias"], True,
                                             chunk, torch.float32)
    # cut here: the kernels take d dt' and d cumsum from the later stages, and stage 1's
    # backward turns them into d dt, dA and d dt_bias
    dtp, cums = (t.detach().contiguous().requires_grad_(True) for t in (dtp_graph, cums_graph))
    xc = _chunks(leaves["x"], c, chunk)
    Bc, Cc = (_chunks(_heads(leaves[k], h), c, chunk) for k in ("B", "C"))
    states = chunk_state_ref(xc, Bc, dtp, cums)
    entering, final = state_passing_ref(states, cums, leaves["s0"])
    y = chunk_scan_ref(xc, Bc, Cc, dtp, cums, entering).reshape(b, c * chunk, h, p)[:, :length]
    out = _finish(y, leaves["x"], leaves["D"], leaves["z"])
    for t in (states, entering):
        t.retain_grad()
    ((out * dout.float()).sum() + (final * dfinal).sum()).backward()
    torch.autograd.backward([dtp_graph, cums_graph], [dtp.grad, cums.grad])
    twin = {k: v.grad for k, v in leaves.items()}
    twin.update(dtp=dtp.grad, cums=cums.grad, states=states.grad, entering=entering.grad)
    dtp, cums, entering = dtp.detach(), cums.detach(), entering.detach()

    def close(name, kernel, ref, ulps=1):
        """fp32 results to fp32 rounding; results in a 16-bit dtype to ``ulps`` of it."""
        tol = 1e-5 if kernel.dtype == torch.float32 else ulps * 2.0 ** -8
        scale = max(ref.abs().max().item(), 1e-30)
        err = (kernel.double() - ref.double()).abs().max().item()
        assert err <= tol * scale, f"{name}: error {err:.3g}, largest value {scale:.3g}"

    d_in = chunk_scan_bwd_dstates(dout, z, C, cums)                     # stage 1
    close("d entering", d_in, twin["entering"])
    d_end, d_last, d_s0 = state_passing_bwd(twin["entering"].clone(), cums, entering, dfinal,
                                            True)                         # stage 2
    close("d chunk states", d_end, twin["states"])
    close("d initial", d_s0, twin["s0"])
    dC, dz, d_enter = chunk_scan_bwd_dc(x, B, C, dout, z, D, dtp, cums, entering)  # stage 3
    close("dC", dC, twin["C"])
    close("dz", dz, twin["z"])
    dx, dB, ddtp, quad, dD = chunk_state_bwd(x, B, C, dout, z, D, dtp, cums,
                                             twin["states"])             # stage 4
    close("dx", dx, twin["x"])
    close("dB", dB, twin["B"])
    close("d dt'", ddtp, twin["dtp"])
    close("dD", dD, twin["D"])
    reverse = twin["cums"].flip(-1).cumsum(-1).flip(-1)                     # R_j of the twins
    parts = d_last.sum(-1)[..., None] + d_enter.flip(-1).cumsum(-1).flip(-1) + quad.sum(3)
    close("R (sum of the decay's parts)", parts, reverse)
    ddt, dA, dbias = chunk_cumsum_bwd(twin["dtp"], twin["cums"], dtp, dt, A, bias, True)  # stage 5
    close("d dt", ddt, twin["dt"])
    close("dA", dA, twin["A"])
    close("d dt_bias", dbias, twin["bias"])
    assert dx.dtype == dz.dtype == dB.dtype == dC.dtype == low
