"""Shared test set-up.

- Without a CUDA GPU, Triton kernels run under Triton's interpreter, which reads
  TRITON_INTERPRET when triton is first imported: it is set here, before any test imports it.
- pytest-xdist runs two workers on the two cores: each worker keeps PyTorch to one thread, so
  the workers do not fight over the cores (two workers x two threads thrash a 2-core machine).
"""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    assert "triton" not in sys.modules, "triton was imported before TRITON_INTERPRET was set"
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
