"""Measuring any loss as a re-weighted cross-entropy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxtricks._src import checks
from jaxtricks.losses import _binary, _common, _kernel

_KINDS = ("softmax", "sigmoid")


def cross_entropy_weights(
    loss_fn: Callable[[jax.Array, Any], jax.Array],
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    kind: str = "softmax",
    axis: _common.Axis = -1,
    where: jax.typing.ArrayLike | None = None,
    batch_level: bool = False,
) -> jax.Array:
    r"""Per-example weights `w` with `grad loss_fn = w * grad(cross-entropy)`.

    .. math:: w = \frac{\langle G, c \rangle}{\lVert c \rVert^2},

    `G` the gradient of `sum(loss_fn(logits, labels))` in the logits and `c` the
    cross-entropy's (`softmax(s) - e_y`, or `sigmoid(z) - y` for `kind="sigmoid"`), per
    example: the least-squares projection of `G` on `c`, exact for a loss of `p_y` alone
    (`w = -l'(p_y) p_y`), else the best single weight. NaN where `c = 0` in floating point
    (`p_y` rounds to 1). Closed forms, non-finite input: :ref:`the losses page <losses-weights>`.

    Args:
        loss_fn: `(logits, labels) -> losses`, one per weight (shape `[...]` for softmax,
            the logits' shape for sigmoid; checked, as an averaged loss would divide the
            weights by the batch size), or a scalar with `batch_level=True`. With
            `where`, it should apply the same mask itself.
        logits: `[..., num_classes]` scores (softmax) or binary logits (sigmoid).
        labels: integer labels `[...]` in `[0, num_classes)`, any integer dtype
            (softmax), or `{0, 1}` labels of the logits' shape (sigmoid).
        kind: "softmax" or "sigmoid": which cross-entropy to compare with.
        axis: the class axis or axes (softmax), as in the losses.
        where: None or a mask as in the losses: the cross-entropy compared with is the
            masked one, and the examples (elements) it excludes entirely get weight 0.
        batch_level: whether `loss_fn` returns a batch-level scalar (the F1 losses).

    Returns:
        The weights, in the compute dtype (at least float32): shape `[...]` (softmax) or
        the logits' shape (sigmoid).

    Raises:
        ValueError: a bad `kind` or axis, labels or `where` of the wrong shape or dtype,
            a concrete label outside `[0, num_classes)` (softmax), a `loss_fn` output
            of another shape than `batch_level` says.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
        >>> w = losses.cross_entropy_weights(losses.softmax_smoothed_accuracy_loss, logits,
        ...                                  jnp.array([0, 2]))  # w = p_y
        >>> [round(float(x), 4) for x in w]
        [0.8438, 0.3072]

    References:
        Su, `再谈类别不平衡问题 <https://kexue.fm/archives/7708>`_, 2020 (every loss
        of `p_y` as a weighted cross-entropy)
    """
    checks.check_choice("kind", kind, _KINDS)
    logits = jnp.asarray(logits)
    if kind == "sigmoid":
        scores, targets = _binary.binary_inputs(logits, labels)
        mask = _binary.elementwise_mask(where, scores.shape)
        per_example_shape = scores.shape
    else:
        scores, targets, mask, layout = _common.prepare(logits, labels, axis, where)
        per_example_shape = layout.batch_shape
    values, pullback = jax.vjp(lambda s: loss_fn(s, labels), logits)
    expected = () if batch_level else per_example_shape
    if jnp.shape(values) != expected:
        raise ValueError(
            f"loss_fn must return {'a batch-level scalar' if batch_level else 'per-example losses'}"
            f" of shape {expected} (batch_level={batch_level}), got shape "
            f"{jnp.shape(values)}; an averaged loss would give weights divided by the "
            f"batch size."
        )
    grads = pullback(jnp.ones_like(values))[0].astype(scores.dtype)
    if kind == "sigmoid":
        ce_grad = jax.nn.sigmoid(scores) - targets
        weights = _projection(grads * ce_grad, ce_grad * ce_grad)
        return weights if mask is None else jnp.where(mask, weights, 0.0)
    grads = layout.classes_last(grads)
    one_hot = _common.label_one_hot(targets, scores.shape[-1], scores.dtype)
    ce_grad = _kernel.probabilities(scores, mask) - one_hot
    weights = _projection(jnp.sum(grads * ce_grad, axis=-1), jnp.sum(ce_grad * ce_grad, axis=-1))
    return _common.zero_where_excluded(weights, mask)


def _projection(inner: jax.Array, squared_norm: jax.Array) -> jax.Array:
    defined = squared_norm > 0
    return jnp.where(defined, inner / jnp.where(defined, squared_norm, 1.0), jnp.nan)
