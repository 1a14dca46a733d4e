"""Balanced accuracy (`jaxtricks.losses._metrics`): of predictions and of logits, and the
deprecated polymorphic form of `balanced_accuracy`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compat import enable_x64
from test_losses_binary import check_transforms
from test_losses_deprecated import call_twice_warning_once

from jaxtricks import losses


def _problem(seed, batch=8, num_classes=5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, batch).astype(np.int32)
    logits = (rng.standard_normal((batch, num_classes)) + 2 * np.eye(num_classes)[labels])
    return logits.astype(np.float32), labels


def _np_balanced_accuracy(predictions, labels):
    return np.mean([np.mean(predictions[labels == c] == c) for c in np.unique(labels)])


@pytest.mark.slow
def test_balanced_accuracy_is_the_mean_recall_over_present_classes():
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 4, 40)  # class 4 of 5 is absent: skipped
    logits = rng.standard_normal((40, 5)) + 2 * np.eye(5)[labels]
    expected = _np_balanced_accuracy(logits.argmax(-1), labels)
    np.testing.assert_allclose(losses.balanced_accuracy_from_logits(logits, labels), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(
        jax.jit(losses.balanced_accuracy, static_argnums=2)(logits.argmax(-1), labels, 5),
        expected, rtol=1e-6)
    # Invariant to class sizes: repeating class 0's examples changes nothing.
    extra = labels == 0
    bigger = losses.balanced_accuracy_from_logits(np.concatenate([logits, logits[extra]]),
                                                  np.concatenate([labels, labels[extra]]))
    np.testing.assert_allclose(bigger, expected, rtol=1e-6)
    keep = np.arange(40) % 3 != 0
    np.testing.assert_allclose(
        losses.balanced_accuracy_from_logits(logits, labels, where=keep),
        _np_balanced_accuracy(logits.argmax(-1)[keep], labels[keep]), rtol=1e-6)


def test_balanced_accuracy_rejects_labels_out_of_range_unless_where_leaves_them_out():
    logits, labels = _problem(1)
    for bad in (5, -1):
        wrong = labels.copy()
        wrong[6] = bad
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, 5\).*got {bad} at"):
            losses.balanced_accuracy_from_logits(logits, wrong)
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, 5\).*got {bad} at"):
            losses.balanced_accuracy(logits.argmax(-1), wrong, 5)
        assert np.isnan(jax.jit(losses.balanced_accuracy_from_logits)(logits, wrong))
        assert np.isnan(jax.jit(losses.balanced_accuracy, static_argnums=2)(
            logits.argmax(-1), wrong, 5))
        keep = np.arange(8) != 6  # padding: not an error, not counted
        expected = _np_balanced_accuracy(logits.argmax(-1)[keep], labels[keep])
        np.testing.assert_allclose(losses.balanced_accuracy_from_logits(logits, wrong, where=keep),
                                   expected, rtol=1e-6)
        np.testing.assert_allclose(jax.jit(losses.balanced_accuracy, static_argnums=2)(
            logits.argmax(-1), wrong, 5, where=keep), expected, rtol=1e-6)


def test_balanced_accuracy_is_nan_without_a_counted_example_or_with_a_nan_score():
    assert np.isnan(losses.balanced_accuracy_from_logits(np.zeros((0, 5), np.float32),
                                                         np.zeros(0, np.uint8)))
    assert np.isnan(losses.balanced_accuracy(np.zeros(0, np.int32), np.zeros(0, np.int32), 5))
    logits, labels = _problem(4)
    assert np.isnan(losses.balanced_accuracy_from_logits(logits, labels, where=np.zeros(8, bool)))
    assert np.isnan(losses.balanced_accuracy(logits.argmax(-1), labels, 5,
                                             where=np.zeros(8, bool)))
    bad = logits.copy()
    bad[2, 3] = np.nan
    assert np.isnan(losses.balanced_accuracy_from_logits(bad, labels))
    assert np.isnan(jax.jit(losses.balanced_accuracy_from_logits)(
        jnp.asarray(bad, jnp.bfloat16), labels))
    keep = np.arange(8) != 2  # a NaN in an example that is not counted changes nothing
    np.testing.assert_allclose(losses.balanced_accuracy_from_logits(bad, labels, where=keep),
                               _np_balanced_accuracy(logits.argmax(-1)[keep], labels[keep]))
    bad[2] = -np.inf  # infinite scores are ordinary scores for argmax
    bad[2, labels[2]] = np.inf
    np.testing.assert_allclose(losses.balanced_accuracy_from_logits(bad, labels),
                               _np_balanced_accuracy(bad.argmax(-1), labels))


@pytest.mark.slow
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
        check_transforms(lambda s: losses.balanced_accuracy_from_logits(s, labels),
                         jnp.asarray(logits, jnp.float64), finite_differences=False)
        np.testing.assert_array_equal(
            jax.jacfwd(lambda s: losses.balanced_accuracy_from_logits(s, labels))(logits), 0.0)


def test_balanced_accuracy_takes_axis_and_a_score_mask_like_the_losses():
    logits, labels = _problem(11)
    expected = _np_balanced_accuracy(logits.argmax(-1), labels)
    for scores, axis in ((logits.T, 0), (logits.T, (0,)), (logits, (1,))):
        np.testing.assert_allclose(losses.balanced_accuracy_from_logits(scores, labels, axis=axis),
                                   expected)
    split = np.concatenate([logits, np.full((8, 1), -np.inf, np.float32)], -1).reshape(8, 2, 3)
    np.testing.assert_allclose(losses.balanced_accuracy_from_logits(split, labels, axis=(1, 2)),
                               expected)  # 6 flattened classes, the last never predicted
    mask = np.ones(logits.shape, bool)
    mask[:, 0] = False  # class 0 never predicted, as if its score were -inf
    mask[3] = False  # example 3 not counted
    dirty = np.where(mask, logits, np.nan)  # NaN under the mask is left out
    keep = np.arange(8) != 3
    masked_argmax = np.where(mask, logits, -np.inf).argmax(-1)
    np.testing.assert_allclose(
        jax.jit(losses.balanced_accuracy_from_logits)(dirty, labels, where=mask),
        _np_balanced_accuracy(masked_argmax[keep], labels[keep]))
    with pytest.raises(ValueError, match=r"logits must have shape \(8,\) \+ the class shape"):
        losses.balanced_accuracy_from_logits(logits.T, labels)


def test_balanced_accuracy_of_predictions_equals_that_of_their_logits_and_does_not_warn():
    logits, labels = _problem(13)
    keep = np.arange(8) != 5
    for where in (None, keep):
        np.testing.assert_array_equal(
            losses.balanced_accuracy(logits.argmax(-1), labels, 5, where=where),
            losses.balanced_accuracy_from_logits(logits, labels, where=where))
    # Predictions of any integer dtype, traced num_classes static: no warning (an error
    # under this suite's filterwarnings).
    jax.jit(losses.balanced_accuracy, static_argnums=2)(
        logits.argmax(-1).astype(np.uint8), labels, 5)


def test_balanced_accuracy_of_logits_is_deprecated_with_the_former_numbers():
    logits, labels = _problem(14)
    mask = np.ones(logits.shape, bool)
    mask[:, 1] = False
    integer_scores = np.round(10 * logits).astype(np.int32)
    cases = [  # (former call, its arguments), the new call's result
        ((logits, labels, 5), {}, losses.balanced_accuracy_from_logits(logits, labels)),
        ((logits.T, labels, 5), {"axis": 0},
         losses.balanced_accuracy_from_logits(logits.T, labels, axis=0)),
        ((logits, labels, 5), {"where": mask},
         losses.balanced_accuracy_from_logits(logits, labels, where=mask)),
        ((integer_scores, labels, 5), {},  # integer scores with a class axis
         losses.balanced_accuracy_from_logits(integer_scores, labels)),
        # axis with predictions: ignored, as before, and deprecated.
        ((logits.argmax(-1), labels, 5), {"axis": -1},
         losses.balanced_accuracy(logits.argmax(-1), labels, 5)),
    ]
    for args, kwargs, expected in cases:
        first, second, message = call_twice_warning_once(
            losses.balanced_accuracy, *args, **kwargs)
        np.testing.assert_array_equal(first, expected)
        np.testing.assert_array_equal(second, expected)
        assert "use jaxtricks.losses.balanced_accuracy_from_logits(" in message
    # A shape that is neither form raises before any warning.
    with pytest.raises(ValueError, match=r"predictions must be integers of shape \(8,\)"):
        losses.balanced_accuracy(logits.argmax(-1).astype(np.float32), labels, 5)
