"""Measuring how gradients travel back through a recurrent model's state.

A recurrent layer reads x_1, ..., x_l and updates its state s_0 -> s_1 -> ... -> s_l. Put a
loss on the last state, L = <u, s_l> for a fixed direction u, and ask how strongly L depends
on each earlier state: the gradient dL/ds_t = (ds_l/ds_t)^T u is a product of l - t Jacobians,
and its norm against the distance l - t shows whether the signal vanishes, survives or
explodes on its way back. Chapter 4 of the book (vanishing and exploding gradients) measures
it for the plain RNN; chapter 5 does the same for the cell state of the LSTM.

Letters: b batch, l length, e input width, h state width. A layer here is anything with
``init_state(batch)`` and ``step(x_t, state) -> (y_t, state)``, such as
:class:`seqlib.models.rnn.RNN`, :class:`~seqlib.models.rnn.GRU` (state h) or
:class:`~seqlib.models.rnn.LSTM` (state (h, c): pick a part with ``part``).

- :func:`state_gradients`: dL/ds_t for t = 0..l, shape (b, l + 1, h);
- :func:`gradient_norms_by_distance`: their norms indexed by the distance l - t, shape
  (b, l + 1).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["gradient_norms_by_distance", "state_gradients"]


def _pick(state: Any, part: int | None) -> torch.Tensor:
    if part is None:
        if not isinstance(state, torch.Tensor):
            raise ValueError(f"the layer's state is a {type(state).__name__}, not a tensor: "
                             "say which part of it to follow with part=..., e.g. part=1 for "
                             "an LSTM's cell state c")
        return state
    if not isinstance(state, tuple | list) or not -len(state) <= part < len(state):
        raise ValueError(f"part={part} does not name an element of the layer's state "
                         f"({type(state).__name__})")
    return state[part]


def _as_leaves(state: Any) -> Any:
    """The state as fresh tensors that require grad, so every later state is in the graph
    (even when the layer's parameters do not require grad)."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone().requires_grad_(True)
    return type(state)(_as_leaves(s) for s in state)


def state_gradients(layer: torch.nn.Module, x: torch.Tensor, *, part: int | None = None,
                    direction: torch.Tensor | None = None, state: Any = None,
                    seed: int = 0) -> torch.Tensor:
    """Gradients of L = <u, s_l> with respect to every state s_0, ..., s_l of ``layer`` run
    over ``x`` (b, l, e) with ``layer.step``; returns a tensor (b, l + 1, h) whose entry
    [:, t] is dL/ds_t (so [:, l] is u itself).

    ``part`` picks one element of a tuple state (``part=1``: an LSTM's cell state c).
    ``direction`` is u, (b, h) or (h,); by default a random unit vector per sequence, drawn
    with ``seed``. ``state`` is s_0 (default: ``layer.init_state(b)``). Each sequence of the
    batch is independent, so the batch holds independent samples of the same measurement.
    The layer's parameters get no ``.grad``.

    Example: ``state_gradients(RNN(2, 16), torch.randn(4, 30, 2)).norm(dim=-1)``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (b, l, e), got {shape}")
    batch, length = x.shape[0], x.shape[1]
    state = _as_leaves(layer.init_state(batch) if state is None else state)
    states = [_pick(state, part)]  # s_0 .. s_l, each (b, h)
    for t in range(length):
        _, state = layer.step(x[:, t], state)
        states.append(_pick(state, part))
    last = states[-1]
    if direction is None:
        generator = torch.Generator().manual_seed(seed)
        direction = torch.randn(last.shape, generator=generator, dtype=torch.float64)
        direction = direction / direction.norm(dim=-1, keepdim=True)
    direction = direction.to(dtype=last.dtype, device=last.device).expand_as(last)
    grads = torch.autograd.grad((last * direction).sum(), states)
    return torch.stack(grads, dim=1)  # (b, l + 1, h)


def gradient_norms_by_distance(layer: torch.nn.Module, x: torch.Tensor, **options
                               ) -> torch.Tensor:
    """Norms ||dL/ds_{l-k}|| for the distances k = 0..l, shape (b, l + 1): column k says how
    much of the gradient at the last state is left k steps back. ``options`` are those of
    :func:`state_gradients`; with the default unit direction, column 0 is all ones."""
    return state_gradients(layer, x, **options).norm(dim=-1).flip(1)  # (b, l + 1)
