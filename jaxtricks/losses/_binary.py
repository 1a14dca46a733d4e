"""Binary (sigmoid) forms: truncated cross-entropies and smoothed accuracy (spec 1.2, 1.3).

Logits `z` and labels `y` have the same shape; every function is elementwise (no
reduction), like `optax.sigmoid_binary_cross_entropy`: empty in, empty out. Logits are
computed in at least float32 and the losses returned in the logits' dtype. A NaN logit or
label gives NaN for its element; an infinite logit gives the formula's limit where the
terms have one (`sigma(+-inf)` is 1 or 0, as in optax's sigmoid losses), and inf or NaN
where a term is `0 * inf` or infinite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtricks._src import checks
from jaxtricks.losses import _common


def binary_inputs(
    logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike
) -> tuple[jax.Array, jax.Array]:
    """Floating logits in the compute dtype and labels of the same shape and dtype."""
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    _common.check_floating("logits", logits)
    checks.check_shape("labels", labels.shape, logits.shape)
    dtype = _common.compute_dtype(logits.dtype)
    return logits.astype(dtype), labels.astype(dtype)


def cross_entropy_terms(logits):
    """`(-log sigma(z), -log sigma(-z))`: the losses of a positive and a negative."""
    return -jax.nn.log_sigmoid(logits), -jax.nn.log_sigmoid(-logits)


def hard_truncated_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    margin: jax.typing.ArrayLike = 0.6,
) -> jax.Array:
    r"""Hard-truncated binary cross-entropy (Su, spec 1.3).

    .. math::
        \ell = -\lambda(y, \hat y)\,[y \log \hat y + (1 - y) \log(1 - \hat y)],
        \quad \hat y = \sigma(z),

    with `lambda = 0` when the example is already classified with confidence `m`
    (`y = 1` and `y_hat > m`, or `y = 0` and `y_hat < 1 - m`), 1 otherwise; `lambda` is
    a constant (no gradient), so such examples stop training. The comparisons are made
    on the logit, `z > log(m / (1 - m))`, exact for any `z`. Ties count as not
    classified (`theta(t) = 1[t > 0]`; the post's Keras snippet gave ties 1/2).

    Args:
        logits: binary logits `z`, any shape.
        labels: `{0, 1}` labels of the same shape.
        margin: `m` in `(0, 1)` (the post: `0.5 < m < 1`, its snippet used 0.6).

    Returns:
        Elementwise losses, the logits' shape and dtype.

    Raises:
        ValueError: non-floating logits, labels of another shape, `margin` outside
            `(0, 1)`.

    References:
        Su, `从loss的硬截断、软化到focal loss <https://kexue.fm/archives/4733>`_, 2017.
    """
    checks.check_scalar("margin", margin, low=0.0, high=1.0, low_inclusive=False,
                        high_inclusive=False)
    z, y = binary_inputs(logits, labels)
    margin = jnp.asarray(margin, z.dtype)
    threshold = jnp.log(margin) - jnp.log1p(-margin)
    done = ((y == 1) & (z > threshold)) | ((y == 0) & (z < -threshold))
    positive, negative = cross_entropy_terms(z)
    loss = jnp.where(done, 0.0, y * positive + (1 - y) * negative)
    return loss.astype(jnp.asarray(logits).dtype)


def soft_truncated_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    steepness: jax.typing.ArrayLike = 1.0,
) -> jax.Array:
    r"""Softened truncated binary cross-entropy of steepness `K` (Su, spec 1.3).

    .. math::
        \ell = -y\,\sigma(-K z) \log \sigma(z) - (1 - y)\,\sigma(K z) \log \sigma(-z).

    The hard step of `hard_truncated_cross_entropy` at `m = 1/2` becomes a sigmoid. At
    `K = 1` it is exactly the focal loss with `gamma = 1` and no `alpha`
    (`optax.sigmoid_focal_loss(z, y, gamma=1)`); larger `K` plays the role of larger
    `gamma`. Soft labels in `[0, 1]` interpolate the two terms.

    Args:
        logits: binary logits `z`, any shape.
        labels: labels in `[0, 1]`, same shape.
        steepness: `K >= 0`.

    Returns:
        Elementwise losses, the logits' shape and dtype.

    Raises:
        ValueError: non-floating logits, labels of another shape, `steepness < 0`.

    References:
        Su, `从loss的硬截断、软化到focal loss <https://kexue.fm/archives/4733>`_, 2017.
    """
    checks.check_scalar("steepness", steepness, low=0.0)
    z, y = binary_inputs(logits, labels)
    steep_z = jnp.asarray(steepness, z.dtype) * z
    positive, negative = cross_entropy_terms(z)
    loss = y * jax.nn.sigmoid(-steep_z) * positive + (1 - y) * jax.nn.sigmoid(steep_z) * negative
    return loss.astype(jnp.asarray(logits).dtype)


def binary_smoothed_accuracy_loss(
    logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike
) -> jax.Array:
    r"""Negative binary smoothed accuracy: `-[y sigma(z) + (1 - y) sigma(-z)]` (spec 1.2).

    For a positive the gradient is `-p (1 - p)`: cross-entropy's `-(1 - p)` times `p`,
    so badly classified examples get almost none.

    Args:
        logits: binary logits `z`, any shape.
        labels: labels in `[0, 1]`, same shape.

    Returns:
        Elementwise losses in `[-1, 0]`, the logits' shape and dtype.

    Raises:
        ValueError: non-floating logits, labels of another shape.

    References:
        Su, `函数光滑化杂谈 <https://kexue.fm/archives/6620>`_, 2019.
    """
    z, y = binary_inputs(logits, labels)
    loss = -(y * jax.nn.sigmoid(z) + (1 - y) * jax.nn.sigmoid(-z))
    return loss.astype(jnp.asarray(logits).dtype)
