"""Random directions, per-sample keys, perturbations and weighted sums of the estimators.

Every estimator draws its `n` samples from `jax.random.split(key, n)`, sample `i` from
key `i` alone. A sample can so be regenerated from its key (the seed trick of MeZO,
https://arxiv.org/abs/2305.17333) instead of being stored, and the zeroth-order and
the Gaussian-policy estimators see the very same directions for the same key
(spec section 5.3).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks, dtypes, keys

DIRECTIONS = ("gaussian", "sphere", "rademacher")

# The perturbation is at least this many spacings of the dtype at the largest |x_j|.
RESOLVED_SPACINGS = 4


def sample_keys(key, num_samples: int, sample_sharding=None) -> jax.Array:
    """The `[num_samples]` typed keys of the samples, sharded by `sample_sharding` if given.

    `key` is a typed key or a legacy `PRNGKey` (the same numbers for both).

    Raises:
        ValueError: when `key` is not a single key of either kind.
    """
    samples = jax.random.split(keys.as_key(key, "key"), num_samples)
    return constrain(samples, sample_sharding)


def constrain(samples, sample_sharding):
    """Shards the leading (sample) axis of every leaf as `sample_sharding` says.

    The constraint is a hint to XLA's partitioner, so a mesh with explicit axes (the
    default of `jax.make_mesh` in recent JAX) is read as the same mesh with automatic
    axes: the estimators' reductions over samples then need no sharding annotations.
    """
    if sample_sharding is None:
        return samples
    return jax.lax.with_sharding_constraint(samples, _with_auto_axes(sample_sharding))


def _with_auto_axes(sharding):
    mesh = getattr(sharding, "mesh", None)
    axis_types = getattr(mesh, "axis_types", ())
    if not isinstance(mesh, jax.sharding.Mesh) or all(
        t == jax.sharding.AxisType.Auto for t in axis_types
    ):
        return sharding
    auto = jax.sharding.Mesh(
        mesh.devices, mesh.axis_names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names),
    )
    return jax.sharding.NamedSharding(auto, sharding.spec)


def direction(key: jax.Array, params, kind: str):
    """One random direction shaped like `params`: `(perturbation, weight)`.

    The perturbed point is `params + sigma * perturbation` and the direction's
    gradient estimate is `delta_f / sigma * weight` (spec section 5.4):

    - "gaussian": `u ~ N(0, I)`, perturbation = weight = `u`;
    - "sphere": `v` uniform on the unit sphere of R^d, perturbation `v`, weight `d v`;
    - "rademacher" (SPSA): `Δ_i = ±1`, perturbation = weight = `Δ`.

    Both are drawn in `dtypes.compute_dtype` of each leaf (float32 for bfloat16 params).
    """
    like = jax.tree.map(lambda leaf: leaf.astype(dtypes.compute_dtype(leaf.dtype)), params)
    if kind == "rademacher":
        signs = optax.tree.random_like(key, like, jax.random.rademacher)
        return signs, signs
    gaussian = optax.tree.random_like(key, like, jax.random.normal)
    if kind == "gaussian":
        return gaussian, gaussian
    unit = optax.tree.scale(1.0 / optax.tree.norm(gaussian), gaussian)
    return unit, optax.tree.scale(optax.tree.size(params), unit)


def resolved_sigma(sigma, params, kind: str) -> jax.Array:
    r"""`max(sigma, sigma_min)`: the smallest perturbation scale the params' dtype resolves.

    `x + sigma u` is rounded to the dtype of `x`, whose numbers near `x_j` are spaced
    by `h_j <= eps |x_j|` (`eps = jnp.finfo(dtype).eps`, the relative spacing: 2^-7
    for bfloat16, 2^-10 for float16, 2^-23 for float32). A step `sigma |u_j| < h_j / 2`
    is rounded away, and when every step is, `x + sigma u == x` and the estimate is
    exactly 0 (bfloat16 with `sigma = 1e-3` and `|x_j| >= 0.26`). With `s` the typical
    `|u_j|` of the directions (1 for "gaussian" and "rademacher", `1/sqrt(d)` for
    "sphere", `d` the number of parameters),

        sigma_min = RESOLVED_SPACINGS * max_j eps_j |x_j| / s

    makes every step at least 4 spacings of the largest parameter. Then a `±sigma`
    step (SPSA) is moved by rounding by at most `h_j / 2 <= sigma / 8`; with Gaussian
    steps the rounding error `e(t) = round(x_j + t) - x_j - t` biases the estimate by
    the factor `E[e(sigma u) u] / sigma = E[e'(sigma u)]` (Stein's lemma), `-1` plus
    a Riemann sum of the Gaussian density over the rounding grid, which by Poisson
    summation is at most `2 exp(-2 pi^2 sigma^2 / h_j^2) < 1e-130`; the Gaussian
    policy's score `(w - x) / sigma^2`, taken at the rounded sample, overstates its
    second moment by `h_j^2 / (12 sigma^2) <= 1/192` (Sheppard's correction).

    `sigma_min` is computed from `params` at run time (so under `jit` and `vmap` as
    well), outside differentiation; in float32 and float64 it lies below the default
    `sigma = 1e-3` unless `max |x_j| > 2000` (float32). NaN or inf in `params` gives
    a NaN or inf `sigma`, and so a NaN estimate.
    """
    floors = [
        float(jnp.finfo(leaf.dtype).eps)
        * jnp.max(jnp.abs(leaf.astype(dtypes.compute_dtype(leaf.dtype))), initial=0.0)
        for leaf in jax.tree.leaves(params)
    ]
    floor = RESOLVED_SPACINGS * (jnp.max(jnp.stack(floors)) if floors else 0.0)
    if kind == "sphere":
        floor = floor * math.sqrt(optax.tree.size(params))
    return jnp.maximum(sigma, jax.lax.stop_gradient(floor))


def perturb(params, sigma, perturbation):
    """`params + sigma * perturbation`, added in at least float32, rounded once per leaf."""
    return jax.tree.map(
        lambda leaf, step: (leaf.astype(step.dtype) + sigma * step).astype(leaf.dtype),
        params,
        perturbation,
    )


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
