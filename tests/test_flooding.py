"""Flooding, iFlood and the gradient-norm penalty (spec 3): sign of the flooded gradient,
closed forms on a quadratic, and Su's descent/ascent = gradient-norm-penalty identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks import flood, gradient_norm_penalty, iflood

# A quadratic J(theta) = 0.5 theta^T A theta + c: grad J = A theta, Hessian A.
A = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]])
C = 0.05


def quadratic(theta):
    return 0.5 * theta @ A @ theta + C


def test_flood_gradient_is_the_loss_gradient_above_the_level_and_its_negative_below():
    theta = jnp.array([1.0, -0.5, 0.3])
    loss = quadratic(theta)
    above, below = 0.5 * loss, 2.0 * loss
    np.testing.assert_allclose(
        jax.grad(lambda t: flood(quadratic(t), level=above))(theta), A @ theta, rtol=1e-6
    )
    np.testing.assert_allclose(
        jax.grad(lambda t: flood(quadratic(t), level=below))(theta), -(A @ theta), rtol=1e-6
    )


def test_flood_values_never_go_below_the_level_and_level_zero_is_the_identity():
    losses = jnp.array([0.0, 0.05, 0.1, 0.3, 2.0])
    flooded = jax.vmap(lambda loss: flood(loss, level=0.1))(losses)
    np.testing.assert_allclose(flooded, [0.2, 0.15, 0.1, 0.3, 2.0], rtol=1e-6)
    np.testing.assert_array_equal(jax.vmap(lambda loss: flood(loss, level=0.0))(losses), losses)


def test_flood_at_a_tie_takes_the_descent_direction():
    # Documented convention: JAX's derivative of abs at 0 is +1.
    np.testing.assert_array_equal(jax.grad(lambda x: flood(x, level=0.25))(0.25), 1.0)


def test_flood_level_may_be_traced_under_jit_and_vmap():
    levels = jnp.array([0.0, 0.5, 1.0])
    values = jax.jit(jax.vmap(lambda level: flood(jnp.asarray(0.7), level=level)))(levels)
    np.testing.assert_allclose(values, [0.7, 0.7, 1.3], rtol=1e-6)


def test_iflood_flips_the_gradient_per_example():
    losses = jnp.array([0.05, 0.5])
    grads = jax.grad(lambda x: jnp.sum(iflood(x, level=0.1)))(losses)
    np.testing.assert_array_equal(grads, [-1.0, 1.0])


def test_bad_flood_arguments_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="level"):
        flood(jnp.asarray(1.0), level=-0.1)
    with pytest.raises(ValueError, match="level"):
        iflood(jnp.ones(3), level=float("inf"))
    with pytest.raises(ValueError, match="loss"):
        flood(jnp.ones(3), level=0.1)  # per-example losses: that is iflood
    with pytest.raises(ValueError, match="coefficient"):
        gradient_norm_penalty(quadratic, coefficient=-1.0)


def test_gradient_norm_penalty_matches_the_closed_form_on_a_quadratic():
    theta = jnp.array([1.0, -0.5, 0.3])
    penalised = gradient_norm_penalty(quadratic, coefficient=0.3)
    gradient = A @ theta
    # J + lambda ||A theta||^2, whose gradient is A theta + 2 lambda A^2 theta.
    np.testing.assert_allclose(
        penalised(theta), quadratic(theta) + 0.3 * gradient @ gradient, rtol=1e-6
    )
    np.testing.assert_allclose(
        jax.grad(penalised)(theta), gradient + 2 * 0.3 * A @ A @ theta, rtol=1e-6
    )


def test_gradient_norm_penalty_equals_explicit_double_backprop_on_a_network():
    keys = jax.random.split(jax.random.key(0), 3)
    params = {"w": jax.random.normal(keys[0], (4, 3)), "v": jax.random.normal(keys[1], (3,))}
    inputs = jax.random.normal(keys[2], (8, 4))

    def loss_fn(p, x):
        return jnp.mean(jnp.tanh(x @ p["w"]) @ p["v"] ** 2), {"batch": x.shape[0]}

    def explicit(p, x):  # grad of grad, written out: sum of squared partial derivatives
        grads = jax.grad(lambda q: loss_fn(q, x)[0])(p)
        return loss_fn(p, x)[0] + 0.2 * sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))

    penalised = gradient_norm_penalty(loss_fn, coefficient=0.2, has_aux=True)
    (value, aux), grads = jax.jit(jax.value_and_grad(penalised, has_aux=True))(params, inputs)
    assert aux == {"batch": 8}
    np.testing.assert_allclose(value, explicit(params, inputs), rtol=1e-6)
    expected = jax.grad(explicit)(params, inputs)
    for name in params:
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-5, atol=1e-7)


def test_a_flooded_descent_then_ascent_pair_is_a_step_on_the_gradient_norm_penalty():
    # Spec 3.4: with J(theta0) > b > J(theta1), theta2 = theta0 - lr^2 A^2 theta0 exactly
    # on a quadratic = theta0 - 2 lr * grad[(lr / 4) ||grad J||^2]: two steps of rate lr
    # on the penalty with coefficient lr / 4.
    learning_rate = 0.2
    theta0 = jnp.array([0.6, -0.4, 0.5])
    # A level between J before and after a plain descent step.
    level = 0.5 * (quadratic(theta0) + quadratic(theta0 - learning_rate * A @ theta0))
    flooded_grad = jax.grad(lambda t: flood(quadratic(t), level=level))
    theta1 = theta0 - learning_rate * flooded_grad(theta0)
    assert quadratic(theta0) > level > quadratic(theta1)
    theta2 = theta1 - learning_rate * flooded_grad(theta1)
    np.testing.assert_allclose(
        theta2, theta0 - learning_rate**2 * A @ A @ theta0, rtol=1e-5, atol=1e-7
    )
    penalty_grad = jax.grad(
        gradient_norm_penalty(quadratic, coefficient=learning_rate / 4)
    )(theta0) - jax.grad(quadratic)(theta0)
    np.testing.assert_allclose(
        theta2, theta0 - 2 * learning_rate * penalty_grad, rtol=1e-5, atol=1e-7
    )
