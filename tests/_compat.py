"""Test helpers that work at every declared JAX version."""

import contextlib

import jax


def enable_x64():
    """A context in which arrays default to 64 bits (`jax.enable_x64` from jax 0.8 on)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as experimental_enable_x64

    return contextlib.nullcontext() if jax.config.jax_enable_x64 else experimental_enable_x64()
