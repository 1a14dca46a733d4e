"""Smoothed F1 (linear soft Dice) losses and the F1-weighted cross-entropy.

These are batch-level quantities: F1 is a ratio of sums over the batch, so its value on
a mini-batch is a biased estimate of the dataset's F1 (Su recommends training with
cross-entropy first, then fine-tuning with the F1 loss).

0/0: a class with `T_c = sum_i (p_ic + y_ic) = 0` exactly (absent from the labels and
given probability 0 everywhere, e.g. masked out) has no F1; it is skipped (left out of
the macro mean, of the micro sums trivially). When every class is skipped, in
particular for an empty batch or one masked out entirely, the loss is 0 with a zero
gradient: such a batch has nothing to fit, and as the loss term of a training step it
must add nothing (a NaN would poison the step, though no input was bad). Only an exact 0
is skipped: a NaN or infinite `T_c` (a NaN score, a +inf softmax score, a NaN label)
makes the whole batch's loss NaN, as any non-finite input of a batch-level quantity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtricks._src import checks
from jaxtricks.losses import _binary, _common, _kernel

_AVERAGES = ("macro", "micro")


def _soft_f1(true_positives: jax.Array, totals: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(2 TP / T, defined)` elementwise; 1 where `T = 0` (skipped), with safe gradients.

    `T != 0`, not `T > 0`: a NaN total is defined, so it reaches the loss.
    """
    defined = totals != 0
    ratio = 2 * true_positives / jnp.where(defined, totals, 1.0)
    return jnp.where(defined, ratio, 1.0), defined


def softmax_smoothed_f1_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    average: str = "macro",
    axis: _common.Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""`1 - F1_soft` of a batch: the linear soft Dice of Su's smoothed F1.

    With `p = softmax(s)` and one-hot labels, per class
    `F1_c = 2 sum_i p_ic y_ic / sum_i (p_ic + y_ic)` (no smoothing constant). `macro`
    averages `F1_c` over classes, `micro` sums over examples and classes first; since
    every row of `p` and `y` sums to 1, micro F1 equals the batch mean of `p_y` (the
    smoothed accuracy). The gradient is a re-weighted cross-entropy: `p_ic` gets weight
    `(2 / T_c)(y_ic - F1_c / 2)`. Classes with `T_c = 0` are skipped (module docstring).

    Compared with `optax.dice_loss` (per sample, `smooth=1` by default), this sums over
    the whole batch; `optax.dice_loss(logits[None], onehot[None], smooth=0)` is the
    macro form when every class occurs.

    Args:
        logits: scores, shape `[..., num_classes]`.
        labels: integer labels in `[0, num_classes)`, shape `[...]`, any integer dtype.
        average: "macro" or "micro".
        axis: the class axis or axes, as in optax.
        where: None, or a mask of shape `[...]` (examples) or of the logits' shape.

    Returns:
        A scalar in `[0, 1]`, the logits' dtype: 0 for an empty or fully masked batch;
        NaN when a kept example has a NaN or +inf score or, when traced, a label
        outside `[0, num_classes)` (module docstring).

    Raises:
        ValueError: a bad `average` or axis, labels of the wrong shape or dtype, a
            concrete label outside `[0, num_classes)` in an example that `where` keeps.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5]])
        >>> round(float(losses.softmax_smoothed_f1_loss(logits, jnp.array([0, 1, 1]))), 4)
        0.3388

    References:
        Su, `函数光滑化杂谈 <https://kexue.fm/archives/6620>`_, 2019 (section on F1)

        Su, `再谈类别不平衡问题 <https://kexue.fm/archives/7708>`_, 2020
    """
    checks.check_choice("average", average, _AVERAGES)

    def formula(scores: jax.Array, class_indices: jax.Array, mask: jax.Array | None) -> jax.Array:
        probs = _kernel.probabilities(scores, mask)
        one_hot = _common.label_one_hot(class_indices, scores.shape[-1], scores.dtype)
        if mask is not None:
            one_hot = jnp.where(jnp.any(mask, axis=-1, keepdims=True), one_hot, 0.0)
        batch_axes = tuple(range(scores.ndim - 1))
        true_positives = jnp.sum(probs * one_hot, axis=batch_axes)
        totals = jnp.sum(probs + one_hot, axis=batch_axes)
        if average == "micro":
            true_positives, totals = jnp.sum(true_positives), jnp.sum(totals)
        f1, defined = _soft_f1(true_positives, totals)
        count = jnp.maximum(jnp.sum(defined, dtype=f1.dtype), 1)
        mean_f1 = jnp.sum(jnp.where(defined, f1, 0.0)) / count
        return 1.0 - jnp.where(jnp.any(defined), mean_f1, 1.0)

    return _common.softmax_loss(formula, logits, labels, axis, where, per_example=False)


def _binary_soft_f1(z: jax.Array, y: jax.Array, mask: jax.Array | None) -> jax.Array:
    probs = jax.nn.sigmoid(z)
    true_positives, totals = probs * y, probs + y
    if mask is not None:
        true_positives = jnp.where(mask, true_positives, 0.0)
        totals = jnp.where(mask, totals, 0.0)
    return _soft_f1(jnp.sum(true_positives), jnp.sum(totals))[0]


def sigmoid_smoothed_f1_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""`1 - F1_soft` over all elements, `F1_soft = 2 sum p y / sum (p + y)`, `p = sigma(z)`.

    Su's binary smoothed F1: the linear soft Dice over the whole batch, no smoothing
    constant. Its gradient is the cross-entropy gradient re-weighted by
    `(2/T)(1 - F1/2) p` for positives and `(2/T)(F1/2)(1 - p)` for negatives. `T = 0`
    exactly (no positive and no predicted mass: an empty or fully masked batch, or
    every `p` underflowing to 0) gives loss 0 and a zero gradient (module docstring).
    A NaN logit or label in a kept element gives NaN; `z = +-inf` gives the limit
    `p = 1` or 0, as `jax.nn.sigmoid` does.

    Args:
        logits: binary logits, any shape.
        labels: labels in `[0, 1]`, same shape.
        where: None or a boolean mask of the same shape (elements to count).

    Returns:
        A scalar in `[0, 1]` (or NaN, above), the logits' dtype.

    Raises:
        ValueError: non-floating logits, labels or `where` of another shape.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> loss = losses.sigmoid_smoothed_f1_loss(jnp.array([2.0, -1.0, 0.5]),
        ...                                        jnp.array([1.0, 0.0, 1.0]))
        >>> round(float(loss), 4)
        0.203

    References:
        Su, `函数光滑化杂谈 <https://kexue.fm/archives/6620>`_, 2019 (section on F1)
    """

    def formula(z: jax.Array, y: jax.Array, mask: jax.Array | None) -> jax.Array:
        return 1.0 - _binary_soft_f1(z, y, mask)

    return _binary.binary_loss(formula, logits, labels, where, elementwise=False)


def sigmoid_f1_weighted_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""The weighted cross-entropy that the smoothed F1 becomes under "p -> log p".

    .. math::
        \ell_i = -(1 - F_1/2)\, y_i \log \sigma(z_i) - (F_1/2)(1 - y_i) \log \sigma(-z_i),

    with `F1` the batch's soft F1 (`sigmoid_smoothed_f1_loss`) under stop-gradient.
    Positives weigh `(2 - F1)/F1` times as much as negatives: a lot while F1 is small.
    The post's own normalisation was not seen; the common factor `2/T` is dropped.

    Args:
        logits: binary logits, any shape.
        labels: labels in `[0, 1]`, same shape.
        where: None or a boolean mask of the same shape; masked elements get 0 and are
            left out of F1.

    Returns:
        Elementwise losses, the logits' shape and dtype (empty for empty logits). F1 is
        a batch quantity: a NaN in one kept element makes every kept element NaN.

    Raises:
        ValueError: non-floating logits, labels or `where` of another shape.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> loss = losses.sigmoid_f1_weighted_cross_entropy(jnp.array([2.0, -1.0, 0.5]),
        ...                                                 jnp.array([1.0, 0.0, 1.0]))
        >>> [round(float(x), 4) for x in loss]
        [0.0763, 0.1248, 0.2852]

    References:
        Su, `再谈类别不平衡问题 <https://kexue.fm/archives/7708>`_, 2020
    """

    def formula(z: jax.Array, y: jax.Array, mask: jax.Array | None) -> jax.Array:
        half_f1 = jax.lax.stop_gradient(_binary_soft_f1(z, y, mask)) / 2
        positive, negative = _binary.cross_entropy_terms(z)
        return (1 - half_f1) * y * positive + half_f1 * (1 - y) * negative

    return _binary.binary_loss(formula, logits, labels, where)
