"""One figure style for the whole book.

The palette is Okabe and Ito's eight colours, chosen so that the lines stay distinguishable
for readers with the common forms of colour blindness; the order puts the most distinct colours
first, so the first few series of any plot never clash. ``use_style()`` sets Matplotlib's
defaults once per notebook; ``figure()`` makes a figure of the book's standard size.
"""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
from cycler import cycler

PALETTE = [
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#D55E00",  # vermillion
    "#F0E442",  # yellow (weak on white: keep it last)
    "#000000",  # black
]

#: A sequential colour map that is readable in grey scale and for colour-blind readers.
SEQUENTIAL_CMAP = "viridis"

_WIDTH_IN = 6.4  # the book's text column, in inches
_HEIGHT_IN = 3.6

_STYLE = {
    "axes.prop_cycle": cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": "medium",
    "axes.labelsize": "medium",
    "legend.frameon": False,
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "savefig.bbox": "tight",
    "figure.constrained_layout.use": True,
    "image.cmap": SEQUENTIAL_CMAP,
    "lines.linewidth": 1.8,
    "font.size": 10,
}


def use_style() -> None:
    """Apply the book's figure style to Matplotlib's global defaults."""
    mpl.rcParams.update(_STYLE)


def figure(ncols: int = 1, nrows: int = 1, width: float | None = None,
           height: float | None = None, **subplot_kw):
    """A new figure in the book's style with ``nrows`` x ``ncols`` axes.

    Returns ``(fig, axes)``: ``axes`` is a single Axes for a 1 x 1 grid, else a flat array.
    ``width`` and ``height`` are in inches; the defaults fit the text column.
    """
    for name, value in (("ncols", ncols), ("nrows", nrows)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    use_style()
    width = width if width is not None else _WIDTH_IN
    height = height if height is not None else _HEIGHT_IN * (1 if nrows == 1 else 0.75 * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **subplot_kw)
    flat = axes.ravel()
    return fig, (flat[0] if flat.size == 1 else flat)
