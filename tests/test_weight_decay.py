"""L2 regularisation and decoupled weight decay (jaxtricks/regularizers/_weight_decay.py),
against optax's own optimisers and jax.grad of the penalty."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import standard_promotion
from _regularizer_params import (
    assert_trees_close,
    kernel_mask,
    make_params,
    quadratic_loss,
    run_steps,
)

from jaxtricks import (
    decoupled_weight_decay,
    l2_penalty,
    l2_regularization,
    weissi_penalty,
)


@pytest.mark.parametrize("scheduled", [False, True])
@pytest.mark.slow
def test_decoupled_weight_decay_after_adam_equals_optax_adamw(scheduled):
    learning_rate = optax.linear_schedule(1e-1, 1e-2, 6) if scheduled else 3e-2
    params = make_params()
    ours = optax.chain(
        standard_promotion(optax.adam(learning_rate)),
        decoupled_weight_decay(0.3, learning_rate=learning_rate),
    )
    reference = standard_promotion(
        optax.adamw(learning_rate, weight_decay=0.3, mask=kernel_mask))
    assert_trees_close(
        jax.jit(run_steps, static_argnums=(0, 1, 3))(ours, quadratic_loss, params, 6),
        jax.jit(run_steps, static_argnums=(0, 1, 3))(reference, quadratic_loss, params, 6),
        rtol=1e-6,
        atol=1e-6,
    )


def test_l2_regularization_before_sgd_equals_sgd_on_loss_plus_l2_penalty():
    params = make_params()
    ours = run_steps(
        optax.chain(l2_regularization(0.2), optax.sgd(0.1)), quadratic_loss, params, 4
    )
    reference = run_steps(
        optax.sgd(0.1), lambda p: quadratic_loss(p) + 0.2 * l2_penalty(p), params, 4
    )
    assert_trees_close(ours, reference, rtol=1e-6, atol=1e-7)


def test_l2_penalty_is_half_the_squared_norm_of_the_kernels():
    params = make_params()
    expected = 0.5 * sum(
        np.sum(np.asarray(params[layer]["kernel"], np.float64) ** 2)
        for layer in ("dense1", "dense2")
    )
    np.testing.assert_allclose(l2_penalty(params), expected, rtol=1e-6)


@pytest.mark.parametrize("params", [{"bias": jnp.ones(3)}, {}], ids=["no-kernel", "empty"])
def test_l2_penalty_of_no_selected_leaf_is_a_float32_zero_array_like_weissi_penalty(params):
    penalty = l2_penalty(params)
    assert isinstance(penalty, jax.Array) and penalty.shape == () and penalty.dtype == jnp.float32
    assert float(penalty) == 0.0
    assert jax.jit(l2_penalty)(params).dtype == weissi_penalty(params).dtype


def test_l2_regularization_adds_weight_decay_times_gradient_of_l2_penalty():
    params = make_params()
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = l2_regularization(0.3).update(grads, l2_regularization(0.3).init(params), params)
    expected = jax.tree.map(
        lambda g, d: g + 0.3 * d, grads, jax.grad(l2_penalty)(params)
    )
    assert_trees_close(updates, expected, rtol=1e-6)


def test_l2_and_decoupled_decay_equal_optax_add_decayed_weights():
    # At step t, optax.add_decayed_weights with the rate of step t (optax 0.2.6 does not
    # advance a scheduled rate's count itself).
    params, grads = make_params(), make_params(seed=3)
    schedule = optax.linear_schedule(0.3, 0.05, 3)
    pairs = [
        (l2_regularization(schedule), schedule),
        (decoupled_weight_decay(0.2, learning_rate=schedule), lambda t: -0.2 * schedule(t)),
    ]
    for ours, rate in pairs:
        state = ours.init(params)
        for step in range(3):
            updates, state = ours.update(grads, state, params)
            reference = optax.add_decayed_weights(rate(step), kernel_mask)
            expected, _ = reference.update(grads, reference.init(params), params)
            assert_trees_close(updates, expected, rtol=1e-6)
