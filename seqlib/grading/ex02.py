"""Checks for exercise 2 (convolutions over sequences: receptive fields, causal convolutions).

Each ``check_*`` takes the student's function, runs it on seeded inputs built here, and
compares it with a reference written in this module. Letters: b batch, l length, d_in and
d_out channels, k kernel size (taps), r dilation, n layers, R receptive field.

- `check_receptive_field`: ``receptive_field(kernel_sizes, dilations)`` -> int,
  R = 1 + sum_i (k_i - 1)·r_i
- `check_causal_conv1d`: ``causal_conv1d(x, weight, bias, dilation)``, x (b, l, d_in), weight
  (d_out, d_in, k), bias (d_out,) -> (b, l, d_out) with y_t = bias + sum_j weight[:, :, j] @
  x_{t-(k-1-j)·r}, written without library convolutions
- `check_layers_needed`: ``layers_needed(length, kernel_size, dilated)`` -> the fewest layers
  whose receptive field covers ``length`` tokens (dilations 1, 2, 4, ... when ``dilated``)
- `check_conv_step`: ``conv_step(x_t, buffer, weight, bias, dilation)`` -> (y_t, new_buffer),
  one position of the causal convolution from a buffer of the last (k-1)·r inputs, oldest
  first; run over a sequence from a zero buffer it must give ``causal_conv1d`` and keep the
  buffer up to date, and it must not change the buffer it was given
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .core import Case, Check, Hint, WrongAnswer, run_check

__all__ = [
    "check_causal_conv1d",
    "check_conv_step",
    "check_layers_needed",
    "check_receptive_field",
]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(a: torch.Tensor, b: object) -> bool:
    """True when b is a tensor with a's shape and values (hints use it to spot a mistake)."""
    return (isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(b.double(), a.double(), rtol=1e-6, atol=1e-9))


# ---------------------------------------------------------------------------------------------
# receptive field


def _receptive_field_reference(kernel_sizes: list[int], dilations: list[int]) -> int:
    return 1 + sum((k - 1) * r for k, r in zip(kernel_sizes, dilations))


def _receptive_field_cases() -> list[Case]:
    g = _generator(201)
    kernel_sizes = torch.randint(1, 6, (7,), generator=g).tolist()
    dilations = torch.randint(1, 9, (7,), generator=g).tolist()
    return [
        Case("one layer, k = 3", {"kernel_sizes": [3], "dilations": [1]}),
        Case("three plain layers, k = 3", {"kernel_sizes": [3, 3, 3], "dilations": [1, 1, 1]}),
        Case("four layers, k = 2, dilations 1, 2, 4, 8",
             {"kernel_sizes": [2, 2, 2, 2], "dilations": [1, 2, 4, 8]}),
        Case("k = 5 then k = 3 with dilation 4",
             {"kernel_sizes": [5, 3], "dilations": [1, 4]}),
        Case("no layers at all", {"kernel_sizes": [], "dilations": []}),
        Case("kernel size 1 widens nothing, whatever its dilation",
             {"kernel_sizes": [1, 1], "dilations": [1, 5]}),
        Case("seven random layers", {"kernel_sizes": kernel_sizes, "dilations": dilations}),
    ]


def _as_int(x) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


_RECEPTIVE_FIELD_HINTS = (
    Hint("one short: with no layer an output still sees its own position, so start from 1 and"
         " add (k_i - 1)·r_i for each layer",
         lambda e, g, a: _as_int(g) == e - 1),
    Hint("a layer of kernel size k widens the window by k - 1 positions (times its dilation),"
         " not by k: its last tap reads the current position, already counted",
         lambda e, g, a: _as_int(g) in (sum(k * r for k, r in zip(a["kernel_sizes"],
                                                                   a["dilations"])),
                                        1 + sum(k * r for k, r in zip(a["kernel_sizes"],
                                                                      a["dilations"])))),
    Hint("the dilations are missing: each layer widens the window by (k_i - 1) times its"
         " dilation r_i",
         lambda e, g, a: _as_int(g) == 1 + sum(k - 1 for k in a["kernel_sizes"])),
    Hint("the widenings of the layers add up; they do not multiply",
         lambda e, g, a: _as_int(g) == math.prod((k - 1) * r + 1 for k, r in
                                                 zip(a["kernel_sizes"], a["dilations"]))),
)


def check_receptive_field(receptive_field) -> None:
    """Check ``receptive_field(kernel_sizes, dilations)``: 1 + sum_i (k_i - 1)·r_i."""
    run_check(Check(
        title="receptive field", reference=_receptive_field_reference,
        cases=_receptive_field_cases(),
        hint="R = 1 + sum over layers of (kernel_size - 1) * dilation",
        hints=_RECEPTIVE_FIELD_HINTS, example="check_receptive_field(receptive_field)"),
        receptive_field)


# ---------------------------------------------------------------------------------------------
# causal convolution from scratch

_LIBRARY_CONVOLUTIONS = {
    F.conv1d: "torch.nn.functional.conv1d (torch.conv1d)",
    F.conv2d: "torch.nn.functional.conv2d (torch.conv2d)",
    F.conv3d: "torch.nn.functional.conv3d (torch.conv3d)",
    F.conv_transpose1d: "torch.nn.functional.conv_transpose1d",
    torch.convolution: "torch.convolution",
    torch._convolution: "torch._convolution",
}


def _conv_offset(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 dilation: int, left: int) -> torch.Tensor:
    """y_t = bias + sum_j weight[:, :, j] @ x_{t + j·r - left}, zeros outside the sequence.
    left = (k-1)·r is the causal convolution; other values are the mistakes hints look for."""
    span = (weight.shape[-1] - 1) * dilation
    x_pad = F.pad(x.transpose(1, 2), (left, span - left))  # (b, d_in, l + span)
    return F.conv1d(x_pad, weight, bias, dilation=dilation).transpose(1, 2)  # (b, l, d_out)


def _causal_conv1d_reference(x, weight, bias, dilation) -> torch.Tensor:
    return _conv_offset(x, weight, bias, dilation, (weight.shape[-1] - 1) * dilation)


def _conv_args(g: torch.Generator, b: int, length: int, d_in: int, d_out: int, k: int,
               dilation: int, dtype=torch.float64) -> dict:
    return {
        "x": torch.randn(b, length, d_in, generator=g, dtype=torch.float64).to(dtype),
        "weight": torch.randn(d_out, d_in, k, generator=g, dtype=torch.float64).to(dtype),
        "bias": torch.randn(d_out, generator=g, dtype=torch.float64).to(dtype),
        "dilation": dilation,
    }


def _impulse_args() -> dict:
    x = torch.zeros(1, 8, 1, dtype=torch.float64)
    x[0, 2, 0] = 1.0
    return {"x": x, "weight": torch.tensor([[[1.0, 10.0, 100.0]]], dtype=torch.float64),
            "bias": torch.zeros(1, dtype=torch.float64), "dilation": 1}


def _causal_conv1d_cases() -> list[Case]:
    g = _generator(202)
    return [
        Case("an impulse at t = 2, one channel, kernel [1, 10, 100], no bias", _impulse_args()),
        Case("kernel size 1: a linear map at each position",
             _conv_args(g, b=2, length=5, d_in=3, d_out=2, k=1, dilation=1)),
        Case("b = 2, l = 10, 3 -> 4 channels, k = 3",
             _conv_args(g, b=2, length=10, d_in=3, d_out=4, k=3, dilation=1)),
        Case("k = 3, dilation 3", _conv_args(g, b=2, length=11, d_in=2, d_out=3, k=3, dilation=3)),
        Case("k = 4, dilation 2: the window (7 positions) is longer than the sequence (5)",
             _conv_args(g, b=1, length=5, d_in=2, d_out=2, k=4, dilation=2)),
        Case("float32 inputs: the output keeps their dtype",
             _conv_args(g, b=3, length=9, d_in=4, d_out=5, k=2, dilation=3, dtype=torch.float32)),
    ]


def _offset_equals(g, a, left_of) -> bool:
    k = a["weight"].shape[-1]
    left = left_of(k, a["dilation"])
    if not 0 <= left <= (k - 1) * a["dilation"]:
        return False
    return _same(_conv_offset(a["x"], a["weight"], a["bias"], a["dilation"], left), g)


def _flipped(g, a) -> bool:
    w = a["weight"].flip(-1)
    return _same(_causal_conv1d_reference(a["x"], w, a["bias"], a["dilation"]), g)


def _no_bias(g, a) -> bool:
    return _same(_causal_conv1d_reference(a["x"], a["weight"], None, a["dilation"]), g)


def _ignored_dilation(g, a) -> bool:
    return a["dilation"] > 1 and _same(_causal_conv1d_reference(
        a["x"], a["weight"], a["bias"], 1), g)


_CAUSAL_CONV_HINTS = (
    Hint("return the output in x's dtype (float32 in, float32 out): build it from x and"
         " weight rather than with a fixed dtype",
         lambda e, g, a: isinstance(g, torch.Tensor) and g.dtype != e.dtype),
    Hint("the output must be exactly as long as the input: pad (k - 1)·dilation zeros in"
         " front of the sequence (the padding grows with the dilation)",
         lambda e, g, a: isinstance(g, torch.Tensor) and g.ndim == 3 and g.shape != e.shape),
    Hint("your output reads the FUTURE: all the padding zeros go before the sequence (left),"
         " none after it, so that the last tap reads x_t",
         lambda e, g, a: _offset_equals(g, a, lambda k, r: 0)),
    Hint("you split the padding between both ends ('same' padding), so outputs read the"
         " future; a causal convolution puts all (k - 1)·dilation zeros on the left",
         lambda e, g, a: _offset_equals(g, a, lambda k, r: (k - 1) * r // 2)),
    Hint("you padded k - 1 zeros, but the window spans (k - 1)·dilation + 1 positions: tap j"
         " must read x_{t - (k-1-j)·dilation}, so the last tap reads x_t",
         lambda e, g, a: a["dilation"] > 1 and _offset_equals(g, a, lambda k, r: k - 1)),
    Hint("your kernel looks flipped: tap j = k - 1 reads x_t and tap j = 0 the oldest input,"
         " x_{t - (k-1)·dilation} (deep learning's convolution does not flip the kernel)",
         lambda e, g, a: a["weight"].shape[-1] > 1 and _flipped(g, a)),
    Hint("the taps must be `dilation` positions apart: tap j reads x_{t - (k-1-j)·dilation}",
         lambda e, g, a: _ignored_dilation(g, a)),
    Hint("the bias is missing: add bias (d_out,) to every output position",
         lambda e, g, a: _no_bias(g, a)),
)


def check_causal_conv1d(causal_conv1d) -> None:
    """Check ``causal_conv1d(x, weight, bias, dilation)``: (b, l, d_in) -> (b, l, d_out), output
    t reading x_{t-(k-1)·r}, ..., x_t only, without library convolutions."""
    run_check(Check(
        title="causal convolution", reference=_causal_conv1d_reference,
        cases=_causal_conv1d_cases(), rtol=1e-5, atol=1e-6,
        hint="y[:, t] = bias + sum over j of x[:, t - (k-1-j)*dilation] @ weight[:, :, j].T,"
             " reading zeros before the start of the sequence",
        hints=_CAUSAL_CONV_HINTS, forbidden=_LIBRARY_CONVOLUTIONS,
        example="check_causal_conv1d(causal_conv1d)"), causal_conv1d)


# ---------------------------------------------------------------------------------------------
# layers needed to see a whole sequence


def _layers_needed_reference(length: int, kernel_size: int, dilated: bool) -> int:
    n, field = 0, 1
    while field < length:
        field += (kernel_size - 1) * (2**n if dilated else 1)
        n += 1
    return n


def _layers_needed_cases() -> list[Case]:
    def case(label, length, kernel_size, dilated):
        return Case(label, {"length": length, "kernel_size": kernel_size, "dilated": dilated})

    return [
        case("length 9, k = 3, plain: R = 1 + 2n reaches 9 exactly", 9, 3, False),
        case("length 10, k = 3, plain", 10, 3, False),
        case("a single token needs no layer", 1, 2, False),
        case("length 2, k = 2, plain", 2, 2, False),
        case("length 1,000,000, k = 5, plain", 1_000_000, 5, False),
        case("length 1,024, k = 2, dilated: R = 2^n reaches 1,024 exactly", 1024, 2, True),
        case("length 1,025, k = 2, dilated", 1025, 2, True),
        case("length 1,000, k = 3, dilated", 1000, 3, True),
        case("length 31, k = 3, dilated: R = 1 + 2(2^n - 1) reaches 31 exactly", 31, 3, True),
        case("length 1,000,000, k = 5, dilated", 1_000_000, 5, True),
        case("a single token, dilated", 1, 3, True),
    ]


def _field(n: int, a: dict) -> int:
    k = a["kernel_size"]
    return 1 + (k - 1) * ((2**n - 1) if a["dilated"] else n)


_LAYERS_HINTS = (
    Hint("a wider kernel needs fewer layers: with dilations 1, 2, 4, ... the receptive field"
         " is R = 1 + (k - 1)(2^n - 1), not 2^n",
         lambda e, g, a: a["dilated"] and a["kernel_size"] > 2 and _as_int(g) is not None
         and _as_int(g) > e and 2 ** _as_int(g) >= a["length"] > 2 ** (_as_int(g) - 1)),
    Hint("one layer too many: a stack whose receptive field EQUALS the length already sees the"
         " whole sequence (the condition is R >= length)",
         lambda e, g, a: _as_int(g) == e + 1 and _field(e, a) == a["length"]),
    Hint("too few layers: the receptive field of n layers is 1 + (k - 1)·n (plain) or"
         " 1 + (k - 1)(2^n - 1) (dilated), and it must reach the length",
         lambda e, g, a: _as_int(g) is not None and 0 <= _as_int(g) < e),
    Hint("too many layers: the receptive field of n layers is 1 + (k - 1)·n (plain) or"
         " 1 + (k - 1)(2^n - 1) (dilated), already counting the current token",
         lambda e, g, a: _as_int(g) is not None and _as_int(g) > e),
)


def check_layers_needed(layers_needed) -> None:
    """Check ``layers_needed(length, kernel_size, dilated)``: the smallest n with
    R(n) >= length, R(n) = 1 + (k-1)·n plain or 1 + (k-1)(2^n - 1) dilated."""
    run_check(Check(
        title="layers needed", reference=_layers_needed_reference,
        cases=_layers_needed_cases(),
        hint="the smallest n >= 0 with 1 + (k - 1)·n >= length (plain) or"
             " 1 + (k - 1)(2^n - 1) >= length (dilated)",
        hints=_LAYERS_HINTS, example="check_layers_needed(layers_needed)"), layers_needed)


# ---------------------------------------------------------------------------------------------
# one step of a causal convolution, for generation


def _conv_step_reference(x_t, buffer, weight, bias, dilation):
    window = torch.cat([buffer, x_t[:, None]], dim=1)  # (b, (k-1)·r + 1, d_in)
    taps = window[:, ::dilation]  # (b, k, d_in)
    y_t = torch.einsum("bji,oij->bo", taps, weight) + bias  # (b, d_out)
    return y_t, window[:, 1:]


def _run_steps(step, args: dict) -> torch.Tensor:
    """Probe: run ``step`` over the whole sequence from a zero buffer; (b, l, d_out)."""
    x, weight, bias, dilation = args["x"], args["weight"], args["bias"], args["dilation"]
    batch, length, d_in = x.shape
    w = (weight.shape[-1] - 1) * dilation
    buffer = torch.zeros(batch, w, d_in, dtype=x.dtype)
    outputs = []
    for t in range(length):
        kept = buffer.clone()
        result = step(x[:, t], buffer, weight, bias, dilation)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise WrongAnswer("it must return a pair (y_t, new_buffer)")
        y_t, new_buffer = result
        if not torch.equal(buffer, kept):
            raise WrongAnswer(f"at step t = {t} it changed the buffer it was given, in place;"
                              " return a new tensor instead (torch.cat makes one)")
        expected = (batch, weight.shape[0])
        if not isinstance(y_t, torch.Tensor) or tuple(y_t.shape) != expected:
            raise WrongAnswer(f"at step t = {t} y_t is a {_shape_words(y_t)}, expected shape"
                              f" (b, d_out) = {expected}")
        if not isinstance(new_buffer, torch.Tensor) or new_buffer.shape != buffer.shape:
            raise WrongAnswer(f"at step t = {t} the new buffer is a {_shape_words(new_buffer)},"
                              " expected the shape of the buffer it was given, (b, (k - 1)"
                              f"·dilation, d_in) = {tuple(buffer.shape)}")
        history = torch.cat([torch.zeros_like(buffer), x[:, : t + 1]], dim=1)
        wanted = history[:, history.shape[1] - w :]  # the last w inputs, oldest first
        if not torch.equal(new_buffer, wanted):
            row = int((new_buffer != wanted).flatten(2).any(-1).any(0).nonzero()[0])
            raise WrongAnswer(f"after step t = {t} the new buffer should hold the last {w}"
                              f" inputs x_{t - w + 1}, ..., x_{t}, oldest first (zeros before"
                              f" the start of the sequence); row {row} differs")
        outputs.append(y_t)
        buffer = new_buffer
    return torch.stack(outputs, dim=1)  # (b, l, d_out)


def _shape_words(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _conv_step_cases() -> list[Case]:
    g = _generator(204)
    return [
        Case("an impulse at t = 2, kernel [1, 10, 100], dilation 1", _impulse_args(),
             probe=_run_steps),
        Case("k = 3, dilation 1, 2 sequences of 9 steps",
             _conv_args(g, b=2, length=9, d_in=3, d_out=2, k=3, dilation=1), probe=_run_steps),
        Case("k = 3, dilation 2: the buffer holds 4 inputs",
             _conv_args(g, b=2, length=12, d_in=2, d_out=3, k=3, dilation=2), probe=_run_steps),
        Case("k = 2, dilation 4",
             _conv_args(g, b=1, length=10, d_in=2, d_out=2, k=2, dilation=4), probe=_run_steps),
        Case("kernel size 1: an empty buffer",
             _conv_args(g, b=2, length=4, d_in=3, d_out=2, k=1, dilation=1), probe=_run_steps),
    ]


_CONV_STEP_HINTS = (
    Hint("the taps are `dilation` rows apart in the window [buffer; x_t]: take"
         " window[:, ::dilation], not its last k rows",
         lambda e, g, a: _ignored_dilation(g, a)),
    Hint("the bias is missing: add it to y_t", lambda e, g, a: _no_bias(g, a)),
    Hint("your kernel looks flipped: weight[:, :, k - 1] multiplies x_t and weight[:, :, 0] the"
         " oldest input in the window", lambda e, g, a: _flipped(g, a)),
)


def check_conv_step(conv_step) -> None:
    """Check ``conv_step(x_t, buffer, weight, bias, dilation) -> (y_t, new_buffer)``: run from a
    zero buffer over a sequence it equals the causal convolution; the buffer it was given
    stays as it was."""
    run_check(Check(
        title="convolution step", reference=_conv_step_reference,
        cases=_conv_step_cases(), rtol=1e-5, atol=1e-6,
        hint="window = [buffer; x_t] (oldest row first), y_t = bias + sum over j of"
             " window[:, j*dilation] @ weight[:, :, j].T, new buffer = window without its"
             " oldest row",
        hints=_CONV_STEP_HINTS, forbidden=_LIBRARY_CONVOLUTIONS,
        example="check_conv_step(conv_step)"), conv_step)
