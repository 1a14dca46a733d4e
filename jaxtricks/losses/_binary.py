"""Binary (sigmoid) losses: the skeleton they share and the smoothed accuracy.

Logits `z` and labels `y` have the same shape; every per-element loss is elementwise (no
reduction), like `optax.sigmoid_binary_cross_entropy`: empty in, empty out. Logits are
computed in at least float32 and the losses returned in the logits' dtype. A NaN logit or
label gives NaN for its element; an infinite logit gives the formula's limit where the
terms have one (`sigma(+-inf)` is 1 or 0, as in optax's sigmoid losses), and inf or NaN
where a term is `0 * inf` or infinite. `where` (a boolean mask of the logits' shape)
leaves elements out: they get 0 and a zero gradient whatever their values, and the
batch-level F1 losses leave them out of their sums.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks._src import checks, dtypes


def binary_inputs(
    logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike
) -> tuple[jax.Array, jax.Array]:
    """Floating logits in the compute dtype and labels of the same shape and dtype."""
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    checks.check_floating("logits", logits)
    checks.check_shape("labels", labels.shape, logits.shape)
    dtype = dtypes.compute_dtype(logits.dtype)
    return logits.astype(dtype), labels.astype(dtype)


def check_label_range(labels: jax.typing.ArrayLike, mask: jax.Array | None) -> None:
    """Checks that concrete labels lie in `[0, 1]` (hard or soft) where `mask` counts them.

    Raises:
        ValueError: naming `labels` and the first offending entry: a padding marker
            such as -1 would otherwise be trained as a label (mask it with `where`).
    """
    values = checks.concrete_value(labels)
    counted = None if mask is None else checks.concrete_value(mask)
    if values is None or (mask is not None and counted is None):
        return
    bad = ~((values >= 0) & (values <= 1)) & ~np.isnan(values.astype(float))
    if counted is not None:
        bad &= counted
    if np.any(bad):
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"labels must lie in [0, 1], got {values[index]} at index {index}; mask "
            "padding with `where`."
        )


def elementwise_mask(
    where: jax.typing.ArrayLike | None, shape: tuple[int, ...]
) -> jax.Array | None:
    """None, or `where` as a boolean mask checked to have the logits' shape."""
    if where is None:
        return None
    where = jnp.asarray(where, bool)
    checks.check_shape("where", where.shape, shape)
    return where


def binary_loss(
    formula: Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array],
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    where: jax.typing.ArrayLike | None,
    *,
    elementwise: bool = True,
) -> jax.Array:
    """The skeleton of every binary loss: `formula(z, y, mask)` on checked inputs in the
    compute dtype, masked elements set to `z = y = 0` beforehand (so a NaN there reaches
    neither the value nor the gradient) and, for elementwise losses, to 0 afterwards;
    the result in the logits' dtype. A batch-level formula (`elementwise=False`) leaves
    the masked elements out of its sums itself."""
    logits = jnp.asarray(logits)
    z, y = binary_inputs(logits, labels)
    mask = elementwise_mask(where, z.shape)
    check_label_range(labels, mask)
    if mask is not None:
        z, y = jnp.where(mask, z, 0.0), jnp.where(mask, y, 0.0)
    loss = formula(z, y, mask)
    if elementwise and mask is not None:
        loss = jnp.where(mask, loss, 0.0)
    return loss.astype(logits.dtype)


def cross_entropy_terms(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(-log sigma(z), -log sigma(-z))`: the losses of a positive and a negative."""
    return -jax.nn.log_sigmoid(logits), -jax.nn.log_sigmoid(-logits)


def sigmoid_smoothed_accuracy_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Negative binary smoothed accuracy: `-[y sigma(z) + (1 - y) sigma(-z)]`.

    For a positive the gradient is `-p (1 - p)`: cross-entropy's `-(1 - p)` times `p`,
    so badly classified examples get almost none.

    Args:
        logits: binary logits `z`, any shape.
        labels: labels in `[0, 1]`, same shape.
        where: None or a boolean mask of the same shape; masked elements get 0.

    Returns:
        Elementwise losses in `[-1, 0]`, the logits' shape and dtype.

    Raises:
        ValueError: non-floating logits, labels or `where` of another shape.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> loss = losses.sigmoid_smoothed_accuracy_loss(jnp.array([2.0, -1.0]),
        ...                                              jnp.array([1.0, 1.0]))
        >>> [round(float(x), 4) for x in loss]
        [-0.8808, -0.2689]

    References:
        Su, `函数光滑化杂谈 <https://kexue.fm/archives/6620>`_, 2019 (section on accuracy)
    """

    def formula(z: jax.Array, y: jax.Array, mask: jax.Array | None) -> jax.Array:
        return -(y * jax.nn.sigmoid(z) + (1 - y) * jax.nn.sigmoid(-z))

    return binary_loss(formula, logits, labels, where)
