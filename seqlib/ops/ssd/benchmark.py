"""The SSD benchmark, run by ``python -m seqlib.bench ssd [--quick]``.

On a CUDA GPU: seqlib's Triton SSD against mamba_ssm's ``mamba_chunk_scan_combined`` and
flash-linear-attention's ``chunk_simple_gla`` when they are installed (optional; never
requirements), and against seqlib's chunked PyTorch form; bf16, head dim p = 64, state n = 128,
one group, chunk 256, shapes (b, l, h) = (4, 2048, 64), (2, 8192, 64), (1, 32768, 32); forward
and forward+backward. Before timing, each anchor's output (and, for forward+backward, the
gradients of x, B and C) is compared with seqlib's on the same inputs, so a wrong mapping of the
arguments shows as a skipped row instead of a meaningless time.

fla's simple GLA is the same recurrence: with q = C, k = B, v = dt' x, log-decay g = dt' A and
scale 1, S_t = exp(g_t) S_{t-1} + k_t v_t^T and y_t = S_t^T q_t (fla's state is (n, p)); D, z
and dt_bias are left out of every provider so that all do the same work.

FLOPs counted for the forward (per batch and head, chunk q): the in-chunk scores C B^T and their
product with x, 2 l q n + 2 l q p (the full q x q tiles, as the kernels compute them), plus the
chunk states and the states' outputs, 2 l p n each: 2 l (q (n + p) + 2 p n); forward+backward
counts 3x the forward. Throughput is reported beside the times but the comparison is the time.

On the CPU: the three PyTorch forms (recurrence, quadratic, chunked) in fp32, time and peak
memory against length, forward and forward+backward: what ``backend=None`` picks from off the GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from seqlib.bench import relative_disagreement, row_cells, time_ms
from seqlib.utils import measure

from . import cpu_backend, mamba_chunk_scan_combined

GPU_SHAPES = [(4, 2048, 64), (2, 8192, 64), (1, 32768, 32)]  # (b, l, h)
HEAD_DIM, STATE, CHUNK = 64, 128, 256
#: Forward times of the faster anchor on an H100 (../shared/anchors-h100.md, issue 6), ms.
H100_FORWARD_ANCHORS_MS = {(4, 2048, 64): 0.466, (2, 8192, 64): 0.708, (1, 32768, 32): 1.039}
# bf16 inputs: two correct implementations differ by a few 1e-3 of the largest value.
AGREEMENT_TOLERANCE = 0.03


def ssd_flops(b: int, length: int, h: int, p: int, n: int, chunk: int, pass_: str) -> float:
    forward = 2.0 * b * h * length * (chunk * (n + p) + 2 * p * n)
    return forward if pass_ == "fwd" else 3.0 * forward


def _mamba_ssm() -> Callable[..., Any]:
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as theirs

    def call(x, dt, A, B, C):
        return theirs(x, dt, A, B, C, CHUNK)
    return call


def _fla() -> Callable[..., Any]:
    from fla.ops.simple_gla import chunk_simple_gla

    def call(x, dt, A, B, C):
        g = dt.float() * A.float()                                 # (b, l, h) log-decay
        v = (x.float() * dt.float()[..., None]).to(x.dtype)        # dt' x
        h, groups = x.shape[2], B.shape[2]
        k = B.repeat_interleave(h // groups, dim=2)
        q = C.repeat_interleave(h // groups, dim=2)
        out, _ = chunk_simple_gla(q, k, v, g, scale=1.0)           # (b, l, h, p) layout
        return out
    return call


def _providers() -> dict[str, Callable[[], Callable[..., Any]]]:
    """Name -> factory of the call (a factory, so that a missing package skips only its rows)."""
    return {
        "seqlib": lambda: (lambda x, dt, A, B, C: mamba_chunk_scan_combined(
            x, dt, A, B, C, CHUNK, backend="triton")),
        "mamba_ssm": _mamba_ssm,
        "fla_simple_gla": _fla,
        "chunked": lambda: (lambda x, dt, A, B, C: mamba_chunk_scan_combined(
            x, dt, A, B, C, CHUNK, backend="chunked")),
    }


def _inputs(b, length, h, device, gen, grad):
    def rnd(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, device=device, generator=gen).to(dtype)

    x = rnd(b, length, h, HEAD_DIM)
    dt = torch.nn.functional.softplus(rnd(b, length, h, dtype=torch.float32) - 2.0)
    A = -torch.rand(h, device=device, generator=gen) - 0.5
    B, C = rnd(b, length, 1, STATE), rnd(b, length, 1, STATE)
    for t in (x, B, C):
        t.requires_grad_(grad)
    return x, dt, A, B, C


def _outputs(fn, inputs, pass_, dout) -> list[torch.Tensor]:
    x, _, _, B, C = inputs
    for t in (x, B, C):
        t.grad = None
    if pass_ == "fwd":
        with torch.no_grad():
            return [fn(*inputs)]
    out = fn(*inputs)
    out.backward(dout)
    found = [out.detach(), x.grad, B.grad, C.grad]
    for t in (x, B, C):
        t.grad = None
    return found



def _step(fn, inputs, pass_, dout) -> Callable[[], Any]:
    if pass_ == "fwd":
        def forward():
            with torch.no_grad():
                return fn(*inputs)
        return forward

    def forward_backward():
        out = fn(*inputs)
        out.backward(dout)
        return out
    return forward_backward


def _gpu_case(b, length, h, pass_, device, gen) -> list[dict[str, Any]]:
    inputs = _inputs(b, length, h, device, gen, pass_ == "fwd+bwd")
    dout = torch.randn(b, length, h, HEAD_DIM, device=device, generator=gen).bfloat16()
    shape = {"b": b, "l": length, "h": h, "p": HEAD_DIM, "n": STATE, "chunk": CHUNK,
             "pass": pass_}
    flops = ssd_flops(b, length, h, HEAD_DIM, STATE, CHUNK, pass_)
    rows, times, mine = [], {}, None
    for name, factory in _providers().items():
        row = {"provider": name, **shape}
        try:
            fn = factory()
            if name == "seqlib":
                mine = _outputs(fn, inputs, pass_, dout)
            elif mine is not None:
                gap = relative_disagreement(mine, _outputs(fn, inputs, pass_, dout))
                row["disagreement"] = gap
                if not gap <= AGREEMENT_TOLERANCE:
                    raise AssertionError(f"disagrees with seqlib: relative difference {gap:.3g}")
            step = _step(fn, inputs, pass_, dout)
            ms = time_ms(step, device, grad_to_none=[inputs[0], inputs[3], inputs[4]])
            peak = measure(step, repeat=1, device=device).peak_bytes
            row.update(ms=ms, tflops=flops / ms * 1e-9, peak_bytes=peak)
            times[name] = ms
        except (ImportError, RuntimeError, MemoryError, AssertionError, TypeError) as error:
            row["skipped"] = f"{type(error).__name__}: {error}"[:300]
        rows.append(row)
    if "seqlib" in times:
        rows[0]["speedup_vs"] = {n: ms / times["seqlib"] for n, ms in times.items()
                                 if n != "seqlib"}
    return rows


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 6's H100 targets against this run's ratios: forward no slower than the faster of
    mamba_ssm and fla (ratio >= 1), forward+backward within 1.1x of it (ratio >= 1 / 1.1)."""
    found = []
    for row in rows:
        if row["provider"] != "seqlib" or "speedup_vs" not in row:
            continue
        anchors = {k: v for k, v in row["speedup_vs"].items() if k in ("mamba_ssm",
                                                                       "fla_simple_gla")}
        target = 1.0 if row["pass"] == "fwd" else 1 / 1.1
        got = min(anchors.values()) if anchors else None
        found.append({"l": row["l"], "b": row["b"], "h": row["h"], "pass": row["pass"],
                      "anchors_measured": sorted(anchors), "target": target, "speedup": got,
                      "met": got is not None and got >= target})
    return found


def run_gpu(device: torch.device, quick: bool) -> dict[str, Any]:
    shapes = [(1, 2048, 8)] if quick else GPU_SHAPES
    gen = torch.Generator(device=device).manual_seed(0)
    rows: list[dict[str, Any]] = []
    for b, length, h in shapes:
        for pass_ in ("fwd", "fwd+bwd"):
            rows += _gpu_case(b, length, h, pass_, device, gen)
            torch.cuda.empty_cache()
    return {"dtype": "bfloat16",
            "flops": "fwd 2*b*h*l*(chunk*(n+p) + 2*p*n); fwd+bwd 3x fwd",
            "speedup": "anchor ms / seqlib ms (> 1: seqlib faster)",
            "backward": "seqlib's fused Triton backward (five kernels; chunk states and "
                        "cumulative sums saved by the forward)",
            "h100_forward_anchors_ms": {str(k): v for k, v in H100_FORWARD_ANCHORS_MS.items()},
            "targets": _targets(rows), "rows": rows}


def _cpu_case(backend: str, b: int, length: int, h: int, p: int, n: int, pass_: str,
              gen: torch.Generator) -> dict[str, Any]:
    grad = pass_ == "fwd+bwd"
    x = torch.randn(b, length, h, p, generator=gen, requires_grad=grad)
    dt = torch.rand(b, length, h, generator=gen) * 0.1
    A = -torch.rand(h, generator=gen) - 0.5
    B = torch.randn(b, length, 1, n, generator=gen, requires_grad=grad)
    C = torch.randn(b, length, 1, n, generator=gen, requires_grad=grad)
    dout = torch.randn(b, length, h, p, generator=gen)

    def step() -> None:
        with torch.set_grad_enabled(grad):
            out = mamba_chunk_scan_combined(x, dt, A, B, C, 64, backend=backend)
            if grad:
                out.backward(dout)

    found = measure(step, repeat=3)
    ms = 1000.0 * found.seconds
    flops = ssd_flops(b, length, h, p, n, 64, pass_)
    return {"provider": backend, "b": b, "l": length, "h": h, "p": p, "n": n, "chunk": 64,
            "pass": pass_, "ms": ms, "gflops": flops / ms * 1e-6, "peak_bytes": found.peak_bytes}


def run_cpu(device: torch.device, quick: bool) -> dict[str, Any]:
    b, h, p, n = 1, 4, 32, 32
    lengths = [128, 256] if quick else [256, 512, 1024, 2048, 4096]
    gen = torch.Generator().manual_seed(0)
    rows = []
    for length in lengths:
        for pass_ in ("fwd", "fwd+bwd"):
            for backend in ("reference", "quadratic", "chunked"):
                if backend == "reference" and length > 1024:
                    continue  # one position at a time: seconds per call beyond this
                rows.append(_cpu_case(backend, b, length, h, p, n, pass_, gen))
    return {"dtype": "float32", "torch_threads": torch.get_num_threads(),
            "backend_none_picks": {str(length): cpu_backend(length, 64) for length in lengths},
            "rows": rows}


def run(device: torch.device, quick: bool = False) -> dict[str, Any]:
    """Benchmark body for ``seqlib.bench``: the GPU comparison on CUDA, else the CPU one."""
    return run_gpu(device, quick) if device.type == "cuda" else run_cpu(device, quick)


def summarize(record: dict[str, Any]) -> str:
    """A plain-text table of a record's rows."""
    lines = [f"ssd on {record['device']['name']} ({record['dtype']})",
             f"{'provider':>15} {'b':>2} {'l':>6} {'h':>3} {'pass':>8} {'ms':>9} "
             f"{'TFLOP/s' if record['device']['type'] == 'cuda' else 'GFLOP/s':>8} "
             f"{'peak MiB':>9}  note"]
    rate_key = "tflops" if record["device"]["type"] == "cuda" else "gflops"
    for row in record["rows"]:
        lines.append(f"{row['provider']:>15} {row['b']:>2} {row['l']:>6} {row['h']:>3} "
                     f"{row['pass']:>8} {row_cells(row, rate_key)}")
    for target in record.get("targets", []):
        got = "not measured" if target["speedup"] is None else f"x{target['speedup']:.2f}"
        lines.append(f"target b={target['b']} l={target['l']} h={target['h']} {target['pass']}: "
                     f">= x{target['target']:.2f} the faster anchor: "
                     f"{'met' if target['met'] else 'missed'} ({got})")
    return "\n".join(lines)
