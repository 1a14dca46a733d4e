"""Chunked `zeroth_order_grad`: the values first, then the estimate leaf by leaf.

MeZO's two phases (Malladi et al., https://arxiv.org/abs/2305.17333): first every
value, each direction drawn from its key, added to the params and evaluated, keeping
one scalar per evaluation; then the coefficients `c_i` (any baseline) and the estimate
leaf by leaf, `g_L = (1/n) sum_i c_i w_{i,L}`, each `w_{i,L}` drawn again from its key
alone and added in place.

XLA plans the output apart from the temporaries (an output buffer is never reused for
one), so the perturbed params are built in the buffers that become the output: the
first phase carries them through its loop, and each leaf's loop of the second phase
starts from that leaf, discarding it in its first step (`where(i == 0, 0, g)`, which
drops the perturbed values, NaN included, and nothing else). The planned peak is then
the params, the output and the activations of one evaluation: XLA CPU plans
`2 x params + 0-2 MiB` for a 160 MiB MLP where `jax.grad` plans `2 x params + 4 MiB`.
Larger chunks are vmapped, their perturbed points temporaries: `(2 + chunk_size) x params`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks._src.typing import PyTree
from jaxtricks.estimators import _plan, _sampling


def estimate(plan: _plan.Plan, sample_keys: jax.Array, chunk_size: int) -> PyTree:
    """The estimate of `plan` from the `[n]` keys of its directions, `chunk_size` evaluations
    at a time (one at a time, in the output's buffers, for one direction per chunk)."""
    params, num_directions = plan.params, plan.num_directions
    per_direction = plan.evaluations_per_direction  # x +- sigma p, or one value
    num_samples = per_direction * num_directions
    signs = np.tile(np.array([1.0, -1.0], np.float32)[:per_direction], num_directions)
    evaluation_keys = sample_keys[np.arange(num_samples) // per_direction]

    def evaluate(
        one_key: jax.Array, sign: jax.typing.ArrayLike
    ) -> tuple[PyTree, tuple[jax.Array, jax.Array, jax.Array | None]]:
        perturbation = plan.draw(one_key)[0]
        scale = _sampling.weight_scale(one_key, params, plan.kind)
        if plan.difference == "tangent":  # the carried buffer holds the direction
            return perturbation, (plan.tangent(perturbation), jnp.zeros(()), scale)
        point = _sampling.perturb(params, jnp.asarray(sign, plan.dtype) * plan.sigma, perturbation)
        value = _sampling.value_at(plan.fn, point)
        second = jnp.zeros((), plan.dtype) if plan.difference == "central" else plan.sq_norm(
            None, one_key)
        return point, (value, second, scale)

    if chunk_size == per_direction:
        points, (values, second, scales) = jax.lax.scan(
            lambda point, evaluation: evaluate(*evaluation),
            plan.zeros() if plan.difference == "tangent" else jax.tree.map(jnp.zeros_like, params),
            (evaluation_keys, signs),
        )
    else:
        def evaluate_chunk(
            chunk: tuple[jax.Array, jax.Array]
        ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
            chunk_keys = _sampling.constrain(chunk[0], plan.sample_sharding)
            return jax.vmap(lambda k, sign: evaluate(k, sign)[1])(chunk_keys, chunk[1])

        points = plan.zeros()
        values, second, scales = jax.tree.map(lambda v: v.reshape(-1), jax.lax.map(
            evaluate_chunk, (evaluation_keys.reshape(-1, chunk_size), signs.reshape(-1, chunk_size))
        ))
    if plan.difference == "central":
        second, values = values[1::2], values[0::2]
    coefficients = plan.coefficients(values, second)
    if scales is not None:  # the weight is `scale` times the leaf's draw
        coefficients = coefficients * scales[::per_direction]
    return leaf_by_leaf(plan, sample_keys, coefficients, points)


def leaf_by_leaf(
    plan: _plan.Plan, sample_keys: jax.Array, coefficients: jax.Array, points: PyTree
) -> PyTree:
    """`(1/n) sum_i c_i w_i`, one leaf at a time, each leaf's loop starting from `points`'."""
    params, num_directions = plan.params, plan.num_directions

    def leaf_estimate(
        point: jax.Array, leaf: jax.Array, accumulator: jax.Array, leaf_keys: jax.Array
    ) -> jax.Array:
        def add(
            total: jax.Array, direction: tuple[jax.Array, jax.Array, jax.Array]
        ) -> tuple[jax.Array, None]:
            index, leaf_key, coefficient = direction
            total = jnp.where(index == 0, 0, total) + coefficient * _sampling.draw_leaf(
                leaf_key, leaf, plan.kind)
            # The mean in the last step: a division after the loop would be a new buffer.
            return jnp.where(index == num_directions - 1, total / num_directions, total), None

        start = point if point.dtype == accumulator.dtype else accumulator
        total, _ = jax.lax.scan(add, start, (jnp.arange(num_directions), leaf_keys,
                                             coefficients.astype(accumulator.dtype)))
        return total.astype(leaf.dtype)

    leaf_keys = jax.vmap(lambda k: _sampling.leaf_keys(k, params))(sample_keys)
    leaves, treedef = jax.tree.flatten(params)
    return jax.tree.unflatten(treedef, [
        leaf_estimate(*arguments) for arguments in zip(
            jax.tree.leaves(points), leaves, jax.tree.leaves(plan.zeros()), leaf_keys,
            strict=True)
    ])
