"""Gradient norms through time in recurrent cells, in one backward pass.

`||dL / d carry_t||` is the gradient that reaches step t from everything after it:
`sum_{s >= t} (dl_s / d carry_s) J_s ... J_{t+1}`, the one-step Jacobians
`J_k = d carry_k / d carry_{k-1}` of any step function `(carry, x_t) -> (carry, y_t)`
(the `jax.lax.scan` convention, which flax's linen and nnx cells follow).

References:
    Su, `也来谈谈RNN的梯度消失/爆炸问题 (On the vanishing/exploding gradients of RNNs)
    <https://kexue.fm/archives/7888>`_, 2020
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxtricks._src import dtypes
from jaxtricks.rnn import _steps
from jaxtricks.rnn._steps import Carry, StepFn


class GradientNorms(NamedTuple):
    """Gradient norms at every time step, from one backward pass.

    Attributes:
        inputs: `[T]`, `||dL / d x_t||` (all leaves of `x_t` together).
        carry: `[T]`, `||dL / d carry_t||` for the carry entering step t (the one
            combined with `x_t`); with `per_leaf=True`, a pytree shaped like the carry
            holding one `[T]` array per leaf.

    References:
        Su, `也来谈谈RNN的梯度消失/爆炸问题 (On the vanishing/exploding gradients of RNNs)
        <https://kexue.fm/archives/7888>`_, 2020 (`dL/dcarry_t`, the gradient carried back
        through the steps)

        Pascanu, Mikolov & Bengio, `On the difficulty of training recurrent neural
        networks <https://arxiv.org/abs/1211.5063>`_, ICML 2013 (the per-step gradient
        norms that show vanishing and exploding gradients)
    """

    inputs: jax.Array
    carry: Any


def gradient_norms_over_time(
    loss_fn: Callable[[Carry, Any], jax.Array],
    step_fn: StepFn,
    carry: Carry,
    inputs: Any,
    *,
    per_leaf: bool = False,
) -> GradientNorms:
    """`||dL / d x_t||` and `||dL / d carry_t||` for every t, in one backward pass.

    The sequence is scanned with a zero perturbation `delta_t` added to the carry entering
    each step, `carry_t + delta_t`, and `L = loss_fn(final_carry, outputs)` is
    differentiated once with respect to all `delta_t` and all floating `x_t`:
    `dL/d delta_t = dL/d carry_t = sum_{s >= t} (dl_s/d carry_s) J_s ... J_{t+1}`,
    the gradient that reaches step t from everything after it.

    Args:
        loss_fn: `(final_carry, outputs) -> scalar`, `outputs` the stacked `y_t` `[T, ...]`.
        step_fn: `(carry, x_t) -> (new_carry, y_t)` (see `jacobian_norms`).
        carry: the initial carry, a pytree of floating arrays.
        inputs: a pytree of arrays with a leading time axis `[T, ...]`, T >= 0. Leaves
            of integer or bool dtype (tokens fed to an embedding lookup, say) are passed
            through undifferentiated and do not count in `inputs` norms.
        per_leaf: also split `||dL/d carry_t||` per carry leaf (a pytree like `carry`).

    Returns:
        `GradientNorms(inputs=[T], carry=[T] or pytree of [T])`, index t being the step
        that reads `x_t` (so `carry[0]` is `||dL / d carry_0||`); `inputs` is all zeros
        when no leaf of `inputs` is floating. Norms are at least float32 (float64 for
        float64 leaves).

    Raises:
        ValueError: `inputs` without a common time axis, a carry that is not floating
            point or (for a `linen_step` or `nnx_step` cell that fails on it) not of the
            shapes of the cell's `initialize_carry`, or a `step_fn` whose carry changes
            structure, shape or dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import rnn
        >>> step = lambda h, x: (0.5 * h + x, h)
        >>> loss_fn = lambda final, outputs: jnp.sum(final)  # dL/d h_t = 0.5^(T-t) per entry
        >>> norms = rnn.gradient_norms_over_time(loss_fn, step, jnp.ones(4), jnp.zeros((3, 4)))
        >>> [round(float(n), 4) for n in norms.carry], [round(float(n), 4) for n in norms.inputs]
        ([0.25, 0.5, 1.0], [0.5, 1.0, 2.0])

    References:
        Su, `也来谈谈RNN的梯度消失/爆炸问题 <https://kexue.fm/archives/7888>`_, 2020
    """
    length = _steps.check_sequence(inputs)
    _steps.check_step(step_fn, carry, inputs)
    perturbations = jax.tree.map(lambda c: jnp.zeros((length, *jnp.shape(c)), c.dtype), carry)
    leaves, treedef = jax.tree.flatten(inputs)
    floating = [jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) for leaf in leaves]

    def perturbed_loss(perturbations: Carry, float_leaves: list[jax.Array]) -> jax.Array:
        remaining = iter(float_leaves)
        xs = jax.tree.unflatten(
            treedef,
            [next(remaining) if is_float else leaf
             for leaf, is_float in zip(leaves, floating, strict=True)]
        )

        def body(state: Carry, slice_t: tuple[Carry, Any]) -> tuple[Carry, Any]:
            perturbation, x = slice_t
            return step_fn(jax.tree.map(jnp.add, state, perturbation), x)

        final_carry, outputs = jax.lax.scan(body, carry, (perturbations, xs))
        return loss_fn(final_carry, outputs)

    float_leaves = [leaf for leaf, is_float in zip(leaves, floating, strict=True) if is_float]
    carry_grads, input_grads = jax.grad(perturbed_loss, argnums=(0, 1))(
        perturbations, float_leaves
    )
    carry_norms = (
        jax.tree.map(lambda g: _norms_over_time(g, length), carry_grads) if per_leaf
        else _norms_over_time(carry_grads, length)
    )
    return GradientNorms(inputs=_norms_over_time(input_grads, length), carry=carry_norms)


def _norms_over_time(tree: Any, length: int) -> jax.Array:
    """`[T]` Euclidean norms of a pytree of `[T, ...]` arrays, all leaves together.

    Each row is divided by its largest `|entry|` before it is squared and multiplied back
    after the square root, so gradients of 1e20 or 1e-21 neither overflow nor flush to
    zero in float32; a row of zeros gives 0 with a zero gradient (both `where`s of the
    double-`where` trick), an infinite entry inf, a NaN entry NaN. The scale is held
    constant under differentiation (the norm is homogeneous, so the derivative is that
    of the unscaled norm).
    """
    leaves = jax.tree.leaves(tree)
    dtype = dtypes.result_type(*leaves, jnp.float32)
    rows = [leaf.astype(dtype).reshape(length, math.prod(leaf.shape[1:])) for leaf in leaves]
    peak = jax.lax.stop_gradient(functools.reduce(
        jnp.maximum, [jnp.max(jnp.abs(row), axis=1, initial=0) for row in rows],
        jnp.zeros(length, dtype),
    ))
    zero, infinite = peak == 0, peak == jnp.inf
    safe_peak = jnp.where(zero | infinite, jnp.ones_like(peak), peak)
    squares = sum(
        (jnp.sum(jnp.square(row / safe_peak[:, None]), 1) for row in rows),
        jnp.zeros(length, dtype),
    )
    norms = safe_peak * jnp.sqrt(jnp.where(zero, jnp.ones_like(squares), squares))
    return jnp.where(zero, 0.0, jnp.where(infinite, jnp.inf, norms)).astype(dtype)
