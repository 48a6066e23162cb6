"""Sequence models written from scratch, one file per family.

Every model maps token ids ``x`` of shape (b, l) to next-token logits of shape (b, l, v) in
``forward``, and offers ``init_state(batch)`` and ``step(x_t, state) -> (logits_t, state)`` for
generating one token at a time; ``step`` run over a sequence equals ``forward`` on it.
"""

from seqlib.models.cnn import CausalConv1d, CNNLanguageModel
from seqlib.models.feedforward import BigramLM, FixedWindowLM
from seqlib.models.mamba import MambaBlock, MambaLM
from seqlib.models.mamba2 import Mamba2Block, Mamba2LM
from seqlib.models.norm import GatedRMSNorm, RMSNorm
from seqlib.models.rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, RNNLanguageModel

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "BigramLM",
    "CNNLanguageModel",
    "CausalConv1d",
    "FixedWindowLM",
    "GatedRMSNorm",
    "GRUCell",
    "LSTMCell",
    "Mamba2Block",
    "Mamba2LM",
    "MambaBlock",
    "MambaLM",
    "RMSNorm",
    "RNNCell",
    "RNNLanguageModel",
]
