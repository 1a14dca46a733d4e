"""Shared machinery of the softmax losses: the skeleton, input layout and fused kernel.

Every softmax loss of this package is `softmax_loss(formula, ...)`: `prepare` moves the
class axes last, checks the labels (`checks.class_indices`) and casts to the compute
dtype; the formula maps `(scores [..., K], labels [...], mask)` to per-example values;
the skeleton sets examples that `where` excludes entirely to 0 and casts back to the
logits' dtype.

Most formulas are functions of the target log-probability `log p_y`, computed by the
fused kernel of `_kernel`; the multi-label loss and the smoothed F1 are not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks._src import checks, dtypes
from jaxtricks._src.typing import DTypeLike

Axis = int | tuple[int, ...]


def canonical_axes(axis: Axis, ndim: int) -> tuple[int, ...]:
    """`axis` (an int or a tuple of ints, as in optax) as sorted non-negative axes."""
    if isinstance(axis, bool) or not isinstance(axis, int | tuple):
        raise ValueError(f"axis must be an int or a tuple of ints, got {axis!r}.")
    axes = (axis,) if isinstance(axis, int) else axis
    if not axes or any(not -ndim <= a < ndim for a in axes):
        raise ValueError(f"axis must name axes of logits of rank {ndim}, got {axis!r}.")
    canonical = tuple(sorted(a % ndim for a in axes))
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"axis must not repeat an axis, got {axis!r}.")
    return canonical


class Layout(NamedTuple):
    """Where the classes are: `classes_last` moves them last and flattens them, in order."""

    batch_axes: tuple[int, ...]
    class_axes: tuple[int, ...]
    batch_shape: tuple[int, ...]
    num_classes: int

    def classes_last(self, array: jax.Array) -> jax.Array:
        array = jnp.transpose(array, self.batch_axes + self.class_axes)
        return array.reshape((*self.batch_shape, self.num_classes))


def class_layout(shape: tuple[int, ...], axis: Axis) -> Layout:
    class_axes = canonical_axes(axis, len(shape))
    batch_axes = tuple(i for i in range(len(shape)) if i not in class_axes)
    return Layout(batch_axes, class_axes, tuple(shape[i] for i in batch_axes),
                  int(np.prod([shape[i] for i in class_axes])))


class Prepared(NamedTuple):
    scores: jax.Array  # [..., K], the compute dtype
    labels: jax.Array  # [...] int32 class indices, or [..., K] multi-hot labels
    mask: jax.Array | None  # None or boolean [..., K]
    layout: Layout


def prepare(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: Axis,
    where: jax.typing.ArrayLike | None,
    *,
    integer_labels: bool = True,
) -> Prepared:
    """Moves the class axis (or axes, flattened) of the logits last, checks shapes, and
    casts the logits to the compute dtype (at least float32).

    Args:
        logits: scores of shape `batch_shape + class_shape` (class axes anywhere).
        labels: integer labels of shape `batch_shape` (`integer_labels=True`) or
            multi-hot labels of the logits' shape.
        axis: the class axis or axes, as in optax.
        where: None, a mask of shape `batch_shape` (whole examples) or of the logits'
            shape (individual scores).

    Returns:
        `Prepared(scores, labels, mask, layout)`: scores `[..., K]`, labels `[...]` or
        `[..., K]`, the mask None or a boolean `[..., K]`. Integer labels come back as
        int32 class indices (`checks.class_indices`: a concrete label outside `[0, K)`
        raises, a traced one becomes `K`, for which `log_target_probability` gives NaN; examples
        that `where` excludes entirely are not checked).

    Raises:
        ValueError: non-floating logits, a bad axis, labels or mask of the wrong shape,
            a concrete integer label outside `[0, K)`.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    checks.check_floating("logits", logits)
    layout = class_layout(logits.shape, axis)
    batch_shape, num_classes = layout.batch_shape, layout.num_classes
    mask = None
    if where is not None:
        where = jnp.asarray(where, dtype=bool)
        if where.shape == batch_shape:
            mask = jnp.broadcast_to(where[..., None], (*batch_shape, num_classes))
        elif where.shape == logits.shape:
            mask = layout.classes_last(where)
        else:
            raise ValueError(
                f"where must have shape {batch_shape} or {logits.shape}, "
                f"got shape {where.shape}."
            )
    if integer_labels:
        checks.check_shape("labels", labels.shape, batch_shape)
        counted = None if mask is None else jnp.any(mask, axis=-1)
        labels = checks.class_indices(labels, num_classes, counted)[0]
    else:
        checks.check_shape("labels", labels.shape, logits.shape)
        labels = layout.classes_last(labels)
    scores = layout.classes_last(logits)
    return Prepared(scores.astype(dtypes.compute_dtype(scores.dtype)), labels, mask, layout)


def softmax_loss(
    formula: Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array],
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: Axis,
    where: jax.typing.ArrayLike | None,
    *,
    integer_labels: bool = True,
    per_example: bool = True,
) -> jax.Array:
    """The skeleton of every softmax loss: `formula(scores, labels, mask)` on `prepare`d
    inputs, then (per-example losses) 0 for the examples that `where` excludes entirely,
    as optax does, and the result in the logits' dtype. A batch-level loss
    (`per_example=False`) handles the mask in its formula."""
    logits = jnp.asarray(logits)
    scores, labels, mask, _ = prepare(logits, labels, axis, where,
                                      integer_labels=integer_labels)
    loss = formula(scores, labels, mask)
    if per_example:
        loss = zero_where_excluded(loss, mask)
    return loss.astype(logits.dtype)


def label_one_hot(indices: jax.Array, num_classes: int, dtype: DTypeLike) -> jax.Array:
    """One-hot rows of `checks.class_indices`' indices; a row of NaN for the index `K` (a
    traced label outside `[0, K)`), so that it reaches every sum it enters."""
    one_hot = jax.nn.one_hot(indices, num_classes, dtype=dtype)
    return jnp.where((indices < num_classes)[..., None], one_hot, jnp.nan)


def zero_where_excluded(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Per-example values set to 0 where the mask excludes every score (as optax)."""
    if mask is None:
        return values
    return jnp.where(jnp.any(mask, axis=-1), values, 0.0)
