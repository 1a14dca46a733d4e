"""WEISSI as Optax transforms: `weissi` (coupled, before the optimiser) and
`decoupled_weissi` (after it, AdamW-style); the penalty and its mathematics are in
`_weissi`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import deprecation
from jaxtricks.regularizers._common import (
    CountState,
    Mask,
    accumulation_dtype,
    init_count,
    masked,
    next_count,
    require_params,
    squared_norm,
    value_at,
)
from jaxtricks.regularizers._weissi import check_arguments, log_norms, scale_factor


def _is_zero(rate: optax.ScalarOrSchedule) -> bool:
    """Whether a rate is the constant 0 (its term can be skipped at trace time)."""
    return isinstance(rate, int | float) and rate == 0


def _add_weissi_terms(
    updates: optax.Updates,
    params: optax.Params,
    *,
    scale_coefficient: jax.typing.ArrayLike,
    direction_coefficient: jax.typing.ArrayLike | None,
    form: str,
    eps: jax.typing.ArrayLike,
    clamp: bool,
) -> optax.Updates:
    """`u_l + c_l W_l + d grad R_dir(W_l)` on every leaf, in one fused pass per leaf.

    `c_l = scale_coefficient * factor / (n_l^2 + eps)` (`c_l W_l` is
    `scale_coefficient * grad_{W_l} R_form`), clamped to `>= -1` when `clamp` (a step
    never takes a layer past zero); `d = direction_coefficient`, None to skip the term.
    """
    squared_norms = jax.tree.map(squared_norm, params)
    if not jax.tree.leaves(squared_norms):
        return updates
    factor = scale_factor(form, log_norms(jax.tree.leaves(squared_norms), eps))

    def add_terms(update: jax.Array, weight: jax.Array, norm2: jax.Array) -> jax.Array:
        norm2 = norm2 + eps
        coefficient = scale_coefficient * factor / norm2
        if clamp:
            coefficient = jnp.maximum(coefficient, -1.0)
        weight = jnp.asarray(weight, accumulation_dtype(weight))
        if direction_coefficient is None:
            term = coefficient * weight
        else:
            # grad R_dir = sign(W) / n - (||W||_1 / n^3) W, with n = sqrt(norm2).
            inverse_norm = jax.lax.rsqrt(norm2)
            l1 = jnp.sum(jnp.abs(weight))
            coefficient = coefficient - direction_coefficient * l1 * inverse_norm / norm2
            sign_term = (direction_coefficient * inverse_norm) * jnp.sign(weight)
            term = coefficient * weight + sign_term
        return update + term.astype(update.dtype)

    return jax.tree.map(add_terms, updates, params, squared_norms)


def _weissi_transform(
    weight_decay: optax.ScalarOrSchedule,
    *,
    direction_weight: optax.ScalarOrSchedule,
    learning_rate: optax.ScalarOrSchedule | None,
    form: str,
    mask: Mask,
    eps: jax.typing.ArrayLike,
) -> optax.GradientTransformationExtraArgs:
    """The transform of `weissi` (`learning_rate=None`) and of `decoupled_weissi`."""
    check_arguments(
        form,
        eps,
        weight_decay=weight_decay,
        direction_weight=direction_weight,
        learning_rate=0.0 if learning_rate is None else learning_rate,
    )

    def update_fn(
        updates: optax.Updates, state: Any, params: optax.Params | None = None
    ) -> tuple[optax.Updates, CountState]:
        params = require_params(params)
        decay = value_at(weight_decay, state.count)
        direction = None if _is_zero(direction_weight) else value_at(
            direction_weight, state.count
        )
        if learning_rate is not None:
            rate = value_at(learning_rate, state.count)
            decay = -rate * decay
            direction = None if direction is None else -rate * direction
        updates = _add_weissi_terms(
            updates,
            params,
            scale_coefficient=decay,
            direction_coefficient=direction,
            form=form,
            eps=eps,
            clamp=learning_rate is not None,
        )
        return updates, next_count(state)

    return masked(optax.GradientTransformation(init_count, update_fn), mask)


def weissi(
    weight_decay: optax.ScalarOrSchedule,
    *,
    direction_weight: optax.ScalarOrSchedule = 0.0,
    form: str = "log",
    mask: Mask = None,
    eps: jax.typing.ArrayLike = 1e-12,
    learning_rate: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Coupled WEISSI regularisation (the post's), placed before the optimiser.

    .. math::

        u \leftarrow u + \lambda_1 \nabla R_{\mathrm{form}} + \lambda_2 \nabla R_{\mathrm{dir}},
        \qquad \nabla_{W_l} R_{\log} = \frac{W_l}{\lVert W_l \rVert^2 + \epsilon},

    exactly `jax.grad(weissi_penalty)` with the same arguments, e.g.
    `optax.chain(weissi(1e-3), optax.adam(1e-3))`. The log form is weight decay with a
    per-layer coefficient `weight_decay / ||W_l||^2`: big layers decay less, the opposite
    of L2. The decoupled (AdamW-style) form, placed after the optimiser, is `decoupled_weissi`.

    Args:
        weight_decay: `lambda_1 >= 0`, the coefficient of the scale term, or a schedule.
        direction_weight: `lambda_2 >= 0`, that of the direction term `R_dir`, or a schedule.
        form: "log" (default, the post's), or the extensions "product" and "geometric_mean"
            (see `weissi_penalty`), which couple all the selected leaves.
        mask: a pytree of bools shaped like the params, a callable of the params returning
            one, or None for the floating-point leaves with `ndim >= 2` (a callable mask
            goes in `optax.inject_hyperparams`'s `static_args`).
        eps: added to every squared norm (> 0): finite at `W = 0`.
        learning_rate: deprecated (removed in 0.3.0): gives `decoupled_weissi` with this rate.

    Returns:
        An `optax.GradientTransformationExtraArgs` whose state is `optax.MaskedState`
        around a `CountState(count)` (the step count for schedules).

    Raises:
        ValueError: for a negative or non-finite constant rate, an unknown `form` or `eps <= 0`;
            from `init` and `update`, for a mask not of the params' structure or selecting a
            leaf that is not floating-point; from `update`, when called without `params`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxtricks
        >>> params = {"w": jnp.full((2, 2), 0.5)}  # ||w||^2 = 1
        >>> transform = jaxtricks.weissi(0.1)
        >>> zeros = {"w": jnp.zeros((2, 2))}
        >>> updates, _ = transform.update(zeros, transform.init(params), params)
        >>> round(float(updates["w"][0, 0]), 4)  # 0.1 * w / ||w||^2
        0.05

    References:
        Su, `L2正则没有想象那么好？可能是“权重尺度偏移”惹的祸
        <https://kexue.fm/archives/7681>`_, 2020

        Liu, Cui & Chan, `Improve Generalization and Robustness of Neural Networks via
        Weight Scale Shifting Invariant Regularizations
        <https://arxiv.org/abs/2008.02965>`_, 2020
    """
    transform = _weissi_transform(
        weight_decay, direction_weight=direction_weight, learning_rate=learning_rate,
        form=form, mask=mask, eps=eps,
    )
    if learning_rate is not None:
        deprecation.warn_once(
            "jaxtricks.regularizers.weissi(learning_rate=...)",
            "weissi(..., learning_rate=lr) is deprecated and will be removed in jaxtricks "
            f"{deprecation.REMOVED_IN}: use jaxtricks.decoupled_weissi(..., "
            "learning_rate=lr), which gives the same updates; weissi is the coupled form.",
        )
    return transform


def decoupled_weissi(
    weight_decay: optax.ScalarOrSchedule,
    *,
    learning_rate: optax.ScalarOrSchedule,
    direction_weight: optax.ScalarOrSchedule = 0.0,
    form: str = "log",
    mask: Mask = None,
    eps: jax.typing.ArrayLike = 1e-12,
) -> optax.GradientTransformationExtraArgs:
    r"""Decoupled (AdamW-style) WEISSI, placed after the optimiser.

    .. math::

        u \leftarrow u - \min(1, \eta \lambda_1 a_l)\, W_l - \eta \lambda_2 \nabla R_{\mathrm{dir}},
        \qquad a_l W_l = \nabla_{W_l} R_{\mathrm{form}}

    (`a_l = 1/(||W_l||^2 + eps)` for the log form), e.g. `optax.chain(optax.adam(lr),
    decoupled_weissi(wd, learning_rate=lr))`. The clamp keeps the decay from flipping a
    layer's sign; without it the update is `-lr * jax.grad(weissi_penalty)` (same arguments).
    An extension of this library, not in the post, whose WEISSI is the coupled `weissi`.

    Args:
        weight_decay: `lambda_1 >= 0`, the coefficient of the scale term, or a schedule.
        learning_rate: `eta >= 0`, the optimiser's learning rate, or the same schedule as
            the optimiser's (the step count is kept in the state).
        direction_weight: `lambda_2 >= 0`, that of the direction term `R_dir`, or a schedule.
        form: "log" (default, the post's), or the extensions "product" and "geometric_mean"
            (see `weissi_penalty`), which couple all the selected leaves.
        mask: a pytree of bools shaped like the params, a callable of the params returning
            one, or None for the floating-point leaves with `ndim >= 2` (a callable mask
            goes in `optax.inject_hyperparams`'s `static_args`).
        eps: added to every squared norm (> 0): finite at `W = 0`.

    Returns:
        An `optax.GradientTransformationExtraArgs` whose state is `optax.MaskedState`
        around a `CountState(count)` (the step count for schedules).

    Raises:
        ValueError: for a negative or non-finite constant rate, an unknown `form` or `eps <= 0`;
            from `init` and `update`, for a mask not of the params' structure or selecting a
            leaf that is not floating-point; from `update`, when called without `params`.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> import jaxtricks
        >>> params = {"w": jnp.full((2, 2), 0.5)}  # ||w||^2 = 1
        >>> transform = jaxtricks.decoupled_weissi(0.1, learning_rate=0.5)
        >>> zeros = {"w": jnp.zeros((2, 2))}
        >>> updates, _ = transform.update(zeros, transform.init(params), params)
        >>> round(float(updates["w"][0, 0]), 4)  # -0.5 * 0.1 * w / ||w||^2
        -0.025

    References:
        Su, `L2正则没有想象那么好？可能是“权重尺度偏移”惹的祸
        <https://kexue.fm/archives/7681>`_, 2020

        Loshchilov & Hutter, `Decoupled Weight Decay Regularization
        <https://arxiv.org/abs/1711.05101>`_, 2019 (the decoupling)
    """
    return _weissi_transform(
        weight_decay, direction_weight=direction_weight, learning_rate=learning_rate,
        form=form, mask=mask, eps=eps,
    )
