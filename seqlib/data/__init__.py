"""Data for the book, all generated or read locally: nothing is ever downloaded.

- :mod:`~seqlib.data.synthetic`: seeded synthetic tasks (copy, selective copy, associative
  recall, adding problem, parity), each returning a :class:`TaskBatch`;
- :mod:`~seqlib.data.language`: a small synthetic English with subject-verb agreement across
  a chosen distance;
- :mod:`~seqlib.data.corpus`: a real text corpus, the Python standard library's own source;
- :mod:`~seqlib.data.timeseries`: real time series shipped with matplotlib (stock prices, EEG).

Every generator takes a seed and uses a private random generator, so the same call returns the
same data and never disturbs the global random state.
"""

from seqlib.data.corpus import CodeCorpus, code_corpus
from seqlib.data.language import (
    AgreementSentence,
    agreement_sentences,
    agreement_vocabulary,
    mismatched_twin,
)
from seqlib.data.synthetic import (
    BLANK,
    FIRST_SYMBOL,
    MARK,
    TaskBatch,
    adding_task,
    associative_recall_task,
    copy_task,
    parity_task,
    selective_copy_task,
)
from seqlib.data.timeseries import TimeSeries, eeg_recording, stock_prices

__all__ = [
    "BLANK",
    "FIRST_SYMBOL",
    "MARK",
    "AgreementSentence",
    "CodeCorpus",
    "TaskBatch",
    "TimeSeries",
    "adding_task",
    "agreement_sentences",
    "agreement_vocabulary",
    "associative_recall_task",
    "code_corpus",
    "copy_task",
    "eeg_recording",
    "mismatched_twin",
    "parity_task",
    "selective_copy_task",
    "stock_prices",
]
