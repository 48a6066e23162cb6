"""The one fit loop of the book, and the batches it eats.

``fit`` trains any model with AdamW on batches drawn by a function you hand it, evaluates on
fixed validation batches now and then, and returns the curves as a :class:`History`. It seeds
everything it draws, so the same call gives the same curves. Its progress bar is a plain-text
``tqdm.std`` bar on standard output (not the notebook widget), so it reads the same in a
terminal, in Jupyter and on the built website.

For language models, ``lm_batches`` draws random windows of a long token sequence (inputs are
tokens t..t+l-1, targets t+1..t+l) and ``lm_eval_batches`` cuts it into fixed consecutive
windows for validation. Cross-entropy is in nats; perplexity is its exponential.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.std import tqdm

Batch = tuple[torch.Tensor, torch.Tensor]


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of logits (..., v) against target ids (...); targets equal to
    -100 are ignored (padding, or positions a task does not score)."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits must have shape targets.shape + (v,): got logits {tuple(logits.shape)} "
            f"and targets {tuple(targets.shape)}"
        )
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                           targets.reshape(-1).long(), ignore_index=-100)


@dataclass
class History:
    """Curves of one training run: the training loss and gradient norm at every step, the
    validation loss every ``eval_every`` steps, and the wall time the run took."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    valid_steps: list[int] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def valid_perplexity(self) -> list[float]:
        return [math.exp(loss) for loss in self.valid_loss]

    @property
    def final_valid_loss(self) -> float:
        if not self.valid_loss:
            raise ValueError("this run had no validation batches")
        return self.valid_loss[-1]


def _to_device(batch: Batch, device: torch.device) -> Batch:
    inputs, targets = batch
    return inputs.to(device), targets.to(device)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Sequence[Batch],
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = next_token_loss,
             device: torch.device | None = None) -> float:
    """Mean loss over ``batches``, each batch weighted by its number of elements (so a short
    last batch counts less)."""
    if len(batches) == 0:
        raise ValueError("batches must hold at least one (inputs, targets) pair")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = weight = 0.0
    for batch in batches:
        inputs, targets = _to_device(batch, device)
        total += float(loss_fn(model(inputs), targets)) * targets.numel()
        weight += targets.numel()
    model.train(was_training)
    return total / weight


def fit(model: torch.nn.Module, train_batches: Callable[[torch.Generator], Batch], *,
        steps: int, lr: float = 3e-3, valid_batches: Sequence[Batch] | None = None,
        eval_every: int | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0, clip_grad_norm: float | None = None, weight_decay: float = 0.0,
        progress: bool = True, device: torch.device | str | None = None) -> History:
    """Train ``model`` for ``steps`` AdamW steps and return its :class:`History`.

    ``train_batches(generator)`` returns one (inputs, targets) batch drawn with the seeded
    ``generator``; ``valid_batches`` is a list of fixed batches, evaluated every ``eval_every``
    steps (default: 10 times per run) and after the last step. ``loss_fn(outputs, targets)``
    defaults to :func:`next_token_loss`. ``clip_grad_norm`` rescales the gradient whenever its
    norm exceeds that value (the norm before clipping is what ``History.grad_norm`` records).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not callable(train_batches):
        raise TypeError("train_batches must be a function generator -> (inputs, targets), "
                        f"got {type(train_batches).__name__}")
    if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
        raise ValueError(f"eval_every must be None or an int >= 1, got {eval_every!r}")
    loss_fn = loss_fn or next_token_loss
    eval_every = eval_every or max(1, steps // 10)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = History()
    start = time.perf_counter()
    bar = tqdm(total=steps, file=sys.stdout, ascii=True, ncols=80, mininterval=1.0,
               disable=not progress, desc="training")
    for step in range(1, steps + 1):
        inputs, targets = _to_device(train_batches(generator), device)
        loss = loss_fn(model(inputs), targets)
        if not torch.isfinite(loss.detach()):
            bar.close()
            raise FloatingPointError(f"the training loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = clip_grad_norm if clip_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        loss_value = loss.item()
        history.steps.append(step)
        history.train_loss.append(loss_value)
        history.grad_norm.append(float(norm))
        if valid_batches and (step % eval_every == 0 or step == steps):
            history.valid_steps.append(step)
            history.valid_loss.append(evaluate(model, valid_batches, loss_fn, device))
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        bar.update(1)
    bar.close()
    history.seconds = time.perf_counter() - start
    return history


def _as_token_tensor(tokens, length: int) -> torch.Tensor:
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D sequence of ids, got shape {tuple(tokens.shape)}")
    if tokens.numel() < length + 1:
        raise ValueError(f"tokens holds {tokens.numel()} ids; windows of length {length} need "
                         f"at least {length + 1}")
    return tokens


def lm_batches(tokens, batch_size: int, length: int) -> Callable[[torch.Generator], Batch]:
    """A batch function for :func:`fit`: ``batch_size`` random windows of ``length`` tokens
    each, inputs (b, l) and next-token targets (b, l)."""
    for name, value in (("batch_size", batch_size), ("length", length)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    tokens = _as_token_tensor(tokens, length)
    offsets = torch.arange(length + 1)

    def draw(generator: torch.Generator) -> Batch:
        starts = torch.randint(0, tokens.numel() - length, (batch_size,), generator=generator)
        windows = tokens[starts[:, None] + offsets]  # (b, l + 1)
        return windows[:, :-1], windows[:, 1:]

    return draw


def lm_eval_batches(tokens, batch_size: int, length: int,
                    max_batches: int | None = None) -> list[Batch]:
    """Consecutive, non-overlapping windows of ``length`` tokens covering ``tokens`` from the
    start (a tail shorter than ``length`` is dropped), grouped into batches of up to
    ``batch_size`` windows; at most ``max_batches`` batches."""
    for name, value in (("batch_size", batch_size), ("length", length)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    tokens = _as_token_tensor(tokens, length)
    n_windows = (tokens.numel() - 1) // length
    inputs = tokens[: n_windows * length].view(n_windows, length)
    targets = tokens[1 : n_windows * length + 1].view(n_windows, length)
    batches = [(inputs[i : i + batch_size], targets[i : i + batch_size])
               for i in range(0, n_windows, batch_size)]
    return batches if max_batches is None else batches[:max_batches]
