"""The graders of exercise 15 are proven: each check passes a correct solution and rejects
plausible wrong ones (mutants) with a message that names the mistake.

The correct solutions are written independently of the graders' references (einsum for the
discretization, padding with the identity pair for the scan, a kernel with its own loads). The
mutants are the mistakes people make with Mamba's scan: a decay exp(A) without the step size,
an input without delta or without u, the state and channel axes swapped, time not last; a
combine step in the wrong order, with decays added or the incoming state dropped, or one that
writes into its input; a scan that walks the positions one by one, wraps around with
torch.roll, is exclusive, stops at floor(log2 l) steps, updates a before b, calls cumprod or
builds an (l, l) matrix; and in the Triton kernel, no mask on the last block of channels or on
the padded states, a state reset at every step, y read before the update, exp(A) without
delta, strides ignored, and a PyTorch function in place of a kernel. The kernels run under
Triton's interpreter when there is no GPU (tests/conftest.py sets TRITON_INTERPRET=1 before
triton is imported).
"""

import linecache

import pytest
import torch
import torch.nn.functional as F
from grader_proofs import (
    assert_check_passes,
    assert_check_rejects,
    assert_kernel_check_says_when_triton_is_missing,
    assert_stub_reads_as_not_attempted,
)

from seqlib.grading import (
    check_parallel_scan,
    check_scan_combine,
    check_selective_discretize,
    check_selective_scan_kernel,
)
from seqlib.grading.ex15 import __all__ as EX15_CHECKS

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

# ---------------------------------------------------------------------------------------------
# Correct solutions (PyTorch)


def discretize(delta, A, B, u):
    dA = torch.exp(torch.einsum("bdl,dn->bdnl", delta, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdnl", delta, B, u)
    return dA, dBu


def combine(left, right):
    a1, b1 = left
    a2, b2 = right
    return a1 * a2, torch.addcmul(b2, a2, b1)


def parallel_scan(a, b):
    """Each step pads the shifted pairs on the left with the identity pair (1, 0)."""
    shift = 1
    while shift < a.shape[-1]:
        earlier = (F.pad(a[..., :-shift], (shift, 0), value=1.0),
                   F.pad(b[..., :-shift], (shift, 0), value=0.0))
        a, b = combine(earlier, (a, b))
        shift *= 2
    return a, b


# ---------------------------------------------------------------------------------------------
# Mutants: discretize


def discretize_without_delta_in_decay(delta, A, B, u):
    dA = torch.exp(A)[None, :, :, None].expand(delta.shape[0], -1, -1, delta.shape[-1])
    return dA, discretize(delta, A, B, u)[1]


def discretize_without_delta_on_input(delta, A, B, u):
    return discretize(delta, A, B, u)[0], B[:, None] * u[:, :, None]


def discretize_without_u(delta, A, B, u):
    return discretize(delta, A, B, u)[0], delta[:, :, None] * B[:, None]


def discretize_states_before_channels(delta, A, B, u):
    dA = torch.exp(delta[:, None] * A.T[None, :, :, None])  # (b, n, d, l)
    return dA, discretize(delta, A, B, u)[1].transpose(1, 2)


def discretize_A_transposed_when_square(delta, A, B, u):
    """A.T in place of A: an error when d != n, a silent mistake when d = n."""
    rates = A.T if A.shape[0] == A.shape[1] else A
    return discretize(delta, rates, B, u)[0], discretize(delta, A, B, u)[1]


def discretize_time_before_states(delta, A, B, u):  # mamba_ssm's own (b, d, l, n)
    dA, dBu = discretize(delta, A, B, u)
    return dA.transpose(-1, -2), dBu.transpose(-1, -2)


def discretize_in_float32(delta, A, B, u):
    return tuple(t.float() for t in discretize(delta, A, B, u))


def discretize_only_decay(delta, A, B, u):
    return discretize(delta, A, B, u)[0]


# ---------------------------------------------------------------------------------------------
# Mutants: combine


def combine_in_swapped_order(left, right):
    (a1, b1), (a2, b2) = left, right
    return a1 * a2, a1 * b2 + b1


def combine_adding_decays(left, right):
    (a1, b1), (a2, b2) = left, right
    return a1 + a2, a2 * b1 + b2


def combine_forgetting_b1(left, right):
    (a1, _), (a2, b2) = left, right
    return a1 * a2, b2


def combine_without_decay(left, right):
    (a1, b1), (a2, b2) = left, right
    return a1 * a2, b1 + b2


def combine_in_place(left, right):
    (a1, b1), (a2, b2) = left, right
    return a1.mul_(a2), a2 * b1 + b2


def combine_wrong_for_matrices(left, right):
    """Right for vectors and 3-d tensors, wrong for matrices (only the associativity case has
    those): it shows that case at work."""
    (a1, b1), (a2, b2) = left, right
    if a1.ndim == 2:
        return a1 * a2, a1 * b1 + b2
    return combine(left, right)


# ---------------------------------------------------------------------------------------------
# Mutants: the parallel scan


def scan_sequential(a, b):
    pair = (a[..., 0], b[..., 0])
    products, states = [pair[0]], [pair[1]]
    for t in range(1, a.shape[-1]):
        pair = combine(pair, (a[..., t], b[..., t]))
        products.append(pair[0])
        states.append(pair[1])
    return torch.stack(products, -1), torch.stack(states, -1)


def _doubling(a, b, steps=None, wrap=False, new_a_first=False):
    length = a.shape[-1]
    shift, done = 1, 0
    while shift < length and (steps is None or done < steps):
        if wrap:
            earlier = (a.roll(shift, -1), b.roll(shift, -1))
        else:
            earlier = (F.pad(a[..., :-shift], (shift, 0), value=1.0),
                       F.pad(b[..., :-shift], (shift, 0), value=0.0))
        if new_a_first:
            a = earlier[0] * a
            b = a * earlier[1] + b
        else:
            a, b = combine(earlier, (a, b))
        shift, done = 2 * shift, done + 1
    return a, b


def scan_wrapping_around(a, b):
    return _doubling(a, b, wrap=True)


def scan_floor_steps(a, b):
    return _doubling(a, b, steps=max(0, a.shape[-1].bit_length() - 1))


def scan_updating_a_first(a, b):
    return _doubling(a, b, new_a_first=True)


def scan_exclusive(a, b):
    a_cum, h = parallel_scan(a, b)
    return (F.pad(a_cum[..., :-1], (1, 0), value=1.0), F.pad(h[..., :-1], (1, 0), value=0.0))


def scan_closed_form(a, b):
    a_cum = torch.cumprod(a, dim=-1)
    return a_cum, a_cum * torch.cumsum(b / a_cum, dim=-1)


def scan_quadratic(a, b):
    """Sums of logarithms through an (l, l) triangular matrix: O(l^2)."""
    length = a.shape[-1]
    upper = torch.ones(length, length, dtype=a.dtype).triu()  # [s, t] = 1 when s <= t
    log_cum = a.log() @ upper  # (..., l)
    decays = torch.exp(log_cum[..., None, :] - log_cum[..., :, None]) * upper  # [s, t]
    return log_cum.exp(), (b[..., None, :] @ decays)[..., 0, :]


def scan_only_states(a, b):
    return parallel_scan(a, b)[1]


# ---------------------------------------------------------------------------------------------
# The kernel: a correct one, and one mistake at a time


@triton.jit
def _body(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, y_ptr,
          stride_ub, stride_ud, stride_ul, stride_deltab, stride_deltad, stride_deltal,
          stride_Ad, stride_An, stride_Bb, stride_Bn, stride_Bl, stride_Cb, stride_Cn,
          stride_Cl, stride_yb, stride_yd, stride_yl, d, n, length,
          BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASK_D: tl.constexpr,
          MASK_N: tl.constexpr, RESET: tl.constexpr, READ_BEFORE: tl.constexpr,
          DELTA_IN_DECAY: tl.constexpr, DELTA_ON_INPUT: tl.constexpr,
          CONTIGUOUS: tl.constexpr):
    """The forward scan, correct when MASK_D, MASK_N, DELTA_IN_DECAY and DELTA_ON_INPUT are
    True and the rest False; each other setting is one mistake."""
    seq = tl.program_id(1)
    chans = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, BLOCK_N)
    if CONTIGUOUS:  # the mistake of assuming contiguous (b, d, l), (d, n) and (b, n, l)
        stride_ub, stride_ud, stride_ul = d * length, length, 1
        stride_deltab, stride_deltad, stride_deltal = d * length, length, 1
        stride_yb, stride_yd, stride_yl = d * length, length, 1
        stride_Ad, stride_An = n, 1
        stride_Bb, stride_Bn, stride_Bl = n * length, length, 1
        stride_Cb, stride_Cn, stride_Cl = n * length, length, 1
    chan_ok = chans < d
    state_ok = states < n
    if not MASK_D:
        chan_ok = chans >= 0
    if not MASK_N:
        state_ok = states >= 0
    A = tl.load(A_ptr + chans[:, None] * stride_Ad + states[None, :] * stride_An,
                mask=chan_ok[:, None] & state_ok[None, :], other=0.0)
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for t in range(length):
        step = tl.load(delta_ptr + seq * stride_deltab + chans * stride_deltad
                       + t * stride_deltal, mask=chan_ok, other=0.0)
        x = tl.load(u_ptr + seq * stride_ub + chans * stride_ud + t * stride_ul,
                    mask=chan_ok, other=0.0)
        Bt = tl.load(B_ptr + seq * stride_Bb + states * stride_Bn + t * stride_Bl,
                     mask=state_ok, other=0.0)
        Ct = tl.load(C_ptr + seq * stride_Cb + states * stride_Cn + t * stride_Cl,
                     mask=state_ok, other=0.0)
        before = h
        if RESET:
            h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        if DELTA_IN_DECAY:
            decay = tl.exp(A * step[:, None])
        else:
            decay = tl.exp(A)
        drive = x * step if DELTA_ON_INPUT else x
        h = decay * h + drive[:, None] * Bt[None, :]
        if READ_BEFORE:
            y = tl.sum(before * Ct[None, :], axis=1)
        else:
            y = tl.sum(h * Ct[None, :], axis=1)
        tl.store(y_ptr + seq * stride_yb + chans * stride_yd + t * stride_yl, y,
                 mask=chan_ok)


def _jit_from_source(source, namespace, name):
    """@triton.jit on a function defined from a string: Triton reads the source text, which
    inspect finds through linecache."""
    filename = f"<ex15-test-{name}-{abs(hash(source + repr(sorted(namespace))))}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return triton.jit(namespace[name])


def _kernel(**mistake):
    """A kernel with the notebook's signature that runs _body with one mistake (or none)."""
    flags = dict(MASK_D=True, MASK_N=True, RESET=False, READ_BEFORE=False,
                 DELTA_IN_DECAY=True, DELTA_ON_INPUT=True, CONTIGUOUS=False)
    flags.update(mistake)
    namespace = {"tl": tl, "_body": _body,
                 **{f"F_{name}": tl.constexpr(value) for name, value in flags.items()}}
    source = (
        "def selective_scan_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, y_ptr,\n"
        "        stride_ub, stride_ud, stride_ul, stride_deltab, stride_deltad,\n"
        "        stride_deltal, stride_Ad, stride_An, stride_Bb, stride_Bn, stride_Bl,\n"
        "        stride_Cb, stride_Cn, stride_Cl, stride_yb, stride_yd, stride_yl,\n"
        "        d, n, length, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):\n"
        "    _body(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, y_ptr, stride_ub, stride_ud,\n"
        "          stride_ul, stride_deltab, stride_deltad, stride_deltal, stride_Ad,\n"
        "          stride_An, stride_Bb, stride_Bn, stride_Bl, stride_Cb, stride_Cn,\n"
        "          stride_Cl, stride_yb, stride_yd, stride_yl, d, n, length, BLOCK_D,\n"
        "          BLOCK_N, F_MASK_D, F_MASK_N, F_RESET, F_READ_BEFORE, F_DELTA_IN_DECAY,\n"
        "          F_DELTA_ON_INPUT, F_CONTIGUOUS)\n")
    return _jit_from_source(source, namespace, "selective_scan_kernel")


selective_scan_kernel = _kernel()


@triton.jit
def unattempted_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, y_ptr,
                       stride_ub, stride_ud, stride_ul, stride_deltab, stride_deltad,
                       stride_deltal, stride_Ad, stride_An, stride_Bb, stride_Bn, stride_Bl,
                       stride_Cb, stride_Cn, stride_Cl, stride_yb, stride_yd, stride_yl,
                       d, n, length, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    raise NotImplementedError


def kernel_in_pytorch(u, delta, A, B, C, block_d, layout):
    dA, dBu = discretize(delta, A, B, u)
    return (parallel_scan(dA, dBu)[1] * C[:, None]).sum(2)


SOLUTIONS = {
    check_selective_discretize: discretize,
    check_scan_combine: combine,
    check_parallel_scan: parallel_scan,
    check_selective_scan_kernel: selective_scan_kernel,
}

MUTANTS = [
    (check_selective_discretize, discretize_without_delta_in_decay,
     ["case 1 of 6", "step size delta before the exp"]),
    (check_selective_discretize, discretize_without_delta_on_input,
     ["case 2 of 6", "scaled by the step size"]),
    (check_selective_discretize, discretize_without_u, ["case 2 of 6", "u is missing"]),
    (check_selective_discretize, discretize_states_before_channels,
     ["case 1 of 6", "shape (1, 3, 2, 4) instead of (1, 2, 3, 4)", "not A.T"]),
    (check_selective_discretize, discretize_A_transposed_when_square,
     ["case 3 of 6", "expected 0.419173, got 0.315157", "not A.T"]),
    (check_selective_discretize, discretize_time_before_states,
     ["case 1 of 6", "time is the LAST axis"]),
    (check_selective_discretize, discretize_in_float32,
     ["case 5 of 6", "dtype float32 instead of float64", "delta's dtype"]),
    (check_selective_discretize, discretize_only_decay,
     ["case 1 of 6", "expected a pair (dA, dBu)"]),
    (check_scan_combine, combine_in_swapped_order,
     ["case 2 of 5", "expected -0.75, got 0.5", "LEFT pair comes first"]),
    (check_scan_combine, combine_adding_decays,
     ["case 1 of 5", "expected 0.125, got 0.75", "decays multiply"]),
    (check_scan_combine, combine_forgetting_b1, ["case 2 of 5", "forgets b1"]),
    (check_scan_combine, combine_without_decay, ["case 2 of 5", "not b1 + b2"]),
    (check_scan_combine, combine_in_place, ["case 1 of 5", "changed its input `a1` in place"]),
    (check_scan_combine, combine_wrong_for_matrices, ["case 4 of 5", "not associative"]),
    (check_parallel_scan, scan_sequential,
     ["case 6 of 7", "torch calls on a sequence of l = 1000", "one by one"]),
    (check_parallel_scan, scan_wrapping_around, ["case 2 of 7", "torch.roll wraps"]),
    (check_parallel_scan, scan_exclusive, ["case 1 of 7", "INCLUSIVE"]),
    (check_parallel_scan, scan_floor_steps, ["case 2 of 7", "not floor(log2 l)"]),
    (check_parallel_scan, scan_updating_a_first, ["case 2 of 7", "OLD pairs"]),
    (check_parallel_scan, scan_closed_form, ["case 1 of 7", "calls torch.cumprod"]),
    (check_parallel_scan, scan_quadratic, ["case 4 of 7", "shape (8, 8)", "(l, l) matrix"]),
    (check_parallel_scan, scan_only_states, ["case 1 of 7", "expected a pair (a_cum, h)"]),
    (check_selective_scan_kernel, _kernel(MASK_D=False),
     ["case 1 of 5", "writes past the last channel", "channels < d"]),
    (check_selective_scan_kernel, _kernel(MASK_N=False),
     ["case 1 of 5", "reads past the last channel or the last state"]),
    (check_selective_scan_kernel, _kernel(RESET=True), ["case 2 of 5", "carry over"]),
    (check_selective_scan_kernel, _kernel(READ_BEFORE=True), ["case 1 of 5", "AFTER step t"]),
    (check_selective_scan_kernel, _kernel(DELTA_IN_DECAY=False),
     ["case 2 of 5", "not tl.exp(A)"]),
    (check_selective_scan_kernel, _kernel(DELTA_ON_INPUT=False),
     ["case 1 of 5", "delta_t B_t u_t"]),
    (check_selective_scan_kernel, _kernel(CONTIGUOUS=True),
     ["case 2 of 5", "writes outside y, where no channel", "use the strides"]),
]


def test_every_check_has_a_solution_and_two_mutants():
    assert {check.__name__ for check in SOLUTIONS} == set(EX15_CHECKS)
    for check in SOLUTIONS:
        assert sum(m[0] is check for m in MUTANTS) >= 3, f"{check.__name__}: too few mutants"


@pytest.mark.parametrize("check", list(SOLUTIONS), ids=lambda c: c.__name__)
def test_check_passes_a_correct_solution(check, capsys):
    assert_check_passes(check, SOLUTIONS[check], capsys)


@pytest.mark.parametrize("check, mutant, words", MUTANTS,
                         ids=[f"{m[0].__name__}-{i}" for i, m in enumerate(MUTANTS)])
def test_check_rejects_a_wrong_solution(check, mutant, words, capsys):
    assert_check_rejects(check, mutant, words, capsys)


@pytest.mark.parametrize("check", [c for c in SOLUTIONS if c is not check_selective_scan_kernel],
                         ids=lambda c: c.__name__)
def test_not_implemented_reads_as_not_attempted(check):
    assert_stub_reads_as_not_attempted(check)


def test_a_caught_library_scan_is_reported_all_the_same():
    def hides_cumprod(a, b):
        try:
            torch.cumprod(a, dim=-1)
        except Exception:
            pass
        return parallel_scan(a, b)

    with pytest.raises(AssertionError, match="calls torch.cumprod"):
        check_parallel_scan(hides_cumprod)


def test_a_scan_through_python_numbers_is_refused():
    def through_lists(a, b):
        return scan_sequential(torch.tensor(a.tolist()), torch.tensor(b.tolist()))

    with pytest.raises(AssertionError, match="calls Tensor.tolist"):
        check_parallel_scan(through_lists)


def test_kernel_check_refuses_a_pytorch_function():
    with pytest.raises(AssertionError, match="decorated with @triton.jit"):
        check_selective_scan_kernel(kernel_in_pytorch)


def test_kernel_check_reports_an_unattempted_kernel():
    with pytest.raises(AssertionError, match="task not attempted yet"):
        check_selective_scan_kernel(unattempted_kernel)


def test_kernel_check_says_when_triton_is_missing(monkeypatch):
    assert_kernel_check_says_when_triton_is_missing(check_selective_scan_kernel, monkeypatch)
