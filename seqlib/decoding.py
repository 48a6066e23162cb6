"""Turning a language model's next-token distribution into text.

:func:`sample` draws one token at a time through a model's ``init_state`` / ``step`` interface,
so it works for every model in seqlib, feed-forward, recurrent or attention-based alike.
Temperature T rescales the logits before the softmax, p_i ∝ exp(z_i / T): T < 1 sharpens the
distribution, T > 1 flattens it, and T = 0 means always taking the most likely token (greedy).
"""

from __future__ import annotations

import torch


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.double() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def sample(model, prompt_ids, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None) -> list[int]:
    """Continue ``prompt_ids`` (a non-empty sequence of token ids) by ``max_new_tokens`` tokens.

    Returns the new token ids only. ``temperature`` >= 0 (0: greedy); ``top_k`` keeps only the
    k most likely tokens at each step; pass a seeded CPU ``generator`` for repeatable samples.
    """
    prompt = torch.as_tensor(list(prompt_ids), dtype=torch.long)
    if prompt.ndim != 1 or prompt.numel() == 0:
        raise ValueError(f"prompt_ids must be a non-empty sequence of ids, got {prompt_ids!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        state = model.init_state(1)
        for token in prompt.tolist():
            logits, state = model.step(torch.tensor([token], device=device), state)
        new_ids = []
        for _ in range(max_new_tokens):
            token = _next_token(logits, temperature, top_k, generator)
            new_ids.append(int(token[0]))
            logits, state = model.step(token.to(device), state)
        return new_ids
    finally:
        model.train(was_training)
