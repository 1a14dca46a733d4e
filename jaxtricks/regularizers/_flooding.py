"""Flooding, individual flooding (iFlood) and the gradient-norm penalty.

References:
    Ishida, Yamane, Sakai, Niu & Sugiyama, `Do We Need Zero Training Loss After Achieving
    Zero Training Error? <https://arxiv.org/abs/2002.08709>`_, 2020

    Su, `我们真的需要把训练集的损失降低到零吗？ (Do we really need to bring the training loss
    down to zero?) <https://kexue.fm/archives/7643>`_, 2020

    Xie et al., iFlood: A Stable and Effective Regularizer (ICLR), 2022
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtricks._src import checks, dtypes
from jaxtricks.regularizers._common import accumulation_dtype


def flood(loss: jax.typing.ArrayLike, *, level: jax.typing.ArrayLike) -> jax.Array:
    """Flooding: `|loss - level| + level`, applied to the mini-batch mean loss.

    Above the flood level the objective and its gradient are unchanged; below it the
    sign of the gradient flips, so a step is gradient *ascent*: the training loss
    hovers around `level` instead of reaching zero (`flood(J) >= level` always,
    `flood(J) = J` for `level = 0` and `J >= 0`). Once it hovers, each descent/ascent
    pair of learning rate `lr` is one descent step of rate `lr^2 / 2` on
    `||grad J||^2` (Su's analysis): see `gradient_norm_penalty`.

    The sign flip applies to the whole batch, so `loss` must be the batch-level
    (mean) loss, a scalar; flooding each example's loss is a different method,
    `iflood`. A batch-level quantity: a biased estimate of the flooded dataset loss.
    At a tie `loss == level` the derivative is +1 (a descent step); a NaN loss has a
    NaN gradient.

    Args:
        loss: the mini-batch training objective, a scalar.
        level: the flood level `b`: finite and >= 0 (a scalar, may be traced).

    Returns:
        The flooded loss, a scalar.

    Raises:
        ValueError: if `loss` is not a scalar or `level` is negative or not finite.

    Examples:
        >>> import jax
        >>> import jaxtricks
        >>> round(float(jaxtricks.flood(0.5, level=0.2)), 4)
        0.5
        >>> round(float(jaxtricks.flood(0.1, level=0.2)), 4)  # 0.2 + |0.1 - 0.2|
        0.3
        >>> float(jax.grad(lambda loss: jaxtricks.flood(loss, level=0.2))(0.1))  # ascent
        -1.0

    References:
        Ishida, Yamane, Sakai, Niu & Sugiyama, `Do We Need Zero Training Loss After
        Achieving Zero Training Error? <https://arxiv.org/abs/2002.08709>`_, 2020

        Su, `我们真的需要把训练集的损失降低到零吗？ (Do we really need to bring the training
        loss down to zero?) <https://kexue.fm/archives/7643>`_, 2020
    """
    checks.check_shape("loss", jnp.shape(loss), ())
    return _flooded(loss, level)


def iflood(losses: jax.typing.ArrayLike, *, level: jax.typing.ArrayLike) -> jax.Array:
    """Individual flooding (iFlood): `|loss_i - level| + level` for every example.

    Unlike `flood`, the sign flips per example: examples fitted below the level are
    pushed back up while the others still descend. Take the mean of the result.

    Args:
        losses: per-example losses, any shape.
        level: the flood level `b`: finite and >= 0 (scalar or broadcastable).

    Returns:
        The flooded per-example losses, the shape of `losses`.

    Raises:
        ValueError: if `level` is negative or not finite.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxtricks
        >>> [round(float(x), 4) for x in jaxtricks.iflood(jnp.array([0.5, 0.1]), level=0.2)]
        [0.5, 0.3]

    References:
        Xie et al., iFlood: A Stable and Effective Regularizer (ICLR), 2022
    """
    return _flooded(losses, level)


def _flooded(loss: jax.typing.ArrayLike, level: jax.typing.ArrayLike) -> jax.Array:
    checks.check_scalar("level", level, low=0.0)
    difference = jnp.asarray(loss) - level
    # |d| as d * sign(d) with the sign held constant: the derivative is +1 at a tie and
    # NaN at a NaN loss (JAX's derivative of abs is -1 there, a finite-looking step).
    sign = jnp.where(jnp.isnan(difference), difference, jnp.where(difference < 0, -1, 1))
    return difference * jax.lax.stop_gradient(sign) + level


def gradient_norm_penalty(
    loss_fn: Callable[..., Any],
    *,
    coefficient: jax.typing.ArrayLike,
    has_aux: bool = False,
) -> Callable[..., Any]:
    """Wraps `loss_fn(params, ...)` into `loss + coefficient * ||grad_params loss||^2`.

    The penalty that flooding approximates: near the flood level, a
    descent step then an ascent step of learning rate `lr` move the parameters by
    `-lr^2 H g = -(lr^2 / 2) grad ||g||^2`, i.e. per single step a descent step of
    rate `lr` on `(lr / 4) ||grad J||^2`. So `coefficient = lr / 4` is the
    flooding-equivalent choice (with the `J` term itself cancelling at the level);
    plain gradient descent adds the same `(lr / 4) ||grad J||^2` implicitly (Barrett &
    Dherin). Differentiating the wrapped function is
    double back-propagation (about 2-3x the cost of a plain gradient).

    What is differentiated: for a pytree of arrays, its floating-point (and complex)
    leaves; integer, boolean and key leaves (step counters, index tables, PRNG keys)
    are held constant. For an nnx module (or a pytree holding one), its `nnx.Param`
    state, as `nnx.grad` does; its other state (`nnx.Rngs` counts, batch statistics,
    integer variables) is not differentiated, and what `loss_fn` writes to it is
    kept, so differentiate the wrapped function with `nnx.grad` (or call it inside
    `nnx.jit`). The squared norm is summed in at least float32.

    Args:
        loss_fn: `loss_fn(params, *args, **kwargs)` returning a scalar, or
            `(scalar, aux)` when `has_aux`; differentiated in its first argument.
        coefficient: `lambda >= 0` (may be traced).
        has_aux: whether `loss_fn` returns `(loss, aux)`; the aux is passed through.

    Returns:
        A function with `loss_fn`'s signature returning the penalised loss (and aux).

    Raises:
        ValueError: if `coefficient` is negative or not finite.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxtricks
        >>> loss_fn = lambda w: jnp.sum(w**2)  # gradient 2w, squared norm 4 |w|^2
        >>> penalised = jaxtricks.gradient_norm_penalty(loss_fn, coefficient=0.25)
        >>> float(penalised(jnp.array([1.0, 2.0])))  # 5 + 0.25 * 4 * 5
        10.0

    References:
        Su, `我们真的需要把训练集的损失降低到零吗？ (Do we really need to bring the training
        loss down to zero?) <https://kexue.fm/archives/7643>`_, 2020

        Su, `从动力学角度看优化算法（五）：为什么学习率不宜过小？ (Optimisation algorithms from
        a dynamical viewpoint (5): why the learning rate should not be too small)
        <https://kexue.fm/archives/7787>`_, 2020

        Barrett & Dherin, `Implicit Gradient Regularization
        <https://arxiv.org/abs/2009.11162>`_, 2021
    """
    checks.check_scalar("coefficient", coefficient, low=0.0)
    nnx_value_and_grad = nnx.value_and_grad(loss_fn, has_aux=has_aux)
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=has_aux, allow_int=True)

    @functools.wraps(loss_fn)
    def penalised(params: Any, *args: Any, **kwargs: Any) -> Any:
        holds_module = any(
            nnx.graph.is_graph_node(node)
            for node in jax.tree.leaves(params, is_leaf=nnx.graph.is_graph_node)
        )
        value_and_grad_fn = nnx_value_and_grad if holds_module else value_and_grad
        value, grads = value_and_grad_fn(params, *args, **kwargs)
        loss, aux = value if has_aux else (value, None)
        penalty = jnp.multiply(*dtypes.promoted(coefficient, _squared_norm(grads)))
        penalised_loss = jnp.add(*dtypes.promoted(loss, penalty))
        return (penalised_loss, aux) if has_aux else penalised_loss

    return penalised


def _squared_norm(grads: Any) -> jax.Array:
    """`||grads||^2` over the inexact leaves (not the float0 gradients of integers)."""
    inexact = [
        leaf.astype(accumulation_dtype(leaf))
        for leaf in jax.tree.leaves(grads)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    return optax.tree.norm(inexact, squared=True)
