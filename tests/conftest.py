"""Shared test set-up.

pytest-xdist runs two workers on the two cores: each worker keeps PyTorch to one thread, so
the workers do not fight over the cores (two workers x two threads thrash a 2-core machine).
"""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
