"""The graders of exercise 16 are proven: each check passes a correct solution and rejects
plausible wrong ones (mutants) with a message that names the mistake.

The correct solutions are written independently of the graders' references (which are seqlib's
recurrence and stage references). The mutants are the mistakes people make with SSD: segment
sums that include a_j, forget the -inf mask, use 0 for it or come out transposed; a quadratic
form without dt, with B and C swapped or with a mask that does not decay; a chunked form without
the inter-chunk term, with states passed on undecayed or decayed twice, an off-by-one mask or
entering decay, exponentials that overflow, the whole (l, l) matrix, a loop over positions, or
seqlib's own function; and in the Triton kernel, an unmasked padded tail, the decay from the
chunk's start, a missing dt, an off-by-one cumsum, strides ignored, stores past the state, an
overflowing factorised decay, and a PyTorch function in place of a kernel. The kernels run
under Triton's interpreter when there is no GPU (tests/conftest.py sets TRITON_INTERPRET=1
before triton is imported).
"""

import math

import pytest
import torch
from grader_proofs import (
    assert_check_passes,
    assert_check_rejects,
    assert_kernel_check_says_when_triton_is_missing,
    assert_stub_reads_as_not_attempted,
)

from seqlib.grading import (
    check_chunk_state_kernel,
    check_segsum,
    check_ssd_chunked,
    check_ssd_quadratic,
)
from seqlib.grading.ex16 import __all__ as EX16_CHECKS

# ---------------------------------------------------------------------------------------------
# Correct solutions (PyTorch)


def segsum(a):
    """A difference of running sums, the future masked with torch.where."""
    length = a.shape[-1]
    running = torch.cumsum(a, dim=-1)
    diff = running.unsqueeze(-1) - running.unsqueeze(-2)  # [i, j] = run_i - run_j
    i = torch.arange(length).unsqueeze(-1)
    j = torch.arange(length).unsqueeze(0)
    return torch.where(j <= i, diff, torch.full_like(diff, -math.inf))


def ssd_quadratic(x, dt, A, B, C):
    """Entry by entry decays from a running sum, masked with torch.where."""
    length = x.shape[0]
    running = torch.cumsum(A * dt, dim=0)
    t = torch.arange(length)[:, None]
    s = torch.arange(length)[None, :]
    exponent = torch.where(s <= t, running[:, None] - running[None, :],
                           torch.full((length, length), -math.inf, dtype=x.dtype))
    return (torch.exp(exponent) * (C @ B.T)) @ (x * dt[:, None])


def ssd_chunked(x, dt, A, B, C, chunk_size):
    """One chunk at a time, a running state carried from chunk to chunk."""
    b, length, h, p = x.shape
    n = B.shape[-1]
    state = torch.zeros(b, h, p, n, dtype=x.dtype)
    outputs = []
    for start in range(0, length, chunk_size):
        part = slice(start, start + chunk_size)
        xk, dtk, Bk, Ck = x[:, part], dt[:, part], B[:, part], C[:, part]
        decay = torch.cumsum(dtk * A, dim=1)  # (b, q, h)
        q = xk.shape[1]
        causal = torch.ones(q, q, dtype=torch.bool).tril()
        gaps = decay[:, :, None, :] - decay[:, None, :, :]  # (b, t, s, h)
        mask = torch.exp(gaps.masked_fill(~causal[None, :, :, None], -math.inf))
        weights = mask * torch.einsum("btn,bsn->bts", Ck, Bk)[..., None]
        inner = torch.einsum("btsh,bsh,bshp->bthp", weights, dtk, xk)
        carried = torch.einsum("btn,bhpn->bthp", Ck, state) * torch.exp(decay)[..., None]
        outputs.append(inner + carried)
        to_end = torch.exp(decay[:, -1:] - decay) * dtk  # (b, q, h)
        state = (torch.exp(decay[:, -1])[..., None, None] * state
                 + torch.einsum("bsh,bshp,bsn->bhpn", to_end, xk, Bk))
    return torch.cat(outputs, dim=1)


# ---------------------------------------------------------------------------------------------
# Mutants: segment sums


def _strict_future(length):
    return torch.ones(length, length, dtype=torch.bool).triu(1)


def segsum_inclusive(a):
    running = torch.cumsum(a, -1)
    out = running[..., :, None] - running[..., None, :] + a[..., None, :]
    return out.masked_fill(_strict_future(a.shape[-1]), -math.inf)


def segsum_unmasked(a):
    running = torch.cumsum(a, -1)
    return running[..., :, None] - running[..., None, :]


def segsum_zero_above(a):
    return segsum(a).masked_fill(_strict_future(a.shape[-1]), 0.0)


def segsum_transposed(a):
    return segsum(a).transpose(-1, -2)


def segsum_no_diagonal(a):
    diagonal = torch.eye(a.shape[-1], dtype=torch.bool)
    return segsum(a).masked_fill(diagonal, -math.inf)


def segsum_large_negative(a):
    return segsum(a).masked_fill(_strict_future(a.shape[-1]), -1e9)


def segsum_from_seqlib(a):
    from seqlib.ops.ssd import segsum as library_segsum

    return library_segsum(a)


# ---------------------------------------------------------------------------------------------
# Mutants: the quadratic form


def quadratic_without_dt(x, dt, A, B, C):
    return ssd_quadratic(x / dt[:, None], dt, A, B, C)


def quadratic_swapped(x, dt, A, B, C):
    return ssd_quadratic(x, dt, A, C, B)


def quadratic_decay_without_dt(x, dt, A, B, C):
    mask = torch.exp(segsum(torch.full_like(dt, A)))
    return (mask * (C @ B.T)) @ (x * dt[:, None])


def quadratic_causal_only(x, dt, A, B, C):
    mask = torch.ones(len(dt), len(dt), dtype=x.dtype).tril()
    return (mask * (C @ B.T)) @ (x * dt[:, None])


def quadratic_from_seqlib(x, dt, A, B, C):
    from seqlib.ops.ssd.reference import ssd_reference

    A = torch.tensor([A], dtype=x.dtype)
    return ssd_reference(x[None, :, None], dt[None, :, None], A, B[None, :, None],
                         C[None, :, None])[0, :, 0]


# ---------------------------------------------------------------------------------------------
# Mutants: the chunked form


def _chunked(x, dt, A, B, C, chunk_size, *, carry=True, pass_decay="right",
             mask_offset=0, entry_offset=0, factorised=False):
    """ssd_chunked with one mistake: ``carry=False`` drops the entering state's part;
    ``pass_decay`` is "right", "none" (states added undecayed) or "twice" (the chunk's own
    state decayed again); ``mask_offset=1`` lets the mask include a_s; ``entry_offset=1``
    decays the entering state by exp(cum_{t-1}); ``factorised`` writes the mask as
    exp(cum_t) * exp(-cum_s)."""
    b, length, h, p = x.shape
    state = torch.zeros(b, h, p, B.shape[-1], dtype=x.dtype)
    outputs = []
    for start in range(0, length, chunk_size):
        part = slice(start, start + chunk_size)
        xk, dtk, Bk, Ck = x[:, part], dt[:, part], B[:, part], C[:, part]
        a = dtk * A
        decay = torch.cumsum(a, dim=1)  # (b, q, h)
        q = xk.shape[1]
        causal = torch.ones(q, q, dtype=torch.bool).tril()[None, :, :, None]
        gaps = decay[:, :, None, :] - decay[:, None, :, :] + mask_offset * a[:, None]
        if factorised:
            mask = torch.exp(decay)[:, :, None] * torch.exp(-decay)[:, None] * causal
        else:
            mask = torch.exp(gaps.masked_fill(~causal, -math.inf))
        weights = mask * torch.einsum("btn,bsn->bts", Ck, Bk)[..., None]
        inner = torch.einsum("btsh,bsh,bshp->bthp", weights, dtk, xk)
        into = torch.exp(decay - entry_offset * a)[..., None]
        carried = torch.einsum("btn,bhpn->bthp", Ck, state) * into
        outputs.append(inner + carried if carry else inner)
        own = torch.einsum("bsh,bshp,bsn->bhpn", torch.exp(decay[:, -1:] - decay) * dtk, xk,
                           Bk)
        total = torch.exp(decay[:, -1])[..., None, None]
        state = {"right": total * state + own, "none": state + own,
                 "twice": total * (state + own)}[pass_decay]
    return torch.cat(outputs, dim=1)


def chunked_without_carry(x, dt, A, B, C, chunk_size):
    return _chunked(x, dt, A, B, C, chunk_size, carry=False)


def chunked_pass_undecayed(x, dt, A, B, C, chunk_size):
    return _chunked(x, dt, A, B, C, chunk_size, pass_decay="none")


def chunked_decay_twice(x, dt, A, B, C, chunk_size):
    return _chunked(x, dt, A, B, C, chunk_size, pass_decay="twice")


def chunked_mask_off_by_one(x, dt, A, B, C, chunk_size):
    return _chunked(x, dt, A, B, C, chunk_size, mask_offset=1)


def chunked_entry_off_by_one(x, dt, A, B, C, chunk_size):
    return _chunked(x, dt, A, B, C, chunk_size, entry_offset=1)


def chunked_factorised(x, dt, A, B, C, chunk_size):
    return _chunked(x, dt, A, B, C, chunk_size, factorised=True)


def chunked_whole_quadratic(x, dt, A, B, C, chunk_size):
    """Correct values, but the (l, l) form: ignores the chunks."""
    mask = torch.exp(segsum((dt * A).transpose(1, 2)))  # (b, h, l, l)
    scores = (C @ B.transpose(1, 2))[:, None] * mask
    return torch.einsum("bhts,bshp->bthp", scores, x * dt[..., None])


def chunked_recurrence(x, dt, A, B, C, chunk_size):
    """Correct values, one position at a time."""
    b, length, h, p = x.shape
    state = torch.zeros(b, h, p, B.shape[-1], dtype=x.dtype)
    ys = []
    for t in range(length):
        update = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None, :]
        state = torch.exp(dt[:, t] * A)[..., None, None] * state + update
        ys.append(state @ C[:, t, None, :, None])
    return torch.stack(ys, dim=1)[..., 0]


def chunked_from_seqlib(x, dt, A, B, C, chunk_size):
    from seqlib.ops.ssd import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined(x, dt, A, B[:, :, None], C[:, :, None], chunk_size)


SOLUTIONS = {
    check_segsum: segsum,
    check_ssd_quadratic: ssd_quadratic,
    check_ssd_chunked: ssd_chunked,
}

MUTANTS = [
    (check_segsum, segsum_inclusive, ["case 1 of 5", "a_s itself is not included"]),
    (check_segsum, segsum_unmasked, ["case 2 of 5", "expected -inf, got 2", "finite values"]),
    (check_segsum, segsum_zero_above, ["case 2 of 5", "exp(0) = 1 lets it in"]),
    (check_segsum, segsum_transposed, ["case 2 of 5", "looks transposed"]),
    (check_segsum, segsum_no_diagonal, ["case 1 of 5", "the diagonal is 0"]),
    (check_segsum, segsum_large_negative, ["case 2 of 5", "not a large negative number"]),
    (check_segsum, segsum_from_seqlib, ["case 1 of 5", "calls seqlib's", "segsum"]),
    (check_ssd_quadratic, quadratic_without_dt, ["case 1 of 5", "dt_s x_s"]),
    (check_ssd_quadratic, quadratic_swapped, ["case 2 of 5", "C @ B.T, not B @ C.T"]),
    (check_ssd_quadratic, quadratic_decay_without_dt, ["case 2 of 5", "not A alone"]),
    (check_ssd_quadratic, quadratic_causal_only, ["case 2 of 5", "plain causal mask"]),
    (check_ssd_quadratic, quadratic_from_seqlib, ["case 1 of 5", "ssd_reference"]),
    (check_ssd_chunked, chunked_without_carry, ["case 2 of 7", "enters the chunk"]),
    (check_ssd_chunked, chunked_pass_undecayed, ["case 3 of 7", "decay across the whole"]),
    (check_ssd_chunked, chunked_decay_twice, ["case 2 of 7", "already decayed"]),
    (check_ssd_chunked, chunked_mask_off_by_one, ["case 1 of 7", "does not include a_s"]),
    (check_ssd_chunked, chunked_entry_off_by_one, ["case 2 of 7", "position t's own a_t"]),
    (check_ssd_chunked, chunked_factorised, ["case 5 of 7", "overflows"]),
    (check_ssd_chunked, chunked_whole_quadratic, ["case 2 of 7", "shape (1, 2, 16, 16)",
                                                  "quadratic form"]),
    (check_ssd_chunked, chunked_recurrence, ["case 7 of 7", "1024 positions in 4 chunks",
                                             "loop over the positions"]),
    (check_ssd_chunked, chunked_from_seqlib, ["case 1 of 7", "mamba_chunk_scan_combined"]),
]

# ---------------------------------------------------------------------------------------------
# The Triton kernel: a correct one and its mutants

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")


@triton.jit
def _body(x_ptr, dt_ptr, A_ptr, B_ptr, states_ptr,
          stride_xb, stride_xl, stride_xh, stride_xp, stride_dtb, stride_dtl, stride_dth,
          stride_Bb, stride_Bl, stride_Bn,
          stride_sb, stride_sc, stride_sh, stride_sp, stride_sn, length, p, n,
          CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
          MASK_TAIL: tl.constexpr, DECAY: tl.constexpr, USE_DT: tl.constexpr,
          MASK_STORE: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """The chunk-state kernel, correct with MASK_TAIL, USE_DT, MASK_STORE, DECAY == 0 and
    not CONTIGUOUS; each other setting is one mistake. DECAY: 0 the suffix sums from a
    reversed cumsum, 1 from the chunk's start, 2 including a_s, 3 factorised exp(last) *
    exp(-cum)."""
    k, j, i = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if CONTIGUOUS:  # the mistake of assuming row-major (b, l, h, p), (b, l, h), (b, l, n)
        h = tl.num_programs(1)  # and (b, c, h, p, n)
        stride_xb, stride_xl, stride_xh, stride_xp = length * h * p, h * p, p, 1
        stride_dtb, stride_dtl, stride_dth = length * h, h, 1
        stride_Bb, stride_Bl, stride_Bn = length * n, n, 1
        stride_sc, stride_sh, stride_sp, stride_sn = h * p * n, p * n, n, 1
        stride_sb = tl.num_programs(0) * stride_sc
    pos = k * CHUNK + tl.arange(0, CHUNK)
    keep = pos < length
    if not MASK_TAIL:
        keep = pos >= 0
    rows = tl.arange(0, BLOCK_P)
    cols = tl.arange(0, BLOCK_N)
    steps = tl.load(dt_ptr + i * stride_dtb + pos * stride_dtl + j * stride_dth, mask=keep,
                    other=0.0)
    a = steps * tl.load(A_ptr + j)
    if DECAY == 0:
        after = tl.cumsum(a, axis=0, reverse=True) - a  # a_{s+1} + ... + a_last
        w = tl.exp(after)
    elif DECAY == 1:
        w = tl.exp(tl.cumsum(a, axis=0))
    elif DECAY == 2:
        w = tl.exp(tl.cumsum(a, axis=0, reverse=True))
    else:
        w = tl.exp(tl.sum(a, axis=0)) * tl.exp(-tl.cumsum(a, axis=0))
    if USE_DT:
        w = w * steps
    xt = tl.load(x_ptr + i * stride_xb + j * stride_xh + rows[:, None] * stride_xp
                 + pos[None, :] * stride_xl,
                 mask=(rows[:, None] < p) & keep[None, :], other=0.0)  # (BLOCK_P, CHUNK)
    Bs = tl.load(B_ptr + i * stride_Bb + pos[:, None] * stride_Bl + cols[None, :] * stride_Bn,
                 mask=keep[:, None] & (cols[None, :] < n), other=0.0)  # (CHUNK, BLOCK_N)
    state = tl.dot(xt * w[None, :], Bs, input_precision="ieee")
    where = (states_ptr + i * stride_sb + k * stride_sc + j * stride_sh
             + rows[:, None] * stride_sp + cols[None, :] * stride_sn)
    inside = (rows[:, None] < p) & (cols[None, :] < n)
    if not MASK_STORE:
        inside = (rows[:, None] >= 0) & (cols[None, :] >= 0)
    tl.store(where, state, mask=inside)


def _kernel(**mistake):
    """A kernel with the notebook's signature that runs _body with one mistake (or none)."""
    flags = dict(MASK_TAIL=True, DECAY=0, USE_DT=True, MASK_STORE=True, CONTIGUOUS=False)
    flags.update(mistake)
    # Triton reads a kernel's source, so each variant is written out; the flags are globals
    # that the kernel reads as compile-time constants.
    namespace = {"tl": tl, "_body": _body,
                 **{f"F_{name}": tl.constexpr(value) for name, value in flags.items()}}
    source = (
        "def chunk_state_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, states_ptr,\n"
        "        stride_xb, stride_xl, stride_xh, stride_xp,\n"
        "        stride_dtb, stride_dtl, stride_dth, stride_Bb, stride_Bl, stride_Bn,\n"
        "        stride_sb, stride_sc, stride_sh, stride_sp, stride_sn, length, p, n,\n"
        "        CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):\n"
        "    _body(x_ptr, dt_ptr, A_ptr, B_ptr, states_ptr, stride_xb, stride_xl,\n"
        "          stride_xh, stride_xp, stride_dtb, stride_dtl, stride_dth, stride_Bb,\n"
        "          stride_Bl, stride_Bn, stride_sb, stride_sc, stride_sh, stride_sp,\n"
        "          stride_sn, length, p, n, CHUNK, BLOCK_P, BLOCK_N, F_MASK_TAIL,\n"
        "          F_DECAY, F_USE_DT, F_MASK_STORE, F_CONTIGUOUS)\n")
    return _jit_from_source(source, namespace, "chunk_state_kernel")


def _jit_from_source(source, namespace, name):
    """@triton.jit on a function defined from a string: Triton needs the source text, which
    inspect finds through linecache."""
    import linecache

    filename = f"<ex16-test-{name}-{abs(hash(source + repr(sorted(namespace))))}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return triton.jit(namespace[name])


chunk_state_kernel = _kernel()


@triton.jit
def unattempted_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, states_ptr,
                       stride_xb, stride_xl, stride_xh, stride_xp,
                       stride_dtb, stride_dtl, stride_dth, stride_Bb, stride_Bl, stride_Bn,
                       stride_sb, stride_sc, stride_sh, stride_sp, stride_sn, length, p, n,
                       CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    raise NotImplementedError


@triton.jit
def first_chunk_only_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, states_ptr,
                            stride_xb, stride_xl, stride_xh, stride_xp,
                            stride_dtb, stride_dtl, stride_dth, stride_Bb, stride_Bl,
                            stride_Bn, stride_sb, stride_sc, stride_sh, stride_sp, stride_sn,
                            length, p, n,
                            CHUNK: tl.constexpr, BLOCK_P: tl.constexpr,
                            BLOCK_N: tl.constexpr):
    """Stores only from the programs of chunk 0: the other states stay unwritten."""
    if tl.program_id(0) == 0:
        _body(x_ptr, dt_ptr, A_ptr, B_ptr, states_ptr, stride_xb, stride_xl, stride_xh,
              stride_xp, stride_dtb, stride_dtl, stride_dth, stride_Bb, stride_Bl, stride_Bn,
              stride_sb, stride_sc, stride_sh, stride_sp, stride_sn, length, p, n, CHUNK,
              BLOCK_P, BLOCK_N, True, 0, True, True, False)


def kernel_in_pytorch(x, dt, A, B, chunk_size, layout):
    return torch.zeros(1)


SOLUTIONS[check_chunk_state_kernel] = chunk_state_kernel

MUTANTS += [
    (check_chunk_state_kernel, _kernel(MASK_TAIL=False), ["case 1 of 5", "got nan",
                                                          "past the end of the sequence"]),
    (check_chunk_state_kernel, _kernel(DECAY=1), ["case 1 of 5", "to the END of its chunk"]),
    (check_chunk_state_kernel, _kernel(DECAY=2), ["case 1 of 5", "INCLUSIVE running sum"]),
    (check_chunk_state_kernel, _kernel(USE_DT=False), ["case 1 of 5", "* dt_s"]),
    (check_chunk_state_kernel, _kernel(DECAY=3), ["case 5 of 5", "ONE exponential"]),
    (check_chunk_state_kernel, _kernel(MASK_STORE=False), ["case 2 of 5",
                                                           "writes outside states"]),
    (check_chunk_state_kernel, _kernel(CONTIGUOUS=True), ["case 1 of 5", "use the strides"]),
    (check_chunk_state_kernel, first_chunk_only_kernel, ["case 2 of 5", "never written",
                                                         "states[0, 1, 0, 0, 0]"]),
]

# ---------------------------------------------------------------------------------------------
# The proofs


def test_every_check_has_a_solution_and_two_mutants():
    assert {check.__name__ for check in SOLUTIONS} == set(EX16_CHECKS)
    for check in SOLUTIONS:
        assert sum(m[0] is check for m in MUTANTS) >= 2, f"{check.__name__}: too few mutants"


@pytest.mark.parametrize("check", list(SOLUTIONS), ids=lambda c: c.__name__)
def test_check_passes_a_correct_solution(check, capsys):
    assert_check_passes(check, SOLUTIONS[check], capsys)


@pytest.mark.parametrize("check, mutant, words", MUTANTS,
                         ids=[f"{m[0].__name__}-{i}" for i, m in enumerate(MUTANTS)])
def test_check_rejects_a_wrong_solution(check, mutant, words, capsys):
    assert_check_rejects(check, mutant, words, capsys)


@pytest.mark.parametrize("check", [check_segsum, check_ssd_quadratic, check_ssd_chunked],
                         ids=lambda c: c.__name__)
def test_not_implemented_reads_as_not_attempted(check):
    assert_stub_reads_as_not_attempted(check)


def test_a_library_call_is_reported_even_when_its_result_is_dropped():
    from seqlib.ops.ssd.reference import segsum as library_segsum

    def hides_library_call(a):
        try:
            library_segsum(a)
            raise RuntimeError("pretend it failed")
        except RuntimeError:
            return segsum(a)

    with pytest.raises(AssertionError, match="calls seqlib's"):
        check_segsum(hides_library_call)


def test_the_library_watch_leaves_the_profiler_as_it_was():
    import sys

    def profiler(frame, event, arg):
        return None

    sys.setprofile(profiler)
    try:
        check_segsum(segsum)
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)


def test_kernel_check_refuses_a_pytorch_function():
    with pytest.raises(AssertionError, match="decorated with @triton.jit"):
        check_chunk_state_kernel(kernel_in_pytorch)


def test_kernel_check_reports_an_unattempted_kernel():
    with pytest.raises(AssertionError, match="task not attempted yet"):
        check_chunk_state_kernel(unattempted_kernel)


def test_kernel_check_says_when_triton_is_missing(monkeypatch):
    assert_kernel_check_says_when_triton_is_missing(check_chunk_state_kernel, monkeypatch)
