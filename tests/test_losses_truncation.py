"""Su's hard and soft truncated cross-entropies (`jaxtricks.losses._truncation`)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64
from jax.test_util import check_grads
from test_losses import _np_log_softmax, _np_target, _problem
from test_losses_binary import _binary_problem, _np_sigmoid

from jaxtricks import losses


def test_truncated_losses_match_their_definitions():
    logits, labels = _problem(14, batch=20)
    log_p = _np_target(_np_log_softmax(logits), labels)
    hard = losses.softmax_hard_truncated_cross_entropy(logits, labels, margin=0.6)
    np.testing.assert_allclose(hard, np.where(np.exp(log_p) <= 0.6, -log_p, 0.0), rtol=1e-6)
    soft = losses.softmax_soft_truncated_cross_entropy(logits, labels, steepness=3.0)
    np.testing.assert_allclose(soft, _np_su_soft_truncated(logits, labels, 3.0), rtol=2e-5)


def _np_su_soft_truncated(logits, labels, steepness, mask=None):
    """`-softmax(-K s)_y log softmax(s)_y` in float64 (kexue.fm/archives/4733, "多分类")."""
    logits = np.asarray(logits, np.float64)
    if mask is not None:
        logits = np.where(mask, logits, np.nan)  # left out of both softmaxes below

    def log_softmax_target(s):
        top = np.nanmax(s, -1, keepdims=True)
        log_norm = np.log(np.nansum(np.exp(s - top), -1, keepdims=True)) + top
        return _np_target(s - log_norm, labels)

    return -np.exp(log_softmax_target(-steepness * logits)) * log_softmax_target(logits)


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_softmax_soft_truncation_is_su_multi_class_formula_in_float64(num_classes):
    # The margin form -sigmoid(-K (s_y - max_{i != y} s_i)) log p_y it replaced agrees
    # with this one at two classes only.
    logits, labels = _problem(30 + num_classes, batch=12, num_classes=num_classes)
    mask = np.random.default_rng(num_classes).random(logits.shape) < 0.8
    mask[np.arange(12), labels] = True
    loss = jax.jit(losses.softmax_soft_truncated_cross_entropy)  # one compile per dtype
    for steepness in (0.0, 0.5, 1.0, 2.5, 7.0):
        got = loss(logits, labels, steepness=steepness)
        expected = _np_su_soft_truncated(logits, labels, steepness)
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7)
        with enable_x64():
            wide = loss(jnp.asarray(logits, jnp.float64), labels, steepness=steepness,
                        where=mask)
            np.testing.assert_allclose(
                wide, _np_su_soft_truncated(logits, labels, steepness, mask), rtol=1e-12)


@pytest.mark.parametrize("num_classes", [3, 7])
@pytest.mark.slow
def test_softmax_soft_truncation_derivatives_match_finite_differences(num_classes):
    logits, labels = _problem(40 + num_classes, batch=5, num_classes=num_classes)
    with enable_x64():
        s = jnp.asarray(logits, jnp.float64)
        check_grads(jax.jit(lambda t: losses.softmax_soft_truncated_cross_entropy(
            t, labels, steepness=1.5)), (s,), order=2, modes=["fwd", "rev"])
        check_grads(jax.jit(lambda k: losses.softmax_soft_truncated_cross_entropy(
            s, labels, steepness=k)), (jnp.asarray(0.7),), order=1, modes=["fwd", "rev"])


def test_softmax_soft_truncation_is_finite_for_huge_logits_and_nan_for_nan_ones():
    logits, labels = _problem(50, batch=6, num_classes=7)
    huge = np.where(logits > 0, 1e4, -1e4).astype(np.float32)
    huge[0] = 1e4  # ties
    value_and_grad = jax.jit(jax.value_and_grad(lambda s, k: jnp.sum(
        losses.softmax_soft_truncated_cross_entropy(s, labels, steepness=k))))
    for dtype in (jnp.float32, jnp.bfloat16):
        for steepness in (1.0, 7.0):
            value, grads = value_and_grad(jnp.asarray(huge, dtype), steepness)
            assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grads, float)))
    dirty = logits.copy()
    dirty[2, 4] = np.nan
    values = jax.jit(losses.softmax_soft_truncated_cross_entropy)(dirty, labels)
    assert np.isnan(values[2]) and np.all(np.isfinite(np.delete(np.asarray(values), 2)))


def test_hard_truncation_gives_ties_half_weight_as_the_post():
    # kexue.fm/archives/4733: theta(0) = 1/2 (the Keras snippet's (sign(t) + 1) / 2).
    def value_and_grad(fn, logits, labels):
        return jax.jit(jax.value_and_grad(lambda z: jnp.sum(fn(z, labels))))(
            jnp.asarray(logits))

    z = np.zeros(2, np.float32)  # p = 1/2 = m: a tie for the positive and the negative
    value, grad = value_and_grad(lambda t, y: losses.sigmoid_hard_truncated_cross_entropy(
        t, y, margin=0.5), z, np.array([1.0, 0.0]))
    np.testing.assert_allclose(value, np.log(2.0), rtol=1e-6)  # 2 x (1/2) log 2
    np.testing.assert_allclose(grad, [-0.25, 0.25], rtol=1e-6)  # (1/2)(p - y)
    for num_classes, margin in ((2, 0.5), (4, 0.25)):  # equal logits: p_y = 1/C = m
        value, grad = value_and_grad(lambda t, y, m=margin: (
            losses.softmax_hard_truncated_cross_entropy(t, y, margin=m)),
            np.zeros((1, num_classes), np.float32), np.array([1]))
        np.testing.assert_allclose(value, 0.5 * np.log(num_classes), rtol=1e-6)
        expected = 0.5 * (np.full(num_classes, 1 / num_classes) - np.eye(num_classes)[1])
        np.testing.assert_allclose(grad[0], expected, rtol=1e-6, atol=1e-7)


def test_two_class_truncations_equal_the_binary_ones():
    rng = np.random.default_rng(15)
    logits = rng.standard_normal((30, 2)).astype(np.float32) * 3
    labels = rng.integers(0, 2, 30)
    z = logits[:, 1] - logits[:, 0]
    two_class, binary = jax.jit(lambda s, z: (
        (losses.softmax_hard_truncated_cross_entropy(s, labels, margin=0.7),
         losses.softmax_soft_truncated_cross_entropy(s, labels, steepness=2.5)),
        (losses.sigmoid_hard_truncated_cross_entropy(z, labels, margin=0.7),
         losses.sigmoid_soft_truncated_cross_entropy(z, labels, steepness=2.5))))(logits, z)
    for got, want in zip(two_class, binary, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_soft_truncation_at_steepness_one_is_optax_focal_with_gamma_one():
    logits, labels = _binary_problem(1)

    def both(z):
        return (losses.sigmoid_soft_truncated_cross_entropy(z, labels, steepness=1.0),
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
    got, vjp = jax.vjp(jax.jit(
        lambda z: losses.sigmoid_hard_truncated_cross_entropy(z, labels, margin=m)), logits)
    np.testing.assert_allclose(got, np.where(done, 0.0, ce), rtol=2e-5, atol=1e-6)
    (grads,) = vjp(jnp.ones_like(got))  # the gradient of the sum
    np.testing.assert_array_equal(np.asarray(grads)[done], 0.0)
    np.testing.assert_allclose(np.asarray(grads)[~done], (p - labels)[~done], rtol=2e-5,
                               atol=1e-6)
