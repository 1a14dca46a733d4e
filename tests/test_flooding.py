"""Flooding, iFlood and the gradient-norm penalty (kexue.fm/archives/7643,
arXiv:2002.08709): sign of the flooded gradient, closed forms on a quadratic, and Su's
descent/ascent = gradient-norm-penalty identity."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compat import enable_x64
from flax import nnx
from jax.test_util import check_grads

from jaxtricks import flood, gradient_norm_penalty, iflood

# A quadratic J(theta) = 0.5 theta^T A theta + c: grad J = A theta, Hessian A.
A = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]])
C = 0.05


def quadratic(theta):
    theta = theta.astype(np.promote_types(theta.dtype, A.dtype))  # explicit: strict promotion
    return 0.5 * theta @ A.astype(theta.dtype) @ theta + C


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
    # Documented convention: the derivative at the level is +1.
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


@pytest.mark.slow
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
        scale = np.max(np.abs(expected[name]))  # float32 rounding relative to the leaf
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-5, atol=1e-6 * scale)


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


# ---------------------------------------------------------------- nnx models, int leaves


class CountingModel(nnx.Module):
    """A linear layer, dropout, an int32 table it reads and an int32 call counter it writes."""

    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 2, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        self.table = nnx.Variable(jnp.arange(6, dtype=jnp.int32).reshape(3, 2))
        self.calls = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        self.calls[...] += 1
        return self.dropout(self.linear(x)) * (0.05 * jnp.sum(self.table[...]).astype(x.dtype))


def nnx_loss(model, x):
    return jnp.sum(jnp.tanh(model(x)) ** 2)


@pytest.mark.slow
def test_gradient_norm_penalty_differentiates_the_params_of_an_nnx_model_with_int_state():
    model = CountingModel(nnx.Rngs(0, dropout=1))
    x = jax.random.normal(jax.random.key(2), (4, 3))
    # Reference: explicit double back-prop on the split-off params, the rest (int table,
    # counter, RNG stream) copied, so the same dropout mask is drawn.
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def pure_loss(p):
        return nnx_loss(nnx.merge(graphdef, p, jax.tree.map(lambda a: a, rest)), x)

    def explicit(p):
        grads = jax.grad(pure_loss)(p)
        return pure_loss(p) + 0.3 * sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))

    expected, expected_grads = jax.value_and_grad(explicit)(params)
    penalised = gradient_norm_penalty(nnx_loss, coefficient=0.3)
    value, grads = nnx.value_and_grad(penalised)(model, x)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
                 nnx.state(grads, nnx.Param), expected_grads)
    # The loss ran once (loss and gradient share one forward), its writes were kept.
    assert int(model.calls[...]) == 1
    jitted = nnx.jit(lambda m, x: nnx.value_and_grad(penalised)(m, x))
    value_again, _ = jitted(model, x)
    assert int(model.calls[...]) == 2
    assert np.isfinite(value_again) and value_again != value  # a new dropout mask


@pytest.mark.slow
def test_gradient_norm_penalty_holds_integer_and_key_leaves_of_a_pytree_constant():
    params = {"w": jnp.array([1.0, -2.0, 0.5]), "step": jnp.array(3, jnp.int32),
              "codes": jnp.ones((2, 2), jnp.uint8), "key": jax.random.key(0)}

    def loss_fn(p, x):
        noise = jax.random.normal(p["key"], (3,))
        step, codes = p["step"].astype(x.dtype), p["codes"].astype(x.dtype)
        return jnp.sum(jnp.sin(p["w"] * x * step + noise)) + jnp.sum(codes)

    def float_only(w, x):
        return loss_fn({**params, "w": w}, x)

    x = jnp.asarray(0.7)
    penalised = gradient_norm_penalty(loss_fn, coefficient=0.2)
    gradient = jax.grad(float_only)(params["w"], x)
    np.testing.assert_allclose(penalised(params, x),
                               float_only(params["w"], x) + 0.2 * gradient @ gradient,
                               rtol=1e-6)
    grads = jax.grad(penalised, allow_int=True)(params, x)
    reference = gradient_norm_penalty(float_only, coefficient=0.2)
    np.testing.assert_allclose(grads["w"], jax.grad(reference)(params["w"], x), rtol=1e-6)


# ---------------------------------------------------------------- transformations, NaN


@pytest.mark.slow
def test_flooding_and_the_penalty_have_correct_forward_and_reverse_derivatives():
    with enable_x64():
        theta = jnp.array([0.6, -0.4, 0.5])
        penalised = gradient_norm_penalty(quadratic, coefficient=0.3)
        # Hessian of J + lambda ||A theta||^2 is A + 2 lambda A^2 (forward over reverse).
        np.testing.assert_allclose(jax.jit(jax.hessian(penalised))(theta),
                                   A + 2 * 0.3 * A @ A, rtol=1e-6)
        for fn, order in (
            (penalised, 2),
            (lambda t: flood(quadratic(t), level=0.05), 1),   # below the level
            (lambda t: jnp.sum(iflood(t**2, level=0.2)), 1),  # per example: both sides
        ):
            check_grads(jax.jit(fn), (theta,), order=order, modes=("fwd", "rev"))
            _, linearized = jax.linearize(fn, theta)
            np.testing.assert_allclose(linearized(jnp.ones(3)),
                                       jax.jvp(fn, (theta,), (jnp.ones(3),))[1], rtol=1e-12)


@pytest.mark.slow
def test_flooding_and_the_penalty_under_vmap_checkpoint_and_scan():
    thetas = jax.random.normal(jax.random.key(0), (4, 3))
    levels = jnp.array([0.0, 0.1, 0.5, 1.0])

    def flooded_penalised(theta, level):
        penalised = gradient_norm_penalty(quadratic, coefficient=0.1)
        return flood(penalised(theta), level=level)

    expected = jnp.stack([flooded_penalised(t, b) for t, b in zip(thetas, levels,
                                                                 strict=True)])
    expected_grads = jnp.stack([jax.grad(flooded_penalised)(t, b)
                                for t, b in zip(thetas, levels, strict=True)])
    np.testing.assert_allclose(jax.vmap(flooded_penalised)(thetas, levels), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(jax.checkpoint(flooded_penalised)))(
        thetas, levels), expected_grads, rtol=1e-6)
    _, scanned = jax.lax.scan(lambda c, tb: (c, jax.grad(flooded_penalised)(*tb)), None,
                              (thetas, levels))
    np.testing.assert_allclose(scanned, expected_grads, rtol=1e-6)


def test_nan_stays_nan_zero_gradients_stay_finite_and_bfloat16_is_kept():
    assert np.isnan(flood(jnp.asarray(jnp.nan), level=0.1))
    assert np.isnan(jax.grad(lambda x: flood(x, level=0.1))(jnp.nan))
    flooded = iflood(jnp.array([0.05, jnp.nan, 0.5]), level=0.1)
    assert np.isnan(flooded[1]) and np.isfinite(flooded[np.array([0, 2])]).all()
    penalised = gradient_norm_penalty(quadratic, coefficient=0.3)
    nan_theta = jnp.array([1.0, jnp.nan, 0.0])
    assert np.isnan(penalised(nan_theta)) and np.isnan(jax.grad(penalised)(nan_theta)).all()
    # At theta = 0 the gradient norm is 0: value and gradient finite (no sqrt at 0).
    zero = jnp.zeros(3)
    np.testing.assert_allclose(penalised(zero), C, rtol=1e-6)
    np.testing.assert_array_equal(jax.grad(penalised)(zero), 0.0)
    theta = jnp.array([0.6, -0.4, 0.5], jnp.bfloat16)
    assert flood(jnp.sum(theta**2), level=0.1).dtype == jnp.bfloat16
    assert iflood(theta, level=0.1).dtype == jnp.bfloat16
    grad = jax.grad(gradient_norm_penalty(quadratic, coefficient=0.3))(theta)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(grad, np.float32),
                               jax.grad(penalised)(theta.astype(jnp.float32)), rtol=3e-2)
