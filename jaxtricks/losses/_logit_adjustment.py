"""Logit adjustment for long-tailed data: the loss, the post-hoc adjustment, class priors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks._src import checks, dtypes
from jaxtricks._src.typing import DTypeLike
from jaxtricks.losses import _common, _kernel


def _check_priors(priors: jax.typing.ArrayLike, num_classes: int) -> jax.Array:
    """Checks class priors (or counts): shape `[K]`, finite, >= 0, positive sum."""
    priors = jnp.asarray(priors)
    checks.check_shape("class_priors", priors.shape, (num_classes,))
    checks.check_values("class_priors", priors, low=0.0)
    concrete = checks.concrete_value(priors)
    if concrete is not None and not np.sum(concrete) > 0:
        raise ValueError(
            f"class_priors must have a positive sum to be normalised, got "
            f"{np.array2string(concrete, threshold=8)}."
        )
    return priors


def _log_priors(priors: jax.Array, dtype: DTypeLike) -> jax.Array:
    """`log(pi / sum(pi))`, floored at log(1e-12) as the reference code does."""
    priors = priors.astype(dtype)
    normalised = priors / jnp.sum(priors)
    return jnp.log(jnp.maximum(normalised, 1e-12))


def softmax_logit_adjusted_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    class_priors: jax.typing.ArrayLike,
    tau: jax.typing.ArrayLike = 1.0,
    axis: _common.Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Logit-adjusted softmax cross-entropy (Menon et al., eq. 10).

    .. math::
        \ell = -\log \frac{e^{s_y + \tau \log \pi_y}}{\sum_i e^{s_i + \tau \log \pi_i}}
             = \log\Big[1 + \sum_{i \ne y} (\pi_i / \pi_y)^\tau e^{s_i - s_y}\Big].

    Rare classes must win by a larger margin. Predict with `argmax s` afterwards (do not
    also apply `adjust_logits`: that would count the prior twice). `tau = 0` or uniform
    priors give plain cross-entropy. Priors may be counts: they are normalised, and
    floored at 1e-12 before the log (the reference code adds 1e-12 to `pi^tau`).

    Args:
        logits: scores, shape `[..., num_classes]`.
        labels: integer labels in `[0, num_classes)`, shape `[...]`, any integer dtype.
        class_priors: `[num_classes]` training class frequencies or counts, `>= 0`.
        tau: finite temperature of the adjustment.
        axis: the class axis or axes, as in optax.
        where: None, or a mask of shape `[...]` or of the logits' shape.

    Returns:
        Per-example losses, shape `[...]` (`(0,)` for an empty batch): NaN for an
        example with a NaN score or, when traced, a label outside `[0, num_classes)`;
        0 for an example with every score masked out (as optax).

    Raises:
        ValueError: labels of the wrong shape or dtype, a concrete label outside
            `[0, num_classes)` (in an example that `where` keeps), priors of the wrong
            length, negative or summing to 0, `tau` not finite.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
        >>> loss = losses.softmax_logit_adjusted_cross_entropy(
        ...     logits, jnp.array([0, 2]), class_priors=jnp.array([0.7, 0.2, 0.1]))
        >>> [round(float(x), 4) for x in loss]
        [0.0448, 2.1451]

    References:
        Menon et al., `Long-tail learning via logit adjustment
        <https://arxiv.org/abs/2007.07314>`_, ICLR 2021 (eq. 10)

        Su, `通过互信息思想来缓解类别不平衡问题 <https://kexue.fm/archives/7615>`_, 2020
    """
    checks.check_scalar("tau", tau)

    def formula(scores: jax.Array, labels: jax.Array, mask: jax.Array | None) -> jax.Array:
        priors = _check_priors(class_priors, scores.shape[-1])
        shift = jnp.asarray(tau, scores.dtype) * _log_priors(priors, scores.dtype)
        return -_kernel.log_target_probability(scores + shift, labels, mask)

    return _common.softmax_loss(formula, logits, labels, axis, where)


def adjust_logits(
    logits: jax.typing.ArrayLike,
    *,
    class_priors: jax.typing.ArrayLike,
    tau: jax.typing.ArrayLike = 1.0,
    axis: _common.Axis = -1,
) -> jax.Array:
    r"""Post-hoc logit adjustment (Menon et al., eq. 9): `s - tau * log(pi)`.

    For a model trained with plain cross-entropy, `argmax` of the adjusted logits is the
    plug-in Bayes rule for the balanced error (`tau = 1`). Note the sign: minus. The
    shift is computed in at least float32 and the result cast back to the logits' dtype.

    Args:
        logits: scores of a model trained with cross-entropy, classes along `axis`.
        class_priors: `[num_classes]` training class frequencies or counts, `>= 0`
            (normalised, floored at 1e-12). With several class axes, `num_classes` is
            the product of their sizes and the priors are in the order of
            `logits.reshape` over those axes (as the losses flatten them).
        tau: finite temperature.
        axis: the class axis or axes, as in optax.

    Returns:
        The adjusted logits, same shape and dtype (empty for empty logits; NaN and inf
        scores stay NaN and inf).

    Raises:
        ValueError: non-floating logits, a bad axis, priors of the wrong length,
            negative or summing to 0; `tau` not finite.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> adjusted = losses.adjust_logits(jnp.array([[2.0, 1.5, 1.0]]),
        ...                                 class_priors=jnp.array([0.7, 0.2, 0.1]))
        >>> [round(float(x), 4) for x in adjusted[0]], int(adjusted.argmax())
        ([2.3567, 3.1094, 3.3026], 2)

    References:
        Menon et al., `Long-tail learning via logit adjustment
        <https://arxiv.org/abs/2007.07314>`_, ICLR 2021 (eq. 9)
    """
    checks.check_scalar("tau", tau)
    logits = jnp.asarray(logits)
    checks.check_floating("logits", logits)
    class_axes = _common.canonical_axes(axis, logits.ndim)
    class_shape = tuple(logits.shape[i] for i in class_axes)
    priors = _check_priors(class_priors, math.prod(class_shape))
    dtype = dtypes.compute_dtype(logits.dtype)
    shift = jnp.asarray(tau, dtype) * _log_priors(priors, dtype)
    broadcast_shape = [1] * logits.ndim
    for i, size in zip(class_axes, class_shape, strict=True):
        broadcast_shape[i] = size
    return (logits.astype(dtype) - shift.reshape(broadcast_shape)).astype(logits.dtype)


def class_priors(
    labels: jax.typing.ArrayLike,
    num_classes: int,
    *,
    smoothing: jax.typing.ArrayLike = 0.0,
) -> jax.Array:
    r"""Empirical class frequencies `(n_c + smoothing) / (n + K * smoothing)`.

    Args:
        labels: integer labels of any shape and integer dtype, in `[0, num_classes)`.
        num_classes: `K`, a Python int.
        smoothing: additive (Laplace) smoothing `>= 0`; use it so that a class absent
            from `labels` keeps a positive prior.

    Returns:
        `[num_classes]` float32 priors summing to 1. Traced labels outside
        `[0, num_classes)` give NaN priors (they are never dropped and the rest
        renormalised); empty labels with a traced `smoothing` of 0 give 0/0 = NaN.

    Raises:
        ValueError: non-integer labels, a concrete label outside `[0, num_classes)`,
            `num_classes < 1`, `smoothing < 0`, or empty labels with no smoothing.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> priors = losses.class_priors(jnp.array([0, 0, 0, 1]), 3, smoothing=1.0)
        >>> [round(float(x), 4) for x in priors]
        [0.5714, 0.2857, 0.1429]

    References:
        Menon et al., `Long-tail learning via logit adjustment
        <https://arxiv.org/abs/2007.07314>`_, ICLR 2021 (the class priors `pi_y` that
        its adjustment subtracts, estimated from the training labels)

        Manning, Raghavan & Schütze, `Introduction to Information Retrieval
        <https://nlp.stanford.edu/IR-book/>`_, Cambridge University Press, 2008
        (section 13.2: add-one, or Laplace, smoothing of estimated frequencies)
    """
    checks.check_positive_int("num_classes", num_classes)
    checks.check_scalar("smoothing", smoothing, low=0.0)
    labels, valid = checks.class_indices(labels, num_classes)
    concrete_smoothing = checks.concrete_value(smoothing)
    if labels.size == 0 and concrete_smoothing is not None and concrete_smoothing == 0:
        raise ValueError("labels is empty and smoothing is 0: the priors are 0/0.")
    counts = jnp.bincount(labels.ravel(), length=num_classes).astype(jnp.float32)
    smoothed = counts + jnp.asarray(smoothing, jnp.float32)
    return jnp.where(jnp.all(valid), smoothed / jnp.sum(smoothed), jnp.nan)
