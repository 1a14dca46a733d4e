"""Test helpers that work at every declared JAX version."""

import contextlib

import jax


def enable_x64():
    """A context in which arrays default to 64 bits (`jax.enable_x64` from jax 0.8 on)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as experimental_enable_x64

    return contextlib.nullcontext() if jax.config.jax_enable_x64 else experimental_enable_x64()


def standard_promotion(tx):
    """`tx` with its update traced under standard dtype promotion, the rest of the test
    under the suite's strict promotion (conftest.py): optax's Adam promotes implicitly in
    its bias correction (`b1 ** count`, an int32 count), which strict promotion refuses."""
    import optax

    tx = optax.with_extra_args_support(tx)

    def update(updates, state, params=None, **extra_args):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(tx.init, update)
