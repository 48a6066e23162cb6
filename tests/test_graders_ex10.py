"""The graders of exercise 10 are proven: each check passes a correct solution and rejects
plausible wrong ones (mutants) with a message that names the mistake.

The correct solutions are written independently of the graders' references. The mutants are
the mistakes people make with online softmax: an accumulator that is not rescaled when the
maximum grows, a missing 1/sqrt(d), no final division by the running sum, a library softmax,
the full matrix of scores; and in the Triton kernel, padded keys let into the softmax, stores
that spill past the last query row, strides ignored, a log-sum-exp in base 2, and a plain
PyTorch function in place of a kernel. The kernels run under Triton's interpreter when there is
no GPU (tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported).
"""

import math

import pytest
import torch
from grader_proofs import assert_check_passes, assert_kernel_check_says_when_triton_is_missing

from seqlib.grading import (
    check_flash_forward_kernel,
    check_naive_attention_bytes,
    check_online_softmax_attention,
)
from seqlib.grading.ex10 import __all__ as EX10_CHECKS

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

# ---------------------------------------------------------------------------------------------
# Correct solutions


def naive_attention_bytes(b, h, lq, lk, d, bytes_per_element):
    reads = {"Q": lq * d, "K": lk * d, "S": lq * lk, "P": lq * lk, "V": lk * d}
    writes = {"S": lq * lk, "P": lq * lk, "O": lq * d}
    return b * h * bytes_per_element * (sum(reads.values()) + sum(writes.values()))


def online_softmax_attention(q, k, v, block_size):
    """Keeps the log of the running sum instead of m and l separately (same algorithm)."""
    scale = q.shape[-1] ** -0.5
    log_sum = torch.full((q.shape[0], 1), -math.inf, dtype=q.dtype)
    out = torch.zeros_like(q)
    for start in range(0, k.shape[0], block_size):
        s = scale * q @ k[start:start + block_size].T  # (lq, block)
        block_log_sum = s.max(dim=-1, keepdim=True).values
        block_log_sum = block_log_sum + (s - block_log_sum).exp().sum(-1, keepdim=True).log()
        new_log_sum = torch.logaddexp(log_sum, block_log_sum)
        out = (out * (log_sum - new_log_sum).exp()
               + (s - new_log_sum).exp() @ v[start:start + block_size])
        log_sum = new_log_sum
    return out


@triton.jit
def _body(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, stride_qm, stride_qd, stride_kn, stride_kd,
          stride_vn, stride_vd, stride_om, stride_od, lq, lk, d, scale,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
          BLOCK_D: tl.constexpr, RESCALE: tl.constexpr, SCALED: tl.constexpr,
          MASK_KEYS: tl.constexpr, DIVIDE: tl.constexpr, MASK_STORE: tl.constexpr,
          LSE_BASE2: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """The forward kernel, correct when every flag but LSE_BASE2 and CONTIGUOUS is True; each
    other setting is one mistake."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    if CONTIGUOUS:  # the mistake of assuming (n, d) row-major inputs
        stride_qm, stride_kn, stride_vn, stride_qd, stride_kd, stride_vd = d, d, d, 1, 1, 1
    q = tl.load(q_ptr + rows[:, None] * stride_qm + dims[None, :] * stride_qd,
                mask=(rows[:, None] < lq) & (dims[None, :] < d), other=0.0)
    if SCALED:
        q = q * scale
    best = tl.zeros([BLOCK_M], tl.float32) - float("inf")
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, lk, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        inside = (keys[:, None] < lk) & (dims[None, :] < d)
        k = tl.load(k_ptr + keys[:, None] * stride_kn + dims[None, :] * stride_kd, mask=inside,
                    other=0.0)
        v = tl.load(v_ptr + keys[:, None] * stride_vn + dims[None, :] * stride_vd, mask=inside,
                    other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        if MASK_KEYS:
            s = tl.where(keys[None, :] < lk, s, float("-inf"))
        new_best = tl.maximum(best, tl.max(s, axis=1))
        p = tl.exp(s - new_best[:, None])
        if RESCALE:
            shrink = tl.exp(best - new_best)
            total = total * shrink
            acc = acc * shrink[:, None]
        total += tl.sum(p, axis=1)
        acc += tl.dot(p, v, input_precision="ieee")
        best = new_best
    if DIVIDE:
        acc = acc / total[:, None]
    store = dims[None, :] < d
    if MASK_STORE:
        store = store & (rows[:, None] < lq)
    tl.store(o_ptr + rows[:, None] * stride_om + dims[None, :] * stride_od, acc, mask=store)
    lse = best + tl.log(total)
    if LSE_BASE2:
        lse = lse / 0.6931471805599453
    tl.store(lse_ptr + rows, lse, mask=rows < lq)


def _kernel(**mistake):
    """A kernel with the notebook's signature that runs _body with one mistake (or none)."""
    flags = dict(RESCALE=True, SCALED=True, MASK_KEYS=True, DIVIDE=True, MASK_STORE=True,
                 LSE_BASE2=False, CONTIGUOUS=False)
    flags.update(mistake)
    # Triton reads a kernel's source, so each variant is written out; the flags are globals
    # that the kernel reads as compile-time constants.
    namespace = {"tl": tl, "_body": _body,
                 **{f"F_{name}": tl.constexpr(value) for name, value in flags.items()}}
    source = (
        "def flash_forward_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, stride_qm,\n"
        "        stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_om, stride_od,\n"
        "        lq, lk, d, scale,\n"
        "        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):\n"
        "    _body(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, stride_qm, stride_qd, stride_kn,\n"
        "          stride_kd, stride_vn, stride_vd, stride_om, stride_od, lq, lk, d, scale,\n"
        "          BLOCK_M, BLOCK_N, BLOCK_D, F_RESCALE, F_SCALED, F_MASK_KEYS,\n"
        "          F_DIVIDE, F_MASK_STORE, F_LSE_BASE2, F_CONTIGUOUS)\n")
    return _jit_from_source(source, namespace, "flash_forward_kernel")


def _jit_from_source(source, namespace, name):
    """@triton.jit on a function defined from a string: Triton needs the source text, which
    inspect finds through linecache."""
    import linecache

    filename = f"<ex10-test-{name}-{abs(hash(source + repr(sorted(namespace))))}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return triton.jit(namespace[name])


flash_forward_kernel = _kernel()


@triton.jit
def unattempted_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, stride_qm, stride_qd,
                       stride_kn, stride_kd, stride_vn, stride_vd, stride_om, stride_od,
                       lq, lk, d, scale,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    raise NotImplementedError


SOLUTIONS = {
    check_naive_attention_bytes: naive_attention_bytes,
    check_online_softmax_attention: online_softmax_attention,
    check_flash_forward_kernel: flash_forward_kernel,
}

# ---------------------------------------------------------------------------------------------
# Mutants: bytes


def bytes_scores_twice(b, h, lq, lk, d, bytes_per_element):
    return b * h * bytes_per_element * (2 * lq * d + 2 * lk * d + 2 * lq * lk)


def bytes_in_elements(b, h, lq, lk, d, bytes_per_element):
    return b * h * (2 * lq * d + 2 * lk * d + 4 * lq * lk)


def bytes_one_head(b, h, lq, lk, d, bytes_per_element):
    return bytes_per_element * (2 * lq * d + 2 * lk * d + 4 * lq * lk)


# ---------------------------------------------------------------------------------------------
# Mutants: online softmax in PyTorch


def _online(q, k, v, block_size, *, rescale=True, scaled=True, divide=True):
    scale = 1 / math.sqrt(q.shape[-1]) if scaled else 1.0
    m = torch.full((q.shape[0],), -math.inf, dtype=q.dtype)
    ell = torch.zeros(q.shape[0], dtype=q.dtype)
    acc = torch.zeros_like(q)
    for j in range(0, k.shape[0], block_size):
        s = scale * (q @ k[j:j + block_size].T)
        m_new = torch.maximum(m, s.max(dim=-1).values)
        alpha = torch.exp(m - m_new) if rescale else torch.ones_like(m)
        p = torch.exp(s - m_new[:, None])
        ell = alpha * ell + p.sum(-1)
        acc = alpha[:, None] * acc + p @ v[j:j + block_size]
        m = m_new
    return acc / ell[:, None] if divide else acc


def online_without_rescale(q, k, v, block_size):
    return _online(q, k, v, block_size, rescale=False)


def online_without_scale(q, k, v, block_size):
    return _online(q, k, v, block_size, scaled=False)


def online_without_division(q, k, v, block_size):
    return _online(q, k, v, block_size, divide=False)


def online_with_library_softmax(q, k, v, block_size):
    return torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1) @ v


def online_with_full_scores(q, k, v, block_size):
    s = q @ k.T / math.sqrt(q.shape[-1])  # (lq, lk): what online softmax avoids
    p = torch.exp(s - s.max(dim=-1, keepdim=True).values)
    return (p / p.sum(-1, keepdim=True)) @ v


def online_without_max(q, k, v, block_size):
    ell = torch.zeros(q.shape[0], dtype=q.dtype)
    acc = torch.zeros_like(q)
    for j in range(0, k.shape[0], block_size):
        p = torch.exp(q @ k[j:j + block_size].T / math.sqrt(q.shape[-1]))
        ell = ell + p.sum(-1)
        acc = acc + p @ v[j:j + block_size]
    return acc / ell[:, None]


def online_in_float32(q, k, v, block_size):
    return _online(q.float(), k.float(), v.float(), block_size)


# ---------------------------------------------------------------------------------------------
# Mutants: the Triton kernel


def kernel_in_pytorch(q, k, v, block_m, block_n, layout):
    return online_softmax_attention(q, k, v, block_n)


MUTANTS = [
    (check_naive_attention_bytes, bytes_scores_twice, ["case 1 of 4", "written once AND read"]),
    (check_naive_attention_bytes, bytes_in_elements, ["case 1 of 4", "bytes_per_element"]),
    (check_naive_attention_bytes, bytes_one_head, ["case 2 of 4", "b * h"]),
    (check_online_softmax_attention, online_without_rescale, ["case 2 of 7", "exp(m_old -"]),
    (check_online_softmax_attention, online_without_scale, ["case 1 of 7", "sqrt(d)"]),
    (check_online_softmax_attention, online_without_division, ["case 1 of 7", "divide it"]),
    (check_online_softmax_attention, online_with_library_softmax, ["case 1 of 7",
                                                                   "torch.softmax"]),
    (check_online_softmax_attention, online_with_full_scores, ["case 1 of 7", "shape (1, 5)"]),
    (check_online_softmax_attention, online_without_max, ["case 6 of 7", "overflow"]),
    (check_online_softmax_attention, online_in_float32, ["case 7 of 7", "q's dtype"]),
    (check_flash_forward_kernel, _kernel(RESCALE=False), ["case 2 of 6", "alpha"]),
    (check_flash_forward_kernel, _kernel(SCALED=False), ["case 1 of 6", "not scaled"]),
    (check_flash_forward_kernel, _kernel(MASK_KEYS=False), ["case 1 of 6", "-inf"]),
    (check_flash_forward_kernel, _kernel(DIVIDE=False), ["case 2 of 6", "O = acc / l"]),
    (check_flash_forward_kernel, _kernel(MASK_STORE=False), ["case 1 of 6", "rows < lq"]),
    (check_flash_forward_kernel, _kernel(LSE_BASE2=False, CONTIGUOUS=True),
     ["case 2 of 6", "strides"]),
    (check_flash_forward_kernel, _kernel(LSE_BASE2=True), ["case 1 of 6", "base 2"]),
]


def test_every_check_has_a_solution_and_two_mutants():
    assert {check.__name__ for check in SOLUTIONS} == set(EX10_CHECKS)
    for check in SOLUTIONS:
        assert sum(m[0] is check for m in MUTANTS) >= 2, f"{check.__name__}: too few mutants"


@pytest.mark.parametrize("check", list(SOLUTIONS), ids=lambda c: c.__name__)
def test_check_passes_a_correct_solution(check, capsys):
    assert_check_passes(check, SOLUTIONS[check], capsys)


@pytest.mark.parametrize("check, mutant, words", MUTANTS,
                         ids=[f"{m[0].__name__}-{i}" for i, m in enumerate(MUTANTS)])
def test_check_rejects_a_wrong_solution(check, mutant, words, capsys):
    with pytest.raises(AssertionError) as failure:
        check(mutant)
    message = str(failure.value)
    first_line = message.splitlines()[0]
    assert "case" in first_line, message  # the first line alone says which case failed
    for word in words:
        assert word in message, f"{word!r} missing from:\n{message}"
    assert "inputs:" in message, message
    assert "✓" not in capsys.readouterr().out


def test_kernel_check_refuses_a_pytorch_function():
    with pytest.raises(AssertionError, match="decorated with @triton.jit"):
        check_flash_forward_kernel(kernel_in_pytorch)


def test_kernel_check_reports_an_unattempted_kernel():
    with pytest.raises(AssertionError, match="task not attempted yet"):
        check_flash_forward_kernel(unattempted_kernel)


def test_kernel_check_says_when_triton_is_missing(monkeypatch):
    assert_kernel_check_says_when_triton_is_missing(check_flash_forward_kernel, monkeypatch)
