import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from seqlib import plotting  # noqa: E402
from seqlib.utils import count_parameters, default_device, measure, seed_everything  # noqa: E402


def test_seed_everything_repeats_all_generators():
    g = seed_everything(7)
    first = (torch.rand(3), np.random.rand(), torch.rand(2, generator=g))
    g = seed_everything(7)
    again = (torch.rand(3), np.random.rand(), torch.rand(2, generator=g))
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert torch.equal(first[2], again[2])
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_count_parameters_and_device():
    layer = torch.nn.Linear(3, 4)
    assert count_parameters(layer) == 16
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == 12 and count_parameters(layer, trainable_only=False) == 16
    assert default_device().type in ("cpu", "cuda")


def test_measure_finds_peak_memory_of_intermediates():
    n = 256
    x = torch.randn(n, n)
    m = measure(lambda a: (a @ a).relu() @ a, x)
    one_matrix = n * n * 4
    # the product and the relu output exist at the same time; the first is freed before the
    # last product is allocated
    assert m.peak_bytes == 2 * one_matrix
    assert m.seconds > 0 and m.result.shape == (n, n)
    assert measure(lambda: None).peak_bytes == 0
    with pytest.raises(ValueError, match="repeat"):
        measure(lambda: None, repeat=0)


def test_figure_uses_the_palette():
    fig, ax = plotting.figure()
    (line,) = ax.plot([0, 1], [0, 1])
    assert matplotlib.colors.to_hex(line.get_color()).lower() == plotting.PALETTE[0].lower()
    fig, axes = plotting.figure(ncols=2)
    assert len(axes) == 2
    with pytest.raises(ValueError, match="ncols"):
        plotting.figure(ncols=0)
