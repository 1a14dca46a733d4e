"""ROC AUC of scores against binary labels, with DeLong's variance.

The AUC is the share of (positive, negative) pairs that the scores order correctly,
ties counting one half; its variance is DeLong's estimate from the placement values.
Adversarial validation reports it for its train-vs-test discriminator: 0.5 means no
detectable shift.

References:
    DeLong, DeLong & Clarke-Pearson, `Comparing the areas under two or more correlated
    receiver operating characteristic curves: a nonparametric approach
    <https://doi.org/10.2307/2531595>`_, 1988 (Biometrics 44(3))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks._src import checks


def roc_auc(
    scores: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """ROC AUC as the Mann-Whitney statistic, ties counted one half.

    `AUC = P(s_pos > s_neg) + P(s_pos = s_neg) / 2` over all (positive, negative) pairs,
    computed in O(n log n): the negatives are sorted once and each positive's count of
    smaller and equal negatives found by binary search.

    Args:
        scores: `(n,)` real scores (probabilities or logits; any monotone map gives the
            same AUC).
        labels: `(n,)` binary labels: bool, or 0 and 1 of any real dtype; 1 (True) for
            positives (e.g. test rows).
        where: optional `(n,)` bool mask; only rows where it is True count (labels of
            the other rows are not read).

    Returns:
        Scalar AUC in `[0, 1]`; NaN when either class has no (unmasked) row, an
        unmasked score or label is NaN (a NaN has no rank) or, for traced labels (under
        `jax.jit`, where they cannot be checked), an unmasked label is neither 0 nor 1.
        Infinite scores rank normally. Its derivative is zero wherever it exists (a step
        function of the scores), so `jax.grad`/`jax.jvp` run and give zeros.

    Raises:
        ValueError: if `scores` is not `(n,)` (e.g. a whole `AdversarialValidation`
            result) or `labels`/`where` differ in shape, `scores` or `labels` are
            complex, or a concrete unmasked label is neither 0 nor 1 (nor NaN).

    Examples:
        >>> from jaxtricks import validation
        >>> round(float(validation.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])), 4)
        0.75

    References:
        Mann & Whitney, `On a test of whether one of two random variables is
        stochastically larger than the other <https://doi.org/10.1214/aoms/1177730491>`_,
        Annals of Mathematical Statistics 18(1), 1947 (the statistic)

        Hanley & McNeil, `The meaning and use of the area under a receiver operating
        characteristic (ROC) curve <https://doi.org/10.1148/radiology.143.1.7063747>`_,
        Radiology 143(1), 1982 (the AUC equals the Mann-Whitney statistic)
    """
    checks.check_not_result("scores", scores, "test_scores")
    return auc_and_variance(scores, labels, where)[0]


def auc_and_variance(
    scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, where: jax.typing.ArrayLike | None
) -> tuple[jax.Array, jax.Array]:
    """The Mann-Whitney AUC and DeLong's estimate of its variance.

    With placement values `V10_i` (share of negatives below positive i, ties 1/2) and
    `V01_j` (share of positives above negative j), `AUC = mean V10` and
    `Var = var(V10) / m + var(V01) / n`, m positives and n negatives: the AUC is a
    two-sample U-statistic, and this is the first-order (Hoeffding) term of its variance
    with each kernel projection estimated from its own sample (ddof 1).
    """
    scores = jnp.asarray(scores)
    labels = jnp.asarray(labels)
    checks.check_shape("labels", labels.shape, scores.shape)
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (n,), got shape {scores.shape}.")
    for name, array in (("scores", scores), ("labels", labels)):
        if jnp.issubdtype(array.dtype, jnp.complexfloating):
            raise ValueError(f"{name} must be real, got dtype {array.dtype}.")
    valid = jnp.ones(scores.shape, bool) if where is None else jnp.asarray(where, bool)
    checks.check_shape("where", valid.shape, scores.shape)
    _check_binary_labels(labels, where)
    positive = valid & (labels == jnp.ones((), labels.dtype))  # bool labels too
    negative = valid & (labels == jnp.zeros((), labels.dtype))
    below_negatives = _share_below(scores, negative)
    above_positives = 1.0 - _share_below(scores, positive)
    auc = _masked_mean(below_negatives, positive)
    dtype = below_negatives.dtype
    variance = (_masked_variance(below_negatives, positive) / jnp.sum(positive, dtype=dtype)
                + _masked_variance(above_positives, negative) / jnp.sum(negative, dtype=dtype))
    # NaN sorts above +inf, so the ranks alone would count a NaN score as the largest. A
    # label that is neither 0 nor 1 (NaN included) belongs to no class.
    unranked = jnp.any(valid & (jnp.isnan(scores) | ~(positive | negative)))
    return jnp.where(unranked, jnp.nan, auc), jnp.where(unranked, jnp.nan, variance)


def _check_binary_labels(labels: jax.Array, where: jax.typing.ArrayLike | None) -> None:
    """Raises for a concrete label (at a concrete unmasked row) that is not 0, 1 or NaN."""
    value = checks.concrete_value(labels)
    keep = None if where is None else checks.concrete_value(where)
    if value is None or (where is not None and keep is None):
        return
    bad = ~((value == 0) | (value == 1) | np.isnan(value))
    if keep is not None:
        bad &= keep.astype(bool)
    if np.any(bad):
        index = int(np.argmax(bad))
        raise ValueError(
            "labels must be binary (bool, or 0 and 1; 1 for positives), got "
            f"{value[index]} at index {index}."
        )


def _share_below(scores: jax.Array, reference: jax.Array) -> jax.Array:
    """Per row: (#reference rows with a smaller score + #equal / 2) / #reference rows."""
    # Non-reference rows sort to the end; counts are clipped to the real reference rows.
    ordered = jnp.sort(jnp.where(reference, scores, jnp.inf))
    below = jnp.searchsorted(ordered, scores, side="left")
    count = jnp.sum(reference, dtype=below.dtype)
    below = jnp.minimum(below, count)
    at_or_below = jnp.minimum(jnp.searchsorted(ordered, scores, side="right"), count)
    real = jnp.result_type(float)  # the default float dtype, as `0.5 * int` gives
    return (below + at_or_below).astype(real) / (2 * count).astype(real)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.sum(mask, dtype=values.dtype)


def _masked_variance(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Unbiased (ddof=1) variance of the entries where `mask`."""
    deviation = jnp.where(mask, values - _masked_mean(values, mask), 0.0)
    return jnp.sum(jnp.square(deviation)) / (jnp.sum(mask, dtype=values.dtype) - 1)
