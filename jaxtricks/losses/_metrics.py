"""Metrics of long-tail learning."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtricks._src import checks


def balanced_accuracy(
    logits_or_predictions: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    num_classes: int,
    *,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Balanced accuracy: the mean over classes of the per-class recall.

    .. math::
        \mathrm{BA} = \frac{1}{|C|} \sum_{c \in C}
            \frac{\#\{i : y_i = c, \hat y_i = c\}}{\#\{i : y_i = c\}},

    with `C` the classes present in `labels` (absent classes are skipped, not counted
    as 0). `1 - BA` is the balanced error that Menon et al. report; it does not depend
    on the test set's class sizes.

    Args:
        logits_or_predictions: scores `[..., num_classes]` (the prediction is their
            argmax) or integer predictions of the labels' shape.
        labels: integer labels, shape `[...]`.
        num_classes: `K`, a Python int.
        where: None or a boolean mask of the labels' shape (examples to count).

    Returns:
        A float32 scalar in `[0, 1]` (0 when no example is counted).

    Raises:
        ValueError: shapes that match neither form, `num_classes < 1`.
    """
    checks.check_positive_int("num_classes", num_classes)
    scores = jnp.asarray(logits_or_predictions)
    labels = jnp.asarray(labels)
    if scores.shape == (*labels.shape, num_classes):
        predictions = jnp.argmax(scores, axis=-1)
    elif scores.shape == labels.shape and jnp.issubdtype(scores.dtype, jnp.integer):
        predictions = scores
    else:
        raise ValueError(
            f"logits_or_predictions must have shape {(*labels.shape, num_classes)} "
            f"(logits) or integer dtype and shape {labels.shape} (predictions), got "
            f"shape {scores.shape} and dtype {scores.dtype}."
        )
    counted = jnp.ones(labels.shape, bool) if where is None else jnp.asarray(where, bool)
    checks.check_shape("where", counted.shape, labels.shape)
    def per_class_count(selected):
        return jnp.bincount(labels.ravel(), selected.ravel().astype(jnp.int32),
                            length=num_classes)

    totals = per_class_count(counted)
    hits = per_class_count(counted & (predictions == labels))
    present = totals > 0
    recall = jnp.where(present, hits / jnp.where(present, totals, 1.0), 0.0)
    return (jnp.sum(recall) / jnp.maximum(jnp.sum(present), 1)).astype(jnp.float32)
