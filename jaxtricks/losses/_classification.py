"""Multi-class losses that re-weight cross-entropy: focal, class-weighted, smoothed accuracy.

Each is a formula in the skeleton `_common.softmax_loss`, a function of the target
log-probability computed by the fused kernel `log_target_probability`: forward and
backward are one pass over the logits each, like
`optax.softmax_cross_entropy_with_integer_labels`, and forward-mode derivatives
(`jax.jvp`, `jax.jacfwd`, `jax.hessian`) work as well as reverse-mode ones.

Integer labels of any dtype must lie in `[0, K)`: a concrete label outside raises a
`ValueError`; a traced one gives NaN in that example's loss and in every derivative.
(Optax reads a label in `[-K, 0)` as class `y + K` and, for a label `>= K`, returns NaN
with a finite gradient; a negative label here is refused, since -1 more often marks
padding than a class counted from the end: mask padding with `where`.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxtricks._src import checks
from jaxtricks._src.typing import DTypeLike
from jaxtricks.losses import _common, _kernel


def _per_class(
    name: str, values: jax.typing.ArrayLike, num_classes: int, dtype: DTypeLike
) -> jax.Array:
    """A scalar or `[K]` vector of non-negative per-class values, checked, in `dtype`."""
    values = jnp.asarray(values)
    if values.ndim > 1 or (values.ndim == 1 and values.shape[0] != num_classes):
        raise ValueError(
            f"{name} must be a scalar or have shape ({num_classes},) (one entry per "
            f"class), got shape {values.shape}."
        )
    checks.check_values(name, values, low=0.0)
    return values.astype(dtype)


def _gather(values: jax.Array, labels: jax.Array) -> jax.Array:
    """`values[labels]` for a `[K]` vector, `values` itself for a scalar."""
    return values[labels] if values.ndim == 1 else values


@jax.custom_jvp
def _focal_term(log_prob: jax.Array, gamma: jax.Array) -> jax.Array:
    """`-(1 - p)^gamma log p` from `log p`, with exact, finite derivatives at p = 0, 1."""
    return -_modulating_factor(log_prob, gamma) * log_prob


def _modulating_factor(log_prob: jax.Array, gamma: jax.Array) -> jax.Array:
    """`(1 - p)^gamma`, with `0^0 = 1`."""
    return jnp.power(-jnp.expm1(log_prob), gamma)


@_focal_term.defjvp
def _focal_term_jvp(
    primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[jax.Array, jax.Array]:
    log_prob, gamma = primals
    log_prob_dot, gamma_dot = tangents
    one_minus_p = -jnp.expm1(log_prob)
    factor = jnp.power(one_minus_p, gamma)
    positive = one_minus_p > 0
    safe = jnp.where(positive, one_minus_p, 1.0)
    # log p / (1 - p): bounded by |log p|, tends to -1 as p -> 1, so the weight below is
    # finite at p = 1 even for gamma < 1, where (1-p)^(g-1) alone is infinite.
    log_ratio = jnp.where(positive, log_prob / safe, -1.0)
    # w = (1-p)^g - g p (1-p)^(g-1) log p = (1-p)^g (1 - g p log p / (1-p)).
    weight = factor * (1.0 - gamma * jnp.exp(log_prob) * log_ratio)
    d_gamma = jnp.where(positive, -factor * jnp.log(safe) * log_prob, 0.0)
    return -factor * log_prob, -weight * log_prob_dot + d_gamma * gamma_dot


def softmax_focal_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    gamma: jax.typing.ArrayLike = 2.0,
    alpha: jax.typing.ArrayLike | None = None,
    axis: _common.Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Multi-class focal loss with integer labels.

    .. math::
        \ell = -\alpha_y (1 - p_y)^\gamma \log p_y, \qquad p = \mathrm{softmax}(s).

    Its gradient in the logits is `w (p - e_y)` with the focal weight
    `w = alpha_y [(1-p)^g - g p (1-p)^(g-1) log p]`: a cross-entropy whose hard examples
    (small `p_y`) weigh more. Computed in one fused pass (one logsumexp; the derivatives
    reuse it), in float32 at least, finite for logits of +-1e4; a NaN or inf logit
    gives a NaN or inf loss for its example.

    Args:
        logits: scores, shape `[..., num_classes]` (class axis given by `axis`).
        labels: integer labels in `[0, num_classes)` (any integer dtype; outside it, a
            ValueError when concrete, NaN when traced), shape `[...]`.
        gamma: focusing parameter, `>= 0`; `gamma=0` and `alpha=None` is cross-entropy.
        alpha: None (no balancing), a scalar `>= 0` multiplying every example (Keras'
            convention), or a `[num_classes]` vector of per-class weights `alpha_y >= 0`.
            (Peers differ: kornia gives class 0 the weight `1 - alpha`.)
        axis: the class axis or axes, as in optax.
        where: None, or a mask of shape `[...]` or of the logits' shape; examples with
            every score masked get 0.

    Returns:
        Per-example losses, shape `[...]`, dtype of the logits.

    Raises:
        ValueError: labels of the wrong shape or (concrete) outside `[0, K)`,
            `gamma < 0`, `alpha` of the wrong length, negative or not finite.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
        >>> loss = losses.softmax_focal_loss(logits, jnp.array([0, 2]), gamma=2.0)
        >>> [round(float(x), 4) for x in loss]
        [0.0041, 0.5665]

    References:
        Lin et al., `Focal Loss for Dense Object Detection
        <https://arxiv.org/abs/1708.02002>`_, 2017

        Su, `从loss的硬截断、软化到focal loss <https://kexue.fm/archives/4733>`_, 2017
        (the multi-class form, section "多分类")
    """
    checks.check_scalar("gamma", gamma, low=0.0)

    def formula(scores: jax.Array, labels: jax.Array, mask: jax.Array | None) -> jax.Array:
        log_prob = _kernel.log_target_probability(scores, labels, mask)
        loss = _focal_term(log_prob, jnp.asarray(gamma, log_prob.dtype))
        if alpha is None:
            return loss
        return _gather(_per_class("alpha", alpha, scores.shape[-1], loss.dtype), labels) * loss

    return _common.softmax_loss(formula, logits, labels, axis, where)


def softmax_weighted_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    class_weights: jax.typing.ArrayLike,
    axis: _common.Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Class-weighted softmax cross-entropy with integer labels.

    .. math:: \ell = -c_y \log p_y .

    `class_weights = 1 / class_priors` gives the balanced loss of Menon et al. (eq. 4).

    Args:
        logits: scores, shape `[..., num_classes]`.
        labels: integer labels, shape `[...]` (out of range: see `softmax_focal_loss`).
        class_weights: `[num_classes]` non-negative weights (or a scalar).
        axis: the class axis or axes, as in optax.
        where: None, or a mask of shape `[...]` or of the logits' shape.

    Returns:
        Per-example losses, shape `[...]`.

    Raises:
        ValueError: labels of the wrong shape or (concrete) outside `[0, K)`,
            weights of the wrong length or negative.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
        >>> loss = losses.softmax_weighted_cross_entropy(
        ...     logits, jnp.array([0, 2]), class_weights=jnp.array([0.5, 1.0, 2.0]))
        >>> [round(float(x), 4) for x in loss]
        [0.0849, 2.3605]

    References:
        Menon et al., `Long-tail learning via logit adjustment
        <https://arxiv.org/abs/2007.07314>`_, ICLR 2021 (eq. 4)
    """

    def formula(scores: jax.Array, labels: jax.Array, mask: jax.Array | None) -> jax.Array:
        weights = _per_class("class_weights", class_weights, scores.shape[-1], scores.dtype)
        return -_gather(weights, labels) * _kernel.log_target_probability(scores, labels, mask)

    return _common.softmax_loss(formula, logits, labels, axis, where)


def softmax_smoothed_accuracy_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    axis: _common.Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Negative smoothed accuracy: `-p_y`, the probability given to the target class.

    Its batch mean is minus the smoothed accuracy of Su (`onehot(argmax p)` replaced by
    `p`). Gradient `p_y (p - e_y)`: cross-entropy weighted by `p_y`, so the
    worst-classified examples get almost no gradient, which is why cross-entropy
    (the "p -> log p" step) trains better.

    Args:
        logits: scores, shape `[..., num_classes]`.
        labels: integer labels, shape `[...]` (out of range: see `softmax_focal_loss`).
        axis: the class axis or axes, as in optax.
        where: None, or a mask of shape `[...]` or of the logits' shape.

    Returns:
        Per-example losses in `[-1, 0]`, shape `[...]`.

    Raises:
        ValueError: labels of the wrong shape or (concrete) outside `[0, K)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
        >>> loss = losses.softmax_smoothed_accuracy_loss(logits, jnp.array([0, 2]))
        >>> [round(float(x), 4) for x in loss]
        [-0.8438, -0.3072]

    References:
        Su, `函数光滑化杂谈 <https://kexue.fm/archives/6620>`_, 2019 (section on accuracy)

        Su, `再谈类别不平衡问题 <https://kexue.fm/archives/7708>`_, 2020
    """

    def formula(scores: jax.Array, labels: jax.Array, mask: jax.Array | None) -> jax.Array:
        return -jnp.exp(_kernel.log_target_probability(scores, labels, mask))

    return _common.softmax_loss(formula, logits, labels, axis, where)
