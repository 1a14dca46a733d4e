"""WEISSI: a weight-scale-shift-invariant regulariser, as a penalty and a transform.

With positively homogeneous activations (ReLU, leaky ReLU, linear) a network computes
the same function after `W_l -> g_l W_l`, `b_l -> (prod_{k<=l} g_k) b_l` with
`prod_l g_l = 1`; the L2 penalty `sum_l g_l^2 ||W_l||^2` changes along that orbit, so
part of its pull only moves scale between layers. A penalty `sum_l phi(||W_l||)` whose
gradient is unchanged by the shift needs `phi = log`, hence (per weight tensor `W_l`,
`||.||` the L2 norm of the flattened tensor, `n_l = ||W_l||`)

    R_log  = sum_l log n_l,    R_product = prod_l n_l,    R_gm = (prod_l n_l)^(1/L)
    R_dir  = sum_l ||W_l / n_l||_1                  (scale-free direction term)
    WEISSI = weight_decay * R_form + direction_weight * R_dir

with gradients `W/n^2` (log), `R_product W/n^2`, `(R_gm / L) W/n^2` and
`(sign(W) - (||W||_1/n^2) W) / n` (direction). Near zero, `n^2` is replaced by
`n^2 + eps` everywhere (values and gradients finite at `W = 0`).

The post's WEISSI is the log form with the direction term, added to the loss (the
coupled transform `weissi`). The product and geometric-mean forms and the decoupled
(AdamW-style) transform `decoupled_weissi` are extensions of this library, not in the
post.

References:
    Su, `L2正则没有想象那么好？可能是“权重尺度偏移”惹的祸 (L2 regularisation is not as good as
    you think? Blame the weight scale shift) <https://kexue.fm/archives/7681>`_, 2020

    Liu, Cui & Chan, `Improve Generalization and Robustness of Neural Networks via
    Weight Scale Shifting Invariant Regularizations
    <https://arxiv.org/abs/2008.02965>`_, 2020
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks, deprecation
from jaxtricks.regularizers._common import (
    CountState,
    Mask,
    accumulation_dtype,
    check_rate,
    init_count,
    masked,
    next_count,
    require_params,
    selected_leaves,
    squared_norm,
    value_at,
)

FORMS = ("log", "product", "geometric_mean")


def _check_arguments(
    form: str, eps: jax.typing.ArrayLike, **rates: optax.ScalarOrSchedule | jax.typing.ArrayLike
) -> None:
    checks.check_choice("form", form, FORMS)
    checks.check_scalar("eps", eps, low=0.0, low_inclusive=False)
    for name, rate in rates.items():
        check_rate(name, rate)


def _log_norms(squared_norms: Sequence[jax.Array], eps: jax.typing.ArrayLike) -> jax.Array:
    """`0.5 * log(n_l^2 + eps)` for every layer, stacked: shape (L,)."""
    return 0.5 * jnp.log(jnp.stack(squared_norms) + eps)


def _scale_term(form: str, log_norms: jax.Array) -> jax.Array:
    """`R_log`, `R_product` or `R_gm` from the per-layer log-norms."""
    if form == "log":
        return jnp.sum(log_norms)
    if form == "product":
        return jnp.exp(jnp.sum(log_norms))
    return jnp.exp(jnp.mean(log_norms))


def _scale_factor(form: str, log_norms: jax.Array) -> jax.Array:
    """`dR_form / dW_l = factor * W_l / (n_l^2 + eps)`: the factor, shared by all layers."""
    if form == "log":
        return jnp.ones([], log_norms.dtype)
    return _scale_term(form, log_norms) / (1.0 if form == "product" else log_norms.size)


def _l1_norm(leaf: jax.Array) -> jax.Array:
    """`||leaf||_1` whose gradient is `sign(leaf)` (0, not 1, at an entry equal to 0)."""
    leaf = jnp.asarray(leaf, accumulation_dtype(leaf))
    return jnp.sum(leaf * jax.lax.stop_gradient(jnp.sign(leaf)))


def weissi_penalty(
    params: optax.Params,
    *,
    weight_decay: jax.typing.ArrayLike = 1.0,
    direction_weight: jax.typing.ArrayLike = 0.0,
    form: str = "log",
    mask: Mask = None,
    eps: jax.typing.ArrayLike = 1e-12,
) -> jax.Array:
    """The WEISSI penalty `weight_decay * R_form + direction_weight * R_dir`.

    Per selected weight tensor `W_l` (L of them), `n_l^2 = ||W_l||^2 + eps`:
    `R_log = sum_l log n_l` (default), `R_product = prod_l n_l`,
    `R_gm = (prod_l n_l)^(1/L)`, `R_dir = sum_l ||W_l||_1 / n_l`. `R_log` and
    `R_product` are invariant under `W_l -> g_l W_l` with `prod_l g_l = 1` (the
    weight-scale shift of a ReLU network), unlike the L2 penalty. `R_log` is
    unbounded below as a layer shrinks to 0: only the data loss stops the collapse.
    The post's penalty is `R_log` with `R_dir`; `R_product` and `R_gm` are extensions
    of this library.

    For monitoring or for adding to a loss. With the same keyword arguments,
    `weissi(...)` adds exactly `jax.grad(weissi_penalty)(params, ...)`; with the
    defaults, `weissi(wd)` adds `wd * jax.grad(weissi_penalty)(params)`.

    Args:
        params: a pytree of arrays.
        weight_decay: coefficient of the scale term (default 1: the bare `R_form`).
        direction_weight: coefficient of the direction term `R_dir`.
        form: "log" (the post's), or the extensions "product" and "geometric_mean".
        mask: a pytree of bools shaped like `params`, a callable of the params
            returning one, or None (default) for the floating-point leaves with
            `ndim >= 2`.
        eps: added to every squared norm (> 0), so that values and gradients are
            finite at `W = 0`.

    Returns:
        A scalar (at least float32); 0 when no leaf is selected.

    Raises:
        ValueError: for an unknown `form`, `eps <= 0`, a negative or non-finite
            coefficient, or a mask whose structure differs from the params' or that
            selects a leaf that is not floating-point.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxtricks
        >>> params = {"w1": jnp.full((2, 2), 0.5), "w2": jnp.full((2, 2), 2.0)}
        >>> round(float(jaxtricks.weissi_penalty(params)), 4)  # log 1 + log 4
        1.3863
        >>> shifted = {"w1": params["w1"] * 4, "w2": params["w2"] / 4}  # same network
        >>> round(float(jaxtricks.weissi_penalty(shifted)), 4)
        1.3863

    References:
        Su, `L2正则没有想象那么好？可能是“权重尺度偏移”惹的祸
        <https://kexue.fm/archives/7681>`_, 2020

        Liu, Cui & Chan, `Improve Generalization and Robustness of Neural Networks via
        Weight Scale Shifting Invariant Regularizations
        <https://arxiv.org/abs/2008.02965>`_, 2020
    """
    _check_arguments(form, eps, weight_decay=weight_decay, direction_weight=direction_weight)
    leaves = selected_leaves(params, mask)
    if not leaves:
        return jnp.zeros([], jnp.float32)
    squared_norms = [squared_norm(leaf) for leaf in leaves]
    scale = _scale_term(form, _log_norms(squared_norms, eps))
    direction = sum(
        _l1_norm(leaf) / jnp.sqrt(norm2 + eps)
        for leaf, norm2 in zip(leaves, squared_norms, strict=True)
    )
    return scale * weight_decay + direction_weight * direction


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
    factor = _scale_factor(form, _log_norms(jax.tree.leaves(squared_norms), eps))

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
    _check_arguments(
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
    """Coupled WEISSI regularisation (the post's), placed before the optimiser.

        updates <- updates + weight_decay * grad R_form + direction_weight * grad R_dir

    exactly `jax.grad(weissi_penalty)` with the same arguments, e.g.
    `optax.chain(weissi(1e-3), optax.adam(1e-3))`: WEISSI's `l2_regularization`. For the
    default log form the added term on layer `l` is `weight_decay * W_l / ||W_l||^2`:
    weight decay with a per-layer coefficient `weight_decay / ||W_l||^2` (big layers
    decay less, the opposite of L2). The decoupled (AdamW-style) form, placed after the
    optimiser, is `decoupled_weissi`.

    Args:
        weight_decay: coefficient of the scale term (>= 0), or a schedule.
        direction_weight: coefficient of the direction term `R_dir` (>= 0), or a
            schedule.
        form: "log" (default, the post's), or the extensions "product" and
            "geometric_mean" (see `weissi_penalty`).
        mask: a pytree of bools shaped like the params, a callable of the params
            returning one, or None (default) for the floating-point leaves with
            `ndim >= 2`. The product and geometric-mean forms couple all the selected
            leaves. Under `optax.inject_hyperparams`, a callable mask must be listed
            in `static_args`.
        eps: added to every squared norm (> 0): finite at `W = 0`.
        learning_rate: deprecated (removed in 0.3.0, a `DeprecationWarning` once): a
            learning rate gives `decoupled_weissi(..., learning_rate=learning_rate)`.

    Returns:
        An `optax.GradientTransformationExtraArgs` whose state is `optax.MaskedState`
        around a `CountState(count)` (the step count for schedules).

    Raises:
        ValueError: for a negative or non-finite constant rate, an unknown `form` or
            `eps <= 0`; from `init` and `update`, for a mask whose structure differs
            from the params' or that selects a leaf that is not floating-point (an
            integer or boolean leaf cannot hold its decay); from `update`, when called
            without `params`.

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
    """Decoupled (AdamW-style) WEISSI, placed after the optimiser.

        updates <- updates - min(1, lr * weight_decay * a_l) W_l
                           - lr * direction_weight * grad R_dir(W_l)

    with `a_l W_l = grad_{W_l} R_form` (`a_l = 1/||W_l||^2` for the log form):
    WEISSI's `decoupled_weight_decay`, e.g.
    `optax.chain(optax.adam(lr), decoupled_weissi(wd, learning_rate=lr))`. The clamp
    `min(1, .)` is the factor `max(0, 1 - lr wd / ||W||^2)`: the decay never flips the
    sign of a layer. Without the clamp, the update is `-lr * jax.grad(weissi_penalty)`
    with the same arguments. An extension of this library, not in the post, whose
    WEISSI is the coupled `weissi`.

    Args:
        weight_decay: coefficient of the scale term (>= 0), or a schedule.
        learning_rate: the optimiser's learning rate (>= 0), or its schedule; the step
            count is kept in the state, so give the same schedule as the optimiser.
        direction_weight: coefficient of the direction term `R_dir` (>= 0), or a
            schedule.
        form: "log" (default, the post's), or the extensions "product" and
            "geometric_mean" (see `weissi_penalty`).
        mask: a pytree of bools shaped like the params, a callable of the params
            returning one, or None (default) for the floating-point leaves with
            `ndim >= 2`. The product and geometric-mean forms couple all the selected
            leaves. Under `optax.inject_hyperparams`, a callable mask must be listed
            in `static_args`.
        eps: added to every squared norm (> 0): finite at `W = 0`.

    Returns:
        An `optax.GradientTransformationExtraArgs` whose state is `optax.MaskedState`
        around a `CountState(count)` (the step count for schedules).

    Raises:
        ValueError: for a negative or non-finite constant rate, an unknown `form` or
            `eps <= 0`; from `init` and `update`, for a mask whose structure differs
            from the params' or that selects a leaf that is not floating-point (an
            integer or boolean leaf cannot hold its decay); from `update`, when called
            without `params`.

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
