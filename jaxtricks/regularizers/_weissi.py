"""WEISSI: a weight-scale-shift-invariant regulariser; the penalty and its terms here,
the two Optax transforms in `_weissi_transforms`.

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

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks
from jaxtricks.regularizers._common import (
    Mask,
    accumulation_dtype,
    check_rate,
    selected_leaves,
    squared_norm,
)

FORMS = ("log", "product", "geometric_mean")


def check_arguments(
    form: str, eps: jax.typing.ArrayLike, **rates: optax.ScalarOrSchedule | jax.typing.ArrayLike
) -> None:
    checks.check_choice("form", form, FORMS)
    checks.check_scalar("eps", eps, low=0.0, low_inclusive=False)
    for name, rate in rates.items():
        check_rate(name, rate)


def log_norms(squared_norms: Sequence[jax.Array], eps: jax.typing.ArrayLike) -> jax.Array:
    """`0.5 * log(n_l^2 + eps)` for every layer, stacked: shape (L,)."""
    return 0.5 * jnp.log(jnp.stack(squared_norms) + eps)


def _scale_term(form: str, log_norms: jax.Array) -> jax.Array:
    """`R_log`, `R_product` or `R_gm` from the per-layer log-norms."""
    if form == "log":
        return jnp.sum(log_norms)
    if form == "product":
        return jnp.exp(jnp.sum(log_norms))
    return jnp.exp(jnp.mean(log_norms))


def scale_factor(form: str, log_norms: jax.Array) -> jax.Array:
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
    r"""The WEISSI penalty `weight_decay * R_form + direction_weight * R_dir`.

    .. math::

        R_{\log} = \sum_l \log n_l, \quad R_{\mathrm{product}} = \prod_l n_l, \quad
        R_{\mathrm{gm}} = \Bigl(\prod_l n_l\Bigr)^{1/L}, \quad
        R_{\mathrm{dir}} = \sum_l \frac{\lVert W_l \rVert_1}{n_l},

    with `n_l^2 = ||W_l||^2 + eps` over the L selected weight tensors. `R_log` and
    `R_product` are invariant under `W_l -> g_l W_l` with `prod_l g_l = 1` (the
    weight-scale shift of a ReLU network), unlike L2; `R_log` is unbounded below
    (:ref:`regularizers-math`). The post's penalty is `R_log` with `R_dir`; `R_product` and
    `R_gm` are extensions. `weissi(...)` adds exactly `jax.grad(weissi_penalty)(params, ...)`.

    Args:
        params: a pytree of arrays.
        weight_decay: coefficient of the scale term (default 1: the bare `R_form`).
        direction_weight: coefficient of the direction term `R_dir`.
        form: "log" (the post's), or the extensions "product" and "geometric_mean".
        mask: a pytree of bools shaped like `params`, a callable of the params returning
            one, or None (default) for the floating-point leaves with `ndim >= 2`.
        eps: added to every squared norm (> 0), so that values and gradients are finite
            at `W = 0`.

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
    check_arguments(form, eps, weight_decay=weight_decay, direction_weight=direction_weight)
    leaves = selected_leaves(params, mask)
    if not leaves:
        return jnp.zeros([], jnp.float32)
    squared_norms = [squared_norm(leaf) for leaf in leaves]
    scale = _scale_term(form, log_norms(squared_norms, eps))
    direction = sum(
        _l1_norm(leaf) / jnp.sqrt(norm2 + eps)
        for leaf, norm2 in zip(leaves, squared_norms, strict=True)
    )
    return scale * weight_decay + direction_weight * direction
