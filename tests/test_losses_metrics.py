"""Long-tail learning in `jaxtricks.losses`: class priors, logit adjustment, balanced accuracy.

Label checks, empty batches, NaN/inf, dtypes and every transformation; the formulas
themselves are checked in test_losses.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compat import enable_x64
from test_losses_reweighting import check_transforms

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


def _np_balanced_accuracy(predictions, labels):
    return np.mean([np.mean(predictions[labels == c] == c) for c in np.unique(labels)])


def _la(logits, labels, priors=PRIORS, **kwargs):
    return losses.logit_adjusted_softmax_cross_entropy(logits, labels, class_priors=priors,
                                                       **kwargs)


def _wide_priors():
    # A fresh array under enable_x64: at jax 0.10.2, once `jax.jit(_la)` has captured
    # PRIORS without x64, jnp.asarray(PRIORS) stays float32 even under enable_x64.
    return PRIORS.copy()


# Labels outside [0, K): a ValueError when concrete, NaN when traced.

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


def test_balanced_accuracy_rejects_labels_out_of_range_unless_where_leaves_them_out():
    logits, labels = _problem(1)
    for bad in (5, -1):
        wrong = labels.copy()
        wrong[6] = bad
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, 5\).*got {bad} at"):
            losses.balanced_accuracy(logits, wrong, 5)
        assert np.isnan(jax.jit(losses.balanced_accuracy, static_argnums=2)(logits, wrong, 5))
        keep = np.arange(8) != 6  # padding: not an error, not counted
        expected = _np_balanced_accuracy(logits.argmax(-1)[keep], labels[keep])
        np.testing.assert_allclose(losses.balanced_accuracy(logits, wrong, 5, where=keep),
                                   expected, rtol=1e-6)
        np.testing.assert_allclose(jax.jit(losses.balanced_accuracy, static_argnums=2)(
            logits.argmax(-1), wrong, 5, where=keep), expected, rtol=1e-6)


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
    got = losses.logit_adjusted_softmax_cross_entropy(logits, labels, class_priors=priors)
    np.testing.assert_allclose(got, _np_logit_adjusted(logits, labels, priors), rtol=1e-5)
    expected = _np_balanced_accuracy(logits.argmax(-1), labels.astype(np.int64))
    np.testing.assert_allclose(losses.balanced_accuracy(logits, labels, num_classes), expected)
    predictions = logits.argmax(-1).astype(np.int16)
    np.testing.assert_allclose(losses.balanced_accuracy(predictions, labels, num_classes),
                               expected)


# Empty batches and non-finite scores.

def test_balanced_accuracy_is_nan_without_a_counted_example_or_with_a_nan_score():
    assert np.isnan(losses.balanced_accuracy(np.zeros((0, 5), np.float32),
                                             np.zeros(0, np.uint8), 5))
    assert np.isnan(losses.balanced_accuracy(np.zeros(0, np.int32), np.zeros(0, np.int32), 5))
    logits, labels = _problem(4)
    assert np.isnan(losses.balanced_accuracy(logits, labels, 5, where=np.zeros(8, bool)))
    bad = logits.copy()
    bad[2, 3] = np.nan
    assert np.isnan(losses.balanced_accuracy(bad, labels, 5))
    assert np.isnan(jax.jit(losses.balanced_accuracy, static_argnums=2)(
        jnp.asarray(bad, jnp.bfloat16), labels, 5))
    keep = np.arange(8) != 2  # a NaN in an example that is not counted changes nothing
    np.testing.assert_allclose(losses.balanced_accuracy(bad, labels, 5, where=keep),
                               _np_balanced_accuracy(logits.argmax(-1)[keep], labels[keep]))
    bad[2] = -np.inf  # infinite scores are ordinary scores for argmax
    bad[2, labels[2]] = np.inf
    np.testing.assert_allclose(losses.balanced_accuracy(bad, labels, 5),
                               _np_balanced_accuracy(bad.argmax(-1), labels))


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


# Axes and dtypes.

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
    np.testing.assert_allclose(losses.logit_adjusted_softmax_cross_entropy(
        split, labels, class_priors=priors, axis=(0, 2)),
        _np_logit_adjusted(logits, labels, priors), rtol=1e-5)
    for axis, message in (((1, 1), "must not repeat"), ((2,), "must name axes"),
                          (1.0, "must be an int or a tuple")):
        with pytest.raises(ValueError, match=f"axis {message}"):
            losses.adjust_logits(logits, class_priors=priors, axis=axis)


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
        accuracy = losses.balanced_accuracy(wide, labels.astype(np.int64), 5)
        assert accuracy.dtype == jnp.float32
        np.testing.assert_allclose(accuracy, _np_balanced_accuracy(logits.argmax(-1), labels))


# Forward mode and every transformation (the loss needs the custom JVP of
# `_common.log_target_probability`).

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


def test_class_priors_and_balanced_accuracy_work_under_every_transformation():
    logits, labels = _problem(10)
    with enable_x64():
        # d/da (n_c + a) / (n + K a) = (n - K n_c) / (n + K a)^2, checked numerically too.
        check_transforms(lambda a: losses.class_priors(labels, 5, smoothing=a),
                         jnp.asarray(0.5), finite_differences=False, rtol=1e-6)
        counts = np.bincount(labels, minlength=5)
        np.testing.assert_allclose(
            jax.jacfwd(lambda a: losses.class_priors(labels, 5, smoothing=a))(0.5),
            (8 - 5 * counts) / (8 + 5 * 0.5) ** 2, rtol=1e-6)
        # Piecewise constant in the logits: every derivative is 0.
        check_transforms(lambda s: losses.balanced_accuracy(s, labels, 5),
                         jnp.asarray(logits, jnp.float64), finite_differences=False)
        np.testing.assert_array_equal(
            jax.jacfwd(lambda s: losses.balanced_accuracy(s, labels, 5))(logits), 0.0)
