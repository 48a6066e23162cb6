"""The attention benchmark, run by ``python -m seqlib.bench attention [--quick]``.

On a CUDA GPU: seqlib's Triton kernels against PyTorch's SDPA with the FlashAttention-2 backend
and with the cuDNN backend (``torch.nn.attention.sdpa_kernel``), and naive attention (scores,
softmax, weighted sum in PyTorch) where its (b, h, l, l) matrices fit; bf16, batch x length =
32,768 tokens, lengths 1k, 4k, 16k, head dims 64 (32 heads) and 128 (16 heads), causal and not,
forward and forward+backward. Throughput counts 4 * b * h * l^2 * d FLOPs for the forward
(two matrix products of 2 * l^2 * d each per head), half that when causal, and 3.5 times the
forward for forward+backward (the backward's five products plus recomputing the scores), as the
FlashAttention papers and anchors-h100.md do. Before timing, every anchor's output (and, for
forward+backward, its gradients) is compared with seqlib's on the same inputs.

On the CPU: the reference against the tiled form, time and peak memory against length, forward
and forward+backward. This is what ``backend=None`` chooses from off the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from seqlib.bench import relative_disagreement, row_cells, time_ms
from seqlib.utils import measure

from . import CPU_TILED_FROM, attention, cpu_backend

TOKENS = 32_768
GPU_SHAPES = [(64, 32), (128, 16)]  # (d, h)
GPU_LENGTHS = [1024, 4096, 16384]


def attention_flops(b: int, h: int, length: int, d: int, causal: bool, pass_: str) -> float:
    """FLOPs credited to one call: 4 b h l^2 d forward, halved if causal, x3.5 with backward."""
    flops = 4.0 * b * h * length * length * d * (0.5 if causal else 1.0)
    return flops * (3.5 if pass_ == "fwd+bwd" else 1.0)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    causal: bool) -> torch.Tensor:
    """Attention the way one first writes it in PyTorch: the full score matrix in the inputs'
    dtype, a boolean mask, softmax, product (lq == lk here, so both causal alignments agree)."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        length = q.shape[-2]
        keep = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _sdpa(backend_name: str) -> Callable[..., torch.Tensor]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def call(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return call


def _providers() -> dict[str, Callable[..., torch.Tensor]]:
    return {
        "seqlib": lambda q, k, v, causal: attention(q, k, v, causal, backend="triton"),
        "sdpa_flash": _sdpa("FLASH_ATTENTION"),
        "sdpa_cudnn": _sdpa("CUDNN_ATTENTION"),
        "naive": naive_attention,
    }


def _step(fn: Callable[..., torch.Tensor], q, k, v, causal: bool, pass_: str,
          dout: torch.Tensor) -> Callable[[], Any]:
    if pass_ == "fwd":
        def forward():
            with torch.no_grad():
                return fn(q, k, v, causal)
        return forward

    def forward_backward():
        out = fn(q, k, v, causal)
        out.backward(dout)
        return out
    return forward_backward


def _outputs(fn, q, k, v, causal: bool, pass_: str, dout: torch.Tensor) -> list[torch.Tensor]:
    for t in (q, k, v):
        t.grad = None
    if pass_ == "fwd":
        with torch.no_grad():
            return [fn(q, k, v, causal)]
    out = fn(q, k, v, causal)
    out.backward(dout)
    found = [out.detach(), q.grad, k.grad, v.grad]
    for t in (q, k, v):
        t.grad = None
    return found



# bf16 inputs: 8 significant bits, so two correct kernels differ by a few 1e-3 of the largest
# value; a wrong mask or a missed rescale shows up as differences of order 1.
AGREEMENT_TOLERANCE = 0.03


def _naive_fits(b: int, h: int, length: int, pass_: str, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    matrices = 3 if pass_ == "fwd" else 6  # scores, masked scores, probabilities; and grads
    return b * h * length * length * 2 * matrices < 0.7 * free


def _gpu_case(providers: dict[str, Callable[..., torch.Tensor]], b: int, h: int, length: int,
              d: int, causal: bool, pass_: str, device: torch.device,
              gen: torch.Generator) -> list[dict[str, Any]]:
    """Rows for one shape: every provider checked against seqlib, then timed."""
    q, k, v, dout = (torch.randn(b, h, length, d, device=device, dtype=torch.bfloat16,
                                 generator=gen) for _ in range(4))
    if pass_ == "fwd+bwd":
        for t in (q, k, v):
            t.requires_grad_(True)
    shape = {"b": b, "h": h, "l": length, "d": d, "causal": causal, "pass": pass_}
    flops = attention_flops(b, h, length, d, causal, pass_)
    mine = _outputs(providers["seqlib"], q, k, v, causal, pass_, dout)
    rows, times = [], {}
    for name, fn in providers.items():
        row = {"provider": name, **shape}
        try:
            if name == "naive" and not _naive_fits(b, h, length, pass_, device):
                raise MemoryError("its (b, h, l, l) matrices would not fit")
            if name != "seqlib":
                gap = relative_disagreement(mine, _outputs(fn, q, k, v, causal, pass_, dout))
                row["disagreement"] = gap
                if not gap <= AGREEMENT_TOLERANCE:
                    raise AssertionError(f"disagrees with seqlib: relative difference {gap:.3g}")
            step = _step(fn, q, k, v, causal, pass_, dout)
            ms = time_ms(step, device, grad_to_none=[q, k, v])
            peak = measure(step, repeat=1, device=device).peak_bytes
            row.update(ms=ms, tflops=flops / ms * 1e-9, peak_bytes=peak)
            times[name] = ms
        except (RuntimeError, MemoryError, AssertionError) as error:
            row["skipped"] = f"{type(error).__name__}: {error}"[:300]
        rows.append(row)
    if "seqlib" in times:
        rows[0]["speedup_vs"] = {name: ms / times["seqlib"] for name, ms in times.items()
                                 if name != "seqlib"}
    return rows


def run_gpu(device: torch.device, quick: bool) -> dict[str, Any]:
    shapes = [(64, 32)] if quick else GPU_SHAPES
    lengths = [1024] if quick else GPU_LENGTHS
    tokens = 4096 if quick else TOKENS
    providers = _providers()
    gen = torch.Generator(device=device).manual_seed(0)
    rows: list[dict[str, Any]] = []
    for d, h in shapes:
        for length in lengths:
            for causal in (False, True):
                for pass_ in ("fwd", "fwd+bwd"):
                    rows += _gpu_case(providers, max(1, tokens // length), h, length, d,
                                      causal, pass_, device, gen)
                    torch.cuda.empty_cache()
    return {"dtype": "bfloat16", "tokens": tokens,
            "flops": "fwd 4*b*h*l^2*d (x0.5 causal); fwd+bwd 3.5x fwd",
            "speedup": "anchor ms / seqlib ms (> 1: seqlib faster)",
            "targets": _targets(rows), "rows": rows}


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's H100 targets, each checked against the ratios measured in this run."""
    found = []
    for row in rows:
        if row["provider"] != "seqlib" or "speedup_vs" not in row:
            continue
        wanted = []
        if row["pass"] == "fwd" and row["l"] >= 4096:
            wanted = [("sdpa_flash", 1.1), ("sdpa_cudnn", 0.8)]
        elif row["pass"] == "fwd+bwd":
            wanted = [("sdpa_flash", 1.0)]
        for anchor, target in wanted:
            got = row["speedup_vs"].get(anchor)
            found.append({"l": row["l"], "d": row["d"], "causal": row["causal"],
                          "pass": row["pass"], "anchor": anchor, "target": target,
                          "speedup": got, "met": got is not None and got >= target})
    return found


def _cpu_case(backend: str, b: int, h: int, length: int, d: int, causal: bool, pass_: str,
              gen: torch.Generator) -> dict[str, Any]:
    grad = pass_ == "fwd+bwd"
    q, k, v = (torch.randn(b, h, length, d, generator=gen, requires_grad=grad) for _ in range(3))
    dout = torch.randn(b, h, length, d, generator=gen)

    def step() -> None:
        with torch.set_grad_enabled(grad):
            out = attention(q, k, v, causal, backend=backend)
            if grad:
                out.backward(dout)

    found = measure(step, repeat=3)
    ms = 1000.0 * found.seconds
    flops = attention_flops(b, h, length, d, causal, pass_)
    return {"provider": backend, "b": b, "h": h, "l": length, "d": d, "causal": causal,
            "pass": pass_, "ms": ms, "gflops": flops / ms * 1e-6, "peak_bytes": found.peak_bytes}


def run_cpu(device: torch.device, quick: bool) -> dict[str, Any]:
    b, h, d = 1, 4, 64
    lengths = [128, 256] if quick else [256, 512, 1024, 2048]
    gen = torch.Generator().manual_seed(0)
    rows = [_cpu_case(backend, b, h, length, d, causal, pass_, gen)
            for length in lengths for causal in (False, True) for pass_ in ("fwd", "fwd+bwd")
            for backend in ("reference", "tiled")]
    return {"dtype": "float32", "torch_threads": torch.get_num_threads(),
            "backend_none_picks": {str(n): cpu_backend(n, n) for n in lengths},
            "cpu_tiled_from": CPU_TILED_FROM, "rows": rows}


def run(device: torch.device, quick: bool = False) -> dict[str, Any]:
    """Benchmark body for ``seqlib.bench``: the GPU comparison on CUDA, else the CPU one."""
    return run_gpu(device, quick) if device.type == "cuda" else run_cpu(device, quick)


def summarize(record: dict[str, Any]) -> str:
    """A plain-text table of a record's rows."""
    lines = [f"attention on {record['device']['name']} ({record['dtype']})",
             f"{'provider':>11} {'l':>6} {'d':>4} {'causal':>6} {'pass':>8} {'ms':>9} "
             f"{'TFLOP/s' if record['device']['type'] == 'cuda' else 'GFLOP/s':>8} "
             f"{'peak MiB':>9}  note"]
    rate_key = "tflops" if record["device"]["type"] == "cuda" else "gflops"
    for row in record["rows"]:
        lines.append(f"{row['provider']:>11} {row['l']:>6} {row['d']:>4} {row['causal']!s:>6} "
                     f"{row['pass']:>8} {row_cells(row, rate_key)}")
    for target in record.get("targets", []):
        got = "not measured" if target["speedup"] is None else f"x{target['speedup']:.2f}"
        lines.append(f"target l={target['l']} d={target['d']} causal={target['causal']} "
                     f"{target['pass']}: >= x{target['target']} {target['anchor']}: "
                     f"{'met' if target['met'] else 'missed'} ({got})")
    return "\n".join(lines)

