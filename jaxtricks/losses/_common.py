"""Shared machinery of the softmax losses: input layout, checks and the fused kernel.

Every softmax loss of this package is a function of the log-probability of the target
class, `log p_y = s_y - logsumexp(s)`, possibly of shifted logits. `log_target_probability`
computes it in one fused pass over the logits; its custom JVP is the linear map
`t -> t_y - sum_i p_i t_i`, which JAX transposes into the gradient `g (e_y - p)` of
cross-entropy scaled by the per-example cotangent `g`. A loss `l(log p_y)` therefore
costs one cross-entropy plus elementwise work on per-example scalars, in forward and
reverse mode alike (every such loss is a re-weighted cross-entropy with weight
`w = -l'(log p_y)`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks._src import checks
from jaxtricks._src.dtypes import compute_dtype

Axis = int | tuple[int, ...]


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
        and the mask None or a boolean `[..., K]`. Integer labels come back as int32
        class indices (`class_indices`: a concrete label outside `[0, K)` raises, a
        traced one becomes `K`, for which `log_target_probability` gives NaN; examples
        that `where` excludes entirely are not checked).

    Raises:
        ValueError: non-floating logits, a bad axis, labels or mask of the wrong shape,
            a concrete integer label outside `[0, K)`.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    check_floating("logits", logits)
    class_axes = canonical_axes(axis, logits.ndim)
    batch_axes = tuple(i for i in range(logits.ndim) if i not in class_axes)
    batch_shape = tuple(logits.shape[i] for i in batch_axes)
    num_classes = int(np.prod([logits.shape[i] for i in class_axes]))

    def to_classes_last(array):
        array = jnp.transpose(array, batch_axes + class_axes)
        return array.reshape((*batch_shape, num_classes))

    mask = None
    if where is not None:
        where = jnp.asarray(where, dtype=bool)
        if where.shape == batch_shape:
            mask = jnp.broadcast_to(where[..., None], (*batch_shape, num_classes))
        elif where.shape == logits.shape:
            mask = to_classes_last(where)
        else:
            raise ValueError(
                f"where must have shape {batch_shape} or {logits.shape}, "
                f"got shape {where.shape}."
            )
    if integer_labels:
        checks.check_shape("labels", labels.shape, batch_shape)
        counted = None if mask is None else jnp.any(mask, axis=-1)
        labels = class_indices(labels, num_classes, counted)[0]
    else:
        checks.check_shape("labels", labels.shape, logits.shape)
        labels = to_classes_last(labels)
    scores = to_classes_last(logits)
    return scores.astype(compute_dtype(scores.dtype)), labels, mask


def class_indices(
    labels: jax.typing.ArrayLike,
    num_classes: int,
    counted: jax.typing.ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Integer labels of any dtype as int32 class indices, checked to lie in `[0, K)`.

    The one rule for labels across `jaxtricks.losses`: a label outside `[0, K)` is an
    error. Concrete labels raise; traced ones (under `jit`) cannot, so they come back as
    the index `K`, for which every loss and metric gives NaN in its value and its
    derivatives (`log_target_probability` gathers no score there). Unlike optax, a
    negative label is not read as class `y + K`: -1 more often marks padding than a
    class counted from the end, so it is refused rather than silently trained on; mask
    padding with `where`. Labels at positions that `counted` excludes are not checked
    and come back as 0.

    The range is tested in the labels' own dtype, before the cast, so no label wraps
    into range (uint32, int64) and narrow dtypes (uint8 with K > 256) work.

    Args:
        labels: integer labels, any shape and integer dtype.
        num_classes: `K`, a Python int.
        counted: None, or a boolean mask of the labels' shape (the positions to check).

    Returns:
        `(indices, valid)`: int32 indices in `[0, K]` and a boolean array, False exactly
        where the index is `K`.

    Raises:
        ValueError: non-integer labels, or a concrete counted label outside `[0, K)`.
    """
    array = jnp.asarray(labels)
    if not jnp.issubdtype(array.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype}.")
    value = checks.concrete_value(array)
    keep = None if counted is None else checks.concrete_value(counted)
    if value is not None and (counted is None or keep is not None):
        bad = (value < 0) | (value >= num_classes)
        if keep is not None:
            bad &= np.broadcast_to(keep.astype(bool), bad.shape)
        if np.any(bad):
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"labels must lie in [0, {num_classes}) (num_classes={num_classes}), got "
                f"{value[index]} at index {index}; mask padding with `where`."
            )
    in_range = array >= 0
    if num_classes <= jnp.iinfo(array.dtype).max:  # else every label is below K
        in_range &= array < num_classes
    indices = jnp.where(in_range, array, 0).astype(jnp.int32)
    valid = in_range if counted is None else in_range | ~jnp.asarray(counted, bool)
    return jnp.where(valid, indices, num_classes), valid


def label_one_hot(indices: jax.Array, num_classes: int, dtype) -> jax.Array:
    """One-hot rows of `class_indices`' indices; a row of NaN for the index `K` (a traced
    label outside `[0, K)`), so that it reaches every sum it enters."""
    one_hot = jax.nn.one_hot(indices, num_classes, dtype=dtype)
    return jnp.where((indices < num_classes)[..., None], one_hot, jnp.nan)


def canonical_axes(axis: Axis, ndim: int) -> tuple[int, ...]:
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
    """`(exp(s - max s), its sum, max s)` over the last axis.

    Masked scores get 0; a row with every score masked gets the sum 1 and the maximum 0
    (so its logsumexp is 0 and its probabilities 0). The guards test the mask, never the
    values: a NaN or inf score gives a NaN or inf sum. Without a mask there is no guard,
    which lets XLA:CPU fuse the whole softmax, as it does for optax's cross-entropy.
    """
    shifted = masked_logits(logits, mask)
    top = jax.lax.stop_gradient(jnp.max(shifted, axis=-1, keepdims=True))
    if mask is not None:
        present = jnp.any(mask, axis=-1, keepdims=True)
        top = jnp.where(present, top, 0.0)
    exps = jnp.exp(shifted - top)
    total = jnp.sum(exps, axis=-1)
    if mask is not None:
        total = jnp.where(present[..., 0], total, 1.0)
    return exps, total, top[..., 0]


def probabilities(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Softmax over the last axis; masked scores (and all-masked rows) get 0."""
    _, total, top = _shifted_exponentials(logits, mask)
    log_norm = jnp.log(total) + top
    probs = jnp.exp(masked_logits(logits, mask) - log_norm[..., None])
    return probs if mask is None else jnp.where(mask, probs, 0.0)


def _target_logit(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits, labels[..., None], axis=-1, mode="clip")[..., 0]


def _one_hot_like(logits: jax.Array, labels: jax.Array) -> jax.Array:
    classes = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return classes == labels[..., None].astype(jnp.int32)


def _target_terms(logits, labels, mask):
    """`(log p_y, exp(s - max s), 1 / sum, e_y)`, NaN for a label outside `[0, K)`.

    A row with every score masked gets `log p_y = 0` and `e_y = 0`: a constant.
    """
    exps, total, top = _shifted_exponentials(logits, mask)
    total = jnp.where(labels < logits.shape[-1], total, jnp.nan)
    out = _target_logit(logits, labels) - (jnp.log(total) + top)
    hit = _one_hot_like(logits, labels)
    if mask is not None:
        present = jnp.any(mask, axis=-1)
        out = jnp.where(present, out, 0.0)
        hit = hit & present[..., None]
    return out, exps, 1.0 / total, hit


@jax.custom_jvp
def log_target_probability(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None
) -> jax.Array:
    """`log p_y = s_y - logsumexp(s)` over the last axis, in one fused pass.

    Args:
        logits: `[..., K]`, floating.
        labels: `[...]` int32 labels from `prepare`: in `[0, K)`, or `K` for a label
            out of range, which gives NaN (value and derivatives).
        mask: None or boolean `[..., K]`; masked scores are left out of the logsumexp
            (`s_y` is the target's score even where it is masked, as in optax).

    Returns:
        `[...]`: the target log-probabilities (0 for rows with every score masked).

    The derivative is the linear map `t -> t_y - sum_i p_i t_i` (its transpose, the
    gradient, is `g (e_y - p)`), with `p` the exponentials `exp(s - max s)` of the
    forward pass over their sum: one exponential per score, as in
    `optax.softmax_cross_entropy_with_integer_labels`, and elementwise derivative work
    that XLA fuses with the loss around it. Forward and reverse mode, to any order.
    """
    return _target_terms(logits, labels, mask)[0]


@log_target_probability.defjvp
def _log_target_probability_jvp(primals, tangents):
    logits, labels, mask = primals
    out, exps, inverse_total, hit = _target_terms(logits, labels, mask)
    dot = tangents[0]
    target_dot = jnp.sum(jnp.where(hit, dot, 0.0), axis=-1)
    return out, target_dot - inverse_total * jnp.sum(exps * dot, axis=-1)


def _lead_and_rival(logits, labels, mask):
    rivals = ~_one_hot_like(logits, labels)
    if mask is not None:
        rivals = rivals & mask
    rival = jnp.argmax(jnp.where(rivals, logits, -jnp.inf), axis=-1)
    lead = _target_logit(logits, labels) - _target_logit(logits, rival)
    if mask is None and logits.shape[-1] > 1:  # every row has a rival: skip a pass
        return lead, rival
    has_rival = jnp.any(rivals, axis=-1)
    return jnp.where(has_rival, lead, 0.0), jnp.where(has_rival, rival, labels)


@jax.custom_jvp
def target_lead(logits: jax.Array, labels: jax.Array, mask: jax.Array | None) -> jax.Array:
    """`s_y - max_{i != y} s_i` over the unmasked scores (0 without a rival).

    Its derivative is `t -> t_y - t_r`, `r` the best rival (gradient `g (e_y - e_r)`):
    one elementwise pass, which XLA fuses with that of `log_target_probability`.
    """
    return _lead_and_rival(logits, labels, mask)[0]


@target_lead.defjvp
def _target_lead_jvp(primals, tangents):
    logits, labels, mask = primals
    lead, rival = _lead_and_rival(logits, labels, mask)
    dot = tangents[0]
    signed = (jnp.where(_one_hot_like(logits, labels), dot, 0.0)
              - jnp.where(_one_hot_like(logits, rival), dot, 0.0))
    return lead, jnp.sum(signed, axis=-1)


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
