"""`jax.random.normal` and `jax.random.rademacher` as one elementwise computation each.

The estimators draw each direction several times from its key rather than store it
(the seed trick of MeZO, https://arxiv.org/abs/2305.17333), so a draw must cost no memory
beyond its output, and ideally not even that: fused into its consumer (the perturbed
point `x + sigma u`, the accumulation `g + c u`). On CPU, JAX lowers the threefry hash
to a loop over its five round groups (to keep compile times short), whose state is two
`uint32` arrays of the leaf's size, and XLA hoists the counters (an `iota`) out of the
estimators' loops, two more: about four leaf-sized buffers per draw.

`normal` and `rademacher` compute the very same numbers from the very same key, for
threefry keys with `jax_threefry_partitionable` (the default since JAX 0.5), a float32
draw of fewer than 2^32 numbers (and `rademacher` without x64, whose `p = 0.5` is then
float32): the counters are the row-major index as a `uint32` iota, the hash is
`jax._src.random.threefry2x32._threefry2x32_lowering` unrolled (as JAX lowers it on
GPU and TPU), and the bits become floats as `jax.random.uniform` makes them (Salmon et
al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011, for threefry). Any other
case calls `jax.random` itself. `tests/test_estimators_memory.py` checks the identity.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks._src.typing import DTypeLike

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _fusible(key: jax.Array, dtype: DTypeLike, size: int) -> bool:
    return (
        str(jax.random.key_impl(key)) == "threefry2x32"
        and jax.config.jax_threefry_partitionable  # type: ignore[attr-defined]
        and jnp.dtype(dtype) == jnp.float32
        and size < 2**32
    )


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
    return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def _bits(key: jax.Array, shape: tuple[int, ...], stored: bool) -> jax.Array:
    """`jax.random.bits(key, shape, jnp.uint32)` for a threefry key, unrolled; computed
    once and kept if `stored`, else recomputed in each consumer (see `normal`)."""
    # The barrier hides that `zero` is 0, so that the counters below depend on the key:
    # loop-invariant, XLA would hoist them out of the estimators' loops and keep them.
    key1, key2, zero, one = jax.lax.optimization_barrier(
        (*(jax.random.key_data(key)[i] for i in range(2)), np.uint32(0), np.uint32(1))
    )
    schedule = (key1, key2, key1 ^ key2 ^ np.uint32(0x1BD11BDA))
    counters = zero  # the row-major index, by Horner's rule over the axes
    for axis, size in enumerate(shape):
        counters = counters * np.uint32(size) + jax.lax.broadcasted_iota(np.uint32, shape, axis)
    x = [jnp.zeros(shape, np.uint32) + schedule[0], jnp.broadcast_to(counters + schedule[1], shape)]
    for group in range(5):
        for rotation in _ROTATIONS[group % 2]:
            x[0] = x[0] + x[1]
            x[1] = x[0] ^ _rotate_left(x[1], rotation)
        x[0] = x[0] + schedule[(group + 1) % 3]
        x[1] = x[1] + schedule[(group + 2) % 3] + np.uint32(group + 1)
    bits = x[0] ^ x[1]
    # The hash is all cheap integer work, which XLA fuses into (so recomputes in) every
    # consumer of the draw: a stored direction perturbed both ways and weighted was
    # hashed 4 times. A division by a variable (`one`, hidden by the barrier) counts as
    # expensive, so XLA computes it, hence the hash, once and keeps the bits.
    return bits // one if stored else bits


def _unit_interval(bits: jax.Array) -> jax.Array:
    """`[0, 1)` floats from the 23 high bits, as `jax.random.uniform` makes them."""
    one = np.array(1.0, np.float32).view(np.uint32)
    return jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | one, np.float32) - np.float32(1)


# jitted: one dispatch when called eagerly
@functools.partial(jax.jit, static_argnames=("shape", "dtype", "stored"))
def normal(
    key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike, stored: bool = False
) -> jax.Array:
    """`jax.random.normal(key, shape, dtype)`, fusible into its consumer.

    With `stored=False` a draw costs no memory beyond its output, or none where it is
    fused into its one consumer (the seed trick); a draw with several consumers then
    recomputes the hash in each. With `stored=True` (the draw is kept for several uses)
    the hash is computed once, its bits a temporary of the draw's size.
    """
    if not _fusible(key, dtype, math.prod(shape)):
        return jax.random.normal(key, shape, dtype)
    low = np.nextafter(np.float32(-1), np.float32(0))
    high = np.float32(1)
    uniform = jnp.maximum(low, _unit_interval(_bits(key, shape, stored)) * (high - low) + low)
    return np.float32(np.sqrt(2)) * jax.lax.erf_inv(uniform)


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "stored"))
def rademacher(
    key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike, stored: bool = False
) -> jax.Array:
    """`jax.random.rademacher(key, shape, dtype)`, fusible into its consumer (`stored`
    as in `normal`)."""
    x64 = jax.config.jax_enable_x64  # type: ignore[attr-defined]
    if x64 or not _fusible(key, dtype, math.prod(shape)):
        return jax.random.rademacher(key, shape, dtype)
    heads = _unit_interval(_bits(key, shape, stored)) < np.float32(0.5)
    return (2 * heads.astype(dtype) - 1).astype(dtype)
