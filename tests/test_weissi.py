"""WEISSI (jaxtricks/regularizers/_weissi.py): the penalty against its float64 numpy
definition, the transform against jax.grad of the penalty, the weight-scale-shift
invariance and behaviour at zero norms."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _regularizer_params import (
    FORMS,
    assert_trees_close,
    make_params,
    run_steps,
)
from test_losses_deprecated import call_twice_warning_once

from jaxtricks import (
    decoupled_weissi,
    l2_penalty,
    regularizers,
    weissi,
    weissi_penalty,
)


def numpy_weissi(kernels, form, direction_weight):
    """The penalty from its definition (kexue.fm/archives/7681), in float64 numpy."""
    kernels = [np.asarray(k, np.float64) for k in kernels]
    norms = np.array([np.linalg.norm(k) for k in kernels])
    scale = {
        "log": np.sum(np.log(norms)),
        "product": np.prod(norms),
        "geometric_mean": np.prod(norms) ** (1.0 / len(norms)),
    }[form]
    direction = sum(np.sum(np.abs(k / n)) for k, n in zip(kernels, norms, strict=True))
    return scale + direction_weight * direction


@pytest.mark.parametrize("form", FORMS)
def test_weissi_penalty_matches_the_numpy_definition(form):
    params = make_params()
    kernels = [params["dense1"]["kernel"], params["dense2"]["kernel"]]
    np.testing.assert_allclose(
        weissi_penalty(params, form=form, direction_weight=0.7),
        numpy_weissi(kernels, form, 0.7),
        rtol=1e-5,
    )


@pytest.mark.parametrize("form", FORMS)
def test_coupled_weissi_adds_exactly_the_gradient_of_weissi_penalty(form):
    params = make_params()
    grads = jax.tree.map(lambda leaf: 0.1 * jnp.ones_like(leaf), params)
    for weight_decay, direction_weight in [(0.3, 0.0), (0.3, 0.2), (0.0, 0.5)]:
        arguments = {"direction_weight": direction_weight, "form": form}
        transform = weissi(weight_decay, **arguments)
        updates, _ = transform.update(grads, transform.init(params), params)
        penalty_grad = jax.grad(weissi_penalty)(params, weight_decay=weight_decay, **arguments)
        expected = jax.tree.map(jnp.add, grads, penalty_grad)
        assert_trees_close(updates, expected, rtol=2e-6, atol=1e-7)
    # Default arguments: weissi(wd) adds wd * grad(weissi_penalty).
    updates, _ = weissi(0.3, form=form).update(grads, weissi(0.3).init(params), params)
    expected = jax.tree.map(
        lambda g, d: g + 0.3 * d, grads, jax.grad(weissi_penalty)(params, form=form)
    )
    assert_trees_close(updates, expected, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("form", FORMS)
def test_decoupled_weissi_adds_minus_learning_rate_times_the_penalty_gradient(form):
    params = make_params()
    grads = jax.tree.map(jnp.zeros_like, params)
    transform = decoupled_weissi(0.01, direction_weight=0.02, learning_rate=0.1, form=form)
    updates, _ = transform.update(grads, transform.init(params), params)
    penalty_grad = jax.grad(weissi_penalty)(
        params, weight_decay=0.01, direction_weight=0.02, form=form
    )
    expected = jax.tree.map(lambda d: -0.1 * d, penalty_grad)
    assert_trees_close(updates, expected, rtol=2e-6, atol=1e-7)


def test_decoupled_weissi_clamp_never_flips_the_sign_of_a_small_layer():
    # ||W||^2 = 4e-4 << lr * wd = 0.5: unclamped, W - lr wd W/||W||^2 = W (1 - 1250).
    params = {"small": jnp.full((2, 2), 0.01), "big": jnp.full((2, 2), 10.0)}
    grads = jax.tree.map(jnp.zeros_like, params)
    transform = decoupled_weissi(0.5, learning_rate=1.0)
    updates, _ = transform.update(grads, transform.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["small"], 0.0)
    # The big layer shrinks by the unclamped factor 1 - lr wd / ||W||^2 = 1 - 0.5 / 400.
    np.testing.assert_allclose(new["big"], 10.0 * (1 - 0.5 / 400), rtol=1e-6)


def relu_mlp(params, inputs):
    hidden = inputs
    for index, layer in enumerate(params):
        hidden = hidden @ layer["kernel"] + layer["bias"]
        if index < len(params) - 1:
            hidden = jax.nn.relu(hidden)
    return hidden


def make_mlp(seed=1, sizes=(6, 8, 8, 3)):
    keys = jax.random.split(jax.random.key(seed), 2 * len(sizes))
    return [
        {
            "kernel": jax.random.normal(keys[2 * i], (fan_in, fan_out)),
            "bias": jax.random.normal(keys[2 * i + 1], (fan_out,)),
        }
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes))
    ]


def test_weissi_penalty_is_invariant_to_the_weight_scale_shift_and_l2_is_not():
    params = make_mlp()
    inputs = jax.random.normal(jax.random.key(2), (10, 6))
    gammas = (2.0, 0.25, 2.0)  # product 1
    shifted, cumulative = [], 1.0
    for layer, gamma in zip(params, gammas, strict=True):
        cumulative *= gamma
        shifted.append({"kernel": gamma * layer["kernel"], "bias": cumulative * layer["bias"]})
    np.testing.assert_allclose(relu_mlp(shifted, inputs), relu_mlp(params, inputs), rtol=1e-5)
    for form in FORMS:
        np.testing.assert_allclose(
            weissi_penalty(shifted, form=form), weissi_penalty(params, form=form), rtol=1e-5
        )
    assert abs(l2_penalty(shifted) / l2_penalty(params) - 1) > 0.1


def test_per_neuron_rescaling_keeps_the_function_but_changes_the_log_penalty():
    # Spec 4.3's negative test: WEISSI is invariant layer-wise, not per neuron.
    params = make_mlp()
    inputs = jax.random.normal(jax.random.key(2), (10, 6))
    first, second = dict(params[0]), dict(params[1])
    first["kernel"] = first["kernel"].at[:, 0].multiply(5.0)
    first["bias"] = first["bias"].at[0].multiply(5.0)
    second["kernel"] = second["kernel"].at[0, :].multiply(0.2)
    rescaled = [first, second, params[2]]
    np.testing.assert_allclose(relu_mlp(rescaled, inputs), relu_mlp(params, inputs), rtol=1e-5)
    assert abs(weissi_penalty(rescaled) - weissi_penalty(params)) > 0.1


def test_euler_identities_and_the_norm_of_the_log_gradient():
    weight = jax.random.normal(jax.random.key(3), (7, 5))
    params = {"w": weight}
    log_grad = jax.grad(weissi_penalty)(params)["w"]
    direction_grad = jax.grad(weissi_penalty)(params, weight_decay=0.0, direction_weight=1.0)
    l2_grad = jax.grad(l2_penalty)(params)["w"]
    norm = jnp.linalg.norm(weight)
    np.testing.assert_allclose(jnp.vdot(log_grad, weight), 1.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.vdot(direction_grad["w"], weight), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.vdot(l2_grad, weight), norm**2, rtol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(log_grad), 1.0 / norm, rtol=1e-6)


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-8])
def test_weissi_values_and_gradients_are_finite_at_zero_and_tiny_norms(scale):
    params = {"w": scale * jnp.ones((3, 3)), "v": jnp.ones((3, 3))}
    for form in FORMS:
        arguments = {"form": form, "direction_weight": 1.0}
        value, grad = jax.value_and_grad(weissi_penalty)(params, **arguments)
        assert np.isfinite(value)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(grad))
        for transform in (weissi(0.1, **arguments),
                          decoupled_weissi(0.1, learning_rate=0.1, **arguments)):
            updates, _ = transform.update(params, transform.init(params), params)
            assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(updates))
    # At W = 0 exactly the direction term and its gradient are 0.
    zero = {"w": jnp.zeros((3, 3))}
    np.testing.assert_array_equal(
        jax.grad(weissi_penalty)(zero, weight_decay=0.0, direction_weight=1.0)["w"], 0.0
    )
    np.testing.assert_array_equal(weissi_penalty(zero, weight_decay=0.0, direction_weight=1.0), 0)


def test_training_with_a_large_log_weissi_shrinks_the_norms_without_nan():
    params = make_mlp(sizes=(6, 8, 3))
    inputs = jax.random.normal(jax.random.key(4), (32, 6))
    targets = jax.random.normal(jax.random.key(5), (32, 3))

    def loss(p):
        return jnp.mean((relu_mlp(p, inputs) - targets) ** 2)

    def product_of_norms(p):
        return weissi_penalty(p, form="product")

    optimizer = optax.chain(weissi(10.0), optax.sgd(1e-2))
    final = jax.tree.map(lambda leaf: leaf[-1], run_steps(optimizer, loss, params, 200))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(final))
    assert product_of_norms(final) < 0.5 * product_of_norms(params)


def test_scheduled_weissi_uses_the_step_count():
    params = make_params()
    grads = jax.tree.map(jnp.zeros_like, params)
    # optax.piecewise_constant_schedule(0.1, {1: 10.0}), which mixes its int32 count
    # with floats (strict promotion refuses it).
    transform = weissi(lambda count: jnp.where(count < 1, 0.1, 1.0))
    state = transform.init(params)
    first, state = transform.update(grads, state, params)
    second, _ = transform.update(grads, state, params)
    assert_trees_close(
        second, jax.tree.map(lambda u: 10.0 * u, first), rtol=1e-6
    )


def test_sharded_params_give_the_same_weissi_updates():
    mesh = jax.make_mesh((4,), ("model",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "model"))
    params = {"w": jax.random.normal(jax.random.key(0), (6, 8))}
    grads = {"w": jnp.ones((6, 8))}
    transform = weissi(0.1, direction_weight=0.1)
    expected, _ = transform.update(grads, transform.init(params), params)
    sharded_params = jax.device_put(params, sharding)
    sharded_grads = jax.device_put(grads, sharding)
    updates, _ = jax.jit(transform.update)(
        sharded_grads, transform.init(sharded_params), sharded_params
    )
    assert_trees_close(updates, expected, rtol=1e-6)


def test_weissi_with_a_learning_rate_is_deprecated_and_gives_the_decoupled_updates():
    params = make_params()
    grads = jax.tree.map(lambda leaf: 0.1 * jnp.ones_like(leaf), params)
    schedule = optax.exponential_decay(0.5, 1, 0.5)
    for form in FORMS:
        arguments = {"direction_weight": 0.05, "form": form, "eps": 1e-10}
        new = decoupled_weissi(0.2, learning_rate=schedule, **arguments)
        first, second, message = call_twice_warning_once(
            weissi, 0.2, learning_rate=schedule, **arguments)
        assert "use jaxtricks.decoupled_weissi(..., learning_rate=lr)" in message
        for old in (first, second):  # three steps: the schedule and the clamp agree too
            old_state, new_state = old.init(params), new.init(params)
            for _ in range(3):
                old_updates, old_state = old.update(grads, old_state, params)
                new_updates, new_state = new.update(grads, new_state, params)
                jax.tree.map(np.testing.assert_array_equal, old_updates, new_updates)
            jax.tree.map(np.testing.assert_array_equal, old_state, new_state)


def test_coupled_and_decoupled_weissi_are_the_two_forms_of_the_l2_pair():
    # weissi is coupled (no learning rate, never warns); decoupled_weissi needs one.
    params = {"w": jnp.full((2, 2), 0.5)}  # ||w||^2 = 1
    zeros = {"w": jnp.zeros((2, 2))}
    coupled = weissi(0.1)
    decoupled = decoupled_weissi(0.1, learning_rate=0.5)
    np.testing.assert_allclose(coupled.update(zeros, coupled.init(params), params)[0]["w"],
                               0.1 * 0.5)
    np.testing.assert_allclose(decoupled.update(zeros, decoupled.init(params), params)[0]["w"],
                               -0.5 * 0.1 * 0.5)
    with pytest.raises(TypeError, match="learning_rate"):
        decoupled_weissi(0.1)
    with pytest.raises(ValueError, match="learning_rate must lie in"):
        decoupled_weissi(0.1, learning_rate=-1.0)
    assert regularizers.decoupled_weissi is decoupled_weissi
