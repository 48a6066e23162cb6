"""What the SSD's Triton kernels share: the matrix product helper and the interpreter switch.

Imported only when the Triton backend runs (it imports triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def dot(a, b, DOT_FP32: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """a @ b accumulated in fp32, from fp32 tiles: in fp32 with IEEE precision (fp32 inputs, and
    always under the interpreter, where 16-bit tl.dot is wrong), else as 16-bit operands of
    DOT_DTYPE for the tensor cores."""
    if DOT_FP32:
        c = tl.dot(a, b, input_precision="ieee")
    else:
        c = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE))
    return c


#: True when the kernels run under Triton's interpreter (TRITON_INTERPRET=1 was set before
#: triton was first imported): they then take CPU tensors, slowly, for tests.
INTERPRETING = not isinstance(dot, triton.runtime.JITFunction)

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def dot_options(dtype: torch.dtype, device: torch.device) -> dict:
    """The DOT_FP32 / DOT_DTYPE constexprs for inputs of this dtype on this device."""
    fp32 = INTERPRETING or device.type != "cuda" or dtype == torch.float32 or (
        dtype == torch.bfloat16 and torch.cuda.get_device_capability(device)[0] < 8)
    return dict(DOT_FP32=fp32, DOT_DTYPE=_TL_DTYPES[dtype])


def block(n: int, least: int = 16) -> int:
    """n rounded up to a power of two, at least ``least`` (tl.dot's smallest operand size)."""
    return max(least, triton.next_power_of_2(n))
