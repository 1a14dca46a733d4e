"""Random directions, per-sample keys and weighted sums shared by the estimators.

Every estimator draws its `n` samples from `jax.random.split(key, n)`, sample `i` from
key `i` alone. A sample can so be regenerated from its key (the seed trick of MeZO,
https://arxiv.org/abs/2305.17333) instead of being stored, and the zeroth-order and
the Gaussian-policy estimators see the very same directions for the same key
(spec section 5.3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks

DIRECTIONS = ("gaussian", "sphere", "rademacher")


def sample_keys(key: jax.Array, num_samples: int, sample_sharding) -> jax.Array:
    """The `[num_samples]` keys of the samples, sharded by `sample_sharding` if given."""
    keys = jax.random.split(key, num_samples)
    return constrain(keys, sample_sharding)


def constrain(samples, sample_sharding):
    """Shards the leading (sample) axis of every leaf as `sample_sharding` says."""
    if sample_sharding is None:
        return samples
    return jax.lax.with_sharding_constraint(samples, sample_sharding)


def direction(key: jax.Array, params, kind: str):
    """One random direction shaped like `params`: `(perturbation, weight)`.

    The perturbed point is `params + sigma * perturbation` and the direction's
    gradient estimate is `delta_f / sigma * weight` (spec section 5.4):

    - "gaussian": `u ~ N(0, I)`, perturbation = weight = `u`;
    - "sphere": `v` uniform on the unit sphere of R^d, perturbation `v`, weight `d v`;
    - "rademacher" (SPSA): `Δ_i = ±1`, perturbation = weight = `Δ`.
    """
    if kind == "rademacher":
        signs = optax.tree.random_like(key, params, jax.random.rademacher)
        return signs, signs
    gaussian = optax.tree.random_like(key, params, jax.random.normal)
    if kind == "gaussian":
        return gaussian, gaussian
    unit = optax.tree.scale(1.0 / optax.tree.norm(gaussian), gaussian)
    return unit, optax.tree.scale(optax.tree.size(params), unit)


def check_direction_kind(directions: str) -> None:
    """Checks the `directions` argument."""
    checks.check_choice("directions", directions, DIRECTIONS)


def weighted_sum(coefficients: jax.Array, stacked):
    """`sum_i coefficients[i] * stacked[i]` for every leaf of a stacked pytree."""
    return jax.tree.map(lambda leaf: jnp.tensordot(coefficients, leaf, axes=1), stacked)


def scale_samples(coefficients: jax.Array, stacked):
    """`coefficients[i] * stacked[i]` for every leaf, keeping the leading sample axis."""
    return jax.tree.map(
        lambda leaf: coefficients.reshape((-1,) + (1,) * (leaf.ndim - 1)) * leaf, stacked
    )


def check_scalar_output(name: str, shape_dtype) -> None:
    """Checks that a function's output (from `jax.eval_shape`) is one scalar array."""
    if not isinstance(shape_dtype, jax.ShapeDtypeStruct):
        raise ValueError(
            f"{name} must return a scalar array, got the pytree {shape_dtype}."
        )
    checks.check_shape(f"the output of {name}", shape_dtype.shape, ())
