"""Convolutional sequence models: each output looks at a fixed window of nearby inputs.

- :func:`conv1d` is a 1D convolution (in the deep-learning sense: a cross-correlation, the
  kernel is not flipped) over a sequence in the book's layout (b, l, d), written from scratch
  with shifted copies of the sequence and one matrix product. ``causal=True`` pads on the left
  only, so output t sees inputs t - (k-1)·dilation, ..., t and nothing after t;
  ``causal=False`` pads both sides ("same" padding, as ``nn.Conv1d(padding="same")``). It
  equals ``F.conv1d``, which uses the (b, d, l) layout, with the same weights.
- :class:`CausalConv1d` holds a weight and a bias, and adds :meth:`CausalConv1d.step`, which
  produces one output from a buffer of the last (k-1)·dilation inputs.
- :func:`receptive_field`, :func:`stack_dilations` and :func:`layers_needed`: how far back a
  stack of causal convolutions sees, 1 + sum_i (k_i - 1)·dilation_i.
- :class:`CNNLanguageModel`: embeddings, a stack of residual causal convolutions with ReLU,
  logits over the vocabulary; dilations 1, 2, 4, ... when ``dilated=True`` (WaveNet's choice).

Letters: b batch, l length, v vocabulary size, e embedding width, d channels (d_in, d_out),
k kernel size (taps), r dilation, w buffer length (receptive field - 1).
Chapter 2 of the book builds these step by step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seqlib.models.feedforward import _check_positive, check_token_ids


def _check_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_conv_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     dilation: int) -> None:
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if weight.ndim != 3:
        raise ValueError("weight must have shape (d_out, d_in, k), got shape "
                         f"{tuple(weight.shape)}")
    d_out, d_in, _ = weight.shape
    if x.ndim != 3 or x.shape[-1] != d_in:
        raise ValueError(f"x must have shape (b, l, d_in) = (b, l, {d_in}), got shape "
                         f"{tuple(x.shape)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (d_out,)):
        shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"bias must be None or have shape (d_out,) = ({d_out},), got {shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"{name} must have x's dtype and device ({x.dtype}, {x.device}), "
                             f"got ({t.dtype}, {t.device})")
    _check_int("dilation", dilation, 1)


def conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           dilation: int = 1, causal: bool = True) -> torch.Tensor:
    """y[:, t, o] = bias[o] + sum_{i, j} weight[o, i, j] · x_pad[:, t + j·dilation, i].

    x (b, l, d_in), weight (d_out, d_in, k), bias (d_out,) or None; returns y (b, l, d_out),
    the same length as x. x_pad is x with (k-1)·dilation zeros in front when ``causal``, so
    tap j = k-1 reads x_t and tap j = 0 reads x_{t-(k-1)·dilation}; without ``causal`` the
    zeros are split, the smaller half in front (PyTorch's ``padding="same"``).
    Mirrors ``F.conv1d(x.transpose(1, 2), weight, bias, dilation=dilation, padding=...)``.
    """
    _check_conv_args(x, weight, bias, dilation)
    k = weight.shape[-1]
    span = (k - 1) * dilation  # zeros to add, in all
    left = span if causal else span // 2
    x_pad = F.pad(x, (0, 0, left, span - left))  # (b, l + span, d_in)
    length = x.shape[1]
    # tap j of output t reads x_pad[:, t + j·dilation]: k shifted copies of the sequence
    # (cheaper to differentiate than x_pad.unfold, whose backward is slow on the CPU)
    shifted = [x_pad[:, j * dilation : j * dilation + length] for j in range(k)]
    taps = torch.stack(shifted, dim=-1)  # (b, l, d_in, k)
    y = taps.flatten(-2) @ weight.flatten(1).T  # (b, l, d_out): one matrix product
    return y if bias is None else y + bias


def receptive_field(kernel_size: int | Sequence[int], n_layers: int,
                    dilations: Sequence[int] | None = None) -> int:
    """How many consecutive inputs one output of a stack of ``n_layers`` convolutions sees:
    1 + sum_i (k_i - 1)·dilation_i.

    ``kernel_size``: one int for every layer, or one per layer; ``dilations``: one per layer
    (default: all 1). Example: ``receptive_field(3, 4, [1, 2, 4, 8]) == 31``.
    """
    _check_int("n_layers", n_layers, 0)
    if isinstance(kernel_size, int):
        kernel_sizes = [kernel_size] * n_layers
    else:
        kernel_sizes = list(kernel_size)
    dilations = [1] * n_layers if dilations is None else list(dilations)
    for name, values in (("kernel_size", kernel_sizes), ("dilations", dilations)):
        if len(values) != n_layers:
            raise ValueError(f"{name} must hold n_layers = {n_layers} values, got "
                             f"{len(values)}")
        for value in values:
            _check_int(name, value, 1)
    return 1 + sum((k - 1) * r for k, r in zip(kernel_sizes, dilations))


def stack_dilations(n_layers: int, dilated: bool) -> list[int]:
    """Dilation of each layer: 1, 2, 4, ..., 2^(n_layers-1) if ``dilated``, else all 1."""
    _check_int("n_layers", n_layers, 0)
    return [2**i if dilated else 1 for i in range(n_layers)]


def layers_needed(length: int, kernel_size: int, dilated: bool) -> int:
    """The fewest layers of kernel size k whose receptive field covers ``length`` inputs, so the
    last output sees the whole sequence: 1 + n(k-1) >= length for a plain stack (n grows like
    length), 1 + (k-1)(2^n - 1) >= length with dilations 1, 2, 4, ... (n grows like log2)."""
    _check_int("length", length, 1)
    _check_int("kernel_size", kernel_size, 2)
    if not dilated:
        return math.ceil((length - 1) / (kernel_size - 1))  # exact integer arithmetic
    n = 0
    while receptive_field(kernel_size, n, stack_dilations(n, True)) < length:
        n += 1
    return n


class CausalConv1d(nn.Module):
    """A causal convolution layer: weight (d_out, d_in, k), bias (d_out,), a fixed dilation.

    ``forward(x (b, l, d_in)) -> (b, l, d_out)`` runs :func:`conv1d` over the whole sequence at
    once; ``step(x_t (b, d_in), buffer (b, w, d_in))`` with w = (k-1)·dilation returns
    (y_t (b, d_out), new buffer) and never changes the buffer it was given. Weights start as
    ``nn.Conv1d``'s do: uniform in ±1/sqrt(d_in·k).
    """

    def __init__(self, d_in: int, d_out: int, kernel_size: int, dilation: int = 1,
                 bias: bool = True):
        super().__init__()
        _check_positive(d_in=d_in, d_out=d_out, kernel_size=kernel_size, dilation=dilation)
        self.d_in, self.d_out = d_in, d_out
        self.kernel_size, self.dilation = kernel_size, dilation
        bound = 1 / math.sqrt(d_in * kernel_size)
        self.weight = nn.Parameter(torch.empty(d_out, d_in, kernel_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(d_out).uniform_(-bound, bound)) if bias else None

    @property
    def buffer_length(self) -> int:
        """w = (k-1)·dilation: how many past inputs one output needs besides x_t."""
        return (self.kernel_size - 1) * self.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv1d(x, self.weight, self.bias, dilation=self.dilation, causal=True)

    def init_buffer(self, batch: int) -> torch.Tensor:
        """Zeros (b, w, d_in): the zero padding in front of every sequence."""
        _check_positive(batch=batch)
        return self.weight.new_zeros(batch, self.buffer_length, self.d_in)

    def step(self, x_t: torch.Tensor, buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x_t.ndim != 2 or x_t.shape[1] != self.d_in:
            raise ValueError(f"x_t must have shape (b, d_in) = (b, {self.d_in}), got shape "
                             f"{tuple(x_t.shape)}")
        expected = (x_t.shape[0], self.buffer_length, self.d_in)
        if buffer.shape != expected:
            raise ValueError(f"buffer must have shape (b, w, d_in) = {expected}, got shape "
                             f"{tuple(buffer.shape)}")
        window = torch.cat([buffer, x_t[:, None]], dim=1)  # (b, w + 1, d_in)
        taps = window[:, :: self.dilation]  # (b, k, d_in)
        y_t = torch.einsum("bji,oij->bo", taps, self.weight)  # (b, d_out)
        if self.bias is not None:
            y_t = y_t + self.bias
        return y_t, window[:, 1:]  # the oldest input leaves the buffer


class CNNLanguageModel(nn.Module):
    """A causal convolutional language model.

    h_0 = P e(x), an embedding e (v -> e) projected to d_hidden channels by P;
    h_i = h_{i-1} + relu(conv_i(h_{i-1})) for i = 1..n_layers, each conv_i causal with kernel
    size k and dilation r_i (1 for all, or 1, 2, 4, ... when ``dilated``);
    logits = U h_n (d_hidden -> v). The logits at position t depend on tokens
    t - receptive_field + 1, ..., t only.

    ``forward(x (b, l)) -> logits (b, l, v)``. For generation, ``init_state(batch)`` gives
    zeros of shape (b, n_layers, w, d_hidden), where w is the largest (k-1)·r_i: slice i holds
    the last inputs of layer i, of which conv_i reads the newest (k-1)·r_i (its receptive field
    minus one). ``step(x_t (b,), state) -> (logits (b, v), new state)``: each layer's input at
    this step enters at the end, the oldest row leaves (a first-in first-out buffer); the
    state it was given is never changed.
    """

    def __init__(self, vocab_size: int, d_embed: int = 32, d_hidden: int = 64,
                 kernel_size: int = 3, n_layers: int = 4, dilated: bool = False):
        super().__init__()
        _check_positive(vocab_size=vocab_size, d_embed=d_embed, d_hidden=d_hidden,
                        kernel_size=kernel_size, n_layers=n_layers)
        self.vocab_size, self.d_hidden = vocab_size, d_hidden
        self.kernel_size, self.n_layers, self.dilated = kernel_size, n_layers, bool(dilated)
        self.dilations = stack_dilations(n_layers, self.dilated)
        self.embed = nn.Embedding(vocab_size, d_embed)
        self.proj = nn.Linear(d_embed, d_hidden)
        self.convs = nn.ModuleList(
            CausalConv1d(d_hidden, d_hidden, kernel_size, r) for r in self.dilations
        )
        self.out = nn.Linear(d_hidden, vocab_size)

    @property
    def receptive_field(self) -> int:
        """How many tokens (the current one included) the logits at one position can see."""
        return receptive_field(self.kernel_size, self.n_layers, self.dilations)

    @property
    def buffer_length(self) -> int:
        """w: rows of state kept per layer, the largest layer's (k-1)·dilation."""
        return max(conv.buffer_length for conv in self.convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_token_ids(x, self.vocab_size)
        h = self.proj(self.embed(x.long()))  # (b, l, d_hidden)
        for conv in self.convs:
            h = h + torch.relu(conv(h))  # (b, l, d_hidden)
        return self.out(h)  # (b, l, v)

    def init_state(self, batch: int) -> torch.Tensor:
        _check_positive(batch=batch)
        return self.out.weight.new_zeros(batch, self.n_layers, self.buffer_length,
                                         self.d_hidden)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_token_ids(x_t, self.vocab_size, name="x_t", ndim=1)
        expected = (x_t.shape[0], self.n_layers, self.buffer_length, self.d_hidden)
        if not isinstance(state, torch.Tensor) or state.shape != expected:
            shape = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state)
            raise ValueError(f"state must have shape (b, n_layers, w, d_hidden) = {expected}, "
                             f"got {shape}")
        h = self.proj(self.embed(x_t.long()))  # (b, d_hidden)
        layer_inputs = []
        for i, conv in enumerate(self.convs):
            layer_inputs.append(h)
            buffer = state[:, i, self.buffer_length - conv.buffer_length :]  # (b, w_i, d)
            y, _ = conv.step(h, buffer)  # (b, d_hidden)
            h = h + torch.relu(y)
        if self.buffer_length == 0:  # kernel size 1: nothing to remember
            return self.out(h), state
        newest = torch.stack(layer_inputs, dim=1)[:, :, None]  # (b, n_layers, 1, d_hidden)
        new_state = torch.cat([state[:, :, 1:], newest], dim=2)  # (b, n_layers, w, d_hidden)
        return self.out(h), new_state
