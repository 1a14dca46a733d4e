"""Validation splits and importance weights (jaxtricks/validation/_splits.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compat import enable_x64

from jaxtricks import validation

KEY = jax.random.key(0)


def test_select_validation_breaks_ties_by_lower_index():
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.5, 0.1, 0.5], np.float32)
    chosen, rest = jax.jit(validation.select_validation, static_argnums=1)(scores, 4)
    expected = np.lexsort((np.arange(7), -scores))
    np.testing.assert_array_equal(chosen, expected[:4])  # [1, 3, 2, 4]
    np.testing.assert_array_equal(rest, np.sort(expected[4:]))


def test_importance_weights_normalisation_clip_and_effective_sample_size():
    logits = np.array([-1.0, 0.0, 0.5, 2.0, 6.0], np.float32)
    plain = validation.importance_weights(logits, clip=None)
    np.testing.assert_allclose(plain.weights, np.exp(logits), rtol=1e-6)
    w = np.exp(logits.astype(np.float64))
    np.testing.assert_allclose(plain.ess, w.sum() ** 2 / (w**2).sum(), rtol=1e-5)
    np.testing.assert_allclose(plain.normalized, w / w.sum(), rtol=1e-5)
    # Unbalanced discriminator: w = D/(1-D) * N_train/N_test.
    raw = validation.importance_weights(logits, num_train=300, num_test=100, clip=None)
    np.testing.assert_allclose(raw.weights, 3 * np.exp(logits), rtol=1e-5)
    np.testing.assert_allclose(raw.ess, plain.ess, rtol=1e-5)
    clipped = validation.importance_weights(logits, clip=10.0)
    np.testing.assert_allclose(clipped.weights, np.minimum(np.exp(logits), 10.0), rtol=1e-5)
    with pytest.raises(ValueError, match="num_train and num_test"):
        validation.importance_weights(logits, num_train=3)


def test_importance_weights_stay_finite_for_extreme_logits():
    logits = jnp.array([-1e4, 0.0, 1e4, 1e4])
    for dtype, eps in ((jnp.float32, 2.0**-23), (jnp.bfloat16, 2.0**-7)):
        result = validation.importance_weights(logits.astype(dtype), clip=None)
        normalized = np.asarray(result.normalized.astype(np.float32))
        assert np.all(np.isfinite(normalized))
        # A few rounding errors of the dtype (logsumexp of two equal terms).
        np.testing.assert_allclose(float(result.ess), 2.0, rtol=8 * eps)
        np.testing.assert_allclose(normalized, [0, 0, 0.5, 0.5], atol=8 * eps)


def test_resample_validation_draws_in_proportion_to_weights_with_duplicates():
    weights = jnp.array([0.0, 1.0, 2.0, 3.0, 4.0])
    size = 20_000
    drawn, training_mask = jax.jit(validation.resample_validation, static_argnums=2)(
        KEY, weights, size
    )
    assert drawn.shape == (size,)
    frequency = np.bincount(np.asarray(drawn), minlength=5) / size
    probability = np.asarray(weights) / 10
    # Binomial standard error per row; 4 standard errors.
    standard_error = np.sqrt(probability * (1 - probability) / size)
    assert np.all(np.abs(frequency - probability) <= 4 * standard_error)
    np.testing.assert_array_equal(training_mask, ~np.isin(np.arange(5), drawn))
    few, mask = validation.resample_validation(KEY, jnp.ones(50), 10)
    np.testing.assert_array_equal(mask, ~np.isin(np.arange(50), few))


def test_bad_split_arguments_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="size must be < n"):
        validation.select_validation(np.zeros(5), 5)
    with pytest.raises(ValueError, match="weights must have at least one positive"):
        validation.resample_validation(KEY, np.zeros(5), 3)


def test_resample_validation_gives_the_same_draws_for_typed_and_legacy_keys():
    weights = jnp.arange(6.0)
    resample = jax.vmap(validation.resample_validation, in_axes=(0, None, None))
    seeds = jnp.arange(3)
    for got, want in zip(resample(jax.vmap(jax.random.PRNGKey)(seeds), weights, 4),
                         resample(jax.vmap(jax.random.key)(seeds), weights, 4), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="key"):
        validation.resample_validation(jnp.zeros(3, jnp.uint32), weights, 2)


def test_select_validation_rejects_nan_scores_and_sorts_traced_ones_last():
    scores = np.array([0.3, np.nan, 0.9, 0.1], np.float32)
    with pytest.raises(ValueError, match="scores must not be NaN"):
        validation.select_validation(scores, 2)
    chosen, rest = jax.jit(validation.select_validation, static_argnums=1)(scores, 3)
    np.testing.assert_array_equal(chosen, [2, 0, 3])
    np.testing.assert_array_equal(rest, [1])


def test_empty_inputs_give_empty_outputs_or_errors_naming_the_argument():
    weights = validation.importance_weights(jnp.zeros(0), clip=None)
    assert weights.weights.shape == weights.normalized.shape == (0,)
    assert float(weights.ess) == 0.0
    with pytest.raises(ValueError, match="size must be < n = 0"):
        validation.select_validation(jnp.zeros(0), 1)
    with pytest.raises(ValueError, match="weights must have at least one positive"):
        validation.resample_validation(KEY, jnp.zeros(0), 1)


@pytest.mark.slow
def test_importance_weights_forward_and_reverse_mode_match_the_formulas_and_nan_propagates():
    logits = jnp.array([-1.0, 0.0, 0.5, 2.0])

    def summary(logits):
        result = validation.importance_weights(logits, clip=5.0)
        return result.normalized, result.ess

    def plain(logits):  # float64 numpy-style formulas, no shift
        w = jnp.minimum(jnp.exp(logits), 5.0)
        return w / jnp.sum(w), jnp.sum(w) ** 2 / jnp.sum(w**2)

    with enable_x64():
        logits64 = logits.astype(jnp.float64)
        for transform in (jax.jacfwd, jax.jacrev):
            for got, want in zip(jax.jit(transform(summary))(logits64),
                                 jax.jit(jax.jacfwd(plain))(logits64), strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        assert validation.importance_weights(logits64).ess.dtype == jnp.float64
    with_nan = validation.importance_weights(logits.at[1].set(jnp.nan))
    assert np.isnan(with_nan.weights[1]) and np.all(np.isfinite(np.delete(with_nan.weights, 1)))
    assert np.all(np.isnan(with_nan.normalized)) and np.isnan(with_nan.ess)


def test_splits_work_under_vmap_and_scan():
    rng = np.random.default_rng(10)
    scores = rng.normal(size=(3, 40)).astype(np.float32)
    chosen = jax.vmap(lambda s: validation.select_validation(s, 5)[0])(scores)
    np.testing.assert_array_equal(chosen, np.argsort(-scores, axis=1)[:, :5])
    drawn = jax.lax.scan(
        lambda c, key: (c, validation.resample_validation(key, jnp.ones(40), 4)[0]),
        0, jax.random.split(KEY, 2),
    )[1]
    for key, got in zip(jax.random.split(KEY, 2), drawn, strict=True):
        np.testing.assert_array_equal(got, validation.resample_validation(key, jnp.ones(40),
                                                                          4)[0])


@pytest.mark.parametrize("dtype", [np.int32, np.int8])
def test_integer_logits_give_the_weights_of_the_same_float_logits(dtype):
    # log(clip) and log(num_train / num_test) used to be cast to the integer dtype of the
    # logits: log 2.5 -> 0 and log(3/2) -> 0, silently wrong weights.
    logits = np.array([-2, 0, 1, 3], dtype)
    w = np.exp(logits.astype(np.float64))
    for arguments, expected in (
        ({"clip": 2.5}, np.minimum(w, 2.5)),
        ({"num_train": 3, "num_test": 2, "clip": None}, 1.5 * w),
    ):
        got = jax.jit(functools.partial(validation.importance_weights, **arguments))(logits)
        as_float = validation.importance_weights(logits.astype(np.float32), **arguments)
        assert got.weights.dtype == jnp.float32
        np.testing.assert_allclose(got.weights, expected, rtol=1e-6)
        for got_field, float_field in zip(got, as_float, strict=True):
            np.testing.assert_allclose(got_field, float_field, rtol=1e-6)


def test_a_whole_result_instead_of_its_field_raises_a_value_error_naming_the_field():
    result = validation.importance_weights(jnp.array([0.0, 1.0, 2.0]))
    message = r"weights must be an array, got a whole ImportanceWeights result.*its \.weights"
    with pytest.raises(ValueError, match=message):
        validation.resample_validation(KEY, result, 2)
    with pytest.raises(ValueError, match=message):  # a pytree of tracers under jit
        jax.jit(validation.resample_validation, static_argnums=2)(KEY, result, 2)
    # The adversarial-validation result given to the other two functions.
    adversarial = validation.AdversarialValidation(*[jnp.zeros(4)] * 9)
    with pytest.raises(ValueError, match=r"scores .* whole AdversarialValidation.*\.train_sc"):
        validation.select_validation(adversarial, 2)
    with pytest.raises(ValueError, match=r"logits .* whole AdversarialValidation.*\.train_lo"):
        validation.importance_weights(adversarial)


@pytest.mark.parametrize(
    ("scores", "size"),
    [
        # -x wrapped: -0 = 0 ranked above -5 = 2^32 - 5, so row 0 came first.
        (np.array([0, 5, 3, 2**32 - 1, 5, 0], np.uint32), 4),
        # -(-128) = -128 in int8: the minimum ranked as the largest.
        (np.array([-128, 0, 5, 127, -128, 5], np.int8), 4),
        (np.array([False, True, False, True, True]), 3),  # neg refused bool
    ],
    ids=["uint32", "int8_minimum", "bool"],
)
def test_select_validation_ranks_integer_and_bool_scores_without_wrapping(scores, size):
    # Lower index first among ties, in exact int64 arithmetic.
    expected = np.lexsort((np.arange(len(scores)), -scores.astype(np.int64)))
    for select in (validation.select_validation,
                   jax.jit(validation.select_validation, static_argnums=1)):
        chosen, rest = select(scores, size)
        np.testing.assert_array_equal(chosen, expected[:size])
        np.testing.assert_array_equal(rest, np.sort(expected[size:]))


def test_select_validation_refuses_complex_scores():
    with pytest.raises(ValueError, match="scores must be real, got dtype complex64"):
        validation.select_validation(jnp.array([0.1, 0.9, 0.5], jnp.complex64), 1)


@pytest.mark.parametrize(
    ("logits", "normalized", "ess"),
    [
        ([0.0, np.inf], [0.0, 1.0], 1.0),  # used to be [nan, nan]
        ([np.inf, -3.0, np.inf, -np.inf], [0.5, 0.0, 0.5, 0.0], 2.0),
        ([-np.inf, -np.inf, -np.inf], [1 / 3] * 3, 3.0),  # equal logits going to -inf
    ],
)
def test_importance_weights_of_infinite_logits_are_their_limits(logits, normalized, ess):
    for weigh in (validation.importance_weights, jax.jit(validation.importance_weights)):
        result = weigh(jnp.array(logits, jnp.float32), clip=None)
        np.testing.assert_allclose(result.normalized, normalized, rtol=1e-6)
        np.testing.assert_allclose(result.ess, ess, rtol=1e-6)
    # The limit: the infinite logits replaced by equal large finite ones.
    finite = np.clip(np.array(logits, np.float64), -1e3, 1e3)
    weights = np.exp(finite - finite.max())
    np.testing.assert_allclose(weights / weights.sum(), normalized, atol=1e-12)


def test_importance_weights_refuse_complex_logits_and_keep_nan_next_to_an_infinite_one():
    with pytest.raises(ValueError, match="logits must be real, got dtype complex64"):
        validation.importance_weights(jnp.array([1j, 1 + 1j], jnp.complex64))
    result = validation.importance_weights(jnp.array([np.nan, np.inf, 0.0]), clip=None)
    assert np.all(np.isnan(result.normalized)) and np.isnan(result.ess)


def test_resample_validation_of_traced_all_zero_weights_gives_the_marker_of_nan_weights():
    resample = jax.jit(validation.resample_validation, static_argnums=2)
    drawn, keep = resample(KEY, jnp.zeros(4), 6)
    nan_drawn, nan_keep = resample(KEY, jnp.full(4, jnp.nan), 6)
    np.testing.assert_array_equal(drawn, np.zeros(6))  # row 0, of weight 0
    np.testing.assert_array_equal(drawn, nan_drawn)
    np.testing.assert_array_equal(keep, nan_keep)
    # The other invalid cases keep their marker: every draw is the first bad row.
    for bad in (-1.0, np.nan, np.inf):
        weights = jnp.array([0.0, 2.0, bad, 1.0, bad])
        np.testing.assert_array_equal(resample(KEY, weights, 6)[0], np.full(6, 2))


def test_resample_validation_refuses_concrete_negative_non_finite_or_complex_weights():
    for weights, message in (([1.0, -0.5, 2.0], "weights must be >= 0"),
                             ([1.0, np.inf], "weights must be finite"),
                             ([np.nan, 1.0], "weights must be finite")):
        with pytest.raises(ValueError, match=message):
            validation.resample_validation(KEY, np.array(weights), 3)
    with pytest.raises(ValueError, match="weights must be real, got dtype complex64"):
        validation.resample_validation(KEY, jnp.ones(3, jnp.complex64), 3)
