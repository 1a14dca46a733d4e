"""Random directions, per-sample keys, perturbations and weighted sums of the estimators.

Every estimator draws its `n` samples from `jax.random.split(key, n)`, sample `i` from
key `i` alone. A sample can so be regenerated from its key (the seed trick of MeZO,
https://arxiv.org/abs/2305.17333) instead of being stored, and the zeroth-order and
the Gaussian-policy estimators see the very same directions for the same key.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtricks._src import checks, dtypes, keys
from jaxtricks._src.typing import KeyLike, PyTree
from jaxtricks.estimators._directions import DirectionKind

# The perturbation is at least this many spacings of the dtype at the largest |x_j|.
RESOLVED_SPACINGS = 4


def sample_keys(
    key: KeyLike, num_samples: int, sample_sharding: jax.sharding.Sharding | None = None
) -> jax.Array:
    """The `[num_samples]` typed keys of the samples, sharded by `sample_sharding` if given.

    `key` is a typed key or a legacy `PRNGKey` (the same numbers for both), of the
    threefry, rbg or unsafe_rbg implementation: the sample keys are threefry keys
    (`keys.batch_invariant`), so that a direction drawn again is the same direction.

    Raises:
        ValueError: when `key` is not a single key of either kind, or of another
            implementation.
    """
    typed = keys.batch_invariant(keys.as_key(key, "key"), "key")
    return constrain(jax.random.split(typed, num_samples), sample_sharding)


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


def weight_scale(key: jax.Array, params: PyTree, kind: DirectionKind) -> jax.Array | None:
    """`b` of the direction of `key` (weight = `b` times its draw); None where it is 1."""
    scales = kind.draw_scaled(key, params)[1]
    return None if scales is None else scales[1]


def leaf_keys(key: jax.Array, params: PyTree) -> list[jax.Array]:
    """The keys of the leaves of a direction, in the order of `jax.tree.leaves(params)`."""
    return jax.tree.leaves(optax.tree.split_key_like(key, params))


def draw_leaf(
    leaf_key: jax.Array, leaf: jax.Array, kind: DirectionKind, stored: bool = False
) -> jax.Array:
    """One leaf of the draw of a direction, from its own key alone, in `compute_dtype`."""
    return kind.sample_leaf(leaf_key, leaf.shape, dtypes.compute_dtype(leaf.dtype), stored)


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


def resolved_sigma(
    sigma: jax.typing.ArrayLike, params: PyTree, kind: DirectionKind
) -> jax.Array:
    r"""`max(sigma, sigma_min)`: the smallest perturbation scale the params' dtype resolves.

    `x + sigma u` is rounded to the dtype of `x`, whose numbers near `x_j` are spaced
    by `h_j <= eps |x_j|` (`eps = jnp.finfo(dtype).eps`, the relative spacing: 2^-7
    for bfloat16, 2^-10 for float16, 2^-23 for float32). A step `sigma |u_j| < h_j / 2`
    is rounded away, and when every step is, `x + sigma u == x` and the estimate is
    exactly 0 (bfloat16 with `sigma = 1e-3` and `|x_j| >= 0.26`). With `s` the typical
    `|p_j|` of the perturbations (`kind.coordinate_size(d)`: 1 for "gaussian" and
    "rademacher", `1/sqrt(d)` for "sphere", `d` the number of parameters),

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
    floor = floor / kind.coordinate_size(optax.tree.size(params))
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


def value_at(fn: Callable[[PyTree], jax.Array], point: PyTree, name: str = "fn") -> jax.Array:
    """`fn(point)`, checked to be a real scalar, in at least float32 (an integer or boolean
    value, a count or an indicator, is a float from here on): the one evaluation of a
    (perturbed) point that the estimates, the update and the policy gradient use."""
    value = fn(point)
    check_scalar_output(name, value)
    return value.astype(dtypes.compute_dtype(value.dtype)) if not jnp.issubdtype(
        value.dtype, jnp.floating) else value


def check_params(params: PyTree) -> None:
    """Checks that `params` is a non-empty pytree of real floating arrays.

    Raises:
        ValueError: naming `params` and the offending leaf, for an empty pytree, a leaf
            that is not an array (a Python float: pass `jnp.asarray(x)`), or an integer,
            boolean or complex leaf (the directions are real Gaussian, Rademacher...
            numbers; a complex leaf would be drawn as a complex normal, half the
            gradient).
    """
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise ValueError(f"params must be a non-empty pytree of float arrays, got {params!r}.")
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path) or "params"
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not hasattr(leaf, "shape"):
            raise ValueError(
                f"params must be a pytree of real floating arrays, got {type(leaf).__name__} "
                f"{leaf!r} at {where} (wrap it with jnp.asarray)."
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"params must be a pytree of real floating arrays, got dtype {dtype} at "
                f"{where}."
            )


def check_sample_sharding(
    sample_sharding: jax.sharding.Sharding | None, num_directions: int
) -> None:
    """Checks that the devices along the sample axis divide the number of directions.

    Raises:
        ValueError: naming `sample_sharding` and `num_samples`.
    """
    if sample_sharding is None:
        return
    devices = _sample_devices(sample_sharding)
    if num_directions % devices:
        raise ValueError(
            f"sample_sharding splits the directions over {devices} devices, which must "
            f"divide their number, got {num_directions} directions (num_samples / 2 "
            "when antithetic, else num_samples): choose num_samples accordingly."
        )


def _sample_devices(sample_sharding: jax.sharding.Sharding) -> int:
    """How many shards `sample_sharding` cuts a 1-D array into."""
    spec = getattr(sample_sharding, "spec", None)
    mesh = getattr(sample_sharding, "mesh", None)
    if spec is None or mesh is None or not len(spec) or spec[0] is None:
        return 1
    names = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    return int(np.prod([mesh.shape[name] for name in names]))


def weighted_sum(coefficients: jax.Array, stacked: PyTree) -> PyTree:
    """`sum_i coefficients[i] * stacked[i]` for every leaf of a stacked pytree."""

    def weighted(leaf: jax.Array) -> jax.Array:
        scale, values = dtypes.promoted(coefficients, leaf)
        return jnp.tensordot(scale, values, axes=1)

    return jax.tree.map(weighted, stacked)


def scale_samples(coefficients: jax.Array, stacked: PyTree) -> PyTree:
    """`coefficients[i] * stacked[i]` for every leaf, keeping the leading sample axis."""

    def scaled(leaf: jax.Array) -> jax.Array:
        scale, values = dtypes.promoted(
            coefficients.reshape((-1,) + (1,) * (leaf.ndim - 1)), leaf)
        return scale * values

    return jax.tree.map(scaled, stacked)


def check_scalar_output(name: str, output: object, floating: bool = False) -> None:
    """Checks that a function's output (a value, a tracer or a `jax.eval_shape`) is a real
    scalar (integer, boolean or floating; floating only if `floating`).

    Raises:
        ValueError: for a pytree, an array of another shape, or another dtype.
    """
    if not isinstance(output, jax.ShapeDtypeStruct | jax.Array):
        raise ValueError(f"{name} must return a scalar array, got the pytree {output}.")
    checks.check_shape(f"the output of {name}", output.shape, ())
    kinds = (jnp.floating,) if floating else (jnp.floating, jnp.integer, jnp.bool_)
    if not any(jnp.issubdtype(output.dtype, kind) for kind in kinds):
        expected = "a real floating" if floating else "a real (floating, integer or boolean)"
        raise ValueError(f"{name} must return {expected} scalar, got dtype {output.dtype}.")
