"""Shared fixtures of the regularizer tests: params, a loss, a training loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
