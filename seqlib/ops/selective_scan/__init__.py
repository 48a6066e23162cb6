"""Mamba's selective scan: one public function, three backends, and the single-step update.

Letters (mamba_ssm's): b batch, d channels, l length, n state size, g groups of channels that
share B and C. The recurrence is written out in ``reference.py``.

>>> import torch
>>> from seqlib.ops.selective_scan import selective_scan_fn
>>> u, delta = torch.randn(2, 8, 20), torch.randn(2, 8, 20)      # (b, d, l)
>>> A = -torch.rand(8, 4)                                         # (d, n)
>>> B, C = torch.randn(2, 4, 20), torch.randn(2, 4, 20)           # (b, n, l)
>>> out, state = selective_scan_fn(u, delta, A, B, C, delta_softplus=True,
...                                return_last_state=True)
>>> out.shape, state.shape, state.dtype
(torch.Size([2, 8, 20]), torch.Size([2, 8, 4]), torch.float32)

Backends:

- ``"reference"`` (``reference.selective_scan_reference``): the definition, one step at a time.
- ``"parallel"`` (``reference.selective_scan_parallel``): a log-depth (Hillis-Steele)
  associative scan over (decay, input) pairs, multiplying the decays (see its docstring).
- ``"triton"``: the fused kernels of ``triton_fwd.py`` and ``triton_bwd.py``: the state stays
  in registers, the backward recomputes it. CUDA tensors; CPU tensors only under Triton's
  interpreter (``TRITON_INTERPRET=1`` set before triton is first imported), for tests.

``backend=None`` picks ``"triton"`` for CUDA tensors when Triton is installed (and the inputs
are fp16, bf16 or fp32), else the faster PyTorch form on the CPU: see :func:`cpu_backend`.

Departure from mamba_ssm, on purpose: a keyword-only ``initial_state`` (b, d, n) starts the
scan from a given state instead of zero, so a sequence can be scanned in pieces (the last state
of one piece is the initial state of the next); gradients flow into it.
"""

from __future__ import annotations

import torch

from .reference import (
    selective_scan_parallel,
    selective_scan_reference,
)
from .reference import (
    selective_state_update as _state_update_reference,
)

__all__ = ["selective_scan_fn", "selective_state_update", "selective_scan_reference",
           "selective_scan_parallel", "cpu_backend", "BACKENDS"]

BACKENDS = ("reference", "parallel", "triton")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: The parallel scan is faster on the CPU while its (b, d, n, l) tensors stay small (its
#: ceil(log2 l) whole-tensor steps beat l small ones); once they outgrow the caches its
#: O(l log l) work loses to the sequential reference's O(l), and far more so with a backward
#: pass. Measured on this project's 2-core CPU, one thread, float32, softplus, best of three,
#: forward / forward+backward in ms, reference against parallel:
#: (b, d, n) = (2, 64, 16): l = 64: 4.1 / 15.0 against 2.9 / 8.9; l = 256: 16 / 63 against
#: 5.9 / 44; l = 512: 33 / 124 against 17 / 124.
#: (b, d, n) = (64, 64, 16): l = 16: 7.7 / 19 against 17 / 70; l = 256: 135 / 377 against
#: 862 / 7495.
CPU_PARALLEL_UP_TO = 2 ** 19


def cpu_backend(b: int, d: int, n: int, length: int) -> str:
    """The PyTorch backend that ``backend=None`` uses off the GPU for a scan of this size:
    "parallel" while b * d * n * l <= ``CPU_PARALLEL_UP_TO`` elements, else "reference"."""
    return "parallel" if b * d * n * length <= CPU_PARALLEL_UP_TO else "reference"


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _expect(name: str, t, shape: tuple, letters: str) -> None:
    """ValueError unless t is a tensor of exactly ``shape`` (named by ``letters``)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {letters} = {tuple(shape)}, "
                         f"got shape {_shape(t)}")


def _check_float(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype} "
                         f"(shape {_shape(t)})")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} (shape {_shape(t)}) but u is on {device}: "
                         f"all inputs must be on one device")


def _check_bc(name: str, M, b: int, d: int, n: int, length: int | None) -> None:
    """B or C: (b, n, l) or (b, g, n, l) with d % g == 0 (without l for a single step)."""
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(M).__name__}")
    tail = () if length is None else (length,)
    lt = "" if length is None else ", l"
    if M.ndim == 2 + len(tail):
        _expect(name, M, (b, n, *tail), f"(b, n{lt})")
    elif M.ndim == 3 + len(tail):
        g = M.shape[1]
        _expect(name, M, (b, g, n, *tail), f"(b, g, n{lt})")
        if g == 0 or d % g != 0:
            raise ValueError(f"{name} has g={g} groups (shape {_shape(M)}), which does not "
                             f"divide the d={d} channels: expected shape (b, g, n{lt}) with "
                             f"d % g == 0")
    else:
        raise ValueError(f"{name} must have shape (b, n{lt}) = {(b, n, *tail)} or (b, g, n{lt})"
                         f", got shape {_shape(M)}")


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, step: bool) -> None:
    """Shapes, dtypes and devices; ``step`` checks one time step (no l)."""
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"u must be a torch.Tensor, got {type(u).__name__}")
    want = "(b, d)" if step else "(b, d, l)"
    if u.ndim != (2 if step else 3):
        raise ValueError(f"u must have shape {want}, got shape {_shape(u)}")
    b, d = u.shape[:2]
    length = None if step else u.shape[2]
    tail = () if step else (length,)
    _expect("delta", delta, (b, d, *tail), want)
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"A must be a torch.Tensor, got {type(A).__name__}")
    if A.ndim != 2 or A.shape[0] != d:
        raise ValueError(f"A must have shape (d, n) = ({d}, n), got shape {_shape(A)}")
    n = A.shape[1]
    _check_bc("B", B, b, d, n, length)
    _check_bc("C", C, b, d, n, length)
    if D is not None:
        _expect("D", D, (d,), "(d,)")
    if z is not None:
        _expect("z", z, (b, d, *tail), want)
    if delta_bias is not None:
        _expect("delta_bias", delta_bias, (d,), "(d,)")
    if initial_state is not None:
        _expect("initial_state", initial_state, (b, d, n), "(b, d, n)")
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
             "delta_bias": delta_bias, "initial_state": initial_state}
    for name, t in named.items():
        if t is not None:
            _check_float(name, t, u.device)
    for name in ("delta", "z"):
        t = named[name]
        if t is not None and t.dtype != u.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} (shape {_shape(t)}) but u has "
                             f"{u.dtype}: u, delta and z must share one dtype")


def _triton_problem(device: torch.device) -> str | None:
    """Why the Triton backend cannot run on this device here, or None if it can."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return ("backend='triton' needs the triton package, which is not installed (Triton has "
                "no macOS or Windows wheels): use backend='parallel' or 'reference'")
    from . import triton_fwd

    if device.type == "cuda" or (device.type == "cpu" and triton_fwd.INTERPRETING):
        return None
    if device.type == "cpu":
        return ("backend='triton' got CPU tensors, and Triton kernels run on the CPU only under "
                "Triton's interpreter: set TRITON_INTERPRET=1 before triton is first imported "
                "(slow; for tests), or move the tensors to a CUDA GPU")
    return f"backend='triton' runs on CUDA GPUs, not on {device.type} tensors"


def _triton_dtypes_ok(*tensors) -> bool:
    return all(t is None or t.dtype in _TRITON_DTYPES for t in tensors)


def _choose_backend(u, tensors, backend: str | None) -> str:
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
        return backend
    if (u.device.type == "cuda" and _triton_dtypes_ok(*tensors)
            and _triton_problem(u.device) is None):
        return "triton"
    return cpu_backend(u.shape[0], u.shape[1], tensors[2].shape[1], u.shape[2])


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, *, initial_state=None, backend=None):
    """Mamba's selective scan, with mamba_ssm's ``selective_scan_fn`` signature and layouts.

    Args:
        u: input (b, d, l).
        delta: step sizes before bias and softplus (b, d, l), u's dtype.
        A: state matrix diagonal (d, n), real (typically negative).
        B, C: (b, n, l), shared by all channels, or (b, g, n, l): channel i uses group
            i // (d // g); d % g == 0.
        D: skip connection (d,), or None.
        z: gate (b, d, l) in u's dtype: the output is multiplied by silu(z). Or None.
        delta_bias: (d,) added to delta before the softplus. Or None.
        delta_softplus: dt = softplus(delta + delta_bias) if True, else delta + delta_bias.
        return_last_state: also return the state after the last step.
        initial_state: (b, d, n) state before the first step (default zeros); keyword-only,
            not in mamba_ssm.
        backend: None, "reference", "parallel" or "triton" (see the module docstring).

    Returns:
        out (b, d, l) in u's dtype, or ``(out, last_state)`` with last_state (b, d, n) in fp32
        (float64 when the inputs are float64).

    Raises:
        ValueError: bad ranks, shapes, groups, dtypes, devices or backend name (the message
            names the argument, its shape and the expected shape).
        RuntimeError: backend="triton" where Triton is missing or cannot run (CPU tensors
            outside the interpreter).
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, step=False)
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    name = _choose_backend(u, tensors, backend)
    args = (u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(return_last_state))
    if name == "reference":
        return selective_scan_reference(*args, initial_state=initial_state)
    if name == "parallel":
        return selective_scan_parallel(*args, initial_state=initial_state)
    problem = _triton_problem(u.device)
    if problem is not None:
        raise RuntimeError(problem)
    if not _triton_dtypes_ok(*tensors):
        raise ValueError(f"u has dtype {u.dtype} (shape {_shape(u)}); backend='triton' takes "
                         f"float16, bfloat16 or float32 inputs (use 'reference' for float64)")
    from .function import triton_selective_scan

    return triton_selective_scan(*args, initial_state)


def selective_state_update(state, u_t, delta_t, A, B_t, C_t, D=None, z_t=None, delta_bias=None,
                           delta_softplus=False):
    """One decoding step of the scan: ``(out_t, new_state)``; never modifies its inputs.

    Args:
        state: (b, d, n), fp32 (float64 allowed).
        u_t, delta_t, z_t: (b, d); B_t, C_t: (b, n) or (b, g, n); A, D, delta_bias and
            delta_softplus as in :func:`selective_scan_fn`.

    Returns:
        out_t (b, d) in u_t's dtype and new_state (b, d, n) in state's dtype. Calling it for
        t = 0, 1, ... from a zero state gives ``selective_scan_fn``'s out[..., t] and last state.
    """
    _check_inputs(u_t, delta_t, A, B_t, C_t, D, z_t, delta_bias, None, step=True)
    b, d = u_t.shape
    _expect("state", state, (b, d, A.shape[1]), "(b, d, n)")
    _check_float("state", state, u_t.device)
    return _state_update_reference(state, u_t, delta_t, A, B_t, C_t, D, z_t, delta_bias,
                                   bool(delta_softplus))
