"""Scaled dot-product attention: one public function, three backends.

Letters: b batch, h query heads, hk key/value heads, lq query length, lk key length, d head dim.

>>> import torch
>>> from seqlib.ops.attention import attention
>>> q = torch.randn(2, 8, 5, 64)                  # (b, h, lq, d)
>>> k, v = torch.randn(2, 2, 12, 64), torch.randn(2, 2, 12, 64)   # (b, hk, lk, d)
>>> attention(q, k, v, is_causal=True).shape      # 4 query heads share each k/v head
torch.Size([2, 8, 5, 64])

Backends:

- ``"reference"`` (``reference.attention_reference``): the definition, every score at once.
- ``"tiled"`` (``reference.attention_tiled``): online softmax over blocks in PyTorch, with a
  backward that recomputes the blocks: memory linear in the lengths.
- ``"triton"``: the fused kernels of ``triton_fwd.py`` and ``triton_bwd.py`` (FlashAttention-2
  style). CUDA tensors; CPU tensors only under Triton's interpreter (``TRITON_INTERPRET=1`` set
  before triton is first imported), which is slow and meant for tests and exercises.

``backend=None`` picks ``"triton"`` for CUDA tensors when Triton is installed (and the inputs
are fp16, bf16 or fp32 with d <= 128), else the faster PyTorch form for the sizes at hand (see
:func:`cpu_backend`).
"""

from __future__ import annotations

import math
import numbers

import torch

from .reference import attention_reference, attention_tiled, visible_keys

__all__ = ["attention", "attention_reference", "attention_tiled", "visible_keys", "BACKENDS",
           "cpu_backend", "TRITON_MAX_HEAD_DIM"]

BACKENDS = ("reference", "tiled", "triton")
TRITON_MAX_HEAD_DIM = 128
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: From this many (query, key) pairs per head on, ``backend=None`` takes the tiled form off the
#: GPU. Measured on a shared 2-core CPU (one thread, fp32, 4 heads of d = 64; ``python -m
#: seqlib.bench attention``, record in benchmarks/attention-cpu-*.json, notes in NOTES.md): at
#: 256 x 256 neither form won consistently across runs; from 512 x 512 on the tiled form was
#: faster in every case of the recorded run (forward and forward+backward, causal or not; 3 of
#: 4 in an earlier run), 2-5x at 2048, and it holds a few MiB where the reference holds its
#: (b, h, lq, lk) matrices.
CPU_TILED_FROM = 512 * 512


def cpu_backend(lq: int, lk: int) -> str:
    """The PyTorch backend that ``backend=None`` uses off the GPU for these lengths."""
    return "tiled" if lq * lk >= CPU_TILED_FROM else "reference"


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_inputs(q, k, v, is_causal, scale, window) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.ndim != 4:
        raise ValueError(f"q must have shape (b, h, lq, d), got shape {_shape(q)}")
    for name, t in (("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"{name} must have shape (b, hk, lk, d), got shape {_shape(t)}")
    b, h, _, d = q.shape
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k must have shape (b, hk, lk, d) = ({b}, hk, lk, {d}) to match q of "
                         f"shape {_shape(q)}, got shape {_shape(k)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k, (b, hk, lk, d) = {_shape(k)}, "
                         f"got shape {_shape(v)}")
    if d == 0:
        raise ValueError(f"q must have a head dim d >= 1, got shape {_shape(q)}")
    hk = k.shape[1]
    if hk == 0 or h % hk != 0:
        raise ValueError(f"k has hk={hk} heads, which does not divide the h={h} heads of q "
                         f"(shape {_shape(q)}): expected k of shape (b, hk, lk, d) with "
                         f"h % hk == 0, got shape {_shape(k)}")
    if q.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"q must be float16, bfloat16, float32 or float64, got {q.dtype} "
                         f"(shape {_shape(q)})")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} (shape {_shape(t)}) but q has "
                             f"{q.dtype}: q, k and v must share one dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} (shape {_shape(t)}) but q is on "
                             f"{q.device}: q, k and v must be on one device")
    if not isinstance(is_causal, bool):
        raise ValueError(f"is_causal must be a bool, got {is_causal!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
                              or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"scale must be None (1/sqrt(d)) or a positive finite number, "
                         f"got {scale!r}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, numbers.Integral)
                               or window < 1):
        raise ValueError(f"window must be None or an int >= 1 (keys per query, the query's "
                         f"own included), got {window!r}")


def _triton_problem(q: torch.Tensor) -> str | None:
    """Why the Triton backend cannot run on q's device here, or None if it can."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return ("backend='triton' needs the triton package, which is not installed (Triton has "
                "no macOS or Windows wheels): use backend='tiled' or 'reference'")
    from . import triton_fwd

    if q.device.type == "cuda" or (q.device.type == "cpu" and triton_fwd.INTERPRETING):
        return None
    if q.device.type == "cpu":
        return ("backend='triton' got CPU tensors, and Triton kernels run on the CPU only under "
                "Triton's interpreter: set TRITON_INTERPRET=1 before triton is first imported "
                "(slow; for tests), or move the tensors to a CUDA GPU")
    return f"backend='triton' runs on CUDA GPUs, not on {q.device.type} tensors"


def _check_triton_inputs(q: torch.Tensor) -> None:
    if q.dtype not in _TRITON_DTYPES:
        raise ValueError(f"q has dtype {q.dtype} (shape {_shape(q)}); backend='triton' takes "
                         f"float16, bfloat16 or float32 (use 'reference' for float64)")
    if q.shape[3] > TRITON_MAX_HEAD_DIM:
        raise ValueError(f"q has head dim d={q.shape[3]} (shape {_shape(q)}); backend='triton' "
                         f"takes d <= {TRITON_MAX_HEAD_DIM}")


def _choose_backend(q: torch.Tensor, k: torch.Tensor, backend: str | None) -> str:
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
        return backend
    if (q.device.type == "cuda" and q.dtype in _TRITON_DTYPES
            and q.shape[3] <= TRITON_MAX_HEAD_DIM and _triton_problem(q) is None):
        return "triton"
    return cpu_backend(q.shape[2], k.shape[2])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False,
              scale: float | None = None, *, window: int | None = None,
              backend: str | None = None) -> torch.Tensor:
    """Scaled dot-product attention, shaped like ``F.scaled_dot_product_attention``.

    Args:
        q: queries (b, h, lq, d).
        k, v: keys and values (b, hk, lk, d), same dtype and device as q; h % hk == 0, and
            query head i reads key/value head i // (h // hk) (grouped-query attention; hk = 1 is
            multi-query attention).
        is_causal: query i sees key j iff j <= i + (lk - lq): queries are aligned to the *end*
            of the keys (flash-attn >= 2.1), so a query block appended to a key/value cache
            sees the whole cache. (SDPA's ``is_causal`` aligns to the start instead.)
        scale: multiplies the scores; default 1 / sqrt(d).
        window: keep only the last ``window`` keys up to each query's own position,
            j > i + (lk - lq) - window. Implies causal.
        backend: None, "reference", "tiled" or "triton" (see the module docstring).

    Returns:
        (b, h, lq, d) in q's dtype. A query row that sees no key (a window with lq > lk, or
        lk = 0) is zero, and so are the gradients it passes back.

    Raises:
        ValueError: bad ranks, shapes, head counts, dtypes, devices, scale, window or backend
            name (the message names the argument, its shape and the expected shape).
        RuntimeError: backend="triton" where Triton is missing or cannot run (CPU tensors
            outside the interpreter).
    """
    _check_inputs(q, k, v, is_causal, scale, window)
    name = _choose_backend(q, k, backend)
    if name == "reference":
        return attention_reference(q, k, v, is_causal, scale, window)
    if name == "tiled":
        return attention_tiled(q, k, v, is_causal, scale, window)
    problem = _triton_problem(q)
    if problem is not None:
        raise RuntimeError(problem)
    _check_triton_inputs(q)
    from .function import triton_attention

    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    return triton_attention(q, k, v, is_causal, scale, None if window is None else int(window))
