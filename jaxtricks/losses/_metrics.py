"""Metrics of long-tail learning."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtricks._src import checks
from jaxtricks.losses import _common


def balanced_accuracy(
    logits_or_predictions: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    num_classes: int,
    *,
    axis: _common.Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Balanced accuracy: the mean over classes of the per-class recall.

    .. math::
        \mathrm{BA} = \frac{1}{|C|} \sum_{c \in C}
            \frac{\#\{i : y_i = c, \hat y_i = c\}}{\#\{i : y_i = c\}},

    with `C` the classes present in `labels` (absent classes are skipped, not counted
    as 0). `1 - BA` is the balanced error that Menon et al. report; it does not depend
    on the test set's class sizes.

    Undefined cases give NaN, never a score: no counted example (an empty batch, or
    `where` all False) leaves `C` empty, and the mean over no class is NaN, as
    `jnp.mean` of an empty array (0 would read as "every prediction wrong"); a NaN
    score in a counted example (its argmax is meaningless) and, when traced, a counted
    label outside `[0, K)` give NaN too. Infinite scores are ordered as usual (a -inf
    score is never predicted unless the whole row is -inf); integer predictions
    outside `[0, K)` count as wrong.

    Args:
        logits_or_predictions: scores with `num_classes` classes along `axis` (the
            prediction is their argmax; several class axes are flattened in order, as
            the losses do) or integer predictions of the labels' shape.
        labels: integer labels in `[0, num_classes)`, shape `[...]`, any integer dtype.
        num_classes: `K`, a Python int.
        axis: the class axis or axes of the scores, as in the losses.
        where: None, a boolean mask of the labels' shape (examples to count) or, for
            scores, of their shape (masked scores are never predicted, as if -inf; an
            example with every score masked is not counted), as in the losses.

    Returns:
        A float32 scalar in `[0, 1]`, or NaN (above).

    Raises:
        ValueError: shapes that match neither form, a bad axis, `num_classes < 1`,
            non-integer labels, a concrete counted label outside `[0, num_classes)`,
            `where` of another shape.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> predictions = jnp.array([0, 0, 0, 1, 1])
        >>> float(losses.balanced_accuracy(predictions, jnp.array([0, 0, 0, 0, 1]), 2))
        0.875

    References:
        Menon et al., `Long-tail learning via logit adjustment
        <https://arxiv.org/abs/2007.07314>`_, ICLR 2021 (section 2, balanced error)
    """
    checks.check_positive_int("num_classes", num_classes)
    scores = jnp.asarray(logits_or_predictions)
    label_shape = jnp.shape(labels)
    from_logits = not (scores.shape == label_shape and jnp.issubdtype(scores.dtype, jnp.integer))
    mask = None if where is None else jnp.asarray(where, bool)
    if from_logits and scores.ndim > len(label_shape):
        layout = _common.class_layout(scores.shape, axis)
        if mask is not None and mask.shape == scores.shape:
            mask = layout.classes_last(mask)
        scores = layout.classes_last(scores)
    if from_logits and scores.shape != (*label_shape, num_classes):
        raise ValueError(
            f"logits_or_predictions must have shape {(*label_shape, num_classes)} (logits, "
            f"classes along axis {axis!r}) or integer dtype and shape {label_shape} "
            f"(predictions), got shape {jnp.shape(logits_or_predictions)} and dtype "
            f"{scores.dtype}."
        )
    if mask is not None and from_logits and mask.shape == scores.shape:
        low = -jnp.inf if jnp.issubdtype(scores.dtype, jnp.inexact) else jnp.iinfo(
            scores.dtype).min
        scores = jnp.where(mask, scores, low)  # a NaN under the mask is left out
        mask = jnp.any(mask, axis=-1)
    if mask is not None:
        checks.check_shape("where", mask.shape, label_shape)
    labels, valid = checks.class_indices(labels, num_classes, mask)
    counted = jnp.ones(label_shape, bool) if mask is None else mask
    predictions = jnp.argmax(scores, axis=-1) if from_logits else scores
    if from_logits and jnp.issubdtype(scores.dtype, jnp.inexact):
        valid &= ~(counted & jnp.any(jnp.isnan(scores), axis=-1))

    def per_class_count(selected: jax.Array) -> jax.Array:
        return jnp.bincount(labels.ravel(), selected.ravel().astype(jnp.int32),
                            length=num_classes)

    totals = per_class_count(counted)
    hits = per_class_count(counted & (predictions == labels))
    present = totals > 0  # integer counts: this guard cannot hide a NaN
    recall = jnp.where(present, hits / jnp.where(present, totals, 1), 0.0)
    accuracy = jnp.sum(recall) / jnp.sum(present)
    return jnp.where(jnp.all(valid), accuracy, jnp.nan).astype(jnp.float32)
