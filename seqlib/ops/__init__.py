"""seqlib's hot operations, one folder per family.

Each family folder holds ``reference.py`` (readable PyTorch, float64-capable: the definition),
``triton_*.py`` (the fused Triton kernels, split by algorithm stage) and ``__init__.py`` (the one
public function: it checks its inputs, picks a backend and calls it).

- ``seqlib.ops.attention.attention``: scaled dot-product attention with causal alignment to
  the end of the keys, sliding windows and grouped-query heads; FlashAttention-style kernels.
- ``seqlib.ops.selective_scan.selective_scan_fn`` and ``selective_state_update``: Mamba's
  selective scan (mamba_ssm's signature and layouts) and its one-step decoding update.
- ``seqlib.ops.ssd.mamba_chunk_scan_combined`` and ``ssd_state_update``: Mamba2's chunked state
  space duality scan (mamba_ssm's signature and layouts) and its one-step update.
- ``seqlib.ops.linear_attention.linear_attention``: causal linear attention, the SSD with no
  decay, on the same code path.

Nothing here imports Triton: the kernel modules are imported only when a Triton backend runs,
so the package works on machines without Triton (macOS, Windows) on its PyTorch paths.
"""
