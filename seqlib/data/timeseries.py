"""Real time series that ship with matplotlib, so that nothing has to be downloaded.

Both come from matplotlib's sample data (``matplotlib.cbook.get_sample_data``), installed with
matplotlib itself:

- :func:`stock_prices`: daily closing prices of Google (GOOG) stock, from ``goog.npz``;
- :func:`eeg_recording`: a short four-channel EEG recording, from ``eeg.dat``.

A :class:`TimeSeries` holds l time stamps and l values (one channel) or an (l, channels) array
(several channels), with the units of each. Its arrays are read-only, so a chapter cannot
change the data another chapter sees; take a copy to modify it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib import cbook


@dataclass(frozen=True, eq=False)
class TimeSeries:
    """A named series: ``times`` (l,), ``values`` (l,) or (l, channels), their units, and
    the channel names when there are several (empty for a single channel)."""

    name: str
    times: np.ndarray
    values: np.ndarray
    unit: str
    time_unit: str
    channels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        times, values = np.asarray(self.times), np.asarray(self.values)
        if times.ndim != 1:
            raise ValueError(f"times must have shape (l,), got shape {times.shape}")
        if values.ndim not in (1, 2) or values.shape[0] != times.shape[0]:
            raise ValueError(
                f"values must have shape ({times.shape[0]},) or ({times.shape[0]}, channels) "
                f"to match times, got shape {values.shape}"
            )
        # Read-only views: the caller's arrays stay writable, ours cannot be changed.
        for field, array in (("times", times), ("values", values)):
            view = array.view()
            view.setflags(write=False)
            object.__setattr__(self, field, view)

    def __len__(self) -> int:
        return self.times.shape[0]


def stock_prices() -> TimeSeries:
    """Daily closing price of Google stock (ticker GOOG), in US dollars.

    ``goog.npz`` holds one record array, ``price_data``, with a row per trading day and the
    fields ``date``, ``open``, ``high``, ``low``, ``close``, ``volume`` and ``adj_close``.
    We return ``adj_close`` (in this file it equals ``close`` on every day).

    ``times`` are ``numpy.datetime64`` dates (day resolution). Only trading days are present:
    weekends and holidays leave gaps, so consecutive samples are 1 to several calendar days
    apart. Use ``np.arange(len(series))`` as the time axis when a model should see evenly
    spaced steps.
    """
    with np.load(cbook.get_sample_data("goog.npz", asfileobj=False)) as archive:
        if "price_data" not in archive.files:
            raise RuntimeError(
                "matplotlib's goog.npz no longer holds 'price_data' "
                f"(it holds {archive.files}); this loader needs updating"
            )
        records = archive["price_data"]
    return TimeSeries(
        name="GOOG daily adjusted close",
        times=records["date"].astype("datetime64[D]"),
        values=records["adj_close"].astype(np.float64),
        unit="USD",
        time_unit="day",
    )


_EEG_SAMPLES = 800
_EEG_CHANNEL_NAMES = ("PG3", "PG5", "PG7", "PG9")


def eeg_recording() -> TimeSeries:
    """A four-channel EEG recording of 800 samples.

    What the file holds, and what is known about it: ``eeg.dat`` is 25,600 bytes of raw
    little-endian float64 numbers, 800 samples of 4 channels stored sample by sample (row
    ``t`` of the (800, 4) array is one time step). This is how matplotlib's own gallery
    example (*MRI with EEG*) reads it; that example labels the channels PG3, PG5, PG7 and PG9,
    the names used here. Every channel has mean close to 0 and standard deviation close to 1,
    so the values appear to have been standardized: their physical unit (microvolts, say) is
    not recorded, hence ``unit="a.u."`` (arbitrary units).

    The sampling rate is not documented: neither the file nor the sample-data README states
    it. (The gallery example spreads the 800 samples over a 0-10 s axis, but that is a plotting
    choice, not a documented rate.) So ``times`` is the sample index 0 .. 799 and
    ``time_unit="sample"``; do not read frequencies in Hz off this series.
    """
    path = cbook.get_sample_data("eeg.dat", asfileobj=False)
    raw = np.fromfile(path, dtype="<f8")
    expected = _EEG_SAMPLES * len(_EEG_CHANNEL_NAMES)
    if raw.size != expected:
        raise RuntimeError(
            f"matplotlib's eeg.dat holds {raw.size} float64 values, expected {expected} "
            f"({_EEG_SAMPLES} samples x {len(_EEG_CHANNEL_NAMES)} channels); "
            "this loader needs updating"
        )
    return TimeSeries(
        name="EEG recording (matplotlib sample data)",
        times=np.arange(_EEG_SAMPLES, dtype=np.float64),
        values=raw.reshape(_EEG_SAMPLES, len(_EEG_CHANNEL_NAMES)),
        unit="a.u.",
        time_unit="sample",
        channels=_EEG_CHANNEL_NAMES,
    )
