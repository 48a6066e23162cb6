"""seqlib.ops.attention: the PyTorch forms against each other and against PyTorch's SDPA, the
public function's checks and backend choice, and the benchmark harness's refusals.

The Triton kernels are tested in test_attention_kernel.py.
"""

import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from seqlib.ops.attention import (
    attention,
    attention_reference,
    attention_tiled,
    cpu_backend,
    visible_keys,
)
from seqlib.ops.attention.reference import tiled_backward, tiled_forward

F64 = torch.float64


def rand(*shape, gen, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def qkv(b, h, hk, lq, lk, d, gen, dtype=F64):
    return rand(b, h, lq, d, gen=gen, dtype=dtype), rand(b, hk, lk, d, gen=gen, dtype=dtype), \
        rand(b, hk, lk, d, gen=gen, dtype=dtype)


def test_visible_keys_aligns_causal_masks_to_the_end_of_the_keys():
    # 2 new queries after a cache of 3 keys: query 0 is position 3, query 1 is position 4
    assert visible_keys(2, 5, is_causal=True).tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    # a window of 2 keeps the query's own key and the one before it
    assert visible_keys(2, 5, window=2).tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]
    # more queries than keys: the first rows see nothing
    assert visible_keys(3, 2, is_causal=True).tolist() == [[0, 0], [1, 0], [1, 1]]
    assert visible_keys(2, 3).all()


SDPA_CASES = [  # (b, h, hk, lq, lk, d, is_causal, window, scale)
    (2, 2, 2, 7, 7, 16, False, None, None),
    (1, 4, 2, 5, 9, 8, True, None, None),      # decoding with a cache: lq < lk, GQA
    (2, 2, 1, 9, 5, 8, True, None, 0.7),       # lq > lk: the first 4 rows see nothing (MQA)
    (1, 2, 2, 6, 11, 16, True, 3, None),       # sliding window
    (1, 6, 3, 12, 12, 4, False, None, 2.0),
]


@pytest.mark.parametrize("case", SDPA_CASES, ids=str)
def test_reference_and_tiled_match_sdpa_in_float64(case, generator):
    b, h, hk, lq, lk, d, is_causal, window, scale = case
    q, k, v = qkv(b, h, hk, lq, lk, d, generator)
    with warnings.catch_warnings():  # the lower-right bias warns that lq > lk gives NaN rows
        warnings.simplefilter("ignore", UserWarning)
        if window is not None:
            mask = visible_keys(lq, lk, is_causal, window)
        elif is_causal:
            mask = causal_lower_right(lq, lk)  # our alignment; SDPA's is_causal is top-left
        else:
            mask = None
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                              enable_gqa=True)
    rows = visible_keys(lq, lk, is_causal, window).any(dim=1)  # SDPA gives NaN on empty rows
    for name, got in [("reference", attention_reference(q, k, v, is_causal, scale, window)),
                      ("tiled", attention_tiled(q, k, v, is_causal, scale, window, chunk=4)),
                      ("public", attention(q, k, v, is_causal, scale, window=window))]:
        torch.testing.assert_close(got[:, :, rows], want[:, :, rows], rtol=1e-12, atol=1e-12,
                                   msg=lambda m, name=name: f"{name}: {m}")
        assert (got[:, :, ~rows] == 0).all(), f"{name}: rows with no visible key must be 0"


@pytest.mark.parametrize("chunk", [1, 3, 16, 256])
@pytest.mark.parametrize("is_causal, window, lq, lk",
                         [(False, None, 19, 13), (True, None, 13, 19), (True, None, 19, 13),
                          (True, 5, 19, 13), (True, 1, 8, 8)])
def test_tiled_forward_and_backward_match_the_reference(chunk, is_causal, window, lq, lk,
                                                        generator):
    q, k, v = qkv(2, 4, 2, lq, lk, 8, generator)
    dout = rand(2, 4, lq, 8, gen=generator)
    out, lse = tiled_forward(q, k, v, is_causal, None, window, chunk)
    assert out.dtype == F64 and lse.shape == (2, 4, lq)
    want = attention_reference(q, k, v, is_causal, None, window)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    scores = (q @ k.repeat_interleave(2, 1).transpose(-2, -1)) / math.sqrt(8)
    scores = scores.masked_fill(~visible_keys(lq, lk, is_causal, window), float("-inf"))
    expected_lse = torch.logsumexp(scores, -1)
    expected_lse[torch.isinf(expected_lse)] = float("inf")  # empty rows: +inf by convention
    torch.testing.assert_close(lse, expected_lse)

    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    want_grads = torch.autograd.grad(attention_reference(*leaves, is_causal, None, window),
                                     leaves, dout)
    got_grads = tiled_backward(dout, q, k, v, out, lse, is_causal, None, window, chunk)
    for name, got, exp in zip(("dq", "dk", "dv"), got_grads, want_grads):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: n + m)


@pytest.mark.parametrize("form", ["reference", "tiled"])
@pytest.mark.parametrize("is_causal, window, lq, lk", [(False, None, 3, 5), (True, None, 5, 3),
                                                        (True, 2, 4, 6)])
def test_gradcheck_in_float64(form, is_causal, window, lq, lk, generator):
    q, k, v = (t.requires_grad_(True) for t in qkv(1, 2, 1, lq, lk, 4, generator))
    if form == "reference":
        def fn(q, k, v):
            return attention_reference(q, k, v, is_causal, 0.8, window)
    else:
        def fn(q, k, v):
            return attention_tiled(q, k, v, is_causal, 0.8, window, chunk=2)
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("backend", ["reference", "tiled"])
@pytest.mark.parametrize("lq, lk, window", [(12, 4, 3), (5, 0, None), (0, 6, None)])
def test_rows_without_keys_give_zeros_and_zero_gradients(backend, lq, lk, window, generator):
    q, k, v = (t.requires_grad_(True) for t in qkv(2, 2, 2, lq, lk, 8, generator, torch.float32))
    out = attention(q, k, v, is_causal=True, window=window, backend=backend)
    out.backward(torch.randn(out.shape, generator=generator))
    empty = ~visible_keys(lq, lk, True, window).any(dim=1)
    for name, t in (("out", out), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        assert torch.isfinite(t).all(), f"{backend}: {name} has NaN or inf"
    assert (out[:, :, empty] == 0).all() and (q.grad[:, :, empty] == 0).all()
    if lq == 0:
        assert (k.grad == 0).all() and (v.grad == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_tiled_form_keeps_the_accuracy_rule_in_low_precision(dtype, generator):
    """The tiled form accumulates in fp32, so it is at least as accurate as the reference run
    in the input dtype (DESIGN.md's accuracy rule, which the kernels also follow)."""
    q, k, v = qkv(1, 2, 1, 70, 90, 32, generator, dtype)
    dout = rand(1, 2, 70, 32, gen=generator, dtype=dtype)

    def run(fn, *inputs, upstream):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        return [out, *torch.autograd.grad(out, leaves, upstream)]

    exact = run(lambda *x: attention_reference(*x, True, None, 40), q.double(), k.double(),
                v.double(), upstream=dout.double())
    low = run(lambda *x: attention_reference(*x, True, None, 40), q, k, v, upstream=dout)
    tiled = run(lambda *x: attention_tiled(*x, True, None, 40, chunk=32), q, k, v, upstream=dout)
    for name, t, r, e in zip(("out", "dq", "dk", "dv"), tiled, low, exact):
        assert t.dtype == dtype
        err, ref_err = (t.double() - e).abs().max(), (r.double() - e).abs().max()
        assert err <= 2 * ref_err + 1e-5, f"{name}: {err:.3g} vs reference {ref_err:.3g}"


@pytest.mark.parametrize("backend", ["reference", "tiled"])
def test_non_contiguous_inputs(backend, generator):
    q = rand(2, 9, 3, 16, gen=generator).transpose(1, 2)  # (b, h, l, d) view of (b, l, h, d)
    k = rand(2, 3, 11, 32, gen=generator)[..., ::2]
    v = rand(2, 11, 3, 16, gen=generator).transpose(1, 2)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    got = attention(q, k, v, is_causal=True, backend=backend)
    want = attention_reference(q.contiguous(), k.contiguous(), v.contiguous(), True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_backend_none_on_the_cpu_picks_by_size(generator, monkeypatch):
    assert cpu_backend(64, 64) == "reference" and cpu_backend(300, 600) == "reference"
    assert cpu_backend(4096, 4096) == "tiled"
    picked = []
    import seqlib.ops.attention as module

    def spy(name):
        real = getattr(module, name)

        def called(*args):
            picked.append(name)
            return real(*args)
        return called

    for name in ("attention_reference", "attention_tiled"):
        monkeypatch.setattr(module, name, spy(name))
    q, k, v = qkv(1, 1, 1, 8, 8, 4, generator)
    attention(q, k, v)
    q, k, v = qkv(1, 1, 1, 1024, 1024, 4, generator, torch.float32)
    attention(q, k, v)
    assert picked == ["attention_reference", "attention_tiled"]


def _err(**changes):
    """Arguments of a valid call (b=2, h=4, hk=2, lq=5, lk=7, d=8) with some of them changed."""
    args = dict(q=torch.zeros(2, 4, 5, 8), k=torch.zeros(2, 2, 7, 8), v=torch.zeros(2, 2, 7, 8))
    args.update(changes)
    return args


BAD_INPUTS = [  # (arguments, exception, pattern the message must match)
    (_err(q=torch.zeros(4, 5, 8)), ValueError, r"q must have shape \(b, h, lq, d\), got shape "
                                               r"\(4, 5, 8\)"),
    (_err(k=torch.zeros(2, 2, 7)), ValueError, r"k must have shape \(b, hk, lk, d\), got shape"),
    (_err(v=torch.zeros(1, 2, 2, 7, 8)), ValueError, r"v must have shape \(b, hk, lk, d\)"),
    (_err(k=torch.zeros(3, 2, 7, 8)), ValueError, r"k must have shape \(b, hk, lk, d\) = "
                                                  r"\(2, hk, lk, 8\).*got shape \(3, 2, 7, 8\)"),
    (_err(k=torch.zeros(2, 2, 7, 6)), ValueError, r"k must have shape .*\(2, hk, lk, 8\)"),
    (_err(v=torch.zeros(2, 2, 6, 8)), ValueError, r"v must have the shape of k, \(b, hk, lk, d\)"
                                                  r" = \(2, 2, 7, 8\), got shape \(2, 2, 6, 8\)"),
    (_err(k=torch.zeros(2, 3, 7, 8), v=torch.zeros(2, 3, 7, 8)), ValueError,
     r"k has hk=3 heads, which does not divide the h=4 heads of q.*h % hk == 0"),
    (_err(k=torch.zeros(2, 0, 7, 8), v=torch.zeros(2, 0, 7, 8)), ValueError, r"hk=0"),
    (_err(q=torch.zeros(2, 4, 5, 8, dtype=torch.int64)), ValueError, r"q must be float16.*int64"),
    (_err(k=torch.zeros(2, 2, 7, 8, dtype=F64)), ValueError,
     r"k has dtype torch.float64 \(shape \(2, 2, 7, 8\)\) but q has torch.float32"),
    (_err(v=torch.zeros(2, 2, 7, 8, dtype=torch.float16)), ValueError, r"v has dtype"),
    (_err(v=torch.zeros(2, 2, 7, 8, device="meta")), ValueError,
     r"v is on meta \(shape \(2, 2, 7, 8\)\) but q is on cpu"),
    (_err(q=torch.zeros(2, 4, 5, 0), k=torch.zeros(2, 2, 7, 0), v=torch.zeros(2, 2, 7, 0)),
     ValueError, r"head dim d >= 1"),
    (_err(scale=0.0), ValueError, r"scale must be None .* positive finite number, got 0.0"),
    (_err(scale=float("nan")), ValueError, r"scale must be"),
    (_err(scale="big"), ValueError, r"scale must be"),
    (_err(window=0), ValueError, r"window must be None or an int >= 1.*got 0"),
    (_err(window=2.5), ValueError, r"window must be"),
    (_err(window=True), ValueError, r"window must be"),
    (_err(is_causal=1), ValueError, r"is_causal must be a bool"),
    (_err(backend="cuda"), ValueError, r"backend must be None or one of"),
    (_err(q=[[1.0]]), TypeError, r"q must be a torch.Tensor"),
]


@pytest.mark.parametrize("args, error, pattern", BAD_INPUTS,
                         ids=[p[:40] for _, _, p in BAD_INPUTS])
def test_bad_inputs_raise_the_documented_error(args, error, pattern):
    with pytest.raises(error, match=pattern):
        attention(**args)


def test_triton_backend_rejects_what_the_kernels_do_not_take():
    pytest.importorskip("triton")
    q = torch.zeros(1, 2, 3, 8, dtype=F64)
    with pytest.raises(ValueError, match=r"q has dtype torch.float64 .*backend='triton'"):
        attention(q, q, q, backend="triton")
    q = torch.zeros(1, 2, 3, 160)
    with pytest.raises(ValueError, match=r"head dim d=160 .*d <= 128"):
        attention(q, q, q, backend="triton")


def _python(script: str, env_changes: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in env_changes}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)


def test_triton_backend_on_cpu_tensors_needs_the_interpreter():
    pytest.importorskip("triton")
    done = _python("""
import torch
from seqlib.ops.attention import attention
q = torch.zeros(1, 1, 4, 16)
try:
    attention(q, q, q, backend="triton")
except RuntimeError as error:
    print("RuntimeError:", error)
""", {"TRITON_INTERPRET": None})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RuntimeError:" in done.stdout and "TRITON_INTERPRET=1" in done.stdout, done.stdout


def test_triton_backend_without_triton_says_so_and_the_rest_still_works():
    done = _python("""
import sys, torch
class NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("triton is not installed here")
sys.meta_path.insert(0, NoTriton())
from seqlib.ops.attention import attention
q = torch.randn(1, 2, 4, 16)
print("none:", attention(q, q, q, is_causal=True).shape)
try:
    attention(q, q, q, backend="triton")
except RuntimeError as error:
    print("RuntimeError:", error)
assert "triton" not in sys.modules
""", {})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "none: torch.Size([1, 2, 4, 16])" in done.stdout
    assert "RuntimeError:" in done.stdout and "not installed" in done.stdout, done.stdout


def test_bench_refuses_to_time_under_the_interpreter():
    done = subprocess.run([sys.executable, "-m", "seqlib.bench", "attention", "--quick"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 2
    assert "refuses to run while TRITON_INTERPRET=1" in done.stderr


def test_bench_quick_cpu_run_writes_a_complete_record(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "seqlib.bench", "attention", "--quick",
                           "--device", "cpu", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = tmp_path.glob("attention-cpu-*-quick.json")
    record = json.loads(path.read_text())
    assert record["device"]["type"] == "cpu" and record["device"]["name"]
    assert set(record["versions"]) >= {"python", "torch", "triton", "cuda"}
    assert record["date"] and record["rows"]
    providers = {row["provider"] for row in record["rows"]}
    assert providers == {"reference", "tiled"}
    for row in record["rows"]:
        assert row["ms"] > 0 and row["peak_bytes"] > 0 and row["gflops"] > 0
    # the tiled form holds less memory than the reference at the larger length
    fwd = {r["provider"]: r["peak_bytes"] for r in record["rows"]
           if r["l"] == 256 and r["pass"] == "fwd" and not r["causal"]}
    assert fwd["tiled"] < fwd["reference"]
