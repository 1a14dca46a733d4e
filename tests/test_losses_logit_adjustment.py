"""Logit adjustment and class priors (`jaxtricks.losses._logit_adjustment`).

The formulas of Menon et al. and label checks, empty batches, NaN/inf, dtypes and
every transformation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64
from test_losses import NUM_CLASSES, _np_log_softmax, _np_target
from test_losses import _problem as _random_problem
from test_losses_binary import check_transforms
from test_losses_metrics import _np_balanced_accuracy

from jaxtricks import losses

PRIORS = np.array([0.5, 0.25, 0.15, 0.07, 0.03])


def _problem(seed, batch=8, num_classes=5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, batch).astype(np.int32)
    logits = (rng.standard_normal((batch, num_classes)) + 2 * np.eye(num_classes)[labels])
    return logits.astype(np.float32), labels


def _np_logit_adjusted(logits, labels, priors, tau=1.0):
    adjusted = np.asarray(logits, np.float64) + tau * np.log(priors / priors.sum())
    shifted = adjusted - adjusted.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, np.asarray(labels, np.int64)[:, None], -1)[:, 0]


def _la(logits, labels, priors=PRIORS, **kwargs):
    return losses.softmax_logit_adjusted_cross_entropy(logits, labels, class_priors=priors,
                                                       **kwargs)


def _wide_priors():
    # A fresh array under enable_x64: at jax 0.10.2, once `jax.jit(_la)` has captured
    # PRIORS without x64, jnp.asarray(PRIORS) stays float32 even under enable_x64.
    return PRIORS.copy()


def test_logit_adjusted_loss_matches_both_forms_of_eq_10():
    logits, labels = _random_problem(9)
    tau = 1.5
    adjusted = logits + tau * np.log(PRIORS)
    first = -_np_target(_np_log_softmax(adjusted), labels)
    ratio = (PRIORS[None, :] / PRIORS[labels][:, None]) ** tau
    diff = np.exp(logits - _np_target(logits.astype(np.float64), labels)[:, None])
    others = np.eye(NUM_CLASSES)[labels] == 0
    second = np.log1p((ratio * diff * others).sum(-1))
    np.testing.assert_allclose(first, second, rtol=1e-10)
    got = losses.softmax_logit_adjusted_cross_entropy(logits, labels, class_priors=PRIORS,
                                                      tau=tau)
    np.testing.assert_allclose(got, first, rtol=2e-6)


def test_logit_adjusted_loss_reduces_to_cross_entropy_and_accepts_counts():
    logits, labels = _random_problem(10)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    la = losses.softmax_logit_adjusted_cross_entropy
    np.testing.assert_allclose(la(logits, labels, class_priors=PRIORS, tau=0.0), ce, atol=1e-6)
    np.testing.assert_allclose(la(logits, labels, class_priors=np.full(5, 7.0)), ce, atol=1e-6)
    np.testing.assert_allclose(la(logits, labels, class_priors=PRIORS * 1234.0),
                               la(logits, labels, class_priors=PRIORS), atol=1e-6)


def test_post_hoc_adjustment_recovers_the_unadjusted_argmax():
    logits, _ = _random_problem(11, batch=50)
    tau = 0.7
    trained = logits + tau * np.log(PRIORS)  # what an LA-trained model g = f + tau log pi gives
    adjusted = losses.adjust_logits(trained, class_priors=PRIORS * 10, tau=tau)
    np.testing.assert_allclose(adjusted, logits, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(adjusted, -1), np.argmax(logits, -1))
    transposed = losses.adjust_logits(trained.T, class_priors=PRIORS, tau=tau, axis=0)
    np.testing.assert_allclose(transposed, logits.T, atol=1e-5)


def test_class_priors_are_smoothed_frequencies():
    labels = np.array([[0, 0, 1], [3, 0, 1]])
    expected = (np.bincount(labels.ravel(), minlength=5) + 0.5) / (6 + 5 * 0.5)
    np.testing.assert_allclose(losses.class_priors(labels, 5, smoothing=0.5), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(jax.jit(losses.class_priors, static_argnums=1)(labels, 5),
                               np.bincount(labels.ravel(), minlength=5) / 6, rtol=1e-6)


@pytest.mark.parametrize("bad", [5, -1, 255])
def test_class_priors_reject_labels_out_of_range_and_give_nan_when_traced(bad):
    labels = np.array([0, 1, 1, bad, 4], np.int64 if bad != 255 else np.uint8)
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, 5\) \(num_classes=5\), "
                                         rf"got {bad} at index \(3,\)"):
        losses.class_priors(labels, 5)
    traced = jax.jit(losses.class_priors, static_argnums=1)(labels, 5)
    assert np.all(np.isnan(traced))


@pytest.mark.parametrize(("dtype", "num_classes"),
                         [(np.uint8, 300), (np.int8, 200), (np.uint16, 4), (np.int16, 70000)])
def test_class_priors_count_labels_of_any_integer_dtype(dtype, num_classes):
    high = min(np.iinfo(dtype).max, num_classes - 1)
    labels = np.array([0, high, high, 3, high // 2, 0, 1], dtype)
    expected = np.bincount(labels.astype(np.int64), minlength=num_classes) / labels.size
    np.testing.assert_allclose(losses.class_priors(labels, num_classes), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(losses.class_priors, static_argnums=1)(
        labels, num_classes), expected, rtol=1e-6)


@pytest.mark.slow
def test_logit_adjusted_loss_rejects_labels_out_of_range_and_gives_nan_when_traced():
    logits, labels = _problem(2)
    keep = np.arange(8) != 4
    for bad in (5, -1, 1000):
        wrong = labels.copy()
        wrong[4] = bad
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, 5\).*got {bad} at"):
            _la(logits, wrong)
        values = jax.jit(_la)(logits, wrong)
        grads = jax.jit(jax.grad(lambda s, y: _la(s, y).sum()))(logits, wrong)
        assert np.isnan(values[4]) and np.all(np.isnan(grads[4]))
        np.testing.assert_allclose(values[keep], _np_logit_adjusted(
            logits[keep], labels[keep], PRIORS), rtol=1e-5)
        assert np.all(np.isfinite(grads[keep]))
        # A padded example with a bad label gets 0, as every example that `where` excludes.
        for padded in (_la(logits, wrong, where=keep), jax.jit(_la)(logits, wrong, where=keep)):
            assert padded[4] == 0.0
            np.testing.assert_allclose(padded[keep], values[keep], rtol=1e-5)


@pytest.mark.parametrize(("dtype", "num_classes"), [(np.uint8, 300), (np.int8, 130)])
def test_logit_adjustment_and_balanced_accuracy_accept_labels_of_any_integer_dtype(
        dtype, num_classes):
    rng = np.random.default_rng(3)
    labels = np.array([0, np.iinfo(dtype).max, 5, 100, 5, 1, 7, 0], dtype)
    logits = rng.standard_normal((8, num_classes)).astype(np.float32)
    logits[np.arange(8), labels.astype(np.int64)] += 4.0
    logits[:, (5 + 256) % num_classes] += 2.0  # where a wrapped uint8 one-hot would land
    priors = rng.uniform(0.5, 1.5, num_classes)
    got = losses.softmax_logit_adjusted_cross_entropy(logits, labels, class_priors=priors)
    np.testing.assert_allclose(got, _np_logit_adjusted(logits, labels, priors), rtol=1e-5)
    expected = _np_balanced_accuracy(logits.argmax(-1), labels.astype(np.int64))
    np.testing.assert_allclose(losses.balanced_accuracy_from_logits(logits, labels), expected)
    predictions = logits.argmax(-1).astype(np.int16)
    np.testing.assert_allclose(losses.balanced_accuracy(predictions, labels, num_classes),
                               expected)


def test_logit_adjustment_of_an_empty_batch_is_empty():
    empty, no_labels = np.zeros((0, 5), np.float32), np.zeros(0, np.int8)
    assert _la(empty, no_labels).shape == (0,)
    assert _la(empty, no_labels, where=np.zeros(0, bool)).shape == (0,)
    assert losses.adjust_logits(empty, class_priors=PRIORS).shape == (0, 5)
    assert losses.adjust_logits(empty.T, class_priors=PRIORS, axis=(0,)).shape == (5, 0)
    np.testing.assert_allclose(losses.class_priors(no_labels, 5, smoothing=1.0), 0.2)


def test_logit_adjusted_loss_is_nan_for_exactly_the_examples_with_a_nan_score():
    logits, labels = _problem(5)
    logits[1, 3] = np.nan
    logits[4, labels[4]] = np.inf
    bad = np.isin(np.arange(8), [1, 4])
    expected = _np_logit_adjusted(logits[~bad], labels[~bad], PRIORS)
    for where in (None, np.ones(8, bool), np.ones((8, 5), bool)):
        values, grads = jax.value_and_grad(lambda s, w=where: _la(s, labels, where=w).sum())(
            logits)
        per_example = _la(logits, labels, where=where)
        assert np.isnan(values) and np.all(np.isnan(per_example[bad]))
        np.testing.assert_allclose(per_example[~bad], expected, rtol=1e-5)
        assert np.all(np.isnan(grads[bad]))
    keep = np.ones((8, 5), bool)
    keep[1, 3] = False  # the NaN score masked out: example 1 is fine again
    fine = _la(logits, labels, where=keep)
    ref = _np_logit_adjusted(np.where(keep, logits, -np.inf)[1:2], labels[1:2], PRIORS)
    np.testing.assert_allclose(fine[1], ref[0], rtol=1e-5)


def test_adjust_logits_keeps_nan_and_inf_scores():
    logits, _ = _problem(6)
    logits[0, 1], logits[1, 2], logits[2, 0] = np.nan, np.inf, -np.inf
    got = np.asarray(losses.adjust_logits(logits, class_priors=PRIORS))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(logits))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(logits))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(logits))


def test_adjust_logits_accepts_int_and_tuple_axes_like_the_losses():
    logits, _ = _problem(7, batch=4, num_classes=6)
    priors = np.arange(1.0, 7.0)
    expected = logits - np.log(priors / priors.sum())
    for axis in (-1, 1, (-1,), (1,)):
        np.testing.assert_allclose(losses.adjust_logits(logits, class_priors=priors, axis=axis),
                                   expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(losses.adjust_logits(logits.T, class_priors=priors, axis=(0,)),
                               expected.T, rtol=1e-6, atol=1e-6)
    # Classes over axes 0 and 2 of a [2, 4, 3] array, flattened in order, as the losses do.
    split = np.transpose(logits.reshape(4, 2, 3), (1, 0, 2))
    got = losses.adjust_logits(split, class_priors=priors, axis=(0, 2))
    np.testing.assert_allclose(np.transpose(got, (1, 0, 2)).reshape(4, 6), expected, rtol=1e-6,
                               atol=1e-6)
    labels = np.array([0, 5, 2, 3])  # the loss orders the priors the same way
    np.testing.assert_allclose(losses.softmax_logit_adjusted_cross_entropy(
        split, labels, class_priors=priors, axis=(0, 2)),
        _np_logit_adjusted(logits, labels, priors), rtol=1e-5)
    for axis, message in (((1, 1), "must not repeat"), ((2,), "must name axes"),
                          (1.0, "must be an int or a tuple")):
        with pytest.raises(ValueError, match=f"axis {message}"):
            losses.adjust_logits(logits, class_priors=priors, axis=axis)


@pytest.mark.slow
def test_logit_adjustment_in_bfloat16_and_float64():
    logits, labels = _problem(8)
    half = jnp.asarray(logits, jnp.bfloat16)
    rounded = np.asarray(half, np.float64)
    adjusted = losses.adjust_logits(half, class_priors=PRIORS, tau=0.7)
    assert adjusted.dtype == jnp.bfloat16
    # Computed in float32, rounded once: not the bfloat16 arithmetic's double rounding.
    shift = 0.7 * np.log(PRIORS / PRIORS.sum()).astype(np.float32)
    np.testing.assert_array_equal(
        adjusted, jnp.asarray(rounded.astype(np.float32) - shift, jnp.bfloat16))
    la = _la(half, labels, tau=0.7)
    assert la.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(la, np.float64),
                               _np_logit_adjusted(rounded, labels, PRIORS, 0.7), rtol=1e-2)
    with enable_x64():
        wide = jnp.asarray(logits, jnp.float64)
        adjusted = losses.adjust_logits(wide, class_priors=_wide_priors(), tau=0.7)
        assert adjusted.dtype == jnp.float64
        np.testing.assert_allclose(adjusted, logits - 0.7 * np.log(PRIORS), rtol=1e-13)
        la = _la(wide, labels.astype(np.int64), _wide_priors(), tau=0.7)
        assert la.dtype == jnp.float64
        np.testing.assert_allclose(la, _np_logit_adjusted(logits, labels, PRIORS, 0.7),
                                   rtol=1e-12)
        accuracy = losses.balanced_accuracy_from_logits(wide, labels.astype(np.int64))
        assert accuracy.dtype == jnp.float32
        np.testing.assert_allclose(accuracy, _np_balanced_accuracy(logits.argmax(-1), labels))


@pytest.mark.slow
def test_logit_adjustment_works_in_forward_mode_and_under_every_transformation():
    logits, labels = _problem(9)
    where = np.ones((8, 5), bool)
    where[2, 1] = False
    with enable_x64():
        wide, priors = jnp.asarray(logits, jnp.float64), _wide_priors()
        check_transforms(lambda s: jnp.concatenate([
            _la(s, labels, priors, tau=1.5, where=where),
            losses.adjust_logits(s, class_priors=priors, axis=(1,)).ravel()]), wide)
        check_transforms(lambda t: _la(wide, labels, priors, tau=t), jnp.asarray(0.8))
