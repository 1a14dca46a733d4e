"""What every regularizer transform shares (jaxtricks/regularizers/_common.py): masks,
the `CountState`, dtypes, params checks and composition with optax (chain, masked,
MultiSteps, inject_hyperparams), under jit, vmap, checkpoint, scan and both AD modes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64, standard_promotion
from _regularizer_params import (
    FORMS,
    assert_trees_close,
    make_params,
)
from jax.test_util import check_grads

import jaxtricks
from jaxtricks import (
    decoupled_weight_decay,
    decoupled_weissi,
    l2_penalty,
    l2_regularization,
    weissi,
    weissi_penalty,
)


def transforms_under_test():
    schedule = optax.exponential_decay(0.1, 3, 0.5)
    return {
        "l2": lambda: l2_regularization(schedule),
        "decoupled": lambda: decoupled_weight_decay(0.1, learning_rate=schedule),
        "weissi": lambda: weissi(0.1, direction_weight=schedule, form="product"),
        "weissi_decoupled": lambda: decoupled_weissi(schedule, learning_rate=0.5,
                                                     direction_weight=0.1),
    }


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_transforms_keep_dtypes_and_state_shapes_under_jit_chain_and_multisteps(dtype):
    params = make_params(dtype=dtype)
    grads = jax.tree.map(jnp.ones_like, params)
    optimizers = {
        (name, wrapper): optimizer
        for name, factory in transforms_under_test().items()
        for wrapper, optimizer in (
            ("chain", optax.chain(factory(), standard_promotion(optax.adam(1e-2)))),
            ("multisteps", standard_promotion(  # MultiSteps divides by its int32 step count
                optax.MultiSteps(optax.chain(optax.sgd(0.1), factory()), 2))),
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
        (decoupled_weissi, {"weight_decay": 0.1, "learning_rate": 0.5}),
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


def all_transforms():
    """Every transform that reads the params, constant and scheduled rates mixed."""
    return {
        "l2": l2_regularization(0.1),
        "decoupled": decoupled_weight_decay(0.1, learning_rate=optax.constant_schedule(0.5)),
        "weissi": weissi(0.1, direction_weight=0.05),
        "weissi_product_decoupled": decoupled_weissi(0.1, learning_rate=0.5, form="product"),
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


def test_an_explicit_mask_selecting_an_integer_or_boolean_leaf_raises_naming_it():
    # Decaying an integer leaf used to be truncated silently (0.1 * 1 -> 0 in int32):
    # every transform and penalty now raises at init, naming the mask, leaf and dtype.
    params = {**make_params(), "table": jnp.ones((3, 2), jnp.int32)}
    only_table = {**jax.tree.map(lambda _: False, params), "table": True}
    factories = {
        "l2": lambda mask: l2_regularization(0.1, mask=mask),
        "decoupled": lambda mask: decoupled_weight_decay(0.1, learning_rate=0.5, mask=mask),
        "weissi": lambda mask: weissi(0.1, direction_weight=0.05, mask=mask),
        "weissi_decoupled": lambda mask: decoupled_weissi(0.1, learning_rate=0.5, mask=mask),
    }
    table_error = r"mask must select floating-point leaves only .* \['table'\] of dtype int32"
    for name, factory in factories.items():
        with pytest.raises(ValueError, match=table_error):
            jax.jit(factory(only_table).init)(params)
        # Masking the table out keeps it untouched and the float leaves decayed.
        kernels = {**jax.tree.map(lambda leaf: leaf.ndim >= 2, params), "table": False}
        transform = factory(kernels)
        updates, _ = transform.update(params, transform.init(params), params)
        np.testing.assert_array_equal(updates["table"], params["table"], err_msg=name)
    for penalty in (l2_penalty, weissi_penalty):
        with pytest.raises(ValueError, match=table_error):
            penalty(params, mask=only_table)
    # A boolean leaf selected by a callable mask, under optax.masked and in a chain.
    with_flags = {**make_params(), "flags": jnp.ones((2, 2), bool)}
    every_matrix = functools.partial(jax.tree.map, lambda leaf: leaf.ndim >= 2)
    everything = jax.tree.map(lambda _: True, with_flags)
    for factory in factories.values():
        for wrapped in (optax.masked(factory(every_matrix), everything),
                        optax.chain(optax.sgd(0.1), factory(every_matrix))):
            with pytest.raises(ValueError, match=r"\['flags'\] of dtype bool"):
                wrapped.init(with_flags)


def updates_as_function_of_params(transform, grads):
    def update(params):
        return transform.update(grads, transform.init(params), params)[0]

    return update


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_every_transform_state_is_an_exported_count_state_constant_rate_or_schedule():
    params = make_params()
    assert jaxtricks.CountState is jaxtricks.regularizers.CountState
    transforms = {**all_transforms(), **{name: factory()
                                         for name, factory in transforms_under_test().items()}}
    for name, transform in transforms.items():
        state = transform.init(params)
        assert isinstance(state, optax.MaskedState), name
        assert isinstance(state.inner_state, jaxtricks.CountState), name
        assert int(state.inner_state.count) == 0, name
        _, state = transform.update(params, state, params)
        _, state = transform.update(params, state, params)
        assert int(state.inner_state.count) == 2, name
    injected = optax.inject_hyperparams(weissi)(weight_decay=0.1)
    assert isinstance(injected.init(params).inner_state.inner_state, jaxtricks.CountState)
