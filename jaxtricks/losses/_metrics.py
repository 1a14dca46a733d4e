"""Metrics of long-tail learning: balanced accuracy of predictions or of logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtricks._src import checks, deprecation, dtypes
from jaxtricks.losses import _common

_LOGITS_DEPRECATED = (
    "jaxtricks.losses.balanced_accuracy of logits (and its axis argument) is deprecated and "
    f"will be removed in jaxtricks {deprecation.REMOVED_IN}: use "
    "jaxtricks.losses.balanced_accuracy_from_logits(logits, labels, axis=..., where=...); "
    "balanced_accuracy takes integer predictions of the labels' shape."
)


def balanced_accuracy(
    predictions: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    num_classes: int,
    *,
    where: jax.typing.ArrayLike | None = None,
    axis: _common.Axis | None = None,
) -> jax.Array:
    r"""Balanced accuracy of predicted classes: the mean over classes of the per-class recall.

    .. math::
        \mathrm{BA} = \frac{1}{|C|} \sum_{c \in C}
            \frac{\#\{i : y_i = c, \hat y_i = c\}}{\#\{i : y_i = c\}},

    with `C` the classes present in `labels` (absent classes are skipped, not counted
    as 0). `1 - BA` is the balanced error that Menon et al. report; it does not depend
    on the test set's class sizes. For scores, `balanced_accuracy_from_logits` takes
    their argmax.

    Undefined cases give NaN, never a score: no counted example (an empty batch, or
    `where` all False) leaves `C` empty, and the mean over no class is NaN, as
    `jnp.mean` of an empty array (0 would read as "every prediction wrong"); when
    traced, a counted label outside `[0, K)` gives NaN too. Predictions outside
    `[0, K)` count as wrong.

    Deprecated: scores (any input that is not integers of the labels' shape) and `axis`
    are still accepted, as before, with a `DeprecationWarning` (once); they will be
    refused from 0.3.0 on: pass them to `balanced_accuracy_from_logits`.

    Args:
        predictions: integer predicted classes, the labels' shape, any integer dtype.
        labels: integer labels in `[0, num_classes)`, shape `[...]`, any integer dtype.
        num_classes: `K`, a Python int.
        where: None or a boolean mask of the labels' shape (examples to count).
        axis: deprecated (the class axis of scores).

    Returns:
        A float32 scalar in `[0, 1]`, or NaN (above).

    Raises:
        ValueError: `num_classes < 1`, non-integer labels, a concrete counted label
            outside `[0, num_classes)`, predictions or `where` of another shape.

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
    values = jnp.asarray(predictions)
    label_shape = jnp.shape(labels)
    if values.shape == label_shape and jnp.issubdtype(values.dtype, jnp.integer):
        if axis is not None:
            deprecation.warn_once("jaxtricks.losses.balanced_accuracy(logits)",
                                  _LOGITS_DEPRECATED)
        mask = None if where is None else jnp.asarray(where, bool)
        return _mean_recall(values, labels, num_classes, mask)
    # The former polymorphic form: scores with num_classes classes along axis.
    scores, mask = _classes_last(values, label_shape, -1 if axis is None else axis, where,
                                 num_classes, "predictions")
    deprecation.warn_once("jaxtricks.losses.balanced_accuracy(logits)", _LOGITS_DEPRECATED)
    return _from_scores(scores, labels, num_classes, mask)


def balanced_accuracy_from_logits(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    axis: _common.Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Balanced accuracy of the argmax of scores: `balanced_accuracy(argmax(logits), ...)`.

    The prediction is the class of the largest score, `K` classes along `axis` (several
    class axes are flattened in order, as the losses do); see `balanced_accuracy` for
    the metric and its undefined cases (NaN). A NaN score in a counted example (its
    argmax is meaningless) gives NaN. Infinite scores are ordered as usual (a -inf
    score is never predicted unless the whole row is -inf).

    Args:
        logits: scores of shape `labels.shape + class_shape` (class axes given by
            `axis`), any real dtype; `K` is the product of the class axes' sizes.
        labels: integer labels in `[0, K)`, shape `[...]`, any integer dtype.
        axis: the class axis or axes, as in the losses.
        where: None, a boolean mask of the labels' shape (examples to count) or of the
            logits' shape (masked scores are never predicted, as if -inf; an example
            with every score masked is not counted), as in the losses.

    Returns:
        A float32 scalar in `[0, 1]`, or NaN.

    Raises:
        ValueError: a bad axis, logits whose batch shape is not the labels' shape or
            with no class, non-integer labels, a concrete counted label outside
            `[0, K)`, `where` of another shape.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> logits = jnp.array([[2.0, 0.0], [1.0, 0.5], [0.3, 0.1], [0.0, 1.0], [0.2, 0.9]])
        >>> float(losses.balanced_accuracy_from_logits(logits, jnp.array([0, 0, 0, 0, 1])))
        0.875

    References:
        Menon et al., `Long-tail learning via logit adjustment
        <https://arxiv.org/abs/2007.07314>`_, ICLR 2021 (section 2, balanced error)
    """
    scores = jnp.asarray(logits)
    label_shape = jnp.shape(labels)
    scores, mask = _classes_last(scores, label_shape, axis, where, None, "logits")
    if scores.shape[-1] == 0:
        raise ValueError(f"logits must have at least one class, got shape {jnp.shape(logits)}.")
    return _from_scores(scores, labels, scores.shape[-1], mask)


def _classes_last(
    scores: jax.Array,
    label_shape: tuple[int, ...],
    axis: _common.Axis,
    where: jax.typing.ArrayLike | None,
    num_classes: int | None,
    name: str,
) -> tuple[jax.Array, jax.Array | None]:
    """Scores `[*label_shape, K]` (classes moved last and flattened), masked scores set
    to the lowest value, and the mask of the examples to count (None for all)."""
    shape, mask = scores.shape, None if where is None else jnp.asarray(where, bool)
    if scores.ndim > len(label_shape):
        layout = _common.class_layout(scores.shape, axis)
        if mask is not None and mask.shape == scores.shape:
            mask = layout.classes_last(mask)
        scores = layout.classes_last(scores)
    if scores.ndim != len(label_shape) + 1 or scores.shape[:-1] != label_shape or (
            num_classes is not None and scores.shape[-1] != num_classes):
        if num_classes is None:
            raise ValueError(
                f"{name} must have shape {label_shape} + the class shape (classes along "
                f"axis {axis!r}), got shape {shape}; integer predictions of the labels' "
                "shape go to balanced_accuracy."
            )
        raise ValueError(
            f"{name} must be integers of shape {label_shape}, or (deprecated) logits of "
            f"shape {(*label_shape, num_classes)} with classes along axis {axis!r}, got "
            f"shape {shape} and dtype {scores.dtype}."
        )
    if mask is not None and mask.shape == scores.shape:
        low = -jnp.inf if jnp.issubdtype(scores.dtype, jnp.inexact) else jnp.iinfo(
            scores.dtype).min
        scores = jnp.where(mask, scores, low)  # a NaN under the mask is left out
        mask = jnp.any(mask, axis=-1)
    return scores, mask


def _from_scores(
    scores: jax.Array, labels: jax.typing.ArrayLike, num_classes: int, mask: jax.Array | None
) -> jax.Array:
    """The balanced accuracy of `argmax(scores)`, NaN where a counted row holds a NaN."""
    nan_row = None
    if jnp.issubdtype(scores.dtype, jnp.inexact):
        nan_row = jnp.any(jnp.isnan(scores), axis=-1)
    return _mean_recall(jnp.argmax(scores, axis=-1), labels, num_classes, mask, nan_row)


def _mean_recall(
    predictions: jax.Array,
    labels: jax.typing.ArrayLike,
    num_classes: int,
    mask: jax.Array | None,
    invalid: jax.Array | None = None,
) -> jax.Array:
    """The mean per-class recall over the classes present; NaN where a counted example is
    `invalid` or (traced) has a label outside `[0, K)`."""
    label_shape = jnp.shape(labels)
    if mask is not None:
        checks.check_shape("where", mask.shape, label_shape)
    labels, valid = checks.class_indices(labels, num_classes, mask)
    counted = jnp.ones(label_shape, bool) if mask is None else mask
    if invalid is not None:
        valid &= ~(counted & invalid)

    def per_class_count(selected: jax.Array) -> jax.Array:
        return jnp.bincount(labels.ravel(), selected.ravel().astype(jnp.int32),
                            length=num_classes)

    totals = per_class_count(counted)
    hits = per_class_count(counted & jnp.equal(*dtypes.promoted(predictions, labels)))
    present = totals > 0  # integer counts: this guard cannot hide a NaN
    recall = jnp.where(present, hits / jnp.where(present, totals, 1), 0.0)
    accuracy = jnp.sum(recall) / jnp.sum(present, dtype=recall.dtype)
    return jnp.where(jnp.all(valid), accuracy, jnp.nan).astype(jnp.float32)
