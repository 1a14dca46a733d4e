"""Smoothed F1 losses and the F1-weighted cross-entropy (`jaxtricks.losses._f1`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64
from test_losses_binary import BINARY_LOSSES, _binary_problem, _np_sigmoid, check_transforms

from jaxtricks import losses


def test_binary_smoothed_f1_is_optax_binary_dice_over_the_batch_with_no_smoothing():
    logits, labels = _binary_problem(4)
    p = _np_sigmoid(logits)
    expected = 1 - 2 * np.sum(p * labels) / np.sum(p + labels)
    np.testing.assert_allclose(losses.sigmoid_smoothed_f1_loss(logits, labels), expected, rtol=1e-5)
    dice = optax.losses.binary_dice_loss(logits[None], labels[None], smooth=0.0)
    np.testing.assert_allclose(losses.sigmoid_smoothed_f1_loss(logits, labels), dice[0], rtol=1e-5)


def test_smoothed_f1_gradient_is_a_reweighted_cross_entropy():
    # w_i = (2/T)(1 - F1/2) p_i (positives), (2/T)(F1/2)(1 - p_i) (negatives).
    logits, labels = _binary_problem(5)
    p = _np_sigmoid(logits)
    total = np.sum(p + labels)
    f1 = 2 * np.sum(p * labels) / total
    expected = np.where(labels == 1, (2 / total) * (1 - f1 / 2) * p,
                        (2 / total) * (f1 / 2) * (1 - p))
    got = losses.cross_entropy_weights(losses.sigmoid_smoothed_f1_loss, logits, labels,
                                       kind="sigmoid", batch_level=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_f1_weighted_cross_entropy_weighs_positives_by_two_minus_f1_over_f1():
    logits, labels = _binary_problem(6)
    p = _np_sigmoid(logits)
    half_f1 = np.sum(p * labels) / np.sum(p + labels)
    expected = -(1 - half_f1) * labels * np.log(p) - half_f1 * (1 - labels) * np.log(1 - p)
    got = losses.sigmoid_f1_weighted_cross_entropy(logits, labels)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7)
    weights = losses.cross_entropy_weights(losses.sigmoid_f1_weighted_cross_entropy, logits,
                                           labels, kind="sigmoid")  # F1 under stop-gradient
    np.testing.assert_allclose(weights, np.where(labels == 1, 1 - half_f1, half_f1), rtol=1e-4)


def _softmax_problem(seed, batch=30, num_classes=4):
    rng = np.random.default_rng(seed)
    labels = np.arange(batch) % num_classes
    logits = (2 * rng.standard_normal((batch, num_classes))).astype(np.float32)
    return logits, labels


def test_macro_smoothed_f1_is_optax_dice_over_the_batch_and_micro_is_smoothed_accuracy():
    logits, labels = _softmax_problem(7)
    one_hot = np.eye(4)[labels]
    dice = optax.losses.dice_loss(logits[None], one_hot[None], smooth=0.0)
    np.testing.assert_allclose(losses.softmax_smoothed_f1_loss(logits, labels), dice[0], rtol=1e-5)
    micro = losses.softmax_smoothed_f1_loss(logits, labels, average="micro")
    np.testing.assert_allclose(
        micro, 1 + np.mean(losses.softmax_smoothed_accuracy_loss(logits, labels)), rtol=1e-5)


@pytest.mark.slow
def test_smoothed_f1_skips_classes_with_zero_support_and_is_safe_at_zero_over_zero():
    logits, labels = _softmax_problem(8)
    labels = np.where(labels == 3, 0, labels)
    mask = np.ones_like(logits, bool)
    mask[:, 3] = False  # class 3: no label, no probability -> T_3 = 0, skipped
    p = np.exp(logits[:, :3]) / np.exp(logits[:, :3]).sum(-1, keepdims=True)
    one_hot = np.eye(3)[labels]
    f1 = 2 * (p * one_hot).sum(0) / (p + one_hot).sum(0)
    fn = lambda s: losses.softmax_smoothed_f1_loss(s, labels, where=mask)  # noqa: E731
    np.testing.assert_allclose(fn(logits), 1 - f1.mean(), rtol=1e-5)
    assert np.all(np.isfinite(jax.grad(fn)(logits)))
    empty = losses.sigmoid_smoothed_f1_loss(np.full(4, -1e4, np.float32), np.zeros(4))
    assert empty == 0.0
    assert np.all(np.isfinite(jax.grad(losses.sigmoid_smoothed_f1_loss)(
        np.full(4, -1e4, np.float32), np.zeros(4))))


SMOOTHED_F1 = {
    "macro": lambda s, y, **kw: losses.softmax_smoothed_f1_loss(s, y, **kw),
    "micro": lambda s, y, **kw: losses.softmax_smoothed_f1_loss(s, y, average="micro", **kw),
}


def _np_softmax(logits):
    logits = np.asarray(logits, np.float64)
    exps = np.exp(logits - logits.max(-1, keepdims=True))
    return exps / exps.sum(-1, keepdims=True)


def _np_macro_f1_loss(logits, labels, num_classes):
    p, one_hot = _np_softmax(logits), np.eye(num_classes)[labels]
    totals = (p + one_hot).sum(0)
    return 1 - np.mean(2 * (p * one_hot).sum(0) / totals)


@pytest.mark.parametrize(("average", "bad"), [("macro", np.nan), ("micro", np.inf)])
def test_smoothed_f1_is_nan_for_a_nan_or_inf_score_with_or_without_where(average, bad):
    loss = SMOOTHED_F1[average]
    logits, labels = _softmax_problem(12, batch=6)
    logits[2, 1] = bad
    for where in (None, np.ones(6, bool), np.ones((6, 4), bool)):
        value, grads = jax.jit(jax.value_and_grad(lambda s, w=where: loss(s, labels, where=w)))(
            logits)
        assert np.isnan(value)
        assert np.all(np.isnan(grads))
    # A NaN in an example that `where` leaves out changes nothing.
    keep = np.arange(6) != 2
    np.testing.assert_allclose(loss(logits, labels, where=keep),
                               loss(logits[keep], labels[keep]), rtol=1e-6)


def test_binary_f1_losses_are_nan_for_a_nan_logit_or_label_but_skip_masked_ones():
    logits, labels = _binary_problem(13, size=8)
    for z, y in ((np.where(np.arange(8) == 3, np.nan, logits), labels),
                 (logits, np.where(np.arange(8) == 5, np.nan, labels))):
        z = z.astype(np.float32)
        value, grads = jax.value_and_grad(losses.sigmoid_smoothed_f1_loss)(z, y)
        assert np.isnan(value)
        assert np.all(np.isnan(grads))
        assert np.all(np.isnan(losses.sigmoid_f1_weighted_cross_entropy(z, y)))
    bad = np.where(np.arange(8) == 3, np.nan, logits).astype(np.float32)
    keep = np.arange(8) != 3
    p = _np_sigmoid(logits[keep])
    expected = 1 - 2 * np.sum(p * labels[keep]) / np.sum(p + labels[keep])
    np.testing.assert_allclose(losses.sigmoid_smoothed_f1_loss(bad, labels, where=keep),
                               expected, rtol=1e-5)
    weighted = losses.sigmoid_f1_weighted_cross_entropy(bad, labels, where=keep)
    np.testing.assert_allclose(weighted[keep], losses.sigmoid_f1_weighted_cross_entropy(
        logits[keep], labels[keep]), rtol=1e-6)
    assert weighted[3] == 0.0


@pytest.mark.parametrize("average", list(SMOOTHED_F1))
def test_f1_losses_of_an_empty_or_fully_masked_batch_are_zero_with_a_zero_gradient(average):
    loss = SMOOTHED_F1[average]
    assert loss(np.zeros((0, 4), np.float32), np.zeros(0, np.uint8)) == 0.0
    assert losses.sigmoid_smoothed_f1_loss(np.zeros((0, 3), np.float32), np.zeros((0, 3))) == 0.0
    logits, labels = _softmax_problem(14, batch=6)
    for where in (np.zeros(6, bool), np.zeros((6, 4), bool)):
        value, grads = jax.value_and_grad(lambda s, w=where: loss(s, labels, where=w))(logits)
        assert value == 0.0
        np.testing.assert_array_equal(grads, 0.0)
    z, y = _binary_problem(15, size=8)
    value, grads = jax.value_and_grad(losses.sigmoid_smoothed_f1_loss)(
        z, y, where=np.zeros(8, bool))
    assert value == 0.0
    np.testing.assert_array_equal(grads, 0.0)


def test_smoothed_f1_and_weights_reject_labels_out_of_range_and_give_nan_when_traced():
    logits, labels = _softmax_problem(16, batch=6)
    for bad in (4, -1, 200):
        wrong = labels.copy()
        wrong[3] = bad
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, 4\).*got {bad} at"):
            losses.softmax_smoothed_f1_loss(logits, wrong)
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, 4\).*got {bad} at"):
            losses.cross_entropy_weights(lambda s, y: jnp.sum(s), logits, wrong)
        value, grads = jax.jit(jax.value_and_grad(losses.softmax_smoothed_f1_loss),
                               static_argnames=())(logits, wrong)
        assert np.isnan(value) and np.all(np.isnan(grads))
        weights = jax.jit(lambda s, y: losses.cross_entropy_weights(
            losses.softmax_smoothed_accuracy_loss, s, y))(logits, wrong)
        keep = np.arange(6) != 3
        assert np.isnan(weights[3])
        np.testing.assert_allclose(weights[keep], _np_softmax(logits)[keep, labels[keep]],
                                   rtol=1e-5)
    # Padding: a bad label in an example that `where` leaves out is not an error.
    wrong = labels.copy()
    wrong[3] = -1
    keep = np.arange(6) != 3
    expected = _np_macro_f1_loss(logits[keep], labels[keep], 4)
    np.testing.assert_allclose(losses.softmax_smoothed_f1_loss(logits, wrong, where=keep), expected,
                               rtol=1e-5)
    np.testing.assert_allclose(jax.jit(losses.softmax_smoothed_f1_loss)(logits, wrong, where=keep),
                               expected, rtol=1e-5)


@pytest.mark.parametrize(("dtype", "num_classes"), [(np.uint8, 300), (np.int8, 200)])
def test_smoothed_f1_and_weights_accept_labels_of_any_integer_dtype(dtype, num_classes):
    rng = np.random.default_rng(17)
    labels = np.array([0, 5, np.iinfo(dtype).max, 3, 5, 1], dtype)
    logits = rng.standard_normal((6, num_classes)).astype(np.float32)
    logits[:, (5 + 256) % num_classes] += 6.0  # where a wrapped uint8 one-hot would land

    @jax.jit
    def both(s, y):
        return (losses.softmax_smoothed_f1_loss(s, y),
                losses.cross_entropy_weights(losses.softmax_smoothed_accuracy_loss, s, y))

    loss, weights = both(logits, labels)
    expected = _np_macro_f1_loss(logits, labels.astype(np.int64), num_classes)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(weights, _np_softmax(logits)[np.arange(6), labels], rtol=1e-4)


def test_smoothed_f1_and_weights_in_bfloat16_and_float64():
    logits, labels = _softmax_problem(19, batch=6)
    one_hot = np.eye(4)[labels]

    @jax.jit
    def all_three(s, y):
        return (losses.softmax_smoothed_f1_loss(s, y),
                losses.softmax_smoothed_f1_loss(s, y, average="micro"),
                losses.cross_entropy_weights(losses.softmax_smoothed_accuracy_loss, s, y))

    def reference(s):
        p = _np_softmax(s)
        return (_np_macro_f1_loss(s, labels, 4), 1 - np.mean(np.sum(p * one_hot, -1)),
                p[np.arange(6), labels])

    half = jnp.asarray(logits, jnp.bfloat16)
    got = all_three(half, labels)
    assert [x.dtype for x in got] == [jnp.bfloat16, jnp.bfloat16, jnp.float32]
    for x, y in zip(got, reference(np.asarray(half, np.float64)), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), y, rtol=2e-2)
    with enable_x64():
        got = all_three(jnp.asarray(logits, jnp.float64), labels.astype(np.int64))
        assert all(x.dtype == jnp.float64 for x in got)
        for x, y in zip(got, reference(logits), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-10)


@pytest.mark.slow
def test_binary_and_f1_losses_work_in_forward_mode_and_under_every_transformation():
    z, y = _binary_problem(20, size=8)
    logits, labels = _softmax_problem(21, batch=6)
    where = np.ones((6, 4), bool)
    where[1, 2] = False

    def stacked(names):  # one compilation for several losses
        return lambda t: jnp.concatenate([BINARY_LOSSES[n](t, y).ravel() for n in names])

    with enable_x64():
        # Finite differences cannot check the F1-weighted loss (F1 under stop-gradient).
        check_transforms(stacked(["hard_truncated", "soft_truncated", "smoothed_accuracy",
                                  "smoothed_f1"]), jnp.asarray(z, jnp.float64))
        check_transforms(stacked(["f1_weighted"]), jnp.asarray(z, jnp.float64),
                         finite_differences=False)
        check_transforms(lambda s: jnp.stack([
            losses.softmax_smoothed_f1_loss(s, labels, where=where),
            losses.softmax_smoothed_f1_loss(s, labels, average="micro")]),
            jnp.asarray(logits, jnp.float64))
