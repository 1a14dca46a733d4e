"""L2, decoupled weight decay and WEISSI (spec 4): each checked against an independent
computation (optax's own optimisers, jax.grad of the penalty, numpy formulas, closed
forms)."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64
from jax.test_util import check_grads

import jaxtricks
from jaxtricks import (
    decoupled_weight_decay,
    l2_penalty,
    l2_regularization,
    weissi,
    weissi_penalty,
)

FORMS = ("log", "product", "geometric_mean")


def make_params(seed=0, dtype=jnp.float32):
    """A two-layer MLP's params: two matrices (selected by the default mask), two biases."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    return {
        "dense1": {
            "kernel": jax.random.normal(k1, (5, 4), dtype),
            "bias": jax.random.normal(k2, (4,), dtype),
        },
        "dense2": {
            "kernel": 0.5 * jax.random.normal(k3, (4, 3), dtype),
            "bias": jax.random.normal(k4, (3,), dtype),
        },
    }


def kernel_mask(params):
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def quadratic_loss(params):
    return sum(jnp.sum(jnp.sin(leaf) ** 2 + 0.3 * leaf) for leaf in jax.tree.leaves(params))


def run_steps(optimizer, loss_fn, params, steps):
    """`steps` optimisation steps under jit; returns the params after each step."""

    def step(carry, _):
        params, state = carry
        updates, state = optimizer.update(jax.grad(loss_fn)(params), state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    _, trajectory = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
    return trajectory


def assert_trees_close(actual, expected, **tolerances):
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e), **tolerances),
        actual,
        expected,
    )


# ---------------------------------------------------------------- L2 and decoupled decay


@pytest.mark.parametrize("scheduled", [False, True])
def test_decoupled_weight_decay_after_adam_equals_optax_adamw(scheduled):
    learning_rate = optax.linear_schedule(1e-1, 1e-2, 6) if scheduled else 3e-2
    params = make_params()
    ours = optax.chain(
        optax.adam(learning_rate), decoupled_weight_decay(0.3, learning_rate=learning_rate)
    )
    reference = optax.adamw(learning_rate, weight_decay=0.3, mask=kernel_mask)
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


def test_l2_regularization_adds_weight_decay_times_gradient_of_l2_penalty():
    params = make_params()
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = l2_regularization(0.3).update(grads, l2_regularization(0.3).init(params), params)
    expected = jax.tree.map(
        lambda g, d: g + 0.3 * d, grads, jax.grad(l2_penalty)(params)
    )
    assert_trees_close(updates, expected, rtol=1e-6)


# ---------------------------------------------------------------- WEISSI: values


def numpy_weissi(kernels, form, direction_weight):
    """The penalty of spec 4.3 from its definition, in float64 numpy."""
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
    transform = weissi(0.01, direction_weight=0.02, learning_rate=0.1, form=form)
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
    transform = weissi(0.5, learning_rate=1.0)
    updates, _ = transform.update(grads, transform.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["small"], 0.0)
    # The big layer shrinks by the unclamped factor 1 - lr wd / ||W||^2 = 1 - 0.5 / 400.
    np.testing.assert_allclose(new["big"], 10.0 * (1 - 0.5 / 400), rtol=1e-6)


# ---------------------------------------------------------------- WEISSI: invariances


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


# ---------------------------------------------------------------- WEISSI: numerics


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-8])
def test_weissi_values_and_gradients_are_finite_at_zero_and_tiny_norms(scale):
    params = {"w": scale * jnp.ones((3, 3)), "v": jnp.ones((3, 3))}
    for form in FORMS:
        arguments = {"form": form, "direction_weight": 1.0}
        value, grad = jax.value_and_grad(weissi_penalty)(params, **arguments)
        assert np.isfinite(value)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(grad))
        for learning_rate in (None, 0.1):
            transform = weissi(0.1, learning_rate=learning_rate, **arguments)
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


# ---------------------------------------------------------------- optax interoperation


def transforms_under_test():
    schedule = optax.exponential_decay(0.1, 3, 0.5)
    return {
        "l2": lambda: l2_regularization(schedule),
        "decoupled": lambda: decoupled_weight_decay(0.1, learning_rate=schedule),
        "weissi": lambda: weissi(0.1, direction_weight=schedule, form="product"),
        "weissi_decoupled": lambda: weissi(schedule, learning_rate=0.5, direction_weight=0.1),
    }


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_transforms_keep_dtypes_and_state_shapes_under_jit_chain_and_multisteps(dtype):
    params = make_params(dtype=dtype)
    grads = jax.tree.map(jnp.ones_like, params)
    optimizers = {
        (name, wrapper): optimizer
        for name, factory in transforms_under_test().items()
        for wrapper, optimizer in (
            ("chain", optax.chain(factory(), optax.adam(1e-2))),
            ("multisteps", optax.MultiSteps(optax.chain(optax.sgd(0.1), factory()), 2)),
        )
    }
    states = {key: optimizer.init(params) for key, optimizer in optimizers.items()}

    @jax.jit  # one compilation for every optimiser: two updates each
    def two_updates(states):
        outputs = {}
        for key, optimizer in optimizers.items():
            _, state = optimizer.update(grads, states[key], params)
            outputs[key] = optimizer.update(grads, state, params)
        return outputs

    for key, (updates, new_state) in two_updates(states).items():
        assert jax.tree.structure(new_state) == jax.tree.structure(states[key]), key
        for before, after in zip(
            jax.tree.leaves(states[key]), jax.tree.leaves(new_state), strict=True
        ):
            assert (before.shape, before.dtype) == (after.shape, after.dtype), key
        for update, param in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
            assert update.dtype == param.dtype, key
            assert np.isfinite(np.asarray(update, np.float32)).all(), key


def test_inject_hyperparams_gives_the_same_updates_and_can_change_the_rate():
    params, grads = make_params(), make_params(seed=7)
    for factory, arguments in [
        (weissi, {"weight_decay": 0.1, "direction_weight": 0.05}),
        (weissi, {"weight_decay": 0.1, "learning_rate": 0.5}),
        (l2_regularization, {"weight_decay": 0.1}),
        (decoupled_weight_decay, {"weight_decay": 0.1, "learning_rate": 0.5}),
    ]:
        plain = factory(**arguments)
        injected = optax.inject_hyperparams(factory)(**arguments)
        state = injected.init(params)
        expected, _ = plain.update(grads, plain.init(params), params)
        updates, state = jax.jit(injected.update)(grads, state, params)
        assert_trees_close(updates, expected, rtol=1e-6)
        for name in ("weight_decay", "direction_weight"):
            if name in state.hyperparams:
                state.hyperparams[name] = jnp.asarray(0.0)
        updates, _ = injected.update(grads, state, params)
        assert_trees_close(updates, grads, rtol=1e-6)


def test_scheduled_weissi_uses_the_step_count():
    params = make_params()
    grads = jax.tree.map(jnp.zeros_like, params)
    transform = weissi(optax.piecewise_constant_schedule(0.1, {1: 10.0}))
    state = transform.init(params)
    first, state = transform.update(grads, state, params)
    second, _ = transform.update(grads, state, params)
    assert_trees_close(
        second, jax.tree.map(lambda u: 10.0 * u, first), rtol=1e-6
    )


def test_inside_optax_masked_the_masked_out_leaves_are_untouched():
    params = make_params()
    grads = jax.tree.map(jnp.ones_like, params)
    outer_mask = {"dense1": {"kernel": False, "bias": False}, "dense2": {"kernel": True,
                                                                          "bias": True}}
    for transform in (weissi(0.1), l2_regularization(0.1)):
        optimizer = optax.masked(transform, outer_mask)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        np.testing.assert_array_equal(updates["dense1"]["kernel"], 1.0)
        np.testing.assert_array_equal(updates["dense2"]["bias"], 1.0)
        assert not np.allclose(updates["dense2"]["kernel"], 1.0)


def test_masks_default_to_kernels_and_accept_pytrees_and_callables():
    params = make_params()
    grads = jax.tree.map(jnp.zeros_like, params)
    only_first = {"dense1": {"kernel": True, "bias": False}, "dense2": {"kernel": False,
                                                                         "bias": False}}
    for mask in (only_first, lambda p: only_first):
        transform = weissi(0.1, mask=mask)
        updates, _ = transform.update(grads, transform.init(params), params)
        assert np.abs(updates["dense1"]["kernel"]).sum() > 0
        np.testing.assert_array_equal(updates["dense2"]["kernel"], 0.0)
    updates, _ = weissi(0.1).update(grads, weissi(0.1).init(params), params)
    np.testing.assert_array_equal(updates["dense1"]["bias"], 0.0)
    assert np.abs(updates["dense2"]["kernel"]).sum() > 0
    np.testing.assert_allclose(
        weissi_penalty(params, mask=only_first),
        np.log(np.linalg.norm(params["dense1"]["kernel"])),
        rtol=1e-6,
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


# ---------------------------------------------------------------- bad input


def test_bad_arguments_raise_value_errors_naming_them():
    params = make_params()
    with pytest.raises(ValueError, match="weight_decay"):
        weissi(-1.0)
    with pytest.raises(ValueError, match="form"):
        weissi(0.1, form="cubic")
    with pytest.raises(ValueError, match="eps"):
        weissi_penalty(params, eps=0.0)
    with pytest.raises(ValueError, match="learning_rate"):
        decoupled_weight_decay(0.1, learning_rate=float("nan"))
    with pytest.raises(ValueError, match="weight_decay"):
        l2_regularization(float("inf"))
    bad_mask = {"dense1": True, "dense2": {"kernel": True, "bias": False}}
    with pytest.raises(ValueError, match="mask"):
        weissi(0.1, mask=bad_mask).init(params)
    with pytest.raises(ValueError, match="mask"):
        l2_penalty(params, mask=bad_mask)


def test_top_level_names_are_the_regularizers():
    assert jaxtricks.weissi is weissi
    assert jaxtricks.flood is jaxtricks.regularizers.flood


# ---------------------------------------------------------------- params, masks and dtypes


def all_transforms():
    """Every transform that reads the params, constant and scheduled rates mixed."""
    return {
        "l2": l2_regularization(0.1),
        "decoupled": decoupled_weight_decay(0.1, learning_rate=optax.constant_schedule(0.5)),
        "weissi": weissi(0.1, direction_weight=0.05),
        "weissi_product_decoupled": weissi(0.1, learning_rate=0.5, form="product"),
    }


def test_update_without_params_raises_optax_value_error_in_every_transform():
    params = make_params()
    for transform in all_transforms().values():
        for wrapped in (transform, optax.chain(optax.sgd(0.1), transform)):
            state = wrapped.init(params)
            with pytest.raises(ValueError, match="not passing `params`"):
                wrapped.update(params, state)
    injected = optax.inject_hyperparams(weissi)(weight_decay=0.1)
    with pytest.raises(ValueError, match="not passing `params`"):
        injected.update(params, injected.init(params))


def with_integer_leaves(params):
    """`params` plus an int32 table, a bool mask and a uint8 table, all of ndim 2."""
    return {
        **params,
        "table": jnp.arange(6, dtype=jnp.int32).reshape(3, 2) * 40,
        "flags": jnp.array([[True, False], [True, True]]),
        "codes": jnp.full((2, 3), 200, jnp.uint8),
    }


def test_default_mask_leaves_integer_and_boolean_leaves_alone():
    # Same updates on the float leaves as without the integer ones, and the integer and
    # boolean updates passed through bit for bit (not decayed, not promoted).
    params = make_params()
    grads = jax.tree.map(lambda leaf: 0.1 * jnp.ones_like(leaf), params)
    full_params = with_integer_leaves(params)
    full_grads = {**grads, **jax.tree.map(jnp.zeros_like, with_integer_leaves({}))}
    everything = jax.tree.map(lambda _: True, full_params)
    for name, transform in all_transforms().items():
        expected, _ = transform.update(grads, transform.init(params), params)
        for wrapped in (
            transform,
            optax.chain(transform, optax.identity()),
            optax.masked(transform, everything),
        ):
            updates, _ = wrapped.update(full_grads, wrapped.init(full_params), full_params)
            for key in ("table", "flags", "codes"):
                assert updates[key].dtype == full_grads[key].dtype, (name, key)
                np.testing.assert_array_equal(updates[key], full_grads[key])
            assert_trees_close({k: updates[k] for k in params}, expected, rtol=1e-6)
    for factory, arguments in [
        (weissi, {"weight_decay": 0.1, "direction_weight": 0.05}),
        (decoupled_weight_decay, {"weight_decay": 0.1, "learning_rate": 0.5}),
        (l2_regularization, {"weight_decay": 0.1}),
    ]:
        # optax 0.2.6 would cast the rates to the dtype of the first leaf (uint8) otherwise.
        injected = optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(
            **arguments)
        updates, _ = injected.update(full_grads, injected.init(full_params), full_params)
        plain = factory(**arguments)
        expected, _ = plain.update(grads, plain.init(params), params)
        assert_trees_close({k: updates[k] for k in params}, expected, rtol=1e-6)
        np.testing.assert_array_equal(updates["table"], 0)
        assert updates["flags"].dtype == jnp.bool_ and not updates["flags"].any()
    for form in FORMS:
        np.testing.assert_allclose(
            weissi_penalty(full_params, form=form, direction_weight=0.3),
            weissi_penalty(params, form=form, direction_weight=0.3),
            rtol=1e-6,
        )
    np.testing.assert_allclose(l2_penalty(full_params), l2_penalty(params), rtol=1e-6)


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


# ---------------------------------------------------------------- transformations, NaN


def updates_as_function_of_params(transform, grads):
    def update(params):
        return transform.update(grads, transform.init(params), params)[0]

    return update


def test_transform_updates_have_correct_forward_and_reverse_derivatives():
    with enable_x64():
        keys = jax.random.split(jax.random.key(4), 3)
        params = {"w1": jax.random.normal(keys[0], (3, 2), jnp.float64),
                  "w2": jax.random.normal(keys[1], (2, 2), jnp.float64),
                  "bias": jax.random.normal(keys[2], (2,), jnp.float64)}
        grads = jax.tree.map(lambda leaf: 0.1 * jnp.ones_like(leaf), params)
        tangent = jax.tree.map(jnp.ones_like, params)
        for name, transform in all_transforms().items():
            update = jax.jit(updates_as_function_of_params(transform, grads))
            check_grads(update, (params,), order=1, modes=("fwd", "rev"), atol=1e-5,
                        rtol=1e-5)
            _, linearized = jax.linearize(update, params)
            assert_trees_close(linearized(tangent), jax.jvp(update, (params,), (tangent,))[1],
                               rtol=1e-10, err_msg=name)
        # jax.hessian (forward over reverse) against reverse over reverse.
        penalty = functools.partial(weissi_penalty, form="product", direction_weight=0.2)
        assert_trees_close(jax.jit(jax.hessian(penalty))(params),
                           jax.jit(jax.jacrev(jax.jacrev(penalty)))(params), rtol=1e-9,
                           atol=1e-12)


def test_transform_updates_under_vmap_checkpoint_and_scan_match_plain_calls():
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                           *[make_params(seed) for seed in range(3)])
    grads = jax.tree.map(lambda leaf: 0.1 * jnp.ones_like(leaf), stacked)
    for name, transform in all_transforms().items():
        update = updates_as_function_of_params(transform, jax.tree.map(lambda g: g[0], grads))
        per_example = [update(jax.tree.map(lambda leaf, i=i: leaf[i], stacked))
                       for i in range(3)]
        expected = jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_example)
        assert_trees_close(jax.vmap(update)(stacked), expected, rtol=1e-6, err_msg=name)
        assert_trees_close(jax.lax.map(jax.checkpoint(update), stacked), expected,
                           rtol=1e-6, err_msg=name)


def test_nan_gradients_and_parameters_stay_nan_and_zero_parameters_stay_finite():
    params = make_params()
    grads = jax.tree.map(jnp.zeros_like, params)
    nan_grads = {**grads, "dense1": {"kernel": grads["dense1"]["kernel"].at[0, 0].set(
        jnp.nan), "bias": grads["dense1"]["bias"].at[0].set(jnp.nan)}}
    nan_params = {**params, "dense1": {**params["dense1"], "kernel": params["dense1"][
        "kernel"].at[1, 1].set(jnp.nan)}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    for name, transform in all_transforms().items():
        state = transform.init(params)
        updates, _ = transform.update(nan_grads, state, params)
        assert np.isnan(updates["dense1"]["kernel"][0, 0]), name
        assert np.isnan(updates["dense1"]["bias"][0]), name  # masked out: passed through
        updates, _ = transform.update(grads, state, nan_params)
        assert np.isnan(updates["dense1"]["kernel"][1, 1]), name
        updates, _ = transform.update(zeros, state, zeros)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(updates)), name
    for penalty in (l2_penalty, weissi_penalty):
        assert np.isnan(penalty(nan_params))
        assert np.isnan(jax.grad(penalty)(nan_params)["dense1"]["kernel"][1, 1])
        value, grad = jax.value_and_grad(penalty)(zeros)
        assert np.isfinite(value) and all(np.isfinite(g).all() for g in jax.tree.leaves(grad))


def test_penalty_gradients_keep_bfloat16_and_float16_dtypes():
    for dtype in (jnp.bfloat16, jnp.float16):
        params = make_params(dtype=dtype)
        for penalty in (l2_penalty, functools.partial(weissi_penalty, direction_weight=0.1)):
            value, grad = jax.value_and_grad(penalty)(params)
            assert value.dtype == jnp.float32
            assert all(g.dtype == dtype for g in jax.tree.leaves(grad))
