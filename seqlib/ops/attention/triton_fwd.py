"""Attention forward pass as one fused Triton kernel (FlashAttention-2 style).

Letters as in ``reference.py``: b batch, h query heads, hk key/value heads, g = h // hk,
lq and lk the query and key lengths, d the head dim (padded to D_PAD, a power of two).

One program computes one tile of BLOCK_M query rows of one (batch, head). It loads its queries
once, then walks over the key/value tiles of BLOCK_N keys that those rows may see, keeping per
row a running maximum m, a running sum l of exponentials and an accumulator of weighted values,
all in fp32 (online softmax, Milakov and Gimelshein 2018; tiling as in Dao et al. 2022,
"FlashAttention", with the loop order and deferred normalisation of Dao 2023,
"FlashAttention-2"). Scores are kept in base 2 (scale * log2(e) folded into one multiply), so
``exp2`` replaces ``exp``. The (lq, lk) score matrix never exists: each (BLOCK_M, BLOCK_N) tile
lives in registers only. At the end it writes the output and the row log-sum-exp
``lse = m + log(l)`` (natural log, fp32), which the backward pass uses to rebuild the
probabilities; a row that saw no key gets zeros and ``lse = +inf`` (so exp(s - lse) = 0).

Masks: the key tiles a query tile needs are split into three runs (see :func:`_key_tiles`): the
tiles cut by the window's lower edge, the tiles every row sees completely (no mask at all), and
the tiles cut by the causal diagonal or the end of the keys. Only the first and last runs pay
for building the mask. Grouped-query attention costs nothing: a query head simply reads key
and value head ``head // g``.

Precision: every loaded tile takes part in arithmetic only as fp32. Matrix products keep their
16-bit operands on the GPU (tensor cores, fp32 accumulation); under Triton's interpreter, and
for fp32 inputs, they are computed in fp32 with ``input_precision="ieee"`` (the interpreter's
bf16 arithmetic is broken upstream, triton-lang/triton#11584, and TF32 would miss the accuracy
rule). One constexpr, ``DOT_FP32``, set by the launcher, chooses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e)), folded into the scale


@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr):
    """a @ b accumulated in fp32: fp32 operands (exact, IEEE) or b's 16-bit type (tensor cores)."""
    if DOT_FP32:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a.to(b.dtype), b)
    return c


@triton.jit
def _load_tile(base, rows, cols, stride_r, stride_c, n_rows,
               N_COLS: tl.constexpr, COLS_PAD: tl.constexpr, CHECK_ROWS: tl.constexpr):
    """Load a (len(rows), COLS_PAD) tile; rows >= n_rows (if CHECK_ROWS) and columns >= N_COLS
    read as 0. The masks are left out at compile time where they cannot cut anything."""
    ptrs = base + rows[:, None] * stride_r + cols[None, :] * stride_c
    if CHECK_ROWS:
        if N_COLS == COLS_PAD:
            x = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < N_COLS), other=0.0)
    else:
        if N_COLS == COLS_PAD:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=cols[None, :] < N_COLS, other=0.0)
    return x


@triton.jit
def _visible(i, j, lq, lk, window, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """True where query i may see key j (i and j broadcast against each other): inside both
    lengths, and with causal alignment to the end of the keys, j <= i + (lk - lq), and with a
    window, j > i + (lk - lq) - window."""
    shift = lk - lq
    keep = (i < lq) & (j < lk)
    if IS_CAUSAL:
        keep = keep & (j <= i + shift)
    if HAS_WINDOW:
        keep = keep & (j > i + shift - window)
    return keep


@triton.jit
def _key_tiles(m0, lq, lk, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Key tiles that the query rows [m0, m0 + BLOCK_M) need, as (lo, mid_lo, mid_hi, hi):
    tiles starting in [lo, mid_lo) and [mid_hi, hi) need the mask; tiles in [mid_lo, mid_hi)
    are seen whole by every one of the rows. All but hi are multiples of BLOCK_N."""
    shift = lk - lq
    lo = 0
    hi = lk
    end = lk  # keys [0, end) are all visible to the first row m0 (causal bound)
    if IS_CAUSAL:
        hi = tl.minimum(lk, tl.maximum(m0 + BLOCK_M + shift, 0))  # last row sees j < hi
        end = tl.minimum(lk, tl.maximum(m0 + 1 + shift, 0))
    mid_lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(m0 + shift - window + 1, 0) // BLOCK_N * BLOCK_N  # first row's oldest
        # the last row m0 + BLOCK_M - 1 sees key n0 iff n0 > m0 + BLOCK_M - 1 + shift - window
        mid_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M + shift - window, lo), BLOCK_N) * BLOCK_N
    hi = tl.maximum(hi, lo)
    hi_up = tl.cdiv(hi, BLOCK_N) * BLOCK_N
    mid_lo = tl.minimum(mid_lo, hi_up)
    mid_hi = tl.maximum(tl.minimum(end // BLOCK_N * BLOCK_N, hi_up), mid_lo)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def _fwd_tiles(acc, m_i, l_i, q, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
               rows, dims, start, stop, lq, lk, window, qk_scale,
               HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
               MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
               DOT_FP32: tl.constexpr):
    """Fold the key tiles starting at start, start + BLOCK_N, ... < stop into (acc, m, l)."""
    for n0 in range(start, stop, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k = _load_tile(K, cols, dims, stride_kn, stride_kd, lk, HEAD_DIM, D_PAD, MASKED)
        v = _load_tile(V, cols, dims, stride_vn, stride_vd, lk, HEAD_DIM, D_PAD, MASKED)
        s = _dot(q, tl.trans(k), DOT_FP32) * qk_scale  # (BLOCK_M, BLOCK_N), base-2 scores
        if MASKED:
            keep = _visible(rows[:, None], cols[None, :], lq, lk, window, IS_CAUSAL, HAS_WINDOW)
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED:  # a row that has seen no key yet keeps m = -inf: shift it by 0, not by -inf
            m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new_safe = m_new
        alpha = tl.exp2(m_i - m_new_safe)  # rescales what was summed under the old maximum
        p = tl.exp2(s - m_new_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p, v, DOT_FP32)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _attn_fwd_kernel(Q, K, V, OUT, LSE,
                     stride_qb, stride_qh, stride_qm, stride_qd,
                     stride_kb, stride_kh, stride_kn, stride_kd,
                     stride_vb, stride_vh, stride_vn, stride_vd,
                     stride_ob, stride_oh, stride_om, stride_od,
                     h, lq, lk, window, group, qk_scale,
                     HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                     DOT_FP32: tl.constexpr):
    """Grid (cdiv(lq, BLOCK_M), b * h). OUT is (b, h, lq, d); LSE is contiguous (b, h, lq)."""
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    off_b = (bh // h).to(tl.int64)
    off_h = bh % h
    off_hk = (off_h // group).to(tl.int64)  # grouped-query attention: the shared k/v head
    off_h = off_h.to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_hk * stride_kh
    V += off_b * stride_vb + off_hk * stride_vh
    OUT += off_b * stride_ob + off_h * stride_oh

    rows = m0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D_PAD)
    q = _load_tile(Q, rows, dims, stride_qm, stride_qd, lq, HEAD_DIM, D_PAD, True)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    lo, mid_lo, mid_hi, hi = _key_tiles(m0, lq, lk, window, BLOCK_M, BLOCK_N,
                                        IS_CAUSAL, HAS_WINDOW)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, K, V, stride_kn, stride_kd, stride_vn,
                               stride_vd, rows, dims, lo, mid_lo, lq, lk, window, qk_scale,
                               HEAD_DIM, D_PAD, BLOCK_N, True, IS_CAUSAL, HAS_WINDOW, DOT_FP32)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, K, V, stride_kn, stride_kd, stride_vn,
                               stride_vd, rows, dims, mid_lo, mid_hi, lq, lk, window, qk_scale,
                               HEAD_DIM, D_PAD, BLOCK_N, False, IS_CAUSAL, HAS_WINDOW, DOT_FP32)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, K, V, stride_kn, stride_kd, stride_vn,
                               stride_vd, rows, dims, mid_hi, hi, lq, lk, window, qk_scale,
                               HEAD_DIM, D_PAD, BLOCK_N, True, IS_CAUSAL, HAS_WINDOW, DOT_FP32)

    seen = l_i > 0.0  # False for a row with no visible key (and for rows past lq)
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]  # a row that saw nothing has acc = 0, so out = 0
    lse = tl.where(seen, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("inf"))  # * ln 2
    o_ptrs = OUT + rows[:, None] * stride_om + dims[None, :] * stride_od
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty),
             mask=(rows[:, None] < lq) & (dims[None, :] < HEAD_DIM))
    tl.store(LSE + bh.to(tl.int64) * lq + rows, lse, mask=rows < lq)


# ---------------------------------------------------------------------------------------------
# Launch configuration and the launcher


#: True when this module's kernels run under Triton's interpreter (TRITON_INTERPRET=1 was set
#: before triton was first imported): they then run on CPU tensors, slowly, for tests.
INTERPRETING = not isinstance(_attn_fwd_kernel, triton.runtime.JITFunction)


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes and launch options for one kernel."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


#: The interpreter runs one program at a time, each `tl` operation costing about a millisecond
#: whatever the tile size: the largest tiles need the fewest operations. 64 also puts the tile
#: edges where the tests' lengths (63, 64, 65, 129) cross them.
INTERPRETER_CONFIG = TileConfig(64, 64, 4, 1)

# Shared memory per block (bytes) when torch cannot tell: by compute capability.
_SMEM_BY_CAPABILITY = {(7, 0): 96 * 1024, (7, 5): 64 * 1024, (8, 0): 163 * 1024,
                       (8, 6): 99 * 1024, (8, 7): 163 * 1024, (8, 9): 99 * 1024,
                       (9, 0): 227 * 1024}


def shared_memory_bytes(device: torch.device) -> int:
    """Most shared memory one block may use on this CUDA device."""
    props = torch.cuda.get_device_properties(device)
    found = getattr(props, "shared_memory_per_block_optin", 0)
    if found:
        return int(found)
    return _SMEM_BY_CAPABILITY.get((props.major, props.minor), 48 * 1024)


def pick_config(stage: str, d_pad: int, dot_fp32: bool, device: torch.device) -> TileConfig:
    """Tile sizes for ``stage`` ("fwd", "dkdv" or "dq") on ``device``.

    Starting points, not tuned on a GPU (none was at hand: see benchmarks/NOTES.md). They were
    chosen by compiling the kernels for sm_90, sm_86, sm_80 and sm_75 without a GPU and reading
    the register, spill and shared memory figures: with 16-bit operands on tensor cores the
    forward takes 128 queries x 64 keys per tile, the dK/dV kernel 128 keys x 32 queries (64
    keys at d = 128 before Hopper: fewer spills), the dQ kernel 64 x 64, with 8 warps at d = 128.
    fp32 operands (fp32 inputs, and every input before sm_80, where Triton 3.7 emitted no
    tensor-core instructions) take small tiles, which keep the FMA products in registers. Then
    fewer pipeline stages and smaller tiles until the estimated shared memory fits the device
    (64 KiB on a T4, 99 KiB on consumer Ampere and Ada, 163 on an A100, 227 on an H100).
    """
    if INTERPRETING or device.type != "cuda":
        return INTERPRETER_CONFIG
    major, _ = torch.cuda.get_device_capability(device)
    budget = shared_memory_bytes(device)
    fma = dot_fp32 or major < 8
    elem_bytes = 4 if fma else 2
    wide = d_pad >= 128
    if fma:
        table = {"fwd": (32, 32, 4, 2), "dkdv": (16, 32, 4, 2), "dq": (32, 16, 4, 2)}
    else:
        table = {"fwd": (128, 64, 8 if wide else 4, 3),
                 "dkdv": (32, 64, 8, 2) if wide and major < 9 else (32, 128, 8, 2 if wide else 3),
                 "dq": (64, 64, 8 if wide else 4, 3)}
    block_m, block_n, warps, stages = table[stage]

    def fits(bm: int, bn: int, st: int) -> bool:
        return shared_memory_estimate(stage, TileConfig(bm, bn, warps, st), d_pad,
                                      elem_bytes) <= budget

    while not fits(block_m, block_n, stages) and stages > 1:
        stages -= 1
    while not fits(block_m, block_n, stages) and max(block_m, block_n) > 16:
        if block_n >= block_m:
            block_n //= 2
        else:
            block_m //= 2
    return TileConfig(block_m, block_n, warps, stages)


def shared_memory_estimate(stage: str, cfg: TileConfig, d_pad: int, elem_bytes: int) -> int:
    """Bytes of shared memory a kernel is expected to use: the tiles that stay for the whole
    program plus ``num_stages`` copies of the tiles that are pipelined, ``elem_bytes`` each (4
    where the products run on fp32 operands). It matches what Triton 3.7 allocated when
    compiling these kernels for sm_90 with 16-bit operands; sm_80, sm_86 and the fp32 tiles
    used less."""
    bm, bn, st = cfg.block_m, cfg.block_n, cfg.num_stages
    if stage == "fwd":  # q stays; k and v tiles are pipelined
        return elem_bytes * d_pad * (bm + 2 * bn * st)
    if stage == "dkdv":  # k and v stay; q and dO tiles are pipelined
        return elem_bytes * d_pad * (2 * bn + 2 * bm * st) + 1024
    if stage == "dq":  # q and dO stay; k and v tiles are pipelined
        return elem_bytes * d_pad * (2 * bm + 2 * bn * st)
    raise ValueError(f"stage must be 'fwd', 'dkdv' or 'dq', got {stage!r}")


def dot_in_fp32(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether tl.dot gets fp32 operands: under the interpreter (bf16 is broken there), for fp32
    inputs (IEEE, not TF32), and for bf16 on GPUs older than sm_80 (no bf16 tensor cores)."""
    if INTERPRETING or device.type != "cuda" or dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and torch.cuda.get_device_capability(device)[0] < 8


def result_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype the kernels write a result of ``dtype`` in. The interpreter's fp32 -> bf16
    conversion truncates instead of rounding to nearest (measured on Triton 3.7.1: 0.9999999
    becomes 0.99609375), so under it bf16 results are written as fp32 and rounded by PyTorch.
    On the GPU the kernels write the input dtype directly."""
    return torch.float32 if INTERPRETING and dtype == torch.bfloat16 else dtype


def padded_head_dim(d: int) -> int:
    """Head dim rounded up to a power of two, at least 16 (tl.dot's smallest operand size)."""
    return max(16, triton.next_power_of_2(d))


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool,
                      scale: float, window: int | None,
                      config: TileConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel: returns ``(out, lse)``, out (b, h, lq, d) in q's dtype and lse
    (b, h, lq) in fp32. Inputs are checked by the public function; any strides work.
    ``config`` overrides the tile sizes (tests use it to try uneven tiles)."""
    b, h, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    out = torch.empty((b, h, lq, d), dtype=result_dtype(q.dtype), device=q.device)
    lse = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out.to(q.dtype), lse
    d_pad = padded_head_dim(d)
    dot_fp32 = dot_in_fp32(q.dtype, q.device)
    cfg = config or pick_config("fwd", d_pad, dot_fp32, q.device)
    grid = (triton.cdiv(lq, cfg.block_m), b * h)
    _attn_fwd_kernel[grid](
        q, k, v, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        h, lq, lk, window or 0, h // hk, scale * LOG2E,
        HEAD_DIM=d, D_PAD=d_pad, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        IS_CAUSAL=bool(is_causal or window is not None), HAS_WINDOW=window is not None,
        DOT_FP32=dot_fp32, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out.to(q.dtype), lse
