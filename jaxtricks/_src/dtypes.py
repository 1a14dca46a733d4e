"""The one dtype rule of the library: compute in at least float32."""

from __future__ import annotations

import jax.numpy as jnp

from jaxtricks._src.typing import DTypeLike


def compute_dtype(dtype: DTypeLike) -> jnp.dtype:
    """`dtype` promoted to at least float32: bfloat16 and float16 are upcast, float64 kept.

    Losses, norms and perturbed points are computed in it and, where a function promises
    its input's dtype, cast back once at the end.
    """
    return jnp.promote_types(dtype, jnp.float32)
