"""The dtype rules of the library: compute in at least float32; promote explicitly."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks._src.typing import DTypeLike


def compute_dtype(dtype: DTypeLike) -> jnp.dtype:
    """`dtype` promoted to at least float32: bfloat16 and float16 are upcast, float64 kept.

    Losses, norms and perturbed points are computed in it and, where a function promises
    its input's dtype, cast back once at the end.
    """
    # Not `jnp.promote_types(dtype, float32)`: under strict dtype promotion it raises.
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.inexact) and jnp.finfo(dtype).bits >= 32:
        return dtype
    return jnp.dtype(jnp.float32)


def result_type(*args: Any) -> np.dtype:
    """`jnp.result_type(*args)` by JAX's standard promotion rules, also when the caller runs
    under `jax.numpy_dtype_promotion("strict")`: the library names the dtype and casts to
    it explicitly, which strict promotion allows."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(*args)


def promoted(*arrays: jax.typing.ArrayLike) -> list[jax.Array]:
    """`arrays` cast to their `result_type`: standard promotion, made explicit."""
    dtype = result_type(*arrays)
    return [jnp.asarray(array).astype(dtype) for array in arrays]
