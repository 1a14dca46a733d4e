"""Su's truncated cross-entropies: hard (a step on the confidence) and soft (a sigmoid or
softmax in its place), binary and multi-class.

The hard truncation stops training on examples already classified with confidence `m`;
its step `theta` has no useful derivative, so Su softens it, `theta(t) -> sigma(K t)`,
which at `K = 1` is the focal loss with `gamma = 1`. Binary forms follow the
conventions of `_binary` (elementwise, `where` of the logits' shape), softmax forms those
of `_common.softmax_loss` (integer labels, `axis`, `where`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtricks._src import checks
from jaxtricks.losses import _binary, _common, _kernel


def _check_margin(margin: jax.typing.ArrayLike) -> None:
    checks.check_scalar("margin", margin, low=0.0, high=1.0, low_inclusive=False,
                        high_inclusive=False)


def sigmoid_hard_truncated_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    margin: jax.typing.ArrayLike = 0.6,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Hard-truncated binary cross-entropy.

    .. math::
        \ell = -\lambda(y, \hat y)\,[y \log \hat y + (1 - y) \log(1 - \hat y)],
        \quad \hat y = \sigma(z),

    with `lambda = theta(m - y_hat)` for a positive and `theta(y_hat - (1 - m))` for a
    negative, `theta(t) = 1, 1/2, 0` for `t > 0, = 0, < 0` (the step of Su's posts and
    of the Keras snippet, `(sign(t) + 1) / 2`): examples already classified with
    confidence `m` get 0, a tie gets half weight. `lambda` is a constant (no
    gradient), so such examples stop training. The comparisons are made on the logit,
    `z` against `log(m / (1 - m))`, exact for any `z`. Labels other than 0 and 1 get
    `lambda = 1`.

    Args:
        logits: binary logits `z`, any shape.
        labels: `{0, 1}` labels of the same shape.
        margin: `m` in `(0, 1)` (the post: `0.5 < m < 1`, its snippet used 0.6).
        where: None or a boolean mask of the same shape; masked elements get 0.

    Returns:
        Elementwise losses, the logits' shape and dtype.

    Raises:
        ValueError: non-floating logits, labels or `where` of another shape, `margin`
            outside `(0, 1)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> loss = losses.sigmoid_hard_truncated_cross_entropy(
        ...     jnp.array([2.0, 0.0, -1.0]), jnp.array([1.0, 1.0, 0.0]))
        >>> [round(float(x), 4) for x in loss]
        [0.0, 0.6931, 0.0]

    References:
        Su, `文本情感分类（四）：更好的损失函数 <https://kexue.fm/archives/4293>`_, 2017
        (the loss and its Keras snippet with `margin = 0.6`)

        Su, `从loss的硬截断、软化到focal loss <https://kexue.fm/archives/4733>`_, 2017
        (section "硬截断")
    """
    _check_margin(margin)

    def formula(z: jax.Array, y: jax.Array, mask: jax.Array | None) -> jax.Array:
        m = jnp.asarray(margin, z.dtype)
        threshold = jnp.log(m) - jnp.log1p(-m)
        weight = jnp.where(y == 1, jnp.heaviside(threshold - z, 0.5),
                           jnp.where(y == 0, jnp.heaviside(z + threshold, 0.5), 1.0))
        positive, negative = _binary.cross_entropy_terms(z)
        # A select, not 0 * loss, for the truncated elements: at z = +-inf the loss of
        # the other label is infinite and 0 * inf would be NaN.
        return jnp.where(weight == 0, 0.0, weight * (y * positive + (1 - y) * negative))

    return _binary.binary_loss(formula, logits, labels, where)


def sigmoid_soft_truncated_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    steepness: jax.typing.ArrayLike = 1.0,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Softened truncated binary cross-entropy of steepness `K`.

    .. math::
        \ell = -y\,\sigma(-K z) \log \sigma(z) - (1 - y)\,\sigma(K z) \log \sigma(-z).

    The step of `sigmoid_hard_truncated_cross_entropy` at `m = 1/2` becomes a sigmoid. At
    `K = 1` and labels in `{0, 1}` it is exactly the focal loss with `gamma = 1` and no
    `alpha` (`optax.sigmoid_focal_loss(z, y, gamma=1)`); larger `K` plays the role of
    larger `gamma`. Soft labels in `[0, 1]` interpolate the two terms linearly (optax's
    focal factor is not linear in the label, so the two differ there).

    Args:
        logits: binary logits `z`, any shape.
        labels: labels in `[0, 1]`, same shape.
        steepness: `K >= 0`.
        where: None or a boolean mask of the same shape; masked elements get 0.

    Returns:
        Elementwise losses, the logits' shape and dtype.

    Raises:
        ValueError: non-floating logits, labels or `where` of another shape,
            `steepness < 0`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> loss = losses.sigmoid_soft_truncated_cross_entropy(jnp.array([2.0, -1.0]),
        ...                                                    jnp.array([1.0, 1.0]))
        >>> [round(float(x), 4) for x in loss]
        [0.0151, 0.9601]

    References:
        Su, `从loss的硬截断、软化到focal loss <https://kexue.fm/archives/4733>`_, 2017
        (section "软化loss", the loss :math:`L^{**}`)
    """
    checks.check_scalar("steepness", steepness, low=0.0)

    def formula(z: jax.Array, y: jax.Array, mask: jax.Array | None) -> jax.Array:
        steep_z = jnp.asarray(steepness, z.dtype) * z
        positive, negative = _binary.cross_entropy_terms(z)
        return (y * jax.nn.sigmoid(-steep_z) * positive
                + (1 - y) * jax.nn.sigmoid(steep_z) * negative)

    return _binary.binary_loss(formula, logits, labels, where)


def softmax_hard_truncated_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    margin: jax.typing.ArrayLike = 0.6,
    axis: _common.Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Multi-class hard-truncated cross-entropy (the binary loss applied to `p_y`).

    .. math::
        \ell = -\theta(m - p_y) \log p_y, \qquad
        \theta(t) = 1 \text{ if } t > 0,\ \tfrac12 \text{ if } t = 0,\ 0 \text{ if } t < 0.

    Examples already classified with confidence `m` contribute neither loss nor
    gradient (`theta` is a constant); a tie `p_y = m` gets half weight, as the post's
    step function gives it. The posts treat binary classification and say the idea
    carries over to several classes; this form is the library's extension, and with
    two classes it is `sigmoid_hard_truncated_cross_entropy` of the binary logit
    `s_1 - s_0`. The comparison is made in log space, `log p_y` against `log m`.

    Args:
        logits: scores, shape `[..., num_classes]`.
        labels: integer labels, shape `[...]` (out of range: see `softmax_focal_loss`).
        margin: confidence `m` in `(0, 1)`; 0.6 as in the Keras snippet of Su's 4293.
        axis: the class axis or axes, as in optax.
        where: None, or a mask of shape `[...]` or of the logits' shape.

    Returns:
        Per-example losses, shape `[...]`; NaN where `log p_y` is NaN (a NaN logit, an
        out-of-range label).

    Raises:
        ValueError: labels of the wrong shape or (concrete) outside `[0, K)`,
            `margin` outside `(0, 1)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
        >>> loss = losses.softmax_hard_truncated_cross_entropy(logits, jnp.array([0, 2]))
        >>> [round(float(x), 4) for x in loss]
        [0.0, 1.1803]

    References:
        Su, `文本情感分类（四）：更好的损失函数 <https://kexue.fm/archives/4293>`_, 2017
        (the loss and its Keras snippet with `margin = 0.6`)

        Su, `从loss的硬截断、软化到focal loss <https://kexue.fm/archives/4733>`_, 2017
        (section "硬截断": the step function with `theta(0) = 1/2`)
    """
    _check_margin(margin)

    def formula(scores: jax.Array, labels: jax.Array, mask: jax.Array | None) -> jax.Array:
        log_prob = _kernel.log_target_probability(scores, labels, mask)
        step = jnp.heaviside(jnp.log(jnp.asarray(margin, log_prob.dtype)) - log_prob, 0.5)
        return -step * log_prob  # a NaN log p_y gives a NaN step: it propagates

    return _common.softmax_loss(formula, logits, labels, axis, where)


def softmax_soft_truncated_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    steepness: jax.typing.ArrayLike = 1.0,
    axis: _common.Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Su's softened truncated cross-entropy for several classes.

    .. math::
        \ell = -\mathrm{softmax}(-K s)_y \, \log \mathrm{softmax}(s)_y .

    The step "is the example classified?" of the hard truncation becomes a softmax of
    the negated, sharpened logits: the weight is large when the target's logit is low.
    It is differentiated (it is part of the loss, as focal's factor is; the post puts no
    stop-gradient on it). With two classes it is `sigmoid_soft_truncated_cross_entropy` of the
    binary logit `s_1 - s_0`, so at `K = 1` the binary focal loss with `gamma = 1`. With
    `C` classes and equal logits the weight is `1 / C` (not 1/2): early in training the
    loss is about cross-entropy over `C` (Su: adaptive optimisers absorb the scale; he
    suggests `K` in 1-2). Two fused passes over the logits (`log p_y` of `s` and of
    `-K s`), finite for logits of +-1e4 in every float dtype. A NaN logit gives NaN,
    and so does a -inf one: it takes all the mass of `softmax(-K s)` (`inf - inf`; the
    limit would be 0); leave such classes out with `where`.

    Args:
        logits: scores, shape `[..., num_classes]`.
        labels: integer labels, shape `[...]` (out of range: see `softmax_focal_loss`).
        steepness: `K >= 0`; `K = 0` gives cross-entropy over the number of classes.
        axis: the class axis or axes, as in optax.
        where: None, or a mask of shape `[...]` or of the logits' shape (masked scores
            are left out of both softmaxes).

    Returns:
        Per-example losses, shape `[...]`.

    Raises:
        ValueError: labels of the wrong shape or (concrete) outside `[0, K)`,
            `steepness` negative or not finite.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import losses
        >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
        >>> loss = losses.softmax_soft_truncated_cross_entropy(logits, jnp.array([0, 2]))
        >>> [round(float(x), 4) for x in loss]
        [0.006, 0.3626]

    References:
        Su, `从loss的硬截断、软化到focal loss <https://kexue.fm/archives/4733>`_, 2017
        (section "多分类", the loss :math:`L^{**}`)
    """
    checks.check_scalar("steepness", steepness, low=0.0)

    def formula(scores: jax.Array, labels: jax.Array, mask: jax.Array | None) -> jax.Array:
        sharpness = jnp.asarray(steepness, scores.dtype)
        log_prob = _kernel.log_target_probability(scores, labels, mask)
        log_weight = _kernel.scaled_log_target_probability(scores, -sharpness, labels, mask)
        return -jnp.exp(log_weight) * log_prob

    return _common.softmax_loss(formula, logits, labels, axis, where)
