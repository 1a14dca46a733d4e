"""What `zeroth_order_grad` and `zeroth_order_update` share: checks, draws, values, coefficients."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks, dtypes
from jaxtricks._src.typing import PyTree
from jaxtricks.estimators import _baselines, _sampling


class Plan:
    """The arithmetic shared by `zeroth_order_grad` and `zeroth_order_update`."""

    def __init__(self, fn: Callable[[PyTree], jax.Array], params: PyTree, num_samples: int,
                 sigma: jax.typing.ArrayLike, antithetic: bool, directions: str,
                 baseline: _baselines.Baseline, chunk_size: int | None,
                 sample_sharding: jax.sharding.Sharding | None) -> None:
        self.fn, self.params, self.antithetic = fn, params, antithetic
        self.directions, self.baseline, self.sample_sharding = (
            directions, baseline, sample_sharding
        )
        self.sigma = _sampling.resolved_sigma(sigma, params, directions)
        # Antithetic: two evaluations (x +- sigma u) per direction, so a chunk of
        # `chunk_size` evaluations holds `chunk_size / 2` directions.
        self.num_directions = num_samples // 2 if antithetic else num_samples
        self.num_chunks = 1 if chunk_size is None else num_samples // chunk_size
        self.unperturbed = (
            fn(params) if not antithetic and baseline == "unperturbed" else None
        )

    def values(
        self, perturbation: PyTree, weight: PyTree, key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """`(f(x + sigma u), f(x - sigma u))` antithetic, else `(f(x + sigma u), ||w||^2)`.

        With `key` (chunked), what is needed after `f(x + sigma u)` is drawn again
        from it rather than kept, so that the direction dies with its perturbed point.
        `||w||^2` is computed for the "optimal" baseline only (else 0).
        """
        plus = self.fn(_sampling.perturb(self.params, self.sigma, perturbation))
        _sampling.check_scalar_output("fn", plus)
        if self.antithetic:
            if key is not None:
                perturbation = self.draw(_sampling.regenerated(key, after=plus))[0]
            return plus, self.fn(_sampling.perturb(self.params, -self.sigma, perturbation))
        return plus, self.sq_norm(weight, key)

    def sq_norm(self, weight: PyTree, key: jax.Array | None = None) -> jax.Array:
        """`||w||^2` of a direction (drawn again from `key` if given), for "optimal"."""
        if not _baselines.needs_sq_norms(self.baseline):
            return jnp.zeros((), self.sigma.dtype)
        if key is not None:
            weight = self.draw(_sampling.regenerated(key))[1]
        return optax.tree.norm(weight, squared=True)

    def draw(self, key: jax.Array, stored: bool = False) -> tuple[PyTree, PyTree]:
        return _sampling.direction(key, self.params, self.directions, stored)

    def stored(self, sample_keys: jax.Array) -> tuple[jax.Array, PyTree]:
        """`(c_i, w_i)` of the directions of `sample_keys`, each drawn once and kept for
        its evaluations and its weight (coefficients `[k]`, weights stacked)."""
        perturbations, weights = jax.vmap(lambda k: self.draw(k, stored=True))(
            _sampling.constrain(sample_keys, self.sample_sharding)
        )
        return self.coefficients(*jax.vmap(self.values)(perturbations, weights)), weights

    def chunk_values(self, chunk_keys: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The values of a chunk of directions, each drawn from its key for each use."""
        def one(one_key: jax.Array) -> tuple[jax.Array, jax.Array]:
            return self.values(*self.draw(one_key), one_key)

        return jax.vmap(one)(_sampling.constrain(chunk_keys, self.sample_sharding))

    def chunk_weights(self, chunk_keys: jax.Array) -> PyTree:
        """The weights `w_i` of a chunk, drawn again from their keys."""
        chunk_keys = _sampling.constrain(_sampling.regenerated(chunk_keys), self.sample_sharding)
        return jax.vmap(lambda k: self.draw(k)[1])(chunk_keys)

    def coefficients(self, plus: jax.Array, second: jax.Array) -> jax.Array:
        """`c_i` of the estimate `(1/n) sum_i c_i w_i`."""
        if self.antithetic:
            return (plus - second) / (2 * self.sigma)
        return _baselines.centred_rewards(
            plus, self.baseline, sq_norms=second, unperturbed=lambda: self.unperturbed
        ) / self.sigma

    def zeros(self) -> PyTree:
        """The accumulator of `sum_i c_i w_i`, in `compute_dtype` of each leaf."""
        return jax.tree.map(
            lambda p: jnp.zeros(
                p.shape, jnp.result_type(self.sigma, dtypes.compute_dtype(p.dtype))
            ),
            self.params,
        )

    def mean(self, total: PyTree) -> PyTree:
        """`total / n`, in the params' dtypes."""
        return jax.tree.map(
            lambda t, p: (t / self.num_directions).astype(p.dtype), total, self.params
        )


def check_arguments(num_samples: int, sigma: jax.typing.ArrayLike, antithetic: bool,
                    directions: str, baseline: _baselines.Baseline,
                    chunk_size: int | None) -> None:
    checks.check_positive_int("num_samples", num_samples)
    if antithetic and num_samples % 2:
        raise ValueError(
            "num_samples must be even with antithetic=True (two evaluations per "
            f"direction), got {num_samples}."
        )
    checks.check_scalar("sigma", sigma, low=0.0, low_inclusive=False)
    _sampling.check_direction_kind(directions)
    _baselines.check_baseline(baseline, num_samples)
    if chunk_size is not None:
        checks.check_positive_int("chunk_size", chunk_size)
        if num_samples % chunk_size or (antithetic and chunk_size % 2):
            raise ValueError(
                f"chunk_size must divide num_samples={num_samples}"
                + (" and be even with antithetic=True" if antithetic else "")
                + f", got {chunk_size}."
            )
