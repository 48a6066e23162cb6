"""What the SSD's backward kernels share: the gradient through the gate, the dtype results are
written in, how the heads of a group are split between programs, the tile sizes, and how device
functions are called (cheaply under the interpreter).

Imported only when the Triton backend runs (it imports triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import INTERPRETING
from .triton_common import dot as _jit_dot


def device_function(fn):
    """``triton.jit`` for a function that kernels call; under the interpreter the plain Python
    function instead, which runs the same lines: the interpreter re-patches triton.language on
    every call of a jit function (about 0.2 ms, measured here), a quarter of the backward's
    time in the interpreter tests."""
    return fn if INTERPRETING else triton.jit(fn)


#: ``triton_common.dot``, called without the interpreter's per-call patching (see above)
dot = _jit_dot.fn if INTERPRETING else _jit_dot


@device_function
def load_dy(dout_ptrs, z_ptrs, mask, HAS_Z: tl.constexpr):
    """The gradient reaching y (the output before the gate), fp32: dout * silu(z), or dout.

    Recomputed from dout and z by every kernel that needs it rather than written once: a
    stored copy would cost a (b, l, h, p) write and, in 16 bits, one more rounding."""
    dy = tl.load(dout_ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
        dy *= z * tl.sigmoid(z)
    return dy


def result_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a kernel writes a gradient of ``dtype`` in: the interpreter's fp32 -> bf16
    conversion truncates (a whole bf16 ulp off), so there bf16 results are written as fp32 and
    rounded to nearest by PyTorch; on the GPU the kernels write the input dtype directly."""
    return torch.float32 if INTERPRETING and dtype == torch.bfloat16 else dtype


def head_splits(heads_per_group: int, programs_per_split: int, device: torch.device) -> int:
    """How many programs share the heads of one group in the dB and dC kernels.

    B and C are read by every head of their group, so their gradients are sums over those
    heads. A program walks its heads in turn and adds them up in registers; the sums of the
    splits land in separate fp32 buffers that PyTorch adds afterwards. That is deterministic,
    unlike atomic adds, and it loads each B (or C) tile once per split instead of once per
    head. One split is enough under the interpreter (the number of programs costs nothing
    there); on a GPU the heads are split until there are about four programs per SM, because
    with one group (Mamba2's default) a single split leaves most of the GPU idle."""
    if INTERPRETING or device.type != "cuda":
        return 1
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    splits = 1
    while (splits < heads_per_group and programs_per_split * splits < target
           and heads_per_group % (2 * splits) == 0):
        splits *= 2
    return splits


def d_strides(D: torch.Tensor | None) -> tuple[int, int]:
    """D's strides along (h, p); D (h) reads the same value for every p: stride 0 along p."""
    if D is None:
        return (0, 0)
    return (D.stride(0), 0) if D.ndim == 1 else tuple(D.stride())


def block_sizes(chunk: int, p: int, n: int) -> dict:
    """Tile sizes of the chunk-scan backward kernels: whole p and n in one tile (the products
    dy . x and C . B sum over them), positions in blocks of 64, or 32 once p * n reaches
    64 * 64, and 8 warps. Chosen from compile-only runs for sm_90 and sm_80 (no GPU was at
    hand; benchmarks/NOTES.md has the register and spill counts): the kernels keep several
    (positions, p) and (positions, n) tiles live, and every configuration tried spilled some
    registers at Mamba2's p = 64, n = 128; these spilled least."""
    from .triton_common import block

    block_p, block_n = block(p), block(n)
    block_s = min(chunk, 64 if block_p * block_n < 64 * 64 else 32)
    return dict(BLOCK_S=block_s, BLOCK_P=block_p, BLOCK_N=block_n, num_warps=8)
