"""Small utilities every chapter uses: seeding, device choice, parameter counts, and measuring
the wall time and peak memory of one call.

Peak memory is measured the way the device allows: on CUDA with the caching allocator's peak
counter; on the CPU with PyTorch's profiler, whose memory events record every tensor
allocation and release, so the running sum of those events peaks exactly where the call held
the most tensor memory.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and PyTorch's global generators, and return a fresh
    ``torch.Generator`` seeded with the same value for code that takes one explicitly."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_device() -> torch.device:
    """The device the book's code runs on: the first CUDA GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def count_parameters(module: torch.nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters in ``module`` (only those that require grad, by default)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@dataclass(frozen=True)
class Measurement:
    """What :func:`measure` found: the median wall time of the repeats (seconds), the largest
    amount of tensor memory held at once during one call beyond what was held before it (bytes),
    and the result of the last call."""

    seconds: float
    peak_bytes: int
    result: Any


@contextlib.contextmanager
def _silenced_stderr_fd():
    """Send file descriptor 2 to /dev/null for a moment: the profiler's C++ side prints
    "profiler_start/stop" lines there that would otherwise litter every notebook output."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _allocation_events(prof: Any) -> list[tuple[int, int]]:
    """(time in ns, bytes: + allocated, - released) of every CPU tensor allocation."""
    from torch._C._profiler import _EventType

    found, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            found.append((node.start_time_ns, node.extra_fields.alloc_size))
    return sorted(found)


def _peak_cpu_bytes(fn: Callable[[], Any]) -> tuple[int, Any]:
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _silenced_stderr_fd():
        prof.start()
    try:
        result = fn()
    finally:
        with _silenced_stderr_fd():
            prof.stop()
    held = peak = 0
    for _, size in _allocation_events(prof):
        held += size
        peak = max(peak, held)
    return peak, result


def _peak_cuda_bytes(fn: Callable[[], Any], device: torch.device) -> tuple[int, Any]:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before, result


def measure(fn: Callable[..., Any], *args: Any, repeat: int = 3, device: torch.device | str |
            None = None, **kwargs: Any) -> Measurement:
    """Call ``fn(*args, **kwargs)`` once to warm up, then ``repeat`` times for the median wall
    time, then once more to measure peak memory (profiling slows a call down, so the memory
    call is not timed). ``device`` says where the work runs (default: the device of the first
    tensor argument, else the CPU); CUDA work is synchronised before the clock stops.

    Example: ``measure(model, x).seconds``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be an int >= 1, got {repeat!r}")
    if device is None:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    on_cuda = device.type == "cuda"

    def call() -> Any:
        return fn(*args, **kwargs)

    call()
    times = []
    for _ in range(repeat):
        if on_cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = call()
        if on_cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak, result = _peak_cuda_bytes(call, device) if on_cuda else _peak_cpu_bytes(call)
    return Measurement(seconds=statistics.median(times), peak_bytes=int(peak), result=result)
