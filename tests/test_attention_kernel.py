"""seqlib's Triton attention kernels against the float64 reference.

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1) on small shapes; with a GPU the same configurations run on CUDA with
lengths about eight times longer and more heads. Every comparison uses DESIGN.md's accuracy
rule: for the output and each gradient, the kernel's largest error against the float64
reference is at most twice the error of the PyTorch reference computed in the input dtype,
plus 1e-5; every value is finite.
"""

import itertools
import zlib

import pytest
import torch

from seqlib.ops.attention import attention, attention_reference, visible_keys

triton = pytest.importorskip("triton")  # Linux-only dependency: absent on macOS laptops

from seqlib.ops.attention import triton_bwd, triton_fwd  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(
        not triton_fwd.INTERPRETING, reason="CPU kernels need TRITON_INTERPRET=1 (GPU present)")),
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="GPU-sized shapes need CUDA")),
]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# (lq, lk, d, mask, heads, b, dtype, layout, upstream gradient, scale): 54 configurations that
# cover every pair of values of any two options (checked by the first test below). Lengths cross
# the interpreter's 64-wide tiles; "window70" spans more than one tile; "sliced" inputs have a
# last-dimension stride of 2; "sum" is the zero-stride gradient of out.sum().backward().
CONFIGS = [
    (1, 1, 16, "window20", "mqa", 1, "fp32", "contiguous", "random", 0.3),
    (1, 17, 128, "none", "mha", 2, "fp16", "sliced", "sum", None),
    (1, 63, 64, "window1", "gqa", 1, "bf16", "transposed", "sum", None),
    (1, 64, 80, "window70", "mha", 2, "bf16", "transposed", "random", 0.3),
    (1, 65, 32, "causal", "mqa", 2, "fp32", "contiguous", "sum", None),
    (1, 100, 96, "window1", "gqa", 1, "fp16", "sliced", "random", 0.3),
    (1, 129, 128, "causal", "mqa", 1, "bf16", "sliced", "random", 0.3),
    (17, 1, 96, "window20", "mha", 2, "fp32", "transposed", "sum", None),
    (17, 17, 64, "none", "mqa", 1, "fp16", "contiguous", "random", 0.3),
    (17, 63, 16, "window70", "gqa", 2, "fp32", "sliced", "random", None),
    (17, 64, 80, "window1", "mha", 1, "fp32", "contiguous", "sum", None),
    (17, 65, 32, "causal", "mha", 1, "fp16", "transposed", "random", 0.3),
    (17, 100, 96, "window70", "mqa", 1, "bf16", "contiguous", "sum", None),
    (17, 129, 16, "none", "mha", 2, "bf16", "transposed", "sum", 0.3),
    (63, 1, 32, "window20", "gqa", 1, "bf16", "sliced", "sum", 0.3),
    (63, 17, 80, "window1", "mqa", 2, "fp32", "transposed", "random", None),
    (63, 63, 128, "window20", "mha", 2, "fp16", "contiguous", "sum", 0.3),
    (63, 64, 64, "none", "gqa", 2, "fp32", "sliced", "random", 0.3),
    (63, 65, 80, "causal", "gqa", 1, "bf16", "sliced", "sum", None),
    (63, 100, 128, "window70", "gqa", 2, "fp32", "transposed", "random", None),
    (63, 129, 16, "window1", "gqa", 1, "fp16", "contiguous", "random", None),
    (64, 1, 64, "window70", "mha", 1, "fp16", "contiguous", "sum", None),
    (64, 17, 16, "causal", "gqa", 1, "bf16", "sliced", "random", 0.3),
    (64, 63, 96, "none", "mqa", 2, "fp32", "transposed", "random", None),
    (64, 64, 80, "window20", "mqa", 1, "fp16", "contiguous", "random", 0.3),
    (64, 65, 128, "window1", "mqa", 1, "fp16", "sliced", "sum", 0.3),
    (64, 100, 32, "none", "mha", 1, "fp16", "contiguous", "random", 0.3),
    (64, 129, 32, "window70", "mqa", 1, "fp32", "contiguous", "random", 0.3),
    (65, 1, 80, "none", "mha", 1, "bf16", "transposed", "sum", 0.3),
    (65, 17, 96, "window70", "mqa", 2, "fp32", "sliced", "random", None),
    (65, 63, 32, "causal", "gqa", 1, "fp16", "contiguous", "sum", None),
    (65, 64, 96, "causal", "mqa", 1, "bf16", "contiguous", "random", 0.3),
    (65, 65, 64, "window20", "mha", 1, "fp16", "sliced", "sum", None),
    (65, 100, 64, "causal", "mha", 1, "fp16", "transposed", "sum", None),
    (65, 129, 80, "window20", "mqa", 1, "fp32", "contiguous", "random", None),
    (100, 1, 128, "window1", "mha", 1, "bf16", "transposed", "sum", None),
    (100, 17, 32, "window20", "mqa", 2, "fp16", "sliced", "random", 0.3),
    (100, 63, 80, "window70", "gqa", 1, "fp32", "contiguous", "sum", None),
    (100, 64, 16, "causal", "mqa", 1, "bf16", "transposed", "random", None),
    (100, 65, 96, "none", "mqa", 1, "fp32", "sliced", "random", None),
    (100, 100, 64, "window20", "mqa", 1, "fp32", "contiguous", "sum", 0.3),
    (100, 129, 96, "causal", "mha", 1, "fp32", "transposed", "random", 0.3),
    (129, 1, 96, "causal", "mqa", 1, "fp32", "contiguous", "sum", None),
    (129, 17, 32, "window1", "mha", 2, "fp16", "sliced", "random", 0.3),
    (129, 63, 80, "window70", "gqa", 1, "bf16", "transposed", "sum", 0.3),
    (129, 64, 128, "none", "mqa", 1, "fp32", "contiguous", "random", None),
    (129, 65, 16, "window20", "mha", 1, "fp32", "sliced", "random", 0.3),
    (129, 100, 80, "none", "mha", 1, "bf16", "contiguous", "sum", 0.3),
    (129, 129, 64, "window70", "mha", 1, "bf16", "sliced", "sum", 0.3),
    (65, 100, 16, "window1", "mqa", 2, "fp16", "transposed", "random", 0.3),
    (63, 65, 96, "window70", "mha", 1, "fp16", "contiguous", "random", 0.3),
    (63, 64, 32, "causal", "mha", 1, "bf16", "contiguous", "random", None),
    (17, 1, 128, "window20", "mha", 1, "fp32", "transposed", "random", 0.3),
    (65, 64, 128, "none", "mqa", 1, "fp32", "sliced", "random", None),
]
OPTIONS = ("lq", "lk", "d", "mask", "heads", "b", "dtype", "layout", "grad", "scale")
LEVELS = {
    "lq": (1, 17, 63, 64, 65, 100, 129), "lk": (1, 17, 63, 64, 65, 100, 129),
    "d": (16, 32, 64, 80, 96, 128), "mask": ("none", "causal", "window1", "window20", "window70"),
    "heads": ("mha", "mqa", "gqa"), "b": (1, 2), "dtype": ("fp32", "fp16", "bf16"),
    "layout": ("contiguous", "transposed", "sliced"), "grad": ("random", "sum"),
    "scale": (None, 0.3),
}
# On a GPU: longer sequences (tile edges at 64 and 128 crossed), more heads, wider windows.
GPU_LENGTH = {1: 1, 17: 137, 63: 511, 64: 512, 65: 513, 100: 801, 129: 1031}
GPU_WINDOW = {1: 1, 20: 160, 70: 600}
HEADS = {"cpu": {"mha": (2, 2), "mqa": (2, 1), "gqa": (4, 2)},
         "cuda": {"mha": (4, 4), "mqa": (4, 1), "gqa": (8, 2)}}


def test_configurations_cover_every_pair_of_options():
    for (i, a), (j, b) in itertools.combinations(enumerate(OPTIONS), 2):
        seen = {(c[i], c[j]) for c in CONFIGS}
        missing = set(itertools.product(LEVELS[a], LEVELS[b])) - seen
        assert not missing, f"no configuration has ({a}, {b}) = {sorted(missing, key=str)[:5]}"


def make(shape, dtype, layout, device, gen):
    """A random tensor of ``shape`` (b, heads, l, d) laid out as asked: contiguous, transposed
    from (b, l, heads, d), or every other element of a twice-as-wide last dimension."""
    b, h, length, d = shape
    base = {"transposed": (b, length, h, d), "sliced": (b, h, length, 2 * d)}.get(layout, shape)
    x = torch.randn(base, generator=gen).to(device, dtype)
    if layout == "transposed":
        return x.transpose(1, 2)
    if layout == "sliced":
        return x[..., ::2]
    return x


def forward_backward(fn, q, k, v, dout):
    """Output and (dq, dk, dv) of fn; dout None means the gradient of out.sum()."""
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = fn(*leaves)
    if dout is None:
        grads = torch.autograd.grad(out.sum(), leaves)
    else:
        grads = torch.autograd.grad(out, leaves, dout)
    return [out.detach(), *grads]


def check_accuracy(kernel, exact, lowp, what):
    """DESIGN.md's accuracy rule for each of output, dq, dk, dv."""
    for name, got, want, base in zip(("output", "dq", "dk", "dv"), kernel, exact, lowp):
        assert got.shape == want.shape and got.dtype == base.dtype, (
            f"{what}: {name} has shape {tuple(got.shape)} {got.dtype}, expected "
            f"{tuple(want.shape)} {base.dtype}")
        assert torch.isfinite(got).all(), f"{what}: {name} has non-finite values"
        err = (got.double() - want).abs().max().item() if got.numel() else 0.0
        ref_err = (base.double() - want).abs().max().item() if got.numel() else 0.0
        assert err <= 2 * ref_err + 1e-5, (
            f"{what}: {name} max error {err:.3g} vs float64, but the PyTorch reference in "
            f"{base.dtype} errs by {ref_err:.3g} (allowed: 2 x that + 1e-5)")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_kernel_matches_reference(config, device):
    lq, lk, d, mask, heads, b, dtype_name, layout, grad, scale = config
    if device == "cuda":
        lq, lk = GPU_LENGTH[lq], GPU_LENGTH[lk]
    h, hk = HEADS[device][heads]
    dtype = DTYPES[dtype_name]
    is_causal = mask != "none"
    window = None if not mask.startswith("window") else int(mask[len("window"):])
    if window is not None and device == "cuda":
        window = GPU_WINDOW[window]
    gen = torch.Generator().manual_seed(zlib.crc32(repr(config).encode()))  # same every run
    q = make((b, h, lq, d), dtype, layout, device, gen)
    k = make((b, hk, lk, d), dtype, layout, device, gen)
    v = make((b, hk, lk, d), dtype, layout, device, gen)
    dout = None if grad == "sum" else make((b, h, lq, d), dtype, layout, device, gen)
    options = dict(is_causal=is_causal, scale=scale, window=window)

    kernel = forward_backward(lambda *x: attention(*x, **options, backend="triton"),
                              q, k, v, dout)
    as64 = [t.double() for t in (q, k, v)]
    exact = forward_backward(lambda *x: attention_reference(*x, **options), *as64,
                             None if dout is None else dout.double())
    lowp = forward_backward(lambda *x: attention_reference(*x, **options), q, k, v, dout)
    check_accuracy(kernel, exact, lowp, f"config {config} on {device}")
    # the kernel returns q's dtype, and gradients shaped and typed like their inputs
    assert kernel[0].dtype == dtype and kernel[2].shape == k.shape and kernel[3].dtype == dtype


def _device_for_direct_tests():
    return "cuda" if CUDA else "cpu"


@pytest.mark.parametrize("is_causal, window, lq, lk", [
    (True, None, 40, 90), (True, None, 90, 40), (True, 24, 70, 50), (False, None, 33, 70)])
@pytest.mark.parametrize("tiles", [(32, 16), (16, 64)], ids=["bm32-bn16", "bm16-bn64"])
def test_uneven_tiles_keep_the_masks_right(tiles, is_causal, window, lq, lk):
    """The interpreter's tiles are square; GPUs use BLOCK_M != BLOCK_N. Both loop splits
    (masked edges, unmasked middle) must hold for any pair of tile sizes."""
    device = _device_for_direct_tests()
    bm, bn = tiles
    gen = torch.Generator().manual_seed(lq * 1000 + lk)
    q = torch.randn(1, 2, lq, 32, generator=gen).to(device)
    k, v = (torch.randn(1, 1, lk, 32, generator=gen).to(device) for _ in range(2))
    dout = torch.randn(1, 2, lq, 32, generator=gen).to(device)
    scale = 32 ** -0.5
    fwd = triton_fwd.TileConfig(bm, bn, 4, 1)
    bwd = {"delta": fwd, "dkdv": triton_fwd.TileConfig(bn, bm, 4, 1), "dq": fwd}
    out, lse = triton_fwd.attention_forward(q, k, v, is_causal, scale, window, config=fwd)
    grads = triton_bwd.attention_backward(dout, q, k, v, out, lse, is_causal, scale, window,
                                          configs=bwd)
    exact = forward_backward(
        lambda *x: attention_reference(*x, is_causal=is_causal, window=window),
        q.double(), k.double(), v.double(), dout.double())
    lowp = forward_backward(
        lambda *x: attention_reference(*x, is_causal=is_causal, window=window), q, k, v, dout)
    check_accuracy([out, *grads], exact, lowp, f"tiles {tiles}")


def test_forward_saves_the_row_logsumexp_in_fp32():
    device = _device_for_direct_tests()
    gen = torch.Generator().manual_seed(5)
    lq, lk, window = 70, 30, 8  # rows 0..39 see no key at all
    q, k, v = (torch.randn(1, 2, n, 64, generator=gen).to(device, torch.bfloat16)
               for n in (lq, lk, lk))
    out, lse = triton_fwd.attention_forward(q, k, v, True, 0.125, window)
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, lq)
    scores = 0.125 * (q.double() @ k.double().transpose(-2, -1))
    scores = scores.masked_fill(~visible_keys(lq, lk, True, window, device), float("-inf"))
    expected = torch.logsumexp(scores, dim=-1)
    empty = torch.isinf(expected)
    assert empty[..., :40].all() and not empty[..., 40:].any()
    assert torch.isinf(lse[empty]).all() and (lse[empty] > 0).all(), "empty rows: lse = +inf"
    assert (lse[~empty].double() - expected[~empty]).abs().max() < 1e-4


@pytest.mark.parametrize("lq, lk, window", [(40, 10, 4), (5, 0, None), (0, 7, None)])
def test_rows_without_keys_give_zeros_and_zero_gradients(lq, lk, window):
    device = _device_for_direct_tests()
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(2, 2, lq, 32, generator=gen).to(device)
    k, v = (torch.randn(2, 1, lk, 32, generator=gen).to(device) for _ in range(2))
    out, dq, dk, dv = forward_backward(
        lambda *x: attention(*x, is_causal=True, window=window, backend="triton"), q, k, v,
        torch.randn(2, 2, lq, 32, generator=gen).to(device))
    visible_rows = visible_keys(lq, lk, True, window, device).any(dim=1)
    for name, t in (("out", out), ("dq", dq)):
        assert torch.isfinite(t).all(), f"{name} has NaN or inf"
        assert (t[:, :, ~visible_rows] == 0).all(), f"{name} is not zero on rows with no key"
    assert torch.isfinite(dk).all() and torch.isfinite(dv).all()
    if lq == 0:
        assert (dk == 0).all() and (dv == 0).all()
    if visible_rows.any():  # the rows that do see keys still agree with the reference
        ref = attention_reference(q, k, v, True, None, window)
        assert (out - ref).abs().max() < 1e-5


def test_autograd_saves_only_linear_memory():
    """The contract that makes the kernel worth having: what autograd keeps between the passes
    is q, k, v, the output and a (b, h, lq) fp32 log-sum-exp, never an (lq, lk) matrix."""
    device = _device_for_direct_tests()
    q = torch.randn(1, 2, 65, 32, device=device, requires_grad=True)
    k = torch.randn(1, 1, 129, 32, device=device, requires_grad=True)
    out = attention(q, k, k, is_causal=True, backend="triton")
    saved = out.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [(1, 2, 65, 32), (1, 1, 129, 32), (1, 1, 129, 32),
                                               (1, 2, 65, 32), (1, 2, 65)]
    assert saved[-1].dtype == torch.float32


def test_tile_configs_fit_shared_memory_on_every_gpu_generation(monkeypatch):
    """pick_config's tiles must fit the shared memory of a T4 (64 KiB), consumer Ampere (99),
    A100 (163) and H100 (227) for every head dim, with 16-bit or fp32 dot operands."""
    class Props:
        def __init__(self, major, minor, smem):
            self.major, self.minor, self.shared_memory_per_block_optin = major, minor, smem

    monkeypatch.setattr(triton_fwd, "INTERPRETING", False)
    for cap, smem in [((7, 5), 64), ((8, 6), 99), ((8, 0), 163), ((9, 0), 227)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=cap: c)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda d=None, c=cap, s=smem: Props(*c, s * 1024))
        for stage, d_pad, fp32 in itertools.product(("fwd", "dkdv", "dq"), (16, 32, 64, 128),
                                                    (False, True)):
            cfg = triton_fwd.pick_config(stage, d_pad, fp32, torch.device("cuda"))
            elem = 4 if fp32 or cap < (8, 0) else 2  # before sm_80 the products run on fp32
            used = triton_fwd.shared_memory_estimate(stage, cfg, d_pad, elem)
            assert used <= smem * 1024, f"sm_{cap} {stage} d={d_pad}: {cfg} needs {used} bytes"
            assert cfg.block_m >= 16 and cfg.block_n >= 16 and cfg.num_stages >= 1
    # an H100 with bf16 at d = 128 keeps the documented forward tiles
    assert triton_fwd.pick_config("fwd", 128, False, torch.device("cuda")) == \
        triton_fwd.TileConfig(128, 64, 8, 3)


def test_dot_operands_are_fp32_exactly_where_needed(monkeypatch):
    assert triton_fwd.dot_in_fp32(torch.bfloat16, torch.device("cpu"))  # interpreter: always
    monkeypatch.setattr(triton_fwd, "INTERPRETING", False)
    cuda = torch.device("cuda")
    for cap, dtype, expected in [((9, 0), torch.bfloat16, False), ((9, 0), torch.float16, False),
                                 ((9, 0), torch.float32, True), ((7, 5), torch.bfloat16, True),
                                 ((7, 5), torch.float16, False)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=cap: c)
        assert triton_fwd.dot_in_fp32(dtype, cuda) is expected, (cap, dtype)
