"""What the checks of Triton tasks share: whether a student's kernel can be launched here, and
its source.

A Triton task's check takes the function the student decorated with ``@triton.jit`` and launches
it itself: compiled on a CUDA GPU, or on the CPU under Triton's interpreter, which only happens
when ``TRITON_INTERPRET=1`` was set before triton was first imported. Triton is imported inside
these functions, never with the module, so the other checks work where it is missing.
"""

from __future__ import annotations

import inspect

import torch

__all__ = ["NEEDS_TRITON", "kernel_source", "triton_problem"]

NEEDS_TRITON = ("this task needs Triton, which is not installed here (it has no macOS or"
                " Windows wheels): run this notebook on Linux, WSL2 or Colab")


def triton_problem(kernel, example: str) -> tuple[str | None, bool]:
    """(why ``kernel`` cannot be launched here, or None; whether Triton is interpreting).

    ``example`` is the graded call as the notebook writes it, quoted when something other than
    a kernel was passed."""
    try:
        import triton
    except ImportError:
        return NEEDS_TRITON, False
    from triton.runtime.interpreter import InterpretedFunction

    interpreting = isinstance(kernel, InterpretedFunction)
    if not (interpreting or isinstance(kernel, triton.runtime.JITFunction)):
        return (f"it expects your kernel, the function decorated with @triton.jit, as in"
                f" `{example}`; it got a {type(kernel).__name__}"), interpreting
    if not interpreting and not torch.cuda.is_available():
        return ("there is no CUDA GPU here, so the kernel must run under Triton's interpreter,"
                " and Triton was imported before TRITON_INTERPRET=1 was set: restart the"
                " kernel and run the notebook from its first cell"), interpreting
    return None, interpreting


def kernel_source(kernel) -> str:
    """The Python source of a ``@triton.jit`` function, or "" where it cannot be read."""
    try:
        return inspect.getsource(kernel.fn)
    except (OSError, TypeError, AttributeError):
        return ""
