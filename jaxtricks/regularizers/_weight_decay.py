"""L2 regularisation (coupled) and decoupled, AdamW-style weight decay.

References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, 2019

    Su, `L2正则没有想象那么好？可能是“权重尺度偏移”惹的祸 (L2 regularisation is not as good as
    you think? Blame the weight scale shift) <https://kexue.fm/archives/7681>`_, 2020
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import dtypes
from jaxtricks.regularizers._common import (
    CountState,
    Mask,
    add_scaled_params,
    check_rate,
    init_count,
    masked,
    next_count,
    require_params,
    selected_leaves,
    squared_norm,
    value_at,
)


def l2_penalty(params: optax.Params, *, mask: Mask = None) -> jax.Array:
    """The L2 penalty `0.5 * sum_l ||W_l||^2` over the selected leaves.

    With the default mask, `l2_regularization(wd)` adds exactly
    `wd * jax.grad(l2_penalty)(params)` to the updates.

    Args:
        params: a pytree of arrays.
        mask: a pytree of bools shaped like `params`, a callable of the params
            returning one, or None (default) for the floating-point leaves with
            `ndim >= 2`.

    Returns:
        A scalar array (summed in at least float32; a float32 zero when the mask
        selects no leaf).

    Raises:
        ValueError: for a mask whose structure differs from the params' or that
            selects a leaf that is not floating-point.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxtricks
        >>> params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.ones(2)}
        >>> float(jaxtricks.l2_penalty(params))  # 0.5 * 4 * 2^2; the bias is not selected
        8.0

    References:
        Loshchilov & Hutter, `Decoupled Weight Decay Regularization
        <https://arxiv.org/abs/1711.05101>`_, ICLR 2019 (section 2: the L2-regularised
        loss `f + lambda / 2 ||theta||^2`, whose gradient `l2_regularization` adds)

        Su, `L2正则没有想象那么好？可能是“权重尺度偏移”惹的祸 (L2 regularisation is not as good
        as you think? Blame the weight scale shift) <https://kexue.fm/archives/7681>`_, 2020
    """
    norms = [squared_norm(leaf) for leaf in selected_leaves(params, mask)]
    dtype = dtypes.result_type(jnp.float32, *norms)  # float64 if a leaf is
    return 0.5 * sum((norm.astype(dtype) for norm in norms), jnp.zeros([], dtype))


def _add_scaled_params_transform(
    coefficient_at: Callable[[jax.Array], jax.typing.ArrayLike],
) -> optax.GradientTransformation:
    """`updates + coefficient_at(count) * params` (dtype-preserving, with a step count)."""

    def update_fn(
        updates: optax.Updates, state: Any, params: optax.Params | None = None
    ) -> tuple[optax.Updates, CountState]:
        params = require_params(params)
        coefficient = coefficient_at(state.count)
        return add_scaled_params(updates, params, coefficient), next_count(state)

    return optax.GradientTransformation(init_count, update_fn)


def l2_regularization(
    weight_decay: optax.ScalarOrSchedule, *, mask: Mask = None
) -> optax.GradientTransformationExtraArgs:
    """Adds the gradient of `weight_decay / 2 * ||w||^2`: coupled L2 regularisation.

    `updates <- updates + weight_decay(t) * params` on the selected leaves. Placed
    before the optimiser (`optax.chain(l2_regularization(wd), optax.adam(lr))`) the
    penalty's gradient enters Adam's moments and is divided by `sqrt(v)`: under Adam,
    L2 is not weight decay (Loshchilov & Hutter, Sec. 2). Before plain SGD it equals SGD on
    `loss + weight_decay * l2_penalty`.

    This is `optax.add_decayed_weights` under `optax.masked` with jaxtricks' default
    mask (floating-point leaves with `ndim >= 2`), except that a scheduled (float32)
    rate keeps bfloat16 updates in bfloat16.

    Args:
        weight_decay: the coefficient `lambda >= 0`, or a schedule of the step count.
        mask: a pytree of bools shaped like the params, a callable of the params
            returning one, or None (default) for the floating-point leaves with
            `ndim >= 2`. Under `optax.inject_hyperparams`, a callable mask must be
            listed in `static_args`.

    Returns:
        An `optax.GradientTransformationExtraArgs` whose state is `optax.MaskedState`
        around a `CountState(count)` (the step count for schedules).

    Raises:
        ValueError: for a negative or non-finite constant rate; from `init` and
            `update`, for a mask whose structure differs from the params' or that
            selects a leaf that is not floating-point (an integer or boolean leaf
            cannot hold its decay); from `update`, when called without `params`.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> import jaxtricks
        >>> params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
        >>> transform = jaxtricks.l2_regularization(0.1)
        >>> grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}
        >>> updates, _ = transform.update(grads, transform.init(params), params)
        >>> round(float(updates["kernel"][0, 0]), 4), updates["bias"].tolist()
        (0.1, [0.0, 0.0])

    References:
        Loshchilov & Hutter, `Decoupled Weight Decay Regularization
        <https://arxiv.org/abs/1711.05101>`_, 2019
    """
    check_rate("weight_decay", weight_decay)
    return masked(
        _add_scaled_params_transform(lambda count: value_at(weight_decay, count)), mask
    )


def decoupled_weight_decay(
    weight_decay: optax.ScalarOrSchedule,
    *,
    learning_rate: optax.ScalarOrSchedule,
    mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
    """Decoupled (AdamW-style) weight decay, placed after the optimiser.

    `updates <- updates - learning_rate(t) * weight_decay(t) * params` on the selected
    leaves, so that

        optax.chain(optax.adam(lr), decoupled_weight_decay(wd, learning_rate=lr))

    gives the updates of `optax.adamw(lr, weight_decay=wd, mask=...)`: the decay is
    multiplied by the full learning rate, as in optax and PyTorch. Loshchilov & Hutter
    (Algorithm 2) multiply it by the schedule multiplier `eta_t` alone: pass that
    multiplier as `learning_rate` to get their form.

    Args:
        weight_decay: the coefficient `lambda >= 0`, or a schedule of the step count.
        learning_rate: the optimiser's learning rate (>= 0), or its schedule; the step
            count is kept in the state, so give the same schedule as the optimiser.
        mask: a pytree of bools shaped like the params, a callable of the params
            returning one, or None (default) for the floating-point leaves with
            `ndim >= 2`.

    Returns:
        An `optax.GradientTransformationExtraArgs` whose state is `optax.MaskedState`
        around a `CountState(count)` (the step count for schedules).

    Raises:
        ValueError: for a negative or non-finite constant rate; from `init` and
            `update`, for a mask whose structure differs from the params' or that
            selects a leaf that is not floating-point (an integer or boolean leaf
            cannot hold its decay); from `update`, when called without `params`.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> import jaxtricks
        >>> params = {"kernel": jnp.ones((2, 2))}
        >>> adamw = optax.chain(
        ...     optax.adam(0.1), jaxtricks.decoupled_weight_decay(0.01, learning_rate=0.1))
        >>> updates, _ = adamw.update({"kernel": jnp.ones((2, 2))}, adamw.init(params), params)
        >>> round(float(updates["kernel"][0, 0]), 4)  # -0.1 * 1 - 0.1 * 0.01 * 1
        -0.101

    References:
        Loshchilov & Hutter, `Decoupled Weight Decay Regularization
        <https://arxiv.org/abs/1711.05101>`_, 2019
    """
    check_rate("weight_decay", weight_decay)
    check_rate("learning_rate", learning_rate)

    def signed_decay(count: jax.Array) -> jax.typing.ArrayLike:
        return -value_at(learning_rate, count) * value_at(weight_decay, count)

    return masked(_add_scaled_params_transform(signed_decay), mask)
