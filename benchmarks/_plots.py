"""Plotting for the benchmarks: matplotlib on the file-only Agg backend, set here once.

Benchmarks draw with `subplots` and save through `Report.save_figure`, which writes
`<results_dir>/<benchmark>_<stem>.<label>.png` and closes the figure.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from matplotlib import pyplot


def subplots(*args, **kwargs):
    """`matplotlib.pyplot.subplots` on the Agg backend: `(figure, axes)`."""
    return pyplot.subplots(*args, **kwargs)


def close(figure) -> None:
    """Releases a figure (`Report.save_figure` calls it after saving)."""
    pyplot.close(figure)
