"""Checks for exercise 3 (recurrent neural networks: one step, a sequence, backpropagation
through time, a character-level language model).

Each ``check_*`` takes the student's function, runs it on seeded inputs built here, and compares
it with a reference written in this module. Letters: b batch, l length, e input width, h state
size, v vocabulary size. States are rows, so W_h h_{t-1} is ``h_prev @ W_h.T``.

- `check_rnn_step`: ``rnn_step(x_t, h_prev, W_x, W_h, b)`` -> h_t (b, h),
  h_t = tanh(h_prev W_h^T + x_t W_x^T + b)
- `check_rnn_forward`: ``rnn_forward(x, h0, W_x, W_h, b)`` -> every state h_1..h_l, (b, l, h)
- `check_bptt_grad`: ``bptt_grad(x, h0, W_x, W_h, b, grad_states)`` -> dL/dW_h (h, h) for
  L = sum(grad_states * states), by hand: autograd is refused
- `check_rnn_lm_logits`: ``rnn_lm_logits(ids, E, W_x, W_h, b, W_y, c)`` -> next-token
  logits (b, l, v) of an RNN language model (embedding E (v, e), output W_y (v, h), c (v,))
"""

from __future__ import annotations

import torch

from .core import Case, Check, Hint, run_check

__all__ = [
    "check_bptt_grad",
    "check_rnn_forward",
    "check_rnn_lm_logits",
    "check_rnn_step",
]

F64 = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    """True when b has a's shape and values (used by hints to recognise a known mistake)."""
    return (isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(b.double(), a.double(), rtol=rtol, atol=1e-6))


# The chapter's worked example: h = 2, e = 1, x = (1, -1, 2), b = 0, h_0 = 0.
def _worked_example() -> dict[str, torch.Tensor]:
    return {
        "x": torch.tensor([[[1.0], [-1.0], [2.0]]], dtype=F64),  # (1, 3, 1)
        "h0": torch.zeros(1, 2, dtype=F64),
        "W_x": torch.tensor([[0.3], [0.4]], dtype=F64),
        "W_h": torch.tensor([[0.5, 0.1], [0.2, 0.6]], dtype=F64),
        "b": torch.zeros(2, dtype=F64),
    }


def _random_rnn(g: torch.Generator, batch: int, length: int, e: int, h: int,
                dtype=F64, scale_h: float = 0.5, zero_h0: bool = False) -> dict:
    """Inputs and weights of a random RNN; W_h is scaled so the states stay moderate."""
    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    args = {
        "x": randn(batch, length, e),
        "h0": torch.zeros(batch, h, dtype=F64) if zero_h0 else 0.5 * randn(batch, h),
        "W_x": randn(h, e) / e**0.5,
        "W_h": scale_h * randn(h, h) / h**0.5,
        "b": 0.3 * randn(h),
    }
    return {k: v.to(dtype) for k, v in args.items()}


def _states(x, h0, W_x, W_h, b) -> torch.Tensor:
    """h_1..h_l (b, l, h), the reference forward pass."""
    h, out = h0, []
    for t in range(x.shape[1]):
        h = torch.tanh(h @ W_h.T + x[:, t] @ W_x.T + b)
        out.append(h)
    return torch.stack(out, dim=1)


# ---------------------------------------------------------------------------------------------
# one step

_RNN_CELL_FUNCTIONS = {
    torch.rnn_tanh_cell: "nn.RNNCell (torch.rnn_tanh_cell)",
    torch.rnn_relu_cell: "nn.RNNCell (torch.rnn_relu_cell)",
}


def _in_float64(function):
    """Run a reference in float64 and return its result in the inputs' dtype, so a student's
    float32 answer is compared with the exact value rounded once."""
    def wrapped(*args):
        result = function(*(a.double() for a in args))
        return result.to(args[0].dtype)

    wrapped.__name__ = function.__name__
    return wrapped


@_in_float64
def _rnn_step_reference(x_t, h_prev, W_x, W_h, b) -> torch.Tensor:
    return torch.tanh(h_prev @ W_h.T + x_t @ W_x.T + b)


def _rnn_step_cases() -> list[Case]:
    g = _generator(301)
    ex = _worked_example()
    h1 = torch.tanh(ex["W_x"][:, 0])[None]  # the state after the example's first step
    step = {"W_x": ex["W_x"], "W_h": ex["W_h"], "b": ex["b"]}

    def case(label, x_t, h_prev, rnn):
        return Case(label, {"x_t": x_t, "h_prev": h_prev, "W_x": rnn["W_x"],
                            "W_h": rnn["W_h"], "b": rnn["b"]})

    r1 = _random_rnn(g, 3, 1, 4, 5, dtype=torch.float32)
    r2 = _random_rnn(g, 2, 1, 3, 3)
    r3 = _random_rnn(g, 4, 1, 2, 1)
    return [
        case("the chapter's worked example, step 2: x_2 = -1 from h_1",
             torch.tensor([[-1.0]], dtype=F64), h1, step),
        case("a batch of 3, input width 4, state size 5, float32 (result in float32)",
             r1["x"][:, 0], r1["h0"], r1),
        case("input width = state size = 3, float64", r2["x"][:, 0], r2["h0"], r2),
        case("large inputs: tanh saturates near +-1",
             10 * r2["x"][:, 0], r2["h0"], r2),
        case("a state of size 1", r3["x"][:, 0], r3["h0"], r3),
    ]


def _step_variant(a: dict, *, tanh=True, transpose_h=False, bias=True) -> torch.Tensor:
    W_h = a["W_h"] if transpose_h else a["W_h"].T
    pre = a["h_prev"] @ W_h + a["x_t"] @ a["W_x"].T + (a["b"] if bias else 0)
    return torch.tanh(pre) if tanh else pre


_RNN_STEP_HINTS = (
    Hint("the tanh is missing: h_t = tanh(pre-activation), which keeps each entry in (-1, 1)",
         lambda e, g, a: _same(_step_variant(a, tanh=False), g)),
    Hint("W_h looks transposed: with states as rows, W_h h_{t-1} is h_prev @ W_h.T",
         lambda e, g, a: _same(_step_variant(a, transpose_h=True), g)),
    Hint("the bias b is missing: add it to the pre-activation",
         lambda e, g, a: _same(_step_variant(a, bias=False), g)),
    Hint("return the result in the inputs' dtype (do not convert to float64 or float32)",
         lambda e, g, a: g.dtype != e.dtype),
)


def check_rnn_step(rnn_step) -> None:
    """Check ``rnn_step(x_t, h_prev, W_x, W_h, b)``: x_t (b, e), h_prev (b, h), W_x (h, e),
    W_h (h, h), b (h,) -> h_t = tanh(h_prev @ W_h.T + x_t @ W_x.T + b), shape (b, h)."""
    run_check(Check(
        title="one RNN step", reference=_rnn_step_reference, cases=_rnn_step_cases(),
        rtol=1e-5, atol=1e-6,
        hint="h_t = tanh(h_prev @ W_h.T + x_t @ W_x.T + b), shape (b, h)",
        hints=_RNN_STEP_HINTS, forbidden=_RNN_CELL_FUNCTIONS,
        example="check_rnn_step(rnn_step)"), rnn_step)


# ---------------------------------------------------------------------------------------------
# a whole sequence

_RNN_FUNCTIONS = {
    **_RNN_CELL_FUNCTIONS,
    torch.rnn_tanh: "nn.RNN (torch.rnn_tanh)",
    torch.rnn_relu: "nn.RNN (torch.rnn_relu)",
}


def _rnn_forward_cases() -> list[Case]:
    g = _generator(302)
    return [
        Case("the chapter's worked example: x = (1, -1, 2), h_0 = 0", _worked_example()),
        Case("a batch of 2, length 7, input width 3, state size 4, a nonzero h_0, float32",
             _random_rnn(g, 2, 7, 3, 4, dtype=torch.float32)),
        Case("a sequence of length 1", _random_rnn(g, 3, 1, 2, 3)),
        Case("a batch of 3, length 40, float64", _random_rnn(g, 3, 40, 2, 6, scale_h=1.2)),
    ]


def _no_carry(a: dict) -> torch.Tensor:
    """Every step started from h_0 instead of the previous state."""
    return torch.tanh((a["h0"] @ a["W_h"].T)[:, None] + a["x"] @ a["W_x"].T + a["b"])


def _shifted(e: torch.Tensor, g: torch.Tensor, a: dict) -> bool:
    """h_0, ..., h_{l-1} instead of h_1, ..., h_l."""
    expected = torch.cat([a["h0"][:, None], e[:, :-1]], dim=1)
    return _same(expected, g)


_RNN_FORWARD_HINTS = (
    Hint("return the states h_1, ..., h_l (one per input), not h_0 as well",
         lambda e, g, a: g.shape == (e.shape[0], e.shape[1] + 1, e.shape[2])),
    Hint("return every state, shape (b, l, h), not only the last one",
         lambda e, g, a: g.shape == (e.shape[0], e.shape[2])),
    Hint("batch first: the result has shape (b, l, h); stack the states along dim=1",
         lambda e, g, a: g.shape == (e.shape[1], e.shape[0], e.shape[2])),
    Hint("off by one: the states are shifted by a step; keep h_t after computing it, so the"
         " first state you return is h_1 (h_0 is the starting point, not an output)",
         lambda e, g, a: _shifted(e, g, a)),
    Hint("each step must start from the state the previous step produced, not from h0",
         lambda e, g, a: _same(_no_carry(a), g)),
)


def check_rnn_forward(rnn_forward) -> None:
    """Check ``rnn_forward(x, h0, W_x, W_h, b)``: x (b, l, e), h0 (b, h) -> h_1..h_l as a
    (b, l, h) tensor, written as a loop over time (nn.RNN is refused)."""
    run_check(Check(
        title="RNN over a sequence", reference=_in_float64(_states), cases=_rnn_forward_cases(),
        rtol=1e-5, atol=1e-6,
        hint="h = h0; for each t: h = tanh(h @ W_h.T + x[:, t] @ W_x.T + b), keep it; "
             "return torch.stack(kept, dim=1)",
        hints=_RNN_FORWARD_HINTS, forbidden=_RNN_FUNCTIONS,
        example="check_rnn_forward(rnn_forward)"), rnn_forward)


# ---------------------------------------------------------------------------------------------
# backpropagation through time

_AUTOGRAD = {
    torch.Tensor.backward: "Tensor.backward (autograd)",
    torch.autograd.backward: "torch.autograd.backward",
    torch.autograd.grad: "torch.autograd.grad",
    torch.Tensor.requires_grad_: "Tensor.requires_grad_ (autograd)",
    torch.Tensor.requires_grad.__set__: "the requires_grad setter (autograd)",
}


def _bptt_variant(a: dict, *, last_only=False, recursion=True, derivative=True,
                  pair_with_h_t=False, back_transposed=False, result_transposed=False
                  ) -> torch.Tensor:
    """dL/dW_h for L = sum(grad_states * states), by the backward recursion; the keywords
    switch on one known mistake each (the defaults give the right answer)."""
    x, h0, W_h, up = a["x"], a["h0"], a["W_h"], a["grad_states"]
    states = _states(x, h0, a["W_x"], W_h, a["b"])  # (b, l, h)
    before = torch.cat([h0[:, None], states[:, :-1]], dim=1)  # h_{t-1}, (b, l, h)
    paired = states if pair_with_h_t else before
    grad = torch.zeros_like(W_h)
    delta = torch.zeros_like(h0)
    for t in reversed(range(x.shape[1])):
        delta = (delta if recursion else 0) + up[:, t]  # dL/dh_t, (b, h)
        g = delta * (1 - states[:, t] ** 2) if derivative else delta  # dL/da_t
        if not last_only or t == x.shape[1] - 1:
            grad = grad + g.T @ paired[:, t]  # (h, h)
        delta = g @ (W_h.T if back_transposed else W_h)  # rows: W_h^T g
    return grad.T if result_transposed else grad


@_in_float64
def _bptt_reference(x, h0, W_x, W_h, b, grad_states) -> torch.Tensor:
    return _bptt_variant({"x": x, "h0": h0, "W_x": W_x, "W_h": W_h, "b": b,
                          "grad_states": grad_states})


def _bptt_cases() -> list[Case]:
    g = _generator(303)
    ex = _worked_example()
    last = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]], dtype=F64)
    every = torch.tensor([[[0.5, -1.0], [1.0, 0.5], [-0.5, 1.0]]], dtype=F64)

    def with_grads(rnn, dtype=F64):
        shape = (rnn["x"].shape[0], rnn["x"].shape[1], rnn["W_h"].shape[0])
        up = torch.randn(*shape, generator=g, dtype=F64).to(dtype)
        return {**rnn, "grad_states": up}

    return [
        Case("the worked example, a gradient on every state", {**ex, "grad_states": every}),
        Case("the worked example, L = h_3[0] + h_3[1] (a loss on the last state only)",
             {**ex, "grad_states": last}),
        Case("a single step from a nonzero h_0",
             with_grads(_random_rnn(g, 2, 1, 3, 4))),
        Case("a batch of 2, length 6, input width 3, state size 4, float64",
             with_grads(_random_rnn(g, 2, 6, 3, 4, scale_h=1.0))),
        Case("a batch of 3, length 12, state size 5, float32 (result in float32)",
             with_grads(_random_rnn(g, 3, 12, 2, 5, dtype=torch.float32, scale_h=1.0),
                        dtype=torch.float32)),
    ]


def _bptt_hint(**mistake):
    return lambda e, g, a: _same(_bptt_variant(a, **mistake), g)


_BPTT_HINTS = (
    Hint("only the last step counts here: W_h is used at EVERY step, so its gradient is the "
         "sum over t of g_t h_{t-1}^T", _bptt_hint(last_only=True)),
    Hint("the gradient reaching h_t also comes from the later steps: delta_t = "
         "grad_states[:, t] + g_{t+1} @ W_h, running t backwards",
         _bptt_hint(recursion=False)),
    Hint("the tanh's derivative is missing: g_t = delta_t * (1 - h_t ** 2)",
         _bptt_hint(derivative=False)),
    Hint("W_h multiplies h_{t-1}, so its gradient pairs g_t with h_{t-1}, not with h_t",
         _bptt_hint(pair_with_h_t=True)),
    Hint("going back through W_h h_{t-1} multiplies by W_h^T: with rows that is g @ W_h, "
         "not g @ W_h.T", _bptt_hint(back_transposed=True)),
    Hint("your result is transposed: dL/dW_h[i, j] pairs g_t[i] with h_{t-1}[j], that is "
         "g.T @ h_prev", _bptt_hint(result_transposed=True)),
    Hint("return the gradient in the inputs' dtype", lambda e, g, a: g.dtype != e.dtype),
)


def check_bptt_grad(bptt_grad) -> None:
    """Check ``bptt_grad(x, h0, W_x, W_h, b, grad_states)``: the gradient (h, h) with respect
    to W_h of L = sum(grad_states * rnn_forward(x, h0, W_x, W_h, b)), computed by hand."""
    run_check(Check(
        title="backpropagation through time", reference=_bptt_reference,
        cases=_bptt_cases(), rtol=1e-5, atol=1e-6,
        hint="forward pass keeping every h_t; then for t = l..1: delta = grad_states[:, t] + "
             "(what came back from step t+1); g = delta * (1 - h_t**2); dW_h += g.T @ h_{t-1};"
             " pass g @ W_h back to step t-1",
        hints=_BPTT_HINTS, forbidden=_AUTOGRAD,
        example="check_bptt_grad(bptt_grad)"), bptt_grad)


# ---------------------------------------------------------------------------------------------
# a character-level language model


def _lm_variant(a: dict, *, stale_state=False, output_bias=True) -> torch.Tensor:
    """Logits (b, l, v) of the RNN language model, computed in float64 and returned in the
    weights' dtype; the keywords switch on one known mistake each."""
    E, W_x, W_h, b, W_y, c = (a[k].double() for k in ("E", "W_x", "W_h", "b", "W_y", "c"))
    ids = a["ids"]
    h = torch.zeros(ids.shape[0], W_h.shape[0], dtype=F64)  # h_0 = 0
    logits = []
    for t in range(ids.shape[1]):
        h_new = torch.tanh(h @ W_h.T + E[ids[:, t]] @ W_x.T + b)  # has read token t
        read = h if stale_state else h_new
        logits.append(read @ W_y.T + (c if output_bias else 0))  # (b, v), guess for t + 1
        h = h_new
    return torch.stack(logits, dim=1).to(a["E"].dtype)  # (b, l, v)


def _lm_reference(ids, E, W_x, W_h, b, W_y, c) -> torch.Tensor:
    return _lm_variant({"ids": ids, "E": E, "W_x": W_x, "W_h": W_h, "b": b, "W_y": W_y,
                        "c": c})


def _lm_cases() -> list[Case]:
    g = _generator(304)

    def model(batch, length, v, e, h, dtype=F64, ids=None):
        def randn(*shape):
            return torch.randn(*shape, generator=g, dtype=F64).to(dtype)

        if ids is None:
            ids = torch.randint(0, v, (batch, length), generator=g)
        return {"ids": ids, "E": randn(v, e), "W_x": randn(h, e) / e**0.5,
                "W_h": 0.8 * randn(h, h) / h**0.5, "b": 0.3 * randn(h),
                "W_y": randn(v, h), "c": randn(v)}

    return [
        Case("one sequence of 3 tokens, v = 4, e = 2, h = 3",
             model(1, 3, 4, 2, 3, ids=torch.tensor([[0, 3, 1]]))),
        Case("a batch of 2, length 6, v = 7, e = 3, h = 5, float32 (result in float32)",
             model(2, 6, 7, 3, 5, dtype=torch.float32)),
        Case("a single token", model(3, 1, 5, 2, 4)),
        Case("the same token repeated: the logits still change as the state moves",
             model(1, 8, 6, 4, 3, ids=torch.full((1, 8), 2))),
    ]


def _rows_are(got: torch.Tensor, total: float, transform) -> bool:
    sums = transform(got.double()).sum(-1)
    return bool(torch.allclose(sums, torch.full_like(sums, total), atol=1e-5))


_LM_HINTS = (
    Hint("return the logits at every position, shape (b, l, v), not only the last one",
         lambda e, g, a: g.shape == (e.shape[0], e.shape[2])),
    Hint("return logits, not probabilities: no softmax (the loss applies it)",
         lambda e, g, a: bool((g >= 0).all()) and _rows_are(g, 1.0, lambda z: z)),
    Hint("return logits, not log-probabilities: no log_softmax (the loss applies it)",
         lambda e, g, a: bool((g <= 0).all()) and _rows_are(g, 1.0, torch.exp)),
    Hint("the logits at position t must read h_t, the state AFTER token t: you used the state"
         " before it, so the first guess ignores the first token",
         lambda e, g, a: _same(_lm_variant(a, stale_state=True), g)),
    Hint("the output bias c is missing: logits = h_t @ W_y.T + c",
         lambda e, g, a: _same(_lm_variant(a, output_bias=False), g)),
    Hint("return the logits in the weights' dtype", lambda e, g, a: g.dtype != e.dtype),
)


def check_rnn_lm_logits(rnn_lm_logits) -> None:
    """Check ``rnn_lm_logits(ids, E, W_x, W_h, b, W_y, c)``: token ids (b, l) -> next-token
    logits (b, l, v) of an RNN language model started from h_0 = 0: x_t = E[ids[:, t]],
    h_t = tanh(h_{t-1} @ W_h.T + x_t @ W_x.T + b), logits_t = h_t @ W_y.T + c."""
    run_check(Check(
        title="RNN language model", reference=_lm_reference, cases=_lm_cases(),
        rtol=1e-5, atol=1e-5,
        hint="x = E[ids] (b, l, e); states = your rnn_forward from h_0 = 0; "
             "logits = states @ W_y.T + c, shape (b, l, v)",
        hints=_LM_HINTS, forbidden=_RNN_FUNCTIONS,
        example="check_rnn_lm_logits(rnn_lm_logits)"), rnn_lm_logits)
