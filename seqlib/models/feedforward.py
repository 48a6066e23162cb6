"""Feed-forward language models: they see a fixed number of previous tokens and nothing else.

- :class:`BigramLM` predicts token x_t from x_{t-1} alone with a (v, v) table of logits; it can
  be trained by gradient descent or filled in directly from counts (its maximum-likelihood
  solution, with add-``smoothing`` counts).
- :class:`FixedWindowLM` is the neural n-gram model of Bengio et al. (2003): embed the last
  ``context`` tokens, concatenate, one tanh hidden layer, logits over the vocabulary.

Letters: b batch, l length, v vocabulary size, k context (window) length, e embedding width.
Chapter 1 of the book builds both and shows why a fixed window is not enough.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def check_token_ids(x: torch.Tensor, vocab_size: int, name: str = "x", ndim: int = 2) -> None:
    """Raise ValueError unless ``x`` is an integer tensor of rank ``ndim`` with ids in [0, v)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(x).__name__}")
    if x.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{name} must hold integer token ids, got dtype {x.dtype}")
    if x.ndim != ndim:
        expected = "(b, l)" if ndim == 2 else "(b,)"
        raise ValueError(f"{name} must have shape {expected}, got shape {tuple(x.shape)}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab_size):
        raise ValueError(
            f"{name} holds ids in [{int(x.min())}, {int(x.max())}], expected ids in "
            f"[0, {vocab_size - 1}] for vocab_size={vocab_size}"
        )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class BigramLM(nn.Module):
    """p(x_t = j | x_{t-1} = i) = softmax(W[i])_j with one learned (v, v) table W.

    The state for :meth:`step` is empty: a bigram model remembers nothing but the current token.
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        _check_positive(vocab_size=vocab_size)
        self.vocab_size = vocab_size
        self.logits = nn.Parameter(torch.zeros(vocab_size, vocab_size))

    @classmethod
    def from_counts(cls, tokens, vocab_size: int, smoothing: float = 1.0) -> BigramLM:
        """The maximum-likelihood bigram model of ``tokens`` (a 1-D sequence of ids) with
        ``smoothing`` added to every count, so unseen pairs keep a non-zero probability:
        p(j | i) = (count(i, j) + smoothing) / (count(i) + v * smoothing)."""
        tokens = torch.as_tensor(tokens)
        check_token_ids(tokens, vocab_size, name="tokens", ndim=1)
        if not smoothing > 0:
            raise ValueError(f"smoothing must be > 0 (log of a zero count), got {smoothing!r}")
        model = cls(vocab_size)
        counts = bigram_counts(tokens, vocab_size).double() + smoothing
        probs = counts / counts.sum(dim=1, keepdim=True)
        with torch.no_grad():
            model.logits.copy_(probs.log())
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_token_ids(x, self.vocab_size)
        return self.logits[x]  # (b, l, v)

    def init_state(self, batch: int) -> torch.Tensor:
        _check_positive(batch=batch)
        return torch.zeros(batch, 0, device=self.logits.device)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_token_ids(x_t, self.vocab_size, name="x_t", ndim=1)
        return self.logits[x_t], state  # (b, v)


def bigram_counts(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(v, v) int64 matrix whose entry (i, j) counts how often token j follows token i."""
    tokens = torch.as_tensor(tokens)
    check_token_ids(tokens, vocab_size, name="tokens", ndim=1)
    pair_index = tokens[:-1].long() * vocab_size + tokens[1:].long()
    counts = torch.bincount(pair_index, minlength=vocab_size * vocab_size)
    return counts.view(vocab_size, vocab_size)


class FixedWindowLM(nn.Module):
    """Bengio et al.'s neural n-gram model: logits_t = U tanh(H [e(x_{t-k+1}); ...; e(x_t)]).

    Positions before the start of the sequence are filled with a padding token of its own
    (index v of the embedding table), so the model can tell "nothing yet" from any real token.
    The state for :meth:`step` is the window of the last k token ids, shape (b, k).
    """

    def __init__(self, vocab_size: int, context: int, d_embed: int = 16, d_hidden: int = 64):
        super().__init__()
        _check_positive(vocab_size=vocab_size, context=context, d_embed=d_embed,
                        d_hidden=d_hidden)
        self.vocab_size, self.context = vocab_size, context
        self.embed = nn.Embedding(vocab_size + 1, d_embed)  # +1: the padding token
        self.hidden = nn.Linear(context * d_embed, d_hidden)
        self.out = nn.Linear(d_hidden, vocab_size)

    @property
    def pad_id(self) -> int:
        return self.vocab_size

    def _logits_from_windows(self, windows: torch.Tensor) -> torch.Tensor:
        e = self.embed(windows)  # (..., k, e)
        return self.out(torch.tanh(self.hidden(e.flatten(-2))))  # (..., v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_token_ids(x, self.vocab_size)
        padded = F.pad(x.long(), (self.context - 1, 0), value=self.pad_id)  # (b, l + k - 1)
        windows = padded.unfold(1, self.context, 1)  # (b, l, k)
        return self._logits_from_windows(windows)

    def init_state(self, batch: int) -> torch.Tensor:
        _check_positive(batch=batch)
        return torch.full((batch, self.context), self.pad_id, dtype=torch.long,
                          device=self.out.weight.device)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_token_ids(x_t, self.vocab_size, name="x_t", ndim=1)
        if state.shape != (x_t.shape[0], self.context):
            raise ValueError(
                f"state must have shape (b, k) = ({x_t.shape[0]}, {self.context}), "
                f"got {tuple(state.shape)}"
            )
        window = torch.cat([state[:, 1:], x_t.long()[:, None]], dim=1)  # a new tensor
        return self._logits_from_windows(window), window
