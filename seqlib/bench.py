"""Benchmark harness: ``python -m seqlib.bench NAME [--quick] [--out DIR] [--device DEVICE]``.

Each benchmark lives beside its op (``seqlib/ops/<family>/benchmark.py``) and is registered
here by name. The harness picks the device, refuses to run under Triton's interpreter (whose
timings mean nothing), runs the benchmark, and writes one JSON record under ``benchmarks/``
(``NAME-<device>-<date>[-quick].json``) naming the device, the versions (Python, PyTorch,
Triton, CUDA) and the date beside the benchmark's own rows (shapes, median ms, TFLOP/s, ratios
to the anchors measured in the same run, peak memory). Chapters plot from these records.

Timing (:func:`time_ms`): every function is called once to warm up (JIT compilation,
autotuning, allocator) before it is timed; on CUDA the median of ``triton.testing.do_bench``,
on the CPU the median of ``time.perf_counter`` over a few calls.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Benchmark name -> module with ``run(device, quick) -> dict`` and ``summarize(record) -> str``.
REGISTRY = {
    "attention": "seqlib.ops.attention.benchmark",
    "selective_scan": "seqlib.ops.selective_scan.benchmark",
    "ssd": "seqlib.ops.ssd.benchmark",
}

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "benchmarks"

INTERPRETER_REFUSAL = (
    "seqlib.bench refuses to run while TRITON_INTERPRET=1 is set: Triton's interpreter runs "
    "kernels in Python on the CPU, so its timings say nothing about the kernels. Unset it "
    "(env -u TRITON_INTERPRET python -m seqlib.bench ...) and run again."
)


def time_ms(fn: Callable[[], Any], device: torch.device, *, repeat: int = 5,
            grad_to_none: Sequence[torch.Tensor] | None = None) -> float:
    """Median wall time of ``fn()`` in milliseconds, after one warm-up call.

    CUDA: ``triton.testing.do_bench`` (its own warm-up and repetitions, median, gradients of
    ``grad_to_none`` reset between calls). CPU: median of ``repeat`` ``time.perf_counter`` runs.
    """
    fn()
    if device.type == "cuda":
        import torch
        from triton.testing import do_bench

        torch.cuda.synchronize(device)
        return float(do_bench(fn, grad_to_none=grad_to_none, return_mode="median"))
    times = []
    for _ in range(repeat):
        for t in grad_to_none or ():
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def relative_disagreement(mine: Sequence[torch.Tensor | None],
                          theirs: Sequence[torch.Tensor | None]) -> float:
    """Largest difference between two providers' outputs and gradients, relative to the second
    one's largest magnitude; infinite when only one of them produced a gradient. Benchmarks
    check it before timing, so a provider called with the wrong layout is never timed."""
    worst = 0.0
    for a, b in zip(mine, theirs):
        if a is None or b is None:
            if a is not b:
                return float("inf")
            continue
        a, b = a.float(), b.float()
        worst = max(worst, float((a - b).abs().max()) / max(float(b.abs().max()), 1e-6))
    return worst


def row_cells(row: dict[str, Any], rate_key: str, rate_format: str = "8.2f") -> str:
    """The measured columns of one summary row, "ms rate peak-MiB note", with dashes for what
    the row lacks; the note names the speed-ups over the anchors, or why the row was skipped."""
    note = row.get("skipped", "")
    if "speedup_vs" in row:
        note = " ".join(f"{k} x{v:.2f}" for k, v in row["speedup_vs"].items())
    ms = f"{row['ms']:9.3f}" if "ms" in row else f"{'-':>9}"
    rate = row.get(rate_key)
    rate = f"{rate:{rate_format}}" if rate is not None else f"{'-':>8}"
    peak = f"{row['peak_bytes'] / 2**20:9.1f}" if "peak_bytes" in row else f"{'-':>9}"
    return f"{ms} {rate} {peak}  {note}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> dict[str, Any]:
    """Name and size of the device the benchmark ran on."""
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                "multiprocessors": props.multi_processor_count}
    return {"type": "cpu", "name": _cpu_name(), "logical_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "machine": platform.machine()}


def versions() -> dict[str, Any]:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "triton": triton_version, "cuda": torch.version.cuda,
            "platform": platform.platform()}


def device_tag(info: dict[str, Any]) -> str:
    """Short file-name-safe name of the device: "cpu" or e.g. "nvidia-h100-80gb-hbm3"."""
    if info["type"] == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", info["name"].lower()).strip("-")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqlib.bench", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("name", choices=sorted(REGISTRY), help="which benchmark to run")
    parser.add_argument("--quick", action="store_true", help="a tiny run (checks the harness)")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cuda when a GPU is present, else cpu)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder for the JSON record (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print(INTERPRETER_REFUSAL, file=sys.stderr)
        return 2
    import torch  # only now: a refusal should not wait for PyTorch to load

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda asked for, but PyTorch sees no CUDA GPU", file=sys.stderr)
        return 2

    module = importlib.import_module(REGISTRY[args.name])
    now = datetime.datetime.now(datetime.timezone.utc)
    info = describe_device(device)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    body = module.run(device, quick=args.quick)
    record = {"benchmark": args.name, "command": "python -m seqlib.bench " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "date": now.isoformat(timespec="seconds"), "quick": args.quick,
              "device": info, "versions": versions(),
              # other work on the machine skews CPU timings: say how busy it was
              "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()
                                          if hasattr(os, "getloadavg") else None},
              **body}
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    path = args.out / f"{args.name}-{device_tag(info)}-{now:%Y-%m-%d}{suffix}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(module.summarize(record))
    print(f"record written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
