"""Shared machinery of the softmax losses: input layout, checks and the fused kernel.

Every softmax loss of this package is a function of the log-probability of the target
class, `log p_y = s_y - logsumexp(s)`, possibly of shifted logits. `log_target_probability`
computes it in one fused pass over the logits, and its custom VJP returns
`g * (e_y - p)` from the saved normaliser: the gradient of cross-entropy scaled by the
incoming per-example cotangent `g`. A loss `l(log p_y)` therefore costs one
cross-entropy plus elementwise work on per-example scalars (spec section 1.1: every
such loss is a re-weighted cross-entropy with weight `w = -l'(log p_y)`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks._src import checks

Axis = int | tuple[int, ...]


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype the losses compute in: at least float32 (bfloat16 is upcast)."""
    return jnp.promote_types(dtype, jnp.float32)


def check_floating(name: str, array: jax.Array) -> None:
    """Raises a ValueError unless `array` has a floating dtype."""
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {array.dtype}.")


def prepare(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: Axis,
    where: jax.typing.ArrayLike | None,
    *,
    integer_labels: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
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
        `(logits, labels, mask)` with logits `[..., K]`, labels `[...]` or `[..., K]`,
        and the mask None or a boolean `[..., K]`.

    Raises:
        ValueError: non-floating logits, a bad axis, labels or mask of the wrong shape.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    check_floating("logits", logits)
    class_axes = _canonical_axes(axis, logits.ndim)
    batch_axes = tuple(i for i in range(logits.ndim) if i not in class_axes)
    batch_shape = tuple(logits.shape[i] for i in batch_axes)

    def to_classes_last(array):
        array = jnp.transpose(array, batch_axes + class_axes)
        return array.reshape((*batch_shape, -1))

    if integer_labels:
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
        checks.check_shape("labels", labels.shape, batch_shape)
    else:
        checks.check_shape("labels", labels.shape, logits.shape)
        labels = to_classes_last(labels)
    mask = None
    if where is not None:
        where = jnp.asarray(where, dtype=bool)
        if where.shape == batch_shape:
            num_classes = int(np.prod([logits.shape[i] for i in class_axes]))
            mask = jnp.broadcast_to(where[..., None], (*batch_shape, num_classes))
        elif where.shape == logits.shape:
            mask = to_classes_last(where)
        else:
            raise ValueError(
                f"where must have shape {batch_shape} or {logits.shape}, "
                f"got shape {where.shape}."
            )
    scores = to_classes_last(logits)
    return scores.astype(compute_dtype(scores.dtype)), labels, mask


def _canonical_axes(axis: Axis, ndim: int) -> tuple[int, ...]:
    if isinstance(axis, bool) or not isinstance(axis, int | tuple):
        raise ValueError(f"axis must be an int or a tuple of ints, got {axis!r}.")
    axes = (axis,) if isinstance(axis, int) else axis
    if not axes or any(not -ndim <= a < ndim for a in axes):
        raise ValueError(f"axis must name axes of logits of rank {ndim}, got {axis!r}.")
    canonical = tuple(sorted(a % ndim for a in axes))
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"axis must not repeat an axis, got {axis!r}.")
    return canonical


def masked_logits(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Logits with the masked-out scores at -inf (so they get probability 0)."""
    if mask is None:
        return logits
    return jnp.where(mask, logits, -jnp.inf)


def zero_where_excluded(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Per-example values set to 0 where the mask excludes every score (as optax)."""
    if mask is None:
        return values
    return jnp.where(jnp.any(mask, axis=-1), values, 0.0)


def _shifted_exponentials(
    logits: jax.Array, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(exp(s - max s), its sum, logsumexp(s))` over the last axis.

    Masked scores get 0; an all-masked row gets the sum 0 and the logsumexp 0. Without a
    mask the sum is at least 1 and no guard is needed; leaving the guards out then lets
    XLA:CPU fuse the whole softmax, as it does for optax's cross-entropy.
    """
    shifted = masked_logits(logits, mask)
    top = jnp.max(shifted, axis=-1, keepdims=True)
    if mask is not None:
        top = jnp.where(jnp.isfinite(top), top, 0.0)
    exps = jnp.exp(shifted - top)
    total = jnp.sum(exps, axis=-1)
    log_norm = jnp.log(total) + top[..., 0]
    if mask is not None:
        log_norm = jnp.where(total > 0, log_norm, 0.0)
    return exps, total, log_norm


def probabilities(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Softmax over the last axis; masked scores (and all-masked rows) get 0."""
    log_norm = _shifted_exponentials(logits, mask)[2]
    probs = jnp.exp(masked_logits(logits, mask) - log_norm[..., None])
    return probs if mask is None else jnp.where(mask, probs, 0.0)


def _target_logit(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]


@jax.custom_vjp
def log_target_probability(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None
) -> jax.Array:
    """`log p_y = s_y - logsumexp(s)` over the last axis, with a fused custom VJP.

    Args:
        logits: `[..., K]`, floating.
        labels: `[...]`, integers in `[0, K)`.
        mask: None or boolean `[..., K]`; masked scores are left out of the softmax.

    Returns:
        `[...]`: the target log-probabilities (0 for rows with every score masked).

    The VJP is `g * (e_y - p)` (masked entries 0), with `p` the saved exponentials
    `exp(s - max s)` over their saved sum: the forward pass computes one exponential
    per score, as `optax.softmax_cross_entropy_with_integer_labels` does, and the
    backward pass is elementwise. Reverse mode only: `jax.jvp`/`jax.jacfwd` through it
    raise (a `custom_vjp`); reverse-over-reverse works.
    """
    return _log_target_probability_fwd(logits, labels, mask)[0]


def _log_target_probability_fwd(logits, labels, mask):
    exps, total, log_norm = _shifted_exponentials(logits, mask)
    out = _target_logit(logits, labels) - log_norm
    return out, (exps, total, labels, mask)


def _log_target_probability_bwd(residuals, cotangent):
    exps, total, labels, mask = residuals
    cotangent = cotangent.astype(exps.dtype)
    one_hot = _one_hot_like(exps, labels).astype(exps.dtype)
    if mask is not None:  # all-masked rows: every exponential is 0, and so is p
        total = jnp.where(total > 0, total, 1.0)
    scale = cotangent / total
    grad = cotangent[..., None] * one_hot - scale[..., None] * exps
    if mask is not None:
        grad = jnp.where(mask, grad, 0.0)
    return grad, None, None


log_target_probability.defvjp(_log_target_probability_fwd, _log_target_probability_bwd)


def _one_hot_like(logits: jax.Array, labels: jax.Array) -> jax.Array:
    classes = jax.lax.broadcasted_iota(labels.dtype, logits.shape, logits.ndim - 1)
    return classes == labels[..., None]


@jax.custom_vjp
def target_lead(logits: jax.Array, labels: jax.Array, mask: jax.Array | None) -> jax.Array:
    """`s_y - max_{i != y} s_i` over the unmasked scores (0 without a rival), fused VJP.

    The VJP is `g * (e_y - e_r)`, `r` the best rival: one elementwise pass, which XLA
    fuses with that of `log_target_probability`.
    """
    return _target_lead_fwd(logits, labels, mask)[0]


def _target_lead_fwd(logits, labels, mask):
    rivals = ~_one_hot_like(logits, labels)
    if mask is not None:
        rivals = rivals & mask
    rival = jnp.argmax(jnp.where(rivals, logits, -jnp.inf), axis=-1)
    lead = _target_logit(logits, labels) - _target_logit(logits, rival)
    if mask is None and logits.shape[-1] > 1:  # every row has a rival: skip a pass
        return lead, (logits, labels, rival)
    has_rival = jnp.any(rivals, axis=-1)
    return jnp.where(has_rival, lead, 0.0), (logits, labels, jnp.where(has_rival, rival, labels))


def _target_lead_bwd(residuals, cotangent):
    logits, labels, rival = residuals
    signed = (_one_hot_like(logits, labels).astype(logits.dtype)
              - _one_hot_like(logits, rival).astype(logits.dtype))
    return cotangent[..., None].astype(logits.dtype) * signed, None, None


target_lead.defvjp(_target_lead_fwd, _target_lead_bwd)


def per_class(name: str, values: jax.typing.ArrayLike, num_classes: int) -> jax.Array:
    """A scalar or `[K]` vector of per-class values; checks the length."""
    values = jnp.asarray(values)
    if values.ndim > 1 or (values.ndim == 1 and values.shape[0] != num_classes):
        raise ValueError(
            f"{name} must be a scalar or have shape ({num_classes},) (one entry per "
            f"class), got shape {values.shape}."
        )
    return values


def gather_per_class(values: jax.Array, labels: jax.Array) -> jax.Array:
    """`values[labels]` for a `[K]` vector, `values` itself for a scalar."""
    return values[labels] if values.ndim == 1 else values


def check_priors(priors: jax.typing.ArrayLike, num_classes: int) -> jax.Array:
    """Checks class priors (or counts): shape `[K]`, finite, >= 0, positive sum."""
    priors = jnp.asarray(priors)
    checks.check_shape("class_priors", priors.shape, (num_classes,))
    checks.check_scalar("class_priors", priors, low=0.0)
    concrete = checks.concrete_value(priors)
    if concrete is not None and not np.sum(concrete) > 0:
        raise ValueError(
            f"class_priors must have a positive sum to be normalised, got "
            f"{np.array2string(concrete, threshold=8)}."
        )
    return priors


def log_priors(priors: jax.Array, dtype) -> jax.Array:
    """`log(pi / sum(pi))`, floored at log(1e-12) as the reference code does."""
    priors = priors.astype(dtype)
    normalised = priors / jnp.sum(priors)
    return jnp.log(jnp.maximum(normalised, 1e-12))
