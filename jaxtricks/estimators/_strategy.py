"""The one place that chooses how an estimate `(1/n) sum_i c_i w_i` is evaluated.

`P` is the params' size, `B = block_elements()` the most numbers an array of a block may
hold (2^20 on CPU, 2^27 on accelerators; see `_one_pass`). Planned peaks are XLA's
(`compiled.memory_analysis()`, float32):

- "blocks" (`_one_pass`), without `chunk_size`, where each `c_i` needs its own
  direction only (central, tangent, or forward with the baseline "unperturbed", None or
  a scalar) and two directions fit in `B`, or the kind draws groups: peak `P` plus one
  block's arrays;
- "seeded" (`_two_phase`, one direction a chunk), without `chunk_size` where two
  directions outgrow `B` (regenerable kinds), or with `chunk_size` of one direction:
  `2 P` plus one evaluation's activations, at most `jax.grad`'s peak;
- "chunked" (`_two_phase`), `chunk_size` of several directions: `(2 + chunk_size) P`;
- "stored" (`Plan.stored`), `return_samples`, `sample_sharding`, or a pooled baseline
  ("mean", "leave_one_out", "optimal") whose directions fit in `B` together (or of a
  kind that draws groups): `n P`;
- "chunked samples", `return_samples` with `chunk_size`: `n P` (the output).
"""

from __future__ import annotations

from typing import Literal

import jax
import optax

from jaxtricks._src.typing import PyTree
from jaxtricks.estimators import _baselines, _one_pass, _plan, _sampling, _two_phase

Strategy = Literal["blocks", "seeded", "chunked", "stored", "chunked samples"]


def choose(plan: _plan.Plan, chunk_size: int | None, return_samples: bool) -> Strategy:
    """The strategy of the table above."""
    if chunk_size is not None:
        if return_samples:
            return "chunked samples"
        return "seeded" if chunk_size == plan.evaluations_per_direction else "chunked"
    if return_samples or plan.sample_sharding is not None:
        return "stored"
    num_params = optax.tree.size(plan.params)
    budget = _one_pass.block_elements()
    pooled = plan.difference == "forward" and _baselines.pools_samples(plan.baseline)
    if not plan.kind.regenerable:
        return "stored" if pooled else "blocks"
    if pooled:
        return "stored" if plan.num_directions * num_params <= budget else "seeded"
    return "blocks" if min(2, plan.num_directions) * num_params <= budget else "seeded"


def estimate(
    plan: _plan.Plan, sample_keys: jax.Array, chunk_size: int | None, return_samples: bool
) -> PyTree:
    """The estimate (or the per-direction estimates) of `plan` by its strategy."""
    strategy = choose(plan, chunk_size, return_samples)
    if strategy == "blocks":
        return _one_pass.estimate(plan, sample_keys)
    if strategy in ("seeded", "chunked"):
        return _two_phase.estimate(
            plan, sample_keys, chunk_size or plan.evaluations_per_direction)
    if strategy == "stored":
        coefficients, weights = plan.stored(sample_keys)
        if return_samples:
            return _sampling.scale_samples(coefficients, weights)
        return plan.mean(_sampling.weighted_sum(coefficients, weights))
    assert chunk_size is not None
    return _chunked_samples(plan, sample_keys, chunk_size)


def _chunked_samples(plan: _plan.Plan, sample_keys: jax.Array, chunk_size: int) -> PyTree:
    """The per-direction estimates `c_i w_i`, `chunk_size` evaluations at a time."""
    chunk_keys = sample_keys.reshape(-1, chunk_size // plan.evaluations_per_direction)
    coefficients = plan.coefficients(
        *jax.tree.map(lambda v: v.reshape(-1), jax.lax.map(plan.chunk_values, chunk_keys))
    ).reshape(chunk_keys.shape)
    samples = jax.lax.map(
        lambda chunk: _sampling.scale_samples(chunk[1], plan.chunk_weights(chunk[0])),
        (chunk_keys, coefficients),
    )
    return jax.tree.map(lambda s: s.reshape((plan.num_directions, *s.shape[2:])), samples)
