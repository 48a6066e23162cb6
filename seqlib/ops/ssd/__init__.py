"""The Mamba2 SSD scan (state space duality): one public function, its backends, and one step.

Letters: b batch, l length, h heads, p head dim, g groups (head i reads B and C of group
i // (h // g)), n state size. The recurrence and its two other forms are in ``reference.py``.

>>> import torch
>>> from seqlib.ops.ssd import mamba_chunk_scan_combined
>>> b, l, h, p, g, n = 2, 100, 4, 16, 1, 8
>>> x = torch.randn(b, l, h, p)
>>> dt, A = torch.rand(b, l, h), -torch.rand(h)
>>> B, C = torch.randn(b, l, g, n), torch.randn(b, l, g, n)
>>> out, state = mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=64,
...                                        return_final_states=True)
>>> out.shape, state.shape
(torch.Size([2, 100, 4, 16]), torch.Size([2, 4, 16, 8]))

Backends (all take the same arguments and layouts, and agree to float64 precision):

- ``"reference"`` (``reference.ssd_reference``): the sequential recurrence, the definition.
- ``"quadratic"`` (``reference.ssd_quadratic``): y = (L o C B^T)(dt' x), masked linear
  attention with a decay mask from segment sums of A dt'; O(l^2).
- ``"chunked"`` (``reference.ssd_chunked``): quadratic inside chunks, states passed between
  them, stage by stage as the fused kernels do it.
- ``"triton"``: the chunked algorithm as Triton kernels behind ``function.TritonSSD``: four
  forward kernels, one per stage (``triton_chunk_cumsum.py``, ``triton_chunk_state.py``,
  ``triton_state_passing.py``, ``triton_chunk_scan.py``), and five backward ones
  (``triton_chunk_scan_bwd.py``, ``triton_state_passing_bwd.py``, ``triton_chunk_state_bwd.py``,
  ``triton_chunk_cumsum_bwd.py``; ``function.py`` says what each does and what the forward
  keeps for them). CUDA tensors; CPU tensors only under Triton's interpreter
  (``TRITON_INTERPRET=1`` set before triton is first imported), slow and meant for tests.
  Inputs fp16, bf16 or fp32.

``backend=None`` picks ``"triton"`` for CUDA tensors when Triton is installed (and x is not
float64), else ``"quadratic"`` for a sequence no longer than one chunk and ``"chunked"``
for longer ones (:func:`cpu_backend`). Gradients flow through every backend, including through
``initial_states`` and the returned final states.
"""

from __future__ import annotations

import torch

from .reference import (
    segsum,
    ssd_chunked,
    ssd_quadratic,
    ssd_reference,
)
from .reference import ssd_state_update as _state_update

__all__ = ["mamba_chunk_scan_combined", "ssd_state_update", "ssd_reference", "ssd_quadratic",
           "ssd_chunked", "segsum", "cpu_backend", "BACKENDS"]

BACKENDS = ("reference", "quadratic", "chunked", "triton")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _shape(t) -> tuple[int, ...]:
    return tuple(t.shape)


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _tensor(name, t, expected, dims, optional=False):
    """Check a tensor argument's type, rank, float dtype and its fixed dimensions.

    ``expected`` names the dimensions ("b, l, h, p"), ``dims`` gives their required sizes (None
    where any size goes)."""
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    want = "(" + ", ".join(str(d) if d is not None else e
                           for d, e in zip(dims, expected.split(", "))) + ")"
    if t.ndim != len(dims) or any(d is not None and s != d for s, d in zip(t.shape, dims)):
        raise ValueError(f"{name} must have shape ({expected}) = {want}, got shape "
                         f"{_fmt(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype} "
                         f"(shape {_fmt(t.shape)})")


def _same_device(ref_name, ref, others) -> None:
    for name, t in others:
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} (shape {_fmt(t.shape)}) but {ref_name} is "
                             f"on {ref.device}: every tensor must be on one device")


def _check_D(D, h, p) -> None:
    if D is None:
        return
    if not isinstance(D, torch.Tensor):
        raise TypeError(f"D must be a torch.Tensor, got {type(D).__name__}")
    if _shape(D) not in ((h,), (h, p)):
        raise ValueError(f"D must have shape (h) = ({h}) or (h, p) = ({h}, {p}), got shape "
                         f"{_fmt(D.shape)}")
    _tensor("D", D, ", ".join("hp"[: D.ndim]), list(D.shape))


def _check_scan_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
                       dt_softplus, return_final_states) -> None:
    _tensor("x", x, "b, l, h, p", [None] * 4)
    b, length, h, p = x.shape
    if h == 0 or p == 0:
        raise ValueError(f"x must have h >= 1 heads and head dim p >= 1, got shape "
                         f"{_fmt(x.shape)}")
    _tensor("dt", dt, "b, l, h", [b, length, h])
    _tensor("A", A, "h", [h])
    _tensor("B", B, "b, l, g, n", [b, length, None, None])
    g, n = B.shape[2], B.shape[3]
    if g == 0 or h % g != 0:
        raise ValueError(f"B has g={g} groups, which does not divide the h={h} heads of x "
                         f"(shape {_fmt(x.shape)}): expected B of shape (b, l, g, n) with "
                         f"h % g == 0, got shape {_fmt(B.shape)}")
    if n == 0:
        raise ValueError(f"B must have a state size n >= 1, got shape {_fmt(B.shape)}")
    _tensor("C", C, "b, l, g, n", [b, length, g, n])
    _check_D(D, h, p)
    _tensor("z", z, "b, l, h, p", [b, length, h, p], optional=True)
    _tensor("dt_bias", dt_bias, "h", [h], optional=True)
    _tensor("initial_states", initial_states, "b, h, p, n", [b, h, p, n], optional=True)
    for name, t in (("B", B), ("C", C), ("z", z)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} (shape {_fmt(t.shape)}) but x has "
                             f"{x.dtype}: x, B, C and z must share one dtype")
    _same_device("x", x, [("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                          ("dt_bias", dt_bias), ("initial_states", initial_states)])
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 16 or chunk_size > 256
                                   or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size must be a power of two from 16 to 256, got {chunk_size!r}")
    for name, flag in (("dt_softplus", dt_softplus), ("return_final_states", return_final_states)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}")


def _triton_problem(x: torch.Tensor) -> str | None:
    """Why the Triton backend cannot run on x's device here, or None if it can."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return ("backend='triton' needs the triton package, which is not installed (Triton has "
                "no macOS or Windows wheels): use backend='chunked', 'quadratic' or 'reference'")
    from .triton_common import INTERPRETING

    if x.device.type == "cuda" or (x.device.type == "cpu" and INTERPRETING):
        return None
    if x.device.type == "cpu":
        return ("backend='triton' got CPU tensors, and Triton kernels run on the CPU only under "
                "Triton's interpreter: set TRITON_INTERPRET=1 before triton is first imported "
                "(slow; for tests), or move the tensors to a CUDA GPU")
    return f"backend='triton' runs on CUDA GPUs, not on {x.device.type} tensors"


def cpu_backend(length: int, chunk_size: int) -> str:
    """The PyTorch backend that ``backend=None`` uses off the GPU: a sequence that fits in one
    chunk is one (l, l) block either way, and the chunked form would pad it to a whole chunk
    and add the state passing, so it takes the quadratic form; longer ones the chunked form.
    (Measured in chapter 16's set-up, Mamba2LM on rows of 9 tokens with chunks of 64, one CPU
    thread: 33-45 ms per training step quadratic, 45-56 ms chunked.)"""
    return "quadratic" if length <= chunk_size else "chunked"


def _choose_backend(x: torch.Tensor, chunk_size: int, backend: str | None) -> str:
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
        return backend
    if x.device.type == "cuda" and x.dtype in _TRITON_DTYPES and _triton_problem(x) is None:
        return "triton"
    return cpu_backend(x.shape[1], chunk_size)


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                              initial_states=None, dt_softplus=False, return_final_states=False,
                              *, backend=None):
    """The SSD scan with mamba_ssm's ``mamba_chunk_scan_combined`` signature and layouts.

    Per head: dt'_t = softplus(dt_t + dt_bias) if dt_softplus else dt_t + dt_bias;
    S_t = exp(dt'_t A) S_{t-1} + dt'_t x_t B_t^T; y_t = S_t C_t + D x_t; out_t = y_t silu(z_t).

    Args:
        x: inputs (b, l, h, p), float16, bfloat16, float32 or float64.
        dt: steps (b, l, h), any float dtype.
        A: (h), one scalar per head (negative for a decaying state; 0 means no decay).
        B, C: (b, l, g, n) in x's dtype; h % g == 0 and head i reads group i // (h // g).
        chunk_size: a power of two from 16 to 256 (the chunk of the chunked backend; checked
            for every backend so that a call is valid or not whatever the backend). Any length
            l works: the last chunk is padded without leaking into the outputs or the state.
        D: skip connection (h) or (h, p), optional.
        z: gate (b, l, h, p) in x's dtype, optional: out = y * silu(z).
        dt_bias: (h), added to dt before the softplus, optional.
        initial_states: (b, h, p, n), the state before position 0 (float32 advised).
        dt_softplus: apply softplus to dt + dt_bias.
        return_final_states: also return the state after the last position.
        backend: None, "reference", "quadratic", "chunked" or "triton" (see the module
            docstring).

    Returns:
        out (b, l, h, p) in x's dtype, or (out, final_states) with final_states (b, h, p, n) in
        float32 (float64 for float64 x). Differentiable in every tensor argument.

    Raises:
        ValueError: bad ranks, shapes, group counts, dtypes, devices, chunk_size or backend
            (the message names the argument, its shape and the expected shape).
        RuntimeError: backend="triton" where Triton is missing or cannot run (CPU tensors
            outside the interpreter).
    """
    _check_scan_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus,
                       return_final_states)
    name = _choose_backend(x, chunk_size, backend)
    options = dict(D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                   dt_softplus=dt_softplus, return_final_states=return_final_states)
    if name == "reference":
        return ssd_reference(x, dt, A, B, C, **options)
    if name == "quadratic":
        return ssd_quadratic(x, dt, A, B, C, **options)
    if name == "chunked":
        return ssd_chunked(x, dt, A, B, C, chunk_size, **options)
    problem = _triton_problem(x)
    if problem is not None:
        raise RuntimeError(problem)
    if x.dtype not in _TRITON_DTYPES:
        raise ValueError(f"x has dtype {x.dtype} (shape {_fmt(x.shape)}); backend='triton' "
                         f"takes float16, bfloat16 or float32 (use 'chunked' for float64)")
    from .function import triton_ssd

    out, final = triton_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
                            dt_softplus)
    return (out, final) if return_final_states else out


def ssd_state_update(state, x_t, dt_t, A, B_t, C_t, D=None, z_t=None, dt_bias=None,
                     dt_softplus=False):
    """One decoding step of the SSD recurrence, equal to the scan at that position.

    Args:
        state: (b, h, p, n), the state after the previous position.
        x_t: (b, h, p); dt_t: (b, h); A: (h); B_t, C_t: (b, g, n) in x_t's dtype;
        D: (h) or (h, p); z_t: (b, h, p); dt_bias: (h); dt_softplus: as in the scan.

    Returns:
        (out_t (b, h, p) in x_t's dtype, new_state (b, h, p, n) in state's dtype). Nothing is
        modified in place.
    """
    _tensor("x_t", x_t, "b, h, p", [None] * 3)
    b, h, p = x_t.shape
    _tensor("B_t", B_t, "b, g, n", [b, None, None])
    g, n = B_t.shape[1], B_t.shape[2]
    if g == 0 or h % g != 0:
        raise ValueError(f"B_t has g={g} groups, which does not divide the h={h} heads of x_t "
                         f"(shape {_fmt(x_t.shape)}): expected B_t of shape (b, g, n) with "
                         f"h % g == 0, got shape {_fmt(B_t.shape)}")
    _tensor("state", state, "b, h, p, n", [b, h, p, n])
    _tensor("dt_t", dt_t, "b, h", [b, h])
    _tensor("A", A, "h", [h])
    _tensor("C_t", C_t, "b, g, n", [b, g, n])
    _check_D(D, h, p)
    _tensor("z_t", z_t, "b, h, p", [b, h, p], optional=True)
    _tensor("dt_bias", dt_bias, "h", [h], optional=True)
    _same_device("x_t", x_t, [("state", state), ("dt_t", dt_t), ("A", A), ("B_t", B_t),
                              ("C_t", C_t), ("D", D), ("z_t", z_t), ("dt_bias", dt_bias)])
    if not isinstance(dt_softplus, bool):
        raise ValueError(f"dt_softplus must be a bool, got {dt_softplus!r}")
    return _state_update(state, x_t, dt_t, A, B_t, C_t, D, z_t, dt_bias, dt_softplus)
