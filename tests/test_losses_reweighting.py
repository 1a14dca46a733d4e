"""Binary losses, smoothed F1 and `cross_entropy_weights` of `jaxtricks.losses` (spec 1.1-1.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64
from jax.test_util import check_grads

from jaxtricks import losses


def _binary_problem(seed=0, size=24):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal(size)).astype(np.float32)
    labels = (rng.random(size) < 0.3).astype(np.float32)
    return logits, labels


def _np_sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


BINARY_LOSSES = {
    "hard_truncated": lambda z, y: losses.hard_truncated_cross_entropy(z, y, margin=0.6),
    "soft_truncated": lambda z, y: losses.soft_truncated_cross_entropy(z, y, steepness=3.0),
    "smoothed_accuracy": losses.binary_smoothed_accuracy_loss,
    "f1_weighted": losses.binary_f1_weighted_cross_entropy,
    "smoothed_f1": losses.binary_smoothed_f1_loss,
}


def test_soft_truncation_at_steepness_one_is_optax_focal_with_gamma_one():
    logits, labels = _binary_problem(1)

    def both(z):
        return (losses.soft_truncated_cross_entropy(z, labels, steepness=1.0),
                optax.sigmoid_focal_loss(z, labels, gamma=1.0))

    ours, theirs = jax.jit(both)(logits)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    grads = jax.jit(jax.jacrev(lambda z: [x.sum() for x in both(z)]))(logits)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_hard_truncation_matches_the_step_function_definition():
    logits, labels = _binary_problem(2, size=200)
    p, m = _np_sigmoid(logits), 0.6
    done = ((labels == 1) & (p > m)) | ((labels == 0) & (p < 1 - m))
    ce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    got = losses.hard_truncated_cross_entropy(logits, labels, margin=m)
    np.testing.assert_allclose(got, np.where(done, 0.0, ce), rtol=2e-5, atol=1e-6)
    grads = jax.grad(lambda z: losses.hard_truncated_cross_entropy(z, labels, margin=m).sum())(
        logits)
    np.testing.assert_array_equal(np.asarray(grads)[done], 0.0)
    np.testing.assert_allclose(np.asarray(grads)[~done], (p - labels)[~done], rtol=2e-5,
                               atol=1e-6)


def test_binary_smoothed_accuracy_is_minus_the_probability_of_the_label():
    logits, labels = _binary_problem(3)
    p = _np_sigmoid(logits)
    np.testing.assert_allclose(losses.binary_smoothed_accuracy_loss(logits, labels),
                               -(labels * p + (1 - labels) * (1 - p)), rtol=1e-6)


def test_binary_smoothed_f1_is_optax_binary_dice_over_the_batch_with_no_smoothing():
    logits, labels = _binary_problem(4)
    p = _np_sigmoid(logits)
    expected = 1 - 2 * np.sum(p * labels) / np.sum(p + labels)
    np.testing.assert_allclose(losses.binary_smoothed_f1_loss(logits, labels), expected, rtol=1e-5)
    dice = optax.losses.binary_dice_loss(logits[None], labels[None], smooth=0.0)
    np.testing.assert_allclose(losses.binary_smoothed_f1_loss(logits, labels), dice[0], rtol=1e-5)


def test_smoothed_f1_gradient_is_the_spec_reweighted_cross_entropy():
    # Spec 1.4: w_i = (2/T)(1 - F1/2) p_i (positives), (2/T)(F1/2)(1 - p_i) (negatives).
    logits, labels = _binary_problem(5)
    p = _np_sigmoid(logits)
    total = np.sum(p + labels)
    f1 = 2 * np.sum(p * labels) / total
    expected = np.where(labels == 1, (2 / total) * (1 - f1 / 2) * p,
                        (2 / total) * (f1 / 2) * (1 - p))
    got = losses.cross_entropy_weights(losses.binary_smoothed_f1_loss, logits, labels,
                                       kind="sigmoid")
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_f1_weighted_cross_entropy_weighs_positives_by_two_minus_f1_over_f1():
    logits, labels = _binary_problem(6)
    p = _np_sigmoid(logits)
    half_f1 = np.sum(p * labels) / np.sum(p + labels)
    expected = -(1 - half_f1) * labels * np.log(p) - half_f1 * (1 - labels) * np.log(1 - p)
    got = losses.binary_f1_weighted_cross_entropy(logits, labels)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7)
    weights = losses.cross_entropy_weights(losses.binary_f1_weighted_cross_entropy, logits,
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
    np.testing.assert_allclose(losses.smoothed_f1_loss(logits, labels), dice[0], rtol=1e-5)
    micro = losses.smoothed_f1_loss(logits, labels, average="micro")
    np.testing.assert_allclose(micro, 1 + np.mean(losses.smoothed_accuracy_loss(logits, labels)),
                               rtol=1e-5)


def test_smoothed_f1_skips_classes_with_zero_support_and_is_safe_at_zero_over_zero():
    logits, labels = _softmax_problem(8)
    labels = np.where(labels == 3, 0, labels)
    mask = np.ones_like(logits, bool)
    mask[:, 3] = False  # class 3: no label, no probability -> T_3 = 0, skipped
    p = np.exp(logits[:, :3]) / np.exp(logits[:, :3]).sum(-1, keepdims=True)
    one_hot = np.eye(3)[labels]
    f1 = 2 * (p * one_hot).sum(0) / (p + one_hot).sum(0)
    fn = lambda s: losses.smoothed_f1_loss(s, labels, where=mask)  # noqa: E731
    np.testing.assert_allclose(fn(logits), 1 - f1.mean(), rtol=1e-5)
    assert np.all(np.isfinite(jax.grad(fn)(logits)))
    empty = losses.binary_smoothed_f1_loss(np.full(4, -1e4, np.float32), np.zeros(4))
    assert empty == 0.0
    assert np.all(np.isfinite(jax.grad(losses.binary_smoothed_f1_loss)(
        np.full(4, -1e4, np.float32), np.zeros(4))))


@pytest.mark.parametrize("name", list(BINARY_LOSSES))
def test_binary_losses_are_finite_in_extremes_and_pass_check_grads(name):
    loss = BINARY_LOSSES[name]
    logits, labels = _binary_problem(9, size=8)
    extreme = np.where(np.arange(8) % 2 == 0, 1e4, -1e4).astype(np.float32)

    @jax.jit
    def values_and_grads(z):
        return loss(z, labels), jax.grad(lambda t: loss(t, labels).sum())(z)

    for dtype in (jnp.float32, jnp.bfloat16):
        values, grads = values_and_grads(jnp.asarray(extreme, dtype))
        assert values.dtype == dtype
        assert np.all(np.isfinite(np.asarray(values, np.float32)))
        assert np.all(np.isfinite(np.asarray(grads, np.float32)))
    batched = jax.vmap(lambda z: loss(z, labels))(np.stack([logits, -logits]))
    np.testing.assert_allclose(batched[1], loss(-logits, labels), rtol=1e-5, atol=1e-7)
    # Finite differences cannot check the piecewise hard truncation, nor the F1-weighted
    # loss, whose F1 is under stop-gradient (its weights are checked above).
    if name not in ("hard_truncated", "f1_weighted"):
        with enable_x64():
            check_grads(jax.jit(lambda z: loss(z, labels)), (jnp.asarray(logits, jnp.float64),),
                        order=1, modes=["rev"])


def test_cross_entropy_weights_recover_the_closed_forms_of_spec_1_1():
    p = np.linspace(0.01, 0.99, 40)
    logits = np.stack([np.log(p), np.log1p(-p)], -1)
    labels = np.zeros(40, np.int32)
    with enable_x64():
        def weights(fn):
            return losses.cross_entropy_weights(fn, jnp.asarray(logits), labels)

        gamma = 0.5
        got = jax.jit(lambda: (
            weights(lambda s, y: losses.softmax_focal_loss(s, y, gamma=gamma)),
            weights(optax.softmax_cross_entropy_with_integer_labels),
            weights(losses.smoothed_accuracy_loss),
            weights(lambda s, y: losses.softmax_hard_truncated_cross_entropy(s, y, margin=0.6)),
        ))()
    focal = (1 - p) ** gamma - gamma * p * (1 - p) ** (gamma - 1) * np.log(p)
    np.testing.assert_allclose(got[0], focal, rtol=1e-9)
    np.testing.assert_allclose(got[1], 1.0, rtol=1e-9)
    np.testing.assert_allclose(got[2], p, rtol=1e-9)
    np.testing.assert_allclose(got[3], (p <= 0.6).astype(float), atol=1e-12)


def test_cross_entropy_weights_project_other_losses_and_flag_vanishing_gradients():
    rng = np.random.default_rng(10)
    logits = rng.standard_normal((5, 4))
    labels = np.array([0, 1, 2, 3, 0])
    logits[4] = [1e4, 0, 0, 0]  # p_y = 1: the cross-entropy gradient is 0
    priors = np.array([0.6, 0.2, 0.15, 0.05])

    def la(s, y):
        return losses.logit_adjusted_softmax_cross_entropy(s, y, class_priors=priors)

    with enable_x64():
        got = losses.cross_entropy_weights(la, jnp.asarray(logits), labels)
        grads = np.asarray(jax.grad(lambda s: la(s, labels).sum())(jnp.asarray(logits)))
    shifted = logits - logits.max(-1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    c = p - np.eye(4)[labels]
    expected = (grads * c).sum(-1)[:4] / (c * c).sum(-1)[:4]
    np.testing.assert_allclose(got[:4], expected, rtol=1e-9)
    assert np.isnan(got[4])
    with pytest.raises(ValueError, match="kind must be one of"):
        losses.cross_entropy_weights(la, logits, labels, kind="tanh")


def test_binary_bad_arguments_raise_value_errors():
    logits, labels = _binary_problem(11)
    for margin in (0.0, 1.0):
        with pytest.raises(ValueError, match="margin must lie in"):
            losses.hard_truncated_cross_entropy(logits, labels, margin=margin)
    with pytest.raises(ValueError, match="steepness must lie in"):
        losses.soft_truncated_cross_entropy(logits, labels, steepness=-2.0)
    with pytest.raises(ValueError, match=r"labels must have shape \(24,\)"):
        losses.binary_smoothed_f1_loss(logits, labels[:3])
    with pytest.raises(ValueError, match="average must be one of"):
        losses.smoothed_f1_loss(logits.reshape(6, 4), np.zeros(6, int), average="weighted")
