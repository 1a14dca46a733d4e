"""Data of the benchmarks: scikit-learn's digits (shipped offline) and its splits.

`digits(preprocessing)` loads the 1,797 8x8 images (64 features, pixel values 0..16)
with one of the named preprocessings of `PREPROCESSINGS`; `split` draws a stratified
train / validation / test split, `long_tailed` a long-tailed training split beside a
balanced test split, and `with_symmetric_label_noise` flips labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

NUM_CLASSES = 10

# name -> map of the raw pixels (0..16) to features.
PREPROCESSINGS = {
    "raw": lambda pixels: pixels,
    "unit": lambda pixels: pixels / 16.0,  # [0, 1]
    "centered": lambda pixels: (pixels - 8.0) / 8.0,  # [-1, 1]
}


class Split(NamedTuple):
    """Features float32 `[n, 64]` and labels int32 `[n]` of each part (val may be empty)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits(preprocessing: str = "unit") -> tuple[np.ndarray, np.ndarray]:
    """All digits: features float32 `[1797, 64]` preprocessed by name, labels int32.

    Raises:
        ValueError: if `preprocessing` is not a key of `PREPROCESSINGS`.
    """
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(
            f"preprocessing must be one of {tuple(PREPROCESSINGS)}, got {preprocessing!r}."
        )
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return PREPROCESSINGS[preprocessing](x).astype(np.float32), y.astype(np.int32)


def split(x, y, *, train: int, test: int, seed: int) -> Split:
    """Stratified split: `train` rows, `test` rows, the rest for validation."""
    from sklearn.model_selection import train_test_split

    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, train_size=train, random_state=seed, stratify=y
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=test, random_state=seed, stratify=y_rest
    )
    return Split(x_train, y_train, x_val, y_val, x_test, y_test)


def standardized(data: Split, std_offset: float = 1.0) -> Split:
    """Every part standardised with the training mean and `std + std_offset` per pixel
    (the offset keeps the near-constant border pixels from blowing up)."""
    train = np.asarray(data.x_train, np.float64)
    mean, std = train.mean(0), train.std(0) + std_offset

    def scale(features):
        return ((np.asarray(features, np.float64) - mean) / std).astype(np.float32)

    return data._replace(x_train=scale(data.x_train), x_val=scale(data.x_val),
                         x_test=scale(data.x_test))


def long_tailed(x, y, counts: Sequence[int], *, test_per_class: int, seed: int) -> Split:
    """`test_per_class` test rows of every class, then `counts[c]` training rows of class c
    (drawn in one permutation per class); no validation rows."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label, count in enumerate(counts):
        members = rng.permutation(np.flatnonzero(y == label))
        test.append(members[:test_per_class])
        train.append(members[test_per_class : test_per_class + count])
    train, test = np.concatenate(train), np.concatenate(test)
    empty = np.zeros(0, np.int64)
    return Split(x[train], y[train], x[empty], y[empty], x[test], y[test])


def with_symmetric_label_noise(labels, rate: float, *, seed: int) -> np.ndarray:
    """Each label replaced, with probability `rate`, by one of the other classes."""
    rng = np.random.default_rng(seed)
    flip = rng.random(labels.shape) < rate
    shift = rng.integers(1, NUM_CLASSES, labels.shape)
    return np.where(flip, (labels + shift) % NUM_CLASSES, labels).astype(np.int32)
