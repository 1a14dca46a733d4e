"""What every evaluation strategy shares: the arguments, their checks, a direction's
values and the coefficients `c_i` of the estimate `(1/n) sum_i c_i w_i`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks, dtypes
from jaxtricks._src.typing import PyTree
from jaxtricks.estimators import _baselines, _directions, _sampling

Difference = Literal["central", "forward", "tangent"]
"""How a direction is evaluated: `f(x +- sigma p)` (central, antithetic), `f(x + sigma
p)` against a baseline (forward), or the exact derivative `grad f . p` by `jax.jvp`
(tangent, the forward gradient)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """One estimate's arguments, resolved: `sigma` raised to the dtype's floor, the
    direction kind an object, `f(x)` evaluated where the baseline needs it."""

    fn: Callable[[PyTree], jax.Array]
    params: PyTree
    kind: _directions.DirectionKind
    difference: Difference
    num_directions: int
    sigma: jax.Array  # 1 for "tangent", which has no step
    baseline: _baselines.Baseline = None
    unperturbed: jax.Array | None = None
    sample_sharding: jax.sharding.Sharding | None = None
    sign: bool = False  # each c_i replaced by sign(c_i) (ZO-Bench's ZO-SGD-Sign)

    @property
    def evaluations_per_direction(self) -> int:
        return 2 if self.difference == "central" else 1

    def values(
        self, perturbation: PyTree, weight: PyTree, key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """What a direction's coefficient needs: `(f(x + sigma p), f(x - sigma p))`
        central, `(f(x + sigma p), ||w||^2)` forward, `(grad f . p, 0)` tangent.

        With `key` (the seed trick), what is needed after the first value is drawn again
        from it rather than kept, so that the direction dies with its perturbed point.
        `||w||^2` is computed for the "optimal" baseline only (else 0).
        """
        if self.difference == "tangent":
            return self.tangent(perturbation), jnp.zeros((), jnp.float32)
        plus = _sampling.value_at(self.fn, _sampling.perturb(self.params, self.sigma, perturbation))
        if self.difference == "central":
            if key is not None:
                perturbation = self.draw(_sampling.regenerated(key, after=plus))[0]
            minus = _sampling.perturb(self.params, -self.sigma, perturbation)
            return plus, _sampling.value_at(self.fn, minus)
        return plus, self.sq_norm(weight, key)

    def tangent(self, perturbation: PyTree) -> jax.Array:
        """`grad f(x) . p` by one `jax.jvp`, the tangent in the params' dtypes."""
        tangent = jax.tree.map(lambda p, x: p.astype(x.dtype), perturbation, self.params)
        value, derivative = jax.jvp(self.fn, (self.params,), (tangent,))
        _sampling.check_scalar_output("fn", value, floating=True)
        return derivative

    def sq_norm(self, weight: PyTree, key: jax.Array | None = None) -> jax.Array:
        """`||w||^2` of a direction (drawn again from `key` if given), for "optimal"."""
        if not _baselines.needs_sq_norms(self.baseline):
            return jnp.zeros((), self.dtype)
        if key is not None:
            weight = self.draw(_sampling.regenerated(key))[1]
        return optax.tree.norm(weight, squared=True)

    def draw(self, key: jax.Array, stored: bool = False) -> tuple[PyTree, PyTree]:
        return self.kind.draw(key, self.params, stored)

    def stored(self, sample_keys: jax.Array) -> tuple[jax.Array, PyTree]:
        """`(c_i, w_i)` of the directions of `sample_keys`, drawn group by group, kept for
        their evaluations and weights (coefficients `[k]`, weights stacked)."""
        perturbations, weights = self.draw_groups(sample_keys)
        return self.coefficients(*jax.vmap(self.values)(perturbations, weights)), weights

    def draw_groups(self, sample_keys: jax.Array) -> tuple[PyTree, PyTree]:
        """The stacked `(perturbations, weights)` of `sample_keys`, each group of
        `kind.group_size` directions drawn at once."""
        size = self.kind.group_size(self.num_directions, optax.tree.size(self.params))
        groups = _sampling.constrain(sample_keys, self.sample_sharding).reshape(-1, size)
        drawn = jax.vmap(lambda k: self.kind.draw_group(k, self.params, True))(groups)
        return jax.tree.map(
            lambda leaf: leaf.reshape((leaf.shape[0] * leaf.shape[1], *leaf.shape[2:])), drawn)

    def chunk_values(self, chunk_keys: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The values of a chunk of directions, each drawn from its key for each use."""
        def one(one_key: jax.Array) -> tuple[jax.Array, jax.Array]:
            return self.values(*self.draw(one_key), one_key)

        return jax.vmap(one)(_sampling.constrain(chunk_keys, self.sample_sharding))

    def chunk_weights(self, chunk_keys: jax.Array) -> PyTree:
        """The weights `w_i` of a chunk, drawn again from their keys."""
        chunk_keys = _sampling.constrain(_sampling.regenerated(chunk_keys), self.sample_sharding)
        return jax.vmap(lambda k: self.draw(k)[1])(chunk_keys)

    def coefficients(self, first: jax.Array, second: jax.Array) -> jax.Array:
        """`c_i` of the estimate `(1/n) sum_i c_i w_i` from `values` (their signs if `sign`)."""
        if self.difference == "tangent":
            coefficients = first
        elif self.difference == "central":
            coefficients = jnp.divide(*dtypes.promoted(first - second, 2 * self.sigma))
        else:
            coefficients = jnp.divide(*dtypes.promoted(_baselines.centred_rewards(
                first, self.baseline, sq_norms=second, unperturbed=lambda: self.unperturbed
            ), self.sigma))
        return jnp.sign(coefficients) if self.sign else coefficients

    @property
    def dtype(self) -> jnp.dtype:
        """The dtype of the coefficients' arithmetic (float32, or wider with `sigma`)."""
        return dtypes.result_type(jnp.float32, self.sigma)

    def zeros(self) -> PyTree:
        """The accumulator of `sum_i c_i w_i`, in `compute_dtype` of each leaf."""
        return jax.tree.map(
            lambda p: jnp.zeros(
                p.shape, dtypes.result_type(self.dtype, dtypes.compute_dtype(p.dtype))),
            self.params,
        )

    def mean(self, total: PyTree) -> PyTree:
        """`total / n`, in the params' dtypes."""
        return jax.tree.map(
            lambda t, p: (t / self.num_directions).astype(p.dtype), total, self.params
        )


def create(
    fn: Callable[[PyTree], jax.Array], params: PyTree, *, num_samples: int,
    sigma: jax.typing.ArrayLike | None, difference: Difference,
    directions: str | _directions.DirectionKind, baseline: _baselines.Baseline = None,
    sample_sharding: jax.sharding.Sharding | None = None, sign: bool = False,
) -> Plan:
    """The `Plan` of checked arguments: `sigma` resolved (`_sampling.resolved_sigma`), and
    `f(x)` evaluated, first, for the "unperturbed" baseline of forward differences."""
    kind = _directions.resolve(directions)
    num_directions = num_samples // 2 if difference == "central" else num_samples
    _sampling.check_sample_sharding(sample_sharding, num_directions)
    resolved = (jnp.ones((), jnp.float32) if sigma is None
                else _sampling.resolved_sigma(sigma, params, kind))
    unperturbed = None
    if difference == "forward" and _baselines.needs_unperturbed(baseline):
        unperturbed = _sampling.value_at(fn, params)
    return Plan(fn, params, kind, difference, num_directions, resolved, baseline, unperturbed,
                sample_sharding, sign)


def check_arguments(params: PyTree, num_samples: int, sigma: jax.typing.ArrayLike,
                    antithetic: bool, directions: str | _directions.DirectionKind,
                    baseline: _baselines.Baseline, chunk_size: int | None) -> None:
    """The checks of `zeroth_order_grad` and `zeroth_order_update`.

    Raises:
        ValueError: naming the argument, with the expected and the actual value.
    """
    _sampling.check_params(params)
    checks.check_positive_int("num_samples", num_samples)
    if antithetic and num_samples % 2:
        raise ValueError(
            "num_samples must be even with antithetic=True (two evaluations per "
            f"direction), got {num_samples}."
        )
    check_sigma(sigma)
    kind = _directions.resolve(directions)
    _baselines.check_baseline(baseline, num_samples)
    if chunk_size is not None:
        check_chunk_size(chunk_size, num_samples, antithetic, kind)


def check_sigma(sigma: jax.typing.ArrayLike) -> None:
    """`sigma`: a scalar, `> 0` where concrete."""
    checks.check_shape("sigma", jnp.shape(sigma), ())
    checks.check_scalar("sigma", sigma, low=0.0, low_inclusive=False)


def check_chunk_size(chunk_size: int, num_samples: int, antithetic: bool,
                     kind: _directions.DirectionKind) -> None:
    checks.check_positive_int("chunk_size", chunk_size)
    if num_samples % chunk_size or (antithetic and chunk_size % 2):
        raise ValueError(
            f"chunk_size must divide num_samples={num_samples}"
            + (" and be even with antithetic=True" if antithetic else "")
            + f", got {chunk_size}."
        )
    if not kind.regenerable:
        raise ValueError(
            f"chunk_size must be None with directions={kind!r}, whose directions are "
            f"drawn a group at a time and cannot be drawn again one by one, got {chunk_size}."
        )
