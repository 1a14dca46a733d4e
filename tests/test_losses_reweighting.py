"""`cross_entropy_weights`: any loss measured as a re-weighted cross-entropy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64
from test_losses_binary import _binary_problem, check_transforms
from test_losses_f1 import _softmax_problem

from jaxtricks import losses


def test_cross_entropy_weights_recover_the_closed_forms_of_losses_of_p_y():
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
            weights(losses.softmax_smoothed_accuracy_loss),
            weights(lambda s, y: losses.softmax_hard_truncated_cross_entropy(s, y, margin=0.6)),
        ))()
    focal = (1 - p) ** gamma - gamma * p * (1 - p) ** (gamma - 1) * np.log(p)
    np.testing.assert_allclose(got[0], focal, rtol=1e-9)
    np.testing.assert_allclose(got[1], 1.0, rtol=1e-9)
    np.testing.assert_allclose(got[2], p, rtol=1e-9)
    np.testing.assert_allclose(got[3], (p <= 0.6).astype(float), atol=1e-12)


@pytest.mark.slow
def test_cross_entropy_weights_project_other_losses_and_flag_vanishing_gradients():
    rng = np.random.default_rng(10)
    logits = rng.standard_normal((5, 4))
    labels = np.array([0, 1, 2, 3, 0])
    logits[4] = [1e4, 0, 0, 0]  # p_y = 1: the cross-entropy gradient is 0
    priors = np.array([0.6, 0.2, 0.15, 0.05])

    def la(s, y):
        return losses.softmax_logit_adjusted_cross_entropy(s, y, class_priors=priors)

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


@pytest.mark.slow
def test_cross_entropy_weights_work_in_forward_mode_and_under_every_transformation():
    logits, labels = _softmax_problem(22, batch=6)
    z, y = _binary_problem(23, size=8)

    with enable_x64():  # forward over reverse mode: derivatives of gradients
        check_transforms(
            lambda s: losses.cross_entropy_weights(
                lambda t, u: losses.softmax_focal_loss(t, u, gamma=2.0), s, labels),
            jnp.asarray(logits, jnp.float64))

        def sigmoid_weights(t):
            return losses.cross_entropy_weights(losses.sigmoid_smoothed_f1_loss, t, y,
                                                kind="sigmoid", batch_level=True)

        z = jnp.asarray(z, jnp.float64)
        np.testing.assert_allclose(jax.jit(jax.jacfwd(sigmoid_weights))(z),
                                   jax.jit(jax.jacrev(sigmoid_weights))(z), rtol=1e-9,
                                   atol=1e-12)


def test_cross_entropy_weights_accept_tuple_axes_like_the_losses():
    logits, labels = _softmax_problem(24, batch=6)
    expected = losses.cross_entropy_weights(losses.softmax_smoothed_accuracy_loss, logits, labels)
    for axis in ((-1,), (1,)):
        got = losses.cross_entropy_weights(losses.softmax_smoothed_accuracy_loss, logits, labels,
                                           axis=axis)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    transposed = losses.cross_entropy_weights(
        lambda s, y: losses.softmax_smoothed_accuracy_loss(s, y, axis=0), logits.T, labels, axis=0)
    np.testing.assert_allclose(transposed, expected, rtol=1e-6)
    split = logits.reshape(6, 2, 2)  # classes over two axes, flattened in order

    def loss(s, y):
        return losses.softmax_smoothed_accuracy_loss(s, y, axis=(1, 2))

    got = losses.cross_entropy_weights(loss, split, labels, axis=(1, 2))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_cross_entropy_weights_refuse_a_loss_fn_that_averages_naming_the_shapes():
    logits, labels = _softmax_problem(25, batch=6)
    with pytest.raises(ValueError, match=r"loss_fn must return per-example losses of shape "
                                         r"\(6,\).*got shape \(\)"):
        losses.cross_entropy_weights(
            lambda s, y: jnp.mean(losses.softmax_smoothed_accuracy_loss(s, y)), logits, labels)
    z, y = _binary_problem(26, size=8)
    with pytest.raises(ValueError, match=r"loss_fn must return per-example losses of shape "
                                         r"\(8,\).*got shape \(\)"):
        losses.cross_entropy_weights(
            lambda t, u: jnp.mean(losses.sigmoid_soft_truncated_cross_entropy(t, u)), z, y,
            kind="sigmoid")
    with pytest.raises(ValueError, match=r"loss_fn must return a batch-level scalar of "
                                         r"shape \(\).*got shape \(6,\)"):
        losses.cross_entropy_weights(losses.softmax_smoothed_accuracy_loss, logits, labels,
                                     batch_level=True)
    # A batch-level scalar by nature is accepted when declared, under jit too.
    weights = jax.jit(lambda s: losses.cross_entropy_weights(
        losses.softmax_smoothed_f1_loss, s, labels, batch_level=True))(logits)
    assert weights.shape == (6,) and np.all(np.isfinite(weights))


@pytest.mark.slow
def test_cross_entropy_weights_with_where_compare_with_the_masked_cross_entropy():
    logits, labels = _softmax_problem(27, batch=6)
    mask = np.ones(logits.shape, bool)
    mask[:, 3] = labels == 3  # class 3 left out except where it is the target
    mask[4] = False  # an example left out entirely: weight 0, as its loss

    def focal(s, y):
        return losses.softmax_focal_loss(s, y, gamma=1.5, where=mask)

    with enable_x64():
        got = np.asarray(losses.cross_entropy_weights(
            focal, jnp.asarray(logits, jnp.float64), labels, where=mask))
    keep = np.arange(6) != 4
    masked = np.where(mask, logits.astype(np.float64), -np.inf)[keep]
    p = np.exp(masked - masked.max(-1, keepdims=True))
    p_y = (p / p.sum(-1, keepdims=True))[np.arange(5), labels[keep]]
    expected = (1 - p_y) ** 1.5 - 1.5 * p_y * (1 - p_y) ** 0.5 * np.log(p_y)
    np.testing.assert_allclose(got[keep], expected, rtol=1e-9)
    assert got[4] == 0.0
    z, y = _binary_problem(28, size=8)
    keep = np.arange(8) % 3 != 0
    weights = losses.cross_entropy_weights(
        lambda t, u: losses.sigmoid_soft_truncated_cross_entropy(t, u, steepness=1.0, where=keep),
        z, y, kind="sigmoid", where=keep)
    full = losses.cross_entropy_weights(
        lambda t, u: losses.sigmoid_soft_truncated_cross_entropy(t, u, steepness=1.0), z, y,
        kind="sigmoid")
    np.testing.assert_allclose(weights[keep], full[keep], rtol=1e-6)
    np.testing.assert_array_equal(weights[~keep], 0.0)
