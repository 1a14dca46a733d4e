"""Validation splits from test-likeness scores: the top-k split, importance weights and
weighted resampling.

References:
    Su, `如何划分一个跟测试集更接近的验证集？ (How to split off a validation set closer to
    the test set) <https://kexue.fm/archives/7805>`_, 2020

    Kish, Survey Sampling (Wiley), 1965 (the effective sample size)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks._src import checks, dtypes, keys


class ImportanceWeights(NamedTuple):
    """The result of `importance_weights`.

    Attributes:
        weights: `(n,)` the (clipped) density ratios `w_i = q(x_i) / p(x_i)`.
        log_weights: `(n,)` `log w_i`, finite even where `w_i` would overflow.
        normalized: `(n,)` the self-normalised weights `w_i / sum_j w_j` (sum to 1),
            computed from `log_weights` (a softmax), so finite for any non-NaN logits:
            infinite ones give the limit (the rows at `+inf` share the total equally,
            the others get 0; all rows at `-inf` give equal weights).
        ess: scalar, the effective sample size `(sum w)^2 / sum w^2`, in `[1, n]`
            (with `+inf` logits, the same limit: the number of rows at `+inf`).

    References:
        Su, `如何划分一个跟测试集更接近的验证集？ (How to split off a validation set closer
        to the test set) <https://kexue.fm/archives/7805>`_, 2020 (the density ratio
        `w = D/(1-D)` and its self-normalised weights)

        Kish, Survey Sampling (Wiley), 1965 (the effective sample size)
    """

    weights: jax.Array
    log_weights: jax.Array
    normalized: jax.Array
    ess: jax.Array


def select_validation(scores: jax.typing.ArrayLike, size: int) -> tuple[jax.Array, jax.Array]:
    """Splits the training rows into the `size` most test-like ones and the rest.

    The post's adversarial-validation split: the top-`size` rows by
    `D(x) = P(test | x)` (or by its logit, or by `w = D/(1-D)`: the same order).

    Args:
        scores: `(n,)` real scores of the training rows, e.g. `train_scores` or
            `train_logits` of `adversarial_validation`; any real dtype (unsigned and
            bool included, True ranking above False).
        size: the number of validation rows, `1 <= size < n` (static).

    Returns:
        `(validation_indices, training_indices)`: `(size,)` the chosen rows by
        decreasing score, ties broken by the lower index first; `(n - size,)` the
        others in increasing index order. Indices have no NaN: traced NaN scores
        (under `jax.jit`, where they cannot be checked) sort last, i.e. as the least
        test-like rows. Integer outputs, so no derivative.

    Raises:
        ValueError: if `scores` is not `(n,)` (e.g. a whole `AdversarialValidation`
            result) or is complex, concrete scores hold NaN, or `size` is not in
            `[1, n)`.

    Examples:
        >>> from jaxtricks import validation
        >>> chosen, rest = validation.select_validation([0.2, 0.9, 0.5, 0.7], 2)
        >>> chosen.tolist(), rest.tolist()
        ([1, 3], [0, 2])

    References:
        Su, `如何划分一个跟测试集更接近的验证集？ (How to split off a validation set closer
        to the test set) <https://kexue.fm/archives/7805>`_, 2020 (the top-k split by
        `D(x)`, Kaggle's "adversarial validation")
    """
    checks.check_not_result("scores", scores, "train_scores")
    scores = jnp.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (n,), got shape {scores.shape}.")
    if jnp.issubdtype(scores.dtype, jnp.complexfloating):
        raise ValueError(f"scores must be real, got dtype {scores.dtype}.")
    concrete = checks.concrete_value(scores)
    if concrete is not None and np.any(np.isnan(concrete)):
        raise ValueError("scores must not be NaN (a NaN has no rank), got NaN entries.")
    checks.check_positive_int("size", size)
    if size >= scores.shape[0]:
        raise ValueError(f"size must be < n = {scores.shape[0]}, got {size}.")
    order = jnp.argsort(_descending_key(scores), stable=True)
    return order[:size], jnp.sort(order[size:])


def _descending_key(scores: jax.Array) -> jax.Array:
    """An order-reversing bijection of `scores` in their own dtype: ascending on it is
    descending on the scores, ties kept. `-x` for floats (exact, NaN stays NaN and sorts
    last); `~x` for integers and bool (`-x - 1` or `max - x`: no wrap-around, where `-x`
    wraps for unsigned dtypes and the signed minimum)."""
    if jnp.issubdtype(scores.dtype, jnp.inexact):
        return -scores
    return ~scores


def importance_weights(
    logits: jax.typing.ArrayLike,
    *,
    num_train: int | None = None,
    num_test: int | None = None,
    clip: float | None = 100.0,
) -> ImportanceWeights:
    r"""Density ratios `w = q(x)/p(x)` of training rows from a discriminator's logits.

    .. math::

        \log w_i = \operatorname{logit} D(x_i) + \log \frac{N_{\mathrm{train}}}{N_{\mathrm{test}}},
        \qquad w_i \le \mathrm{clip}, \qquad
        \mathrm{ESS} = \frac{(\sum_i w_i)^2}{\sum_i w_i^2},

    all in log space. The size factor is for a discriminator fitted on the raw, unbalanced
    sets; leave both sizes None for a balanced one such as `adversarial_validation`'s
    (see :ref:`validation-math`). From probabilities, pass `jax.scipy.special.logit(D)`.

    Args:
        logits: `(n,)` the discriminator's logits `log D - log(1 - D)` on training rows
            (e.g. `train_logits` of `adversarial_validation`), any real dtype.
        num_train: rows of the training set the discriminator was fitted on, or None.
        num_test: rows of the test set the discriminator was fitted on, or None.
        clip: upper bound on `w` (`log w <= log clip`), > 0; None for no clipping.

    Returns:
        `ImportanceWeights(weights, log_weights, normalized, ess)`, in the logits' dtype
        promoted to at least float32. A NaN logit gives a NaN weight for its row and NaN
        `normalized` and `ess`; infinite logits give the limits described in
        `ImportanceWeights`. For `n = 0`: empty arrays and `ess = 0`.

    Raises:
        ValueError: if `logits` is not `(n,)` (e.g. a whole `AdversarialValidation`
            result) or is complex, only one of `num_train` and `num_test` is given, or
            they or `clip` are not > 0.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import validation
        >>> result = validation.importance_weights(jnp.log(jnp.array([1.0, 1.0, 2.0])))
        >>> result.normalized.round(2).tolist(), round(float(result.ess), 4)
        ([0.25, 0.25, 0.5], 2.6667)

    References:
        Su, `如何划分一个跟测试集更接近的验证集？ (How to split off a validation set closer
        to the test set) <https://kexue.fm/archives/7805>`_, 2020 (`w = D/(1-D)`)

        Ionides, `Truncated Importance Sampling <https://doi.org/10.1198/106186008X320456>`_,
        Journal of Computational and Graphical Statistics 17(2), 2008 (`clip`)

        Kish, Survey Sampling (Wiley), 1965 (the effective sample size)
    """
    checks.check_not_result("logits", logits, "train_logits")
    logits = jnp.asarray(logits)
    if logits.ndim != 1:
        raise ValueError(f"logits must have shape (n,), got shape {logits.shape}.")
    if jnp.issubdtype(logits.dtype, jnp.complexfloating):
        raise ValueError(f"logits must be real, got dtype {logits.dtype}.")
    # Integer logits would make log(clip) and log(num_train / num_test) integers.
    logits = logits.astype(dtypes.compute_dtype(logits.dtype))
    if (num_train is None) != (num_test is None):
        raise ValueError(
            "num_train and num_test must be given together (unbalanced discriminator) or "
            f"both None (balanced), got num_train={num_train}, num_test={num_test}."
        )
    log_weights = logits
    if num_train is not None and num_test is not None:
        checks.check_scalar("num_train", num_train, low=0.0, low_inclusive=False)
        checks.check_scalar("num_test", num_test, low=0.0, low_inclusive=False)
        log_weights = log_weights + jnp.log(num_train / num_test).astype(logits.dtype)
    if clip is not None:
        checks.check_scalar("clip", clip, low=0.0, low_inclusive=False)
        log_weights = jnp.minimum(log_weights, jnp.log(clip).astype(logits.dtype))
    weights = jnp.exp(log_weights)
    if logits.shape[0] == 0:
        return ImportanceWeights(weights, log_weights, weights, jnp.zeros((), weights.dtype))
    # Relative to the largest log-weight, so the sums stay accurate for any scale. An
    # infinite largest one would give inf - inf = NaN: its rows are set to 0 instead (the
    # limit of equal logits growing to +-inf), the others to -inf (or stay NaN).
    top = jax.lax.stop_gradient(jnp.max(log_weights))
    shifted = jnp.where(jnp.isinf(top) & (log_weights == top), 0.0, log_weights - top)
    log_total = jax.nn.logsumexp(shifted)
    return ImportanceWeights(
        weights=weights,
        log_weights=log_weights,
        normalized=jnp.exp(shifted - log_total),
        ess=jnp.exp(2 * log_total - jax.nn.logsumexp(2 * shifted)),
    )


def resample_validation(
    key: jax.Array, weights: jax.typing.ArrayLike, size: int
) -> tuple[jax.Array, jax.Array]:
    """Draws a validation set from the training rows with probabilities `w_i / sum w`.

    The post's resampling variant: `size` draws **with replacement**,
    duplicates kept (de-duplicating would break the match with the test
    distribution); the distinct drawn rows leave the training set. Sampling is
    `jax.random.categorical` on `log w`, so zero weights are never drawn.

    Args:
        key: a `jax.random` key, typed or a legacy `PRNGKey` (the same draws for both).
        weights: `(n,)` non-negative importance weights, any scale (e.g.
            `importance_weights(...).weights`), not all zero.
        size: the number of draws (static), >= 1.

    Returns:
        `(validation_indices, training_mask)`: `(size,)` the drawn rows in increasing
        order, with repeats; `(n,)` bool, True for rows never drawn (the rows left to
        train on; their number is random, hence a mask). Traced weights (under
        `jax.jit`/`jax.vmap`, where they cannot be checked) that are NaN, negative or
        `+inf` make every draw the first such row, so it shows up rather than
        vanishing; all-zero traced weights (no row can be drawn, `w / sum w` is 0/0)
        are treated as all NaN: every draw is row 0, a row of weight 0, which valid
        weights never give. Integer outputs, so no derivative.

    Raises:
        ValueError: if `weights` is not `(n,)` (e.g. the whole `ImportanceWeights`
            result rather than its `.weights`) or complex, concrete weights are
            negative, NaN, inf or all zero, `size` < 1, or `key` is not a key.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import validation
        >>> drawn, keep = validation.resample_validation(
        ...     jax.random.key(0), jnp.array([0.0, 1.0, 0.0, 3.0]), 5)
        >>> set(drawn.tolist()) <= {1, 3}, keep.tolist()
        (True, [True, False, True, False])

    References:
        Su, `如何划分一个跟测试集更接近的验证集？ (How to split off a validation set closer
        to the test set) <https://kexue.fm/archives/7805>`_, 2020 (the validation set
        drawn with replacement by the weights, duplicates kept)

        Rubin, Using the SIR algorithm to simulate posterior distributions, in Bayesian
        Statistics 3 (Oxford University Press), 1988 (sampling-importance-resampling)
    """
    checks.check_not_result("weights", weights, "weights")
    weights = jnp.asarray(weights)
    if weights.ndim != 1:
        raise ValueError(f"weights must have shape (n,), got shape {weights.shape}.")
    checks.check_positive_int("size", size)
    if jnp.issubdtype(weights.dtype, jnp.complexfloating):
        raise ValueError(f"weights must be real, got dtype {weights.dtype}.")
    concrete = checks.concrete_value(weights)
    if concrete is not None:
        shown = np.array2string(concrete, threshold=8)
        if not np.all(np.isfinite(concrete)):
            raise ValueError(f"weights must be finite, got {shown}.")
        if np.any(concrete < 0):
            raise ValueError(f"weights must be >= 0, got {shown}.")
        if not np.any(concrete > 0):
            raise ValueError("weights must have at least one positive entry, got all zero.")
    key = keys.as_key(key, "key")
    # All zero: NaN logits, the marker of invalid weights (argmax picks the first NaN),
    # rather than relying on how argmax breaks a tie between -inf logits.
    logits = jnp.where(jnp.all(weights == 0), jnp.nan, jnp.log(weights))
    drawn = jax.random.categorical(key, logits, shape=(size,))
    training_mask = jnp.ones(weights.shape, bool).at[drawn].set(False)
    return jnp.sort(drawn), training_mask
