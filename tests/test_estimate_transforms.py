"""The estimators as Optax transforms: the same numbers as the functions, step by step,
and the optax compositions that make them optimisers (chain, MultiSteps,
inject_hyperparams, nnx.Optimizer, jit with donation)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import standard_promotion
from flax import nnx

from jaxtricks import estimators

X = {"w": jnp.array([[0.3, -1.2], [0.7, 0.1]]), "b": jnp.array([0.2, -0.4])}


def loss(params):
    return jnp.sum(params["w"] ** 2 * jnp.array([1.0, 3.0])) + jnp.sum(jnp.sin(params["b"]))


# float32 differences of values, divided by sigma: a few ulps of f over sigma.
close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize(
    ("transform", "function"),
    [(functools.partial(estimators.zeroth_order_estimate, num_samples=8, sigma=0.1,
                        directions="low_rank"),
      functools.partial(estimators.zeroth_order_grad, num_samples=8, sigma=0.1,
                        directions="low_rank")),
     (functools.partial(estimators.forward_gradient_estimate, num_samples=4),
      functools.partial(estimators.forward_gradient, num_samples=4))],
    ids=["zeroth order", "forward gradient"],
)
@pytest.mark.slow
def test_step_t_is_the_function_with_the_key_folded_with_t(transform, function, legacy):
    key = jax.random.PRNGKey(3) if legacy else jax.random.key(3)
    tx = transform(key)
    state = tx.init(X)
    typed = jax.random.key(3)
    for t in range(3):
        estimate, state = jax.jit(functools.partial(tx.update, value_fn=loss))(None, state, X)
        jax.tree.map(close, estimate, function(loss, X, jax.random.fold_in(typed, t)))
    assert int(state.count) == 3


@pytest.mark.slow
def test_chained_with_sgd_it_is_zeroth_order_sgd():
    key = jax.random.key(5)
    tx = optax.chain(estimators.zeroth_order_estimate(key, num_samples=8), optax.sgd(0.1))
    state = tx.init(X)
    updates, state = tx.update(X, state, X, value_fn=loss)
    expected = estimators.zeroth_order_grad(loss, X, jax.random.fold_in(key, 0), num_samples=8)
    jax.tree.map(close, updates, optax.tree.scale(-0.1, expected))


@pytest.mark.slow
def test_multisteps_after_it_accumulates_the_estimates_of_each_step():
    key = jax.random.key(6)
    tx = optax.chain(estimators.zeroth_order_estimate(key, num_samples=4, sigma=0.01),
                     standard_promotion(  # MultiSteps divides by its int32 step count
                         optax.MultiSteps(optax.sgd(1.0), every_k_schedule=2)
                         .gradient_transformation()))
    state = tx.init(X)
    params = X
    for _ in range(2):
        updates, state = tx.update(params, state, params, value_fn=loss)
        params = optax.apply_updates(params, updates)
    estimates = [estimators.zeroth_order_grad(loss, X, jax.random.fold_in(key, t),
                                              num_samples=4, sigma=0.01) for t in range(2)]
    jax.tree.map(lambda p, x, a, b: close(p, x - (a + b) / 2), params, X, *estimates)


def test_inject_hyperparams_sets_sigma_and_the_learning_rate_at_run_time():
    key = jax.random.key(7)
    make = optax.inject_hyperparams(
        estimators.zeroth_order_estimate,
        static_args=("num_samples", "antithetic", "directions", "baseline", "chunk_size"))
    tx = optax.chain(make(key, num_samples=8, sigma=0.05),
                     optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))
    state = tx.init(X)
    updates, _ = jax.jit(functools.partial(tx.update, value_fn=loss))(X, state, X)
    expected = estimators.zeroth_order_grad(loss, X, jax.random.fold_in(key, 0), num_samples=8,
                                            sigma=0.05)
    jax.tree.map(close, updates, optax.tree.scale(-0.1, expected))


@pytest.mark.slow
def test_a_donated_jitted_step_and_nnx_optimizer_train():
    class Model(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.zeros(3))

        def __call__(self):
            return jnp.sum((self.w[...] - 1.0) ** 2)

    model = Model()
    tx = optax.chain(estimators.zeroth_order_estimate(jax.random.key(0), num_samples=16),
                     standard_promotion(optax.adam(0.1)))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graph, _ = nnx.split(model)

    @nnx.jit
    def step(model, optimizer):
        def value_fn(state):
            return nnx.merge(graph, state)()

        params = nnx.state(model, nnx.Param)
        optimizer.update(model, params, value_fn=value_fn)

    start = float(model())
    for _ in range(30):
        step(model, optimizer)
    assert float(model()) < 0.1 * start

    sgd = optax.chain(estimators.zeroth_order_estimate(jax.random.key(0), num_samples=16),
                      optax.sgd(0.05))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def donated(params, state):
        updates, state = sgd.update(params, state, params, value_fn=loss)
        return optax.apply_updates(params, updates), state

    params, state = jax.tree.map(jnp.copy, X), sgd.init(X)
    for _ in range(20):
        params, state = donated(params, state)
    assert float(loss(params)) < float(loss(X))


def test_update_without_value_fn_is_refused_naming_it():
    tx = estimators.zeroth_order_estimate(jax.random.key(0), num_samples=2)
    with pytest.raises(ValueError, match="value_fn must be passed"):
        tx.update(X, tx.init(X), X)


@pytest.mark.slow
def test_zo_sgd_cons_follows_a_direct_float64_implementation_step_by_step():
    # ZO-Bench's ZO-SGD-Cons: x_{t+1} = argmin over {x - lr g, x + lr g, x} of f.
    key, learning_rate = jax.random.key(9), 0.2

    def flat_loss(x):
        return jnp.sum((x - jnp.array([1.0, -2.0, 0.5])) ** 2 * jnp.array([1.0, 10.0, 100.0]))

    tx = optax.chain(estimators.zeroth_order_estimate(key, num_samples=2, sigma=0.01),
                     optax.sgd(learning_rate), estimators.keep_best_step())
    x, state = jnp.zeros(3), tx.init(jnp.zeros(3))
    direct = np.zeros(3)
    for t in range(6):
        g = np.asarray(estimators.zeroth_order_grad(
            flat_loss, jnp.asarray(direct, jnp.float32), jax.random.fold_in(key, t),
            num_samples=2, sigma=0.01), np.float64)
        candidates = [direct - learning_rate * g, direct + learning_rate * g, direct]
        direct = min(candidates, key=lambda c: float(np.sum(
            (c - [1.0, -2.0, 0.5]) ** 2 * [1.0, 10.0, 100.0])))
        updates, state = tx.update(x, state, x, value_fn=flat_loss)
        x = optax.apply_updates(x, updates)
        np.testing.assert_allclose(x, direct, rtol=1e-5, atol=1e-6)
    assert flat_loss(x) <= flat_loss(jnp.zeros(3))
