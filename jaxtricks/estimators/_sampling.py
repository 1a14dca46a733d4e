"""Random directions, per-sample keys, perturbations and weighted sums of the estimators.

Every estimator draws its `n` samples from `jax.random.split(key, n)`, sample `i` from
key `i` alone. A sample can so be regenerated from its key (the seed trick of MeZO,
https://arxiv.org/abs/2305.17333) instead of being stored, and the zeroth-order and
the Gaussian-policy estimators see the very same directions for the same key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks, dtypes, keys
from jaxtricks._src.typing import DTypeLike, KeyLike, PyTree
from jaxtricks.estimators import _random

Sampler: TypeAlias = Callable[[jax.Array, tuple[int, ...], DTypeLike, bool], jax.Array]

# The perturbation is at least this many spacings of the dtype at the largest |x_j|.
RESOLVED_SPACINGS = 4


def sample_keys(
    key: KeyLike, num_samples: int, sample_sharding: jax.sharding.Sharding | None = None
) -> jax.Array:
    """The `[num_samples]` typed keys of the samples, sharded by `sample_sharding` if given.

    `key` is a typed key or a legacy `PRNGKey` (the same numbers for both).

    Raises:
        ValueError: when `key` is not a single key of either kind.
    """
    samples = jax.random.split(keys.as_key(key, "key"), num_samples)
    return constrain(samples, sample_sharding)


def constrain(samples: PyTree, sample_sharding: jax.sharding.Sharding | None) -> PyTree:
    """Shards the leading (sample) axis of every leaf as `sample_sharding` says.

    The constraint is a hint to XLA's partitioner, so a mesh with explicit axes (the
    default of `jax.make_mesh` in recent JAX) is read as the same mesh with automatic
    axes: the estimators' reductions over samples then need no sharding annotations.
    """
    if sample_sharding is None:
        return samples
    return jax.lax.with_sharding_constraint(samples, _with_auto_axes(sample_sharding))


def _with_auto_axes(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
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
    # A sharding over a `Mesh` is a `NamedSharding`.
    return jax.sharding.NamedSharding(auto, sharding.spec)  # type: ignore[attr-defined]


def _random_like(key: jax.Array, like: PyTree, sampler: Sampler, stored: bool) -> PyTree:
    """`optax.tree.random_like(key, like, sampler)` with the fusible samplers of `_random`."""
    return jax.tree.map(
        lambda leaf, leaf_key: sampler(leaf_key, leaf.shape, leaf.dtype, stored),
        like, optax.tree.split_key_like(key, like),
    )


def _sphere_scales(draw: PyTree, size: int) -> tuple[jax.Array, jax.Array]:
    inverse_norm = 1.0 / optax.tree.norm(draw)
    return inverse_norm, size * inverse_norm


class DirectionKind(NamedTuple):
    """A kind of random direction: a draw `z` scaled, `perturbation = a z`, `weight = b z`.

    sampler: `sampler(key, shape, dtype, stored)`, one leaf of `z` (each leaf from its
        own key), a fusible sampler of `_random`.
    scales: `scales(z, d) -> (a, b)`, scalars of the whole draw and of the number of
        parameters `d`; None for `a = b = 1`.
    inverse_step: `inverse_step(d)`, one over the typical `|perturbation_j|` for `d`
        parameters (it scales the smallest resolved `sigma`, see `resolved_sigma`).
    """

    sampler: Sampler
    scales: Callable[[PyTree, int], tuple[jax.Array, jax.Array]] | None
    inverse_step: Callable[[int], float]


DIRECTIONS: dict[str, DirectionKind] = {
    "gaussian": DirectionKind(_random.normal, None, lambda d: 1.0),
    "sphere": DirectionKind(_random.normal, _sphere_scales, math.sqrt),
    "rademacher": DirectionKind(_random.rademacher, None, lambda d: 1.0),
}
"""Every direction kind by name; adding one is one entry here (and its tests)."""


def direction(
    key: jax.Array, params: PyTree, kind: str, stored: bool = False
) -> tuple[PyTree, PyTree]:
    """One random direction shaped like `params`: `(perturbation, weight)`.

    The perturbed point is `params + sigma * perturbation` and the direction's
    gradient estimate is `delta_f / sigma * weight` (Nesterov & Spokoiny, 2017; Spall,
    1992):

    - "gaussian": `u ~ N(0, I)`, perturbation = weight = `u`;
    - "sphere": `v = u / ||u||` uniform on the unit sphere of R^d, perturbation `v`,
      weight `(d / ||u||) u`;
    - "rademacher" (SPSA): `Δ_i = ±1`, perturbation = weight = `Δ`.

    Each leaf is drawn from its own key, `jax.random.split(key, num_leaves)[leaf]`, as
    `optax.tree.random_like` draws it (the same numbers, by the fusible samplers of
    `_random`), in `dtypes.compute_dtype` of the leaf (float32 for bfloat16 params): a
    leaf can be regenerated alone (`draw_leaf`), its weight being `weight_scale` times it.
    `stored`: the direction is kept for several uses (see `_random.normal`).
    """
    draw, scales = scaled_draw(key, params, kind, stored)
    if scales is None:
        return draw, draw
    return optax.tree.scale(scales[0], draw), optax.tree.scale(scales[1], draw)


def scaled_draw(
    key: jax.Array, params: PyTree, kind: str, stored: bool = False
) -> tuple[PyTree, tuple[jax.Array, jax.Array] | None]:
    """`(z, (a, b))` of the direction of `key`: its draw and scales (None for `a = b = 1`)."""
    like = jax.tree.map(lambda leaf: leaf.astype(dtypes.compute_dtype(leaf.dtype)), params)
    draw = _random_like(key, like, DIRECTIONS[kind].sampler, stored)
    scales = DIRECTIONS[kind].scales
    return draw, None if scales is None else scales(draw, optax.tree.size(params))


def weight_scale(key: jax.Array, params: PyTree, kind: str) -> jax.Array | None:
    """`b` of the direction of `key` (weight = `b` times its draw); None where it is 1."""
    scales = scaled_draw(key, params, kind)[1]
    return None if scales is None else scales[1]


def leaf_keys(key: jax.Array, params: PyTree) -> list[jax.Array]:
    """The keys of the leaves of a direction, in the order of `jax.tree.leaves(params)`."""
    return jax.tree.leaves(optax.tree.split_key_like(key, params))


def draw_leaf(leaf_key: jax.Array, leaf: jax.Array, kind: str) -> jax.Array:
    """One leaf of the draw of a direction (see `direction`), from its own key alone."""
    return DIRECTIONS[kind].sampler(
        leaf_key, leaf.shape, dtypes.compute_dtype(leaf.dtype), False)


def regenerated(key: jax.Array, after: jax.Array | None = None) -> jax.Array:
    """`key` behind an optimisation barrier: what is drawn from it is drawn again.

    XLA would otherwise merge two draws from one key (common subexpressions) and keep
    the direction alive between its uses, `O(params)` memory per direction; drawn
    again, each use is fused with its own draw, leaf by leaf.

    With `after` (a scalar), the draw also waits for `after`, so that it can reuse the
    buffers that `after` needed. XLA drops barriers before it schedules, so the wait is
    a data dependency: the key data plus `|after| < -1`, which is 0 for every float
    (NaN and inf too) but not known to XLA to be.
    """
    data = jax.lax.optimization_barrier(jax.random.key_data(key))
    if after is not None:
        data = data + (jnp.abs(after) < -1).astype(data.dtype)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


def resolved_sigma(sigma: jax.typing.ArrayLike, params: PyTree, kind: str) -> jax.Array:
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
    floors = [float(jnp.finfo(leaf.dtype).eps) * _max_abs(leaf) for leaf in jax.tree.leaves(params)]
    floor = RESOLVED_SPACINGS * (jnp.max(jnp.stack(floors)) if floors else 0.0)
    floor = floor * DIRECTIONS[kind].inverse_step(optax.tree.size(params))
    return jnp.maximum(sigma, jax.lax.stop_gradient(floor))


def _max_abs(leaf: jax.Array) -> jax.Array:
    """`max_j |x_j|` (0 if empty) in `compute_dtype`, as two reductions of `leaf` itself.

    Not `max(abs(leaf))`: some XLA CPU versions materialise `abs(leaf)`, a copy.
    """
    largest, smallest = jnp.max(leaf, initial=0), jnp.min(leaf, initial=0)
    return jnp.maximum(largest, -smallest).astype(dtypes.compute_dtype(leaf.dtype))


def perturb(params: PyTree, sigma: jax.typing.ArrayLike, perturbation: PyTree) -> PyTree:
    """`params + sigma * perturbation`, added in at least float32, rounded once per leaf."""
    return jax.tree.map(
        lambda leaf, step: (leaf.astype(step.dtype) + sigma * step).astype(leaf.dtype),
        params,
        perturbation,
    )


def check_direction_kind(directions: str) -> None:
    """Checks the `directions` argument."""
    checks.check_choice("directions", directions, tuple(DIRECTIONS))


def weighted_sum(coefficients: jax.Array, stacked: PyTree) -> PyTree:
    """`sum_i coefficients[i] * stacked[i]` for every leaf of a stacked pytree."""
    return jax.tree.map(lambda leaf: jnp.tensordot(coefficients, leaf, axes=1), stacked)


def scale_samples(coefficients: jax.Array, stacked: PyTree) -> PyTree:
    """`coefficients[i] * stacked[i]` for every leaf, keeping the leading sample axis."""
    return jax.tree.map(
        lambda leaf: coefficients.reshape((-1,) + (1,) * (leaf.ndim - 1)) * leaf, stacked
    )


def check_scalar_output(name: str, output: object) -> None:
    """Checks that a function's output (a value, a tracer or a `jax.eval_shape`) is a scalar.

    Raises:
        ValueError: for a pytree or an array of another shape.
    """
    if not isinstance(output, jax.ShapeDtypeStruct | jax.Array):
        raise ValueError(f"{name} must return a scalar array, got the pytree {output}.")
    checks.check_shape(f"the output of {name}", output.shape, ())
