"""Measuring any loss as a re-weighted cross-entropy (spec 1.1)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxtricks._src import checks
from jaxtricks.losses import _binary, _common


def cross_entropy_weights(
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    kind: str = "softmax",
    axis: _common.Axis = -1,
) -> jax.Array:
    r"""Per-example weights `w` with `grad loss_fn = w * grad(cross-entropy)` (spec 1.1).

    With `G` the gradient of `sum(loss_fn(logits, labels))` in the logits and `c` the
    cross-entropy gradient (`softmax(s) - e_y`, or `sigmoid(z) - y` for `kind="sigmoid"`),

    .. math:: w = \frac{\langle G, c \rangle}{\lVert c \rVert^2},

    the least-squares projection of `G` on `c`, per example. For a loss that depends on
    the logits only through `p_y`, `G = w c` exactly, so this is the closed form
    `w = -l'(p_y) p_y` (focal: `(1-p)^g - g p (1-p)^(g-1) log p`; smoothed accuracy:
    `p`; hard truncation: `1[p <= m]`) up to rounding. Otherwise (logit adjustment,
    batch F1) it is the best single weight, and `G - w c` is what no re-weighting
    explains. Where `c = 0` in floating point (`p_y` rounds to 1) the weight is
    undefined and returned as NaN, never computed as 0/0. A NaN (or, softmax, +inf)
    score, a NaN gradient of `loss_fn`, or a traced label outside `[0, num_classes)`
    gives NaN for its example; an empty batch gives empty weights.

    Args:
        loss_fn: `(logits, labels) -> losses` (per example, or a batch-level scalar).
        logits: `[..., num_classes]` scores (softmax) or binary logits (sigmoid).
        labels: integer labels `[...]` in `[0, num_classes)`, any integer dtype
            (softmax), or `{0, 1}` labels of the logits' shape (sigmoid).
        kind: "softmax" or "sigmoid": which cross-entropy to compare with.
        axis: the class axis or axes (softmax), as in optax.

    Returns:
        The weights, in the compute dtype (at least float32): shape `[...]` (softmax) or
        the logits' shape (sigmoid).

    Raises:
        ValueError: a bad `kind` or axis, labels of the wrong shape or dtype, a concrete
            label outside `[0, num_classes)` (softmax).
    """
    checks.check_choice("kind", kind, ("softmax", "sigmoid"))
    logits = jnp.asarray(logits)
    grads = jax.grad(lambda s: jnp.sum(loss_fn(s, labels)))(logits)
    if kind == "sigmoid":
        z, y = _binary.binary_inputs(logits, labels)
        ce_grad = jax.nn.sigmoid(z) - y
        return _projection(grads.astype(z.dtype) * ce_grad, ce_grad * ce_grad)
    scores, class_indices, _ = _common.prepare(logits, labels, axis, None)
    grads = _common.prepare(grads, labels, axis, None)[0]  # the same layout as the scores
    one_hot = _common.label_one_hot(class_indices, scores.shape[-1], scores.dtype)
    ce_grad = _common.probabilities(scores, None) - one_hot
    return _projection(jnp.sum(grads * ce_grad, axis=-1), jnp.sum(ce_grad * ce_grad, axis=-1))


def _projection(inner: jax.Array, squared_norm: jax.Array) -> jax.Array:
    defined = squared_norm > 0
    return jnp.where(defined, inner / jnp.where(defined, squared_norm, 1.0), jnp.nan)
