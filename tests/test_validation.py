"""Adversarial validation (spec 7): discriminator, AUC, splits, importance weights."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compat import enable_x64

from jaxtricks import validation
from jaxtricks.validation import _adversarial, _auc

KEY = jax.random.key(0)


def pairwise_auc(scores, labels):
    """The Mann-Whitney statistic over all O(n^2) (positive, negative) pairs."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    difference = positive[:, None] - negative[None, :]
    return np.mean((difference > 0) + 0.5 * (difference == 0))


def test_roc_auc_matches_all_pairs_with_ties_and_mask():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=200).astype(np.float32)  # many ties
    labels = rng.integers(0, 2, size=200)
    mask = rng.random(200) < 0.6
    auc = jax.jit(validation.roc_auc)(scores, labels)
    masked = validation.roc_auc(scores, labels, where=mask)
    np.testing.assert_allclose(auc, pairwise_auc(scores, labels), rtol=1e-6)
    np.testing.assert_allclose(masked, pairwise_auc(scores[mask], labels[mask]), rtol=1e-6)


def test_auc_variance_matches_delong_from_all_pairs():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 8, size=120).astype(np.float32)
    labels = (rng.random(120) < 0.3).astype(np.int32)
    # DeLong (1988) placement values from the pairwise kernel psi = 1[>] + 1/2 1[=].
    positive, negative = scores[labels == 1], scores[labels == 0]
    kernel = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative)
    expected = kernel.mean(1).var(ddof=1) / len(positive) + kernel.mean(0).var(
        ddof=1) / len(negative)
    auc, variance = _auc.auc_and_variance(scores, labels, None)
    np.testing.assert_allclose(auc, kernel.mean(), rtol=1e-6)
    np.testing.assert_allclose(variance, expected, rtol=1e-5)


def gaussian_sets(num_train, num_test, mean, seed):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(num_train, len(mean))).astype(np.float32)
    test = (rng.normal(size=(num_test, len(mean))) + mean).astype(np.float32)
    return train, test


def test_no_shift_gives_auc_within_three_standard_errors_of_half():
    train, test = gaussian_sets(1000, 300, np.zeros(5), seed=1)
    result = validation.adversarial_validation(train, test, KEY, steps=200)
    assert abs(float(result.auc) - 0.5) < 3 * float(result.auc_stderr)


def test_planted_shift_is_detected_and_the_shifted_rows_are_selected():
    # 5% of the training rows come from the test region (first coordinate shifted by 4).
    rng = np.random.default_rng(2)
    shift = np.array([4.0, 0, 0, 0, 0], np.float32)
    train = rng.normal(size=(1000, 5)).astype(np.float32)
    in_region = np.arange(1000) < 50
    train[in_region] += shift
    test = (rng.normal(size=(300, 5)) + shift).astype(np.float32)
    result = validation.adversarial_validation(train, test, KEY, steps=200)
    # Expected AUC ~ 0.95 * P(separated) + 0.05 * 1/2 ~ 0.97.
    assert float(result.auc) > 0.9
    chosen, rest = validation.select_validation(result.train_scores, 50)
    precision = np.mean(in_region[np.asarray(chosen)])
    # The oracle ranks by the true log density ratio (linear in the first coordinate).
    oracle = np.mean(in_region[np.argsort(-train[:, 0])[:50]])
    assert precision >= 0.9
    assert precision >= oracle - 0.04  # at most two rows worse than the Bayes ranking
    np.testing.assert_array_equal(np.sort(np.r_[chosen, rest]), np.arange(1000))


def test_two_gaussians_logistic_recovers_the_log_density_ratio_and_the_test_mean():
    # p = N(0, I), q = N(mu, I): log q/p = mu.x - |mu|^2/2 (spec 7.3), sizes unbalanced
    # so that a missing class balance would shift the intercept by log(10/3) ~ 1.2.
    mean = np.array([1.0, -0.5, 0.0, 0.0, 0.0])
    num_train, num_test, num_folds = 1000, 300, 5
    train, test = gaussian_sets(num_train, num_test, mean, seed=3)
    result = validation.adversarial_validation(
        train, test, KEY, num_folds=num_folds, steps=200, weight_decay=0.0
    )
    features = np.concatenate([train, test]).astype(np.float64)
    design = np.concatenate([np.ones((len(features), 1)), features], 1)
    true_logit = features @ mean - mean @ mean / 2
    fitted = np.concatenate([result.train_logits, result.test_logits])
    # Standard error of the balanced (weighted) MLE's logit at x: sandwich covariance
    # H^-1 J H^-1 at the true parameters, inflated by K/(K-1) since each fold fits on
    # (K-1)/K of the rows. Then sup_x |error(x)| / se(x) = sqrt(chi2 with 3 dof), so a
    # bound of 5 fails with probability < 1e-4 per fold for a correct fit (6 dof here:
    # < 1e-3).
    labels = np.r_[np.zeros(num_train), np.ones(num_test)]
    weight = np.where(labels == 1, 0.5 / num_test, 0.5 / num_train)
    prob = 1 / (1 + np.exp(-true_logit))
    hessian = (design * (weight * prob * (1 - prob))[:, None]).T @ design
    meat = (design * ((weight * (labels - prob)) ** 2)[:, None]).T @ design
    inverse = np.linalg.inv(hessian)
    covariance = inverse @ meat @ inverse * num_folds / (num_folds - 1)
    standard_error = np.sqrt(np.einsum("ni,ij,nj->n", design, covariance, design))
    assert np.max(np.abs(fitted - true_logit) / standard_error) < 5
    # Self-normalised importance-weighted mean of the training rows ~ the test mean,
    # within 4 standard errors: sd 1 per coordinate, sqrt(1/ESS + 1/num_test).
    weights = validation.importance_weights(result.train_logits, clip=None)
    weighted_mean = np.asarray(weights.normalized) @ train
    tolerance = 4 * np.sqrt(1 / float(weights.ess) + 1 / num_test)
    np.testing.assert_allclose(weighted_mean, test.mean(0), atol=tolerance)
    shifted = mean != 0
    assert np.all(np.abs(train.mean(0) - test.mean(0))[shifted] > tolerance)  # can fail


def test_scores_are_out_of_fold_by_construction():
    # Wild values in one held-out training row change nothing for the other rows of its
    # fold (their discriminator never saw it), and change the other folds' scores.
    train, test = gaussian_sets(100, 60, np.full(3, 0.5), seed=4)
    run = functools.partial(validation.adversarial_validation, steps=50)
    before = run(train, test, KEY)
    row = 7
    fold = int(before.train_folds[row])
    perturbed = train.copy()
    perturbed[row] = 1e3 * np.array([1.0, -2.0, 3.0])
    after = run(perturbed, test, KEY)
    same_fold = np.asarray(before.train_folds) == fold
    same_fold[row] = False
    np.testing.assert_allclose(
        after.train_logits[same_fold], before.train_logits[same_fold], atol=1e-6
    )
    np.testing.assert_allclose(
        after.test_logits[np.asarray(before.test_folds) == fold],
        before.test_logits[np.asarray(before.test_folds) == fold],
        atol=1e-6,
    )
    assert np.max(np.abs(after.train_logits[~same_fold] - before.train_logits[~same_fold])) > 1e-3


def test_a_memorising_discriminator_still_scores_noise_at_half_out_of_fold():
    train, test = gaussian_sets(64, 64, np.zeros(16), seed=5)
    mlp = {"hidden_sizes": (64,), "steps": 200, "learning_rate": 1e-2, "weight_decay": 0.0}
    features = jnp.concatenate([train, test])
    is_test = jnp.arange(128) >= 64
    in_sample = _adversarial._fit_and_score(KEY, jnp.ones(128, bool), features, is_test, **mlp)
    assert float(validation.roc_auc(in_sample, is_test)) > 0.99  # it does memorise
    result = validation.adversarial_validation(train, test, KEY, model="mlp", **mlp)
    assert abs(float(result.auc) - 0.5) < 3 * float(result.auc_stderr)


def test_pytree_features_sharded_rows_and_jit_give_the_same_scores():
    # A pytree of features, its rows sharded over the 4 host devices, under jax.jit,
    # equals the plain concatenated array run eagerly.
    train, test = gaussian_sets(100, 60, np.full(3, 0.5), seed=4)
    mesh = jax.make_mesh(
        (len(jax.devices()),), ("rows",), axis_types=(jax.sharding.AxisType.Auto,)
    )
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("rows"))

    def tree(x):
        return {"a": jax.device_put(x[:, :1], rows),
                "b": jax.device_put(x[:, 1:].reshape(-1, 1, 2), rows)}

    run = functools.partial(validation.adversarial_validation, steps=50)
    flat = run(train, test, KEY)
    jitted = jax.jit(run)(tree(train), tree(test), KEY)
    for name in ("train_logits", "test_logits", "auc"):
        np.testing.assert_allclose(getattr(jitted, name), getattr(flat, name),
                                   rtol=1e-4, atol=1e-5)


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


def test_bad_inputs_raise_value_errors_naming_the_argument():
    train, test = gaussian_sets(20, 20, np.zeros(3), seed=7)
    run = validation.adversarial_validation
    with pytest.raises(ValueError, match="same feature shape"):
        run(train, test[:, :2], KEY)
    with pytest.raises(ValueError, match="test_x must have at least num_folds=5 rows"):
        run(train, test[:4], KEY)
    with pytest.raises(ValueError, match="train_x must be finite"):
        run(np.where(np.eye(20, 3) > 0, np.nan, train), test, KEY)
    with pytest.raises(ValueError, match="tree structure"):
        run({"a": train}, test, KEY)
    with pytest.raises(ValueError, match="hidden_sizes"):
        run(train, test, KEY, model="mlp")
    with pytest.raises(ValueError, match="model must be one of"):
        run(train, test, KEY, model="forest")
    with pytest.raises(ValueError, match="size must be < n"):
        validation.select_validation(np.zeros(5), 5)
    with pytest.raises(ValueError, match="weights must have at least one positive"):
        validation.resample_validation(KEY, np.zeros(5), 3)


def test_roc_auc_is_nan_for_nan_scores_or_labels():
    labels = np.array([0, 1, 0, 1, 1])
    scores = np.array([0.1, 0.7, 0.3, 0.9, 0.2], np.float32)
    # NaN sorts above +inf, so all-NaN scores used to rank every positive "highest".
    assert np.isnan(validation.roc_auc(np.full(5, np.nan, np.float32), labels))
    one_nan = scores.copy()
    one_nan[0] = np.nan
    auc, variance = jax.jit(_auc.auc_and_variance)(one_nan, labels, None)
    assert np.isnan(auc) and np.isnan(variance)
    assert np.isnan(validation.roc_auc(scores, np.array([0, 1, np.nan, 1, 1])))
    # A masked-out NaN does not count; infinite scores rank normally.
    keep = np.arange(5) != 0
    np.testing.assert_allclose(validation.roc_auc(one_nan, labels, where=keep),
                               pairwise_auc(scores[keep], labels[keep]))
    infinite = np.array([-np.inf, np.inf, 0.3, np.inf, 0.2], np.float32)
    np.testing.assert_allclose(validation.roc_auc(infinite, labels),
                               pairwise_auc(infinite, labels))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_adversarial_validation_under_jit_gives_nan_auc_for_a_non_finite_feature(bad):
    # Shift-free data with one bad entry used to report AUC 1.0 under jit (the
    # concrete check raising ValueError is skipped for tracers).
    train, test = gaussian_sets(8, 8, np.zeros(2), seed=8)
    train[3, 1] = bad
    run = jax.jit(functools.partial(validation.adversarial_validation, num_folds=2, steps=3))
    result = run(train, test, KEY)
    assert np.isnan(result.auc) and np.isnan(result.auc_stderr)
    assert np.all(np.isnan(result.fold_auc))
    with pytest.raises(ValueError, match="train_x must be finite"):
        validation.adversarial_validation(train, test, KEY, num_folds=2, steps=3)


def test_functions_taking_keys_give_the_same_numbers_for_typed_and_legacy_keys():
    train, test = gaussian_sets(8, 6, np.full(2, 0.5), seed=9)
    run = functools.partial(validation.adversarial_validation, num_folds=2, steps=3)
    typed, legacy = run(train, test, jax.random.key(1)), run(train, test, jax.random.PRNGKey(1))
    for got, want in zip(legacy, typed, strict=True):
        np.testing.assert_array_equal(got, want)
    weights = jnp.arange(6.0)
    resample = jax.vmap(validation.resample_validation, in_axes=(0, None, None))
    seeds = jnp.arange(3)
    for got, want in zip(resample(jax.vmap(jax.random.PRNGKey)(seeds), weights, 4),
                         resample(jax.vmap(jax.random.key)(seeds), weights, 4), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="key"):
        run(train, test, 0)
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
    assert np.isnan(validation.roc_auc(jnp.zeros(0), jnp.zeros(0, jnp.int32)))
    with pytest.raises(ValueError, match="size must be < n = 0"):
        validation.select_validation(jnp.zeros(0), 1)
    with pytest.raises(ValueError, match="weights must have at least one positive"):
        validation.resample_validation(KEY, jnp.zeros(0), 1)
    with pytest.raises(ValueError, match="train_x must have at least num_folds=2 rows"):
        validation.adversarial_validation(np.zeros((0, 2)), np.zeros((4, 2)), KEY,
                                          num_folds=2)


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
            for got, want in zip(transform(summary)(logits64), jax.jacfwd(plain)(logits64),
                                 strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        assert validation.importance_weights(logits64).ess.dtype == jnp.float64
    with_nan = validation.importance_weights(logits.at[1].set(jnp.nan))
    assert np.isnan(with_nan.weights[1]) and np.all(np.isfinite(np.delete(with_nan.weights, 1)))
    assert np.all(np.isnan(with_nan.normalized)) and np.isnan(with_nan.ess)


def test_roc_auc_and_splits_work_under_vmap_scan_checkpoint_and_any_dtype():
    rng = np.random.default_rng(10)
    scores = rng.normal(size=(3, 40)).astype(np.float32)
    labels = rng.integers(0, 2, size=(3, 40)).astype(np.uint8)
    want = [pairwise_auc(s, label) for s, label in zip(scores, labels, strict=True)]
    np.testing.assert_allclose(jax.vmap(validation.roc_auc)(scores, labels), want, rtol=1e-6)
    scanned = jax.lax.scan(
        lambda c, sl: (c, jax.checkpoint(validation.roc_auc)(*sl)), 0, (scores, labels)
    )[1]
    np.testing.assert_allclose(scanned, want, rtol=1e-6)
    # A step function of the scores: its derivative is zero where it exists.
    tangent = jax.jvp(lambda s: validation.roc_auc(s, labels[0]), (scores[0],),
                      (np.ones(40, np.float32),))[1]
    assert float(tangent) == 0.0
    rounded = scores.astype(jnp.bfloat16)
    np.testing.assert_allclose(
        validation.roc_auc(rounded[0], labels[0]),
        pairwise_auc(np.asarray(rounded[0], np.float32), labels[0]), rtol=1e-6,
    )
    with enable_x64():
        np.testing.assert_allclose(
            validation.roc_auc(scores[0].astype(np.float64), labels[0].astype(np.int64)),
            want[0], rtol=1e-12,
        )
    chosen = jax.vmap(lambda s: validation.select_validation(s, 5)[0])(scores)
    np.testing.assert_array_equal(chosen, np.argsort(-scores, axis=1)[:, :5])
    drawn = jax.lax.scan(
        lambda c, key: (c, validation.resample_validation(key, jnp.ones(40), 4)[0]),
        0, jax.random.split(KEY, 2),
    )[1]
    for key, got in zip(jax.random.split(KEY, 2), drawn, strict=True):
        np.testing.assert_array_equal(got, validation.resample_validation(key, jnp.ones(40),
                                                                          4)[0])


def test_adversarial_validation_in_scan_under_checkpoint_and_in_float64():
    train, test = gaussian_sets(8, 6, np.full(2, 0.5), seed=11)
    run = functools.partial(validation.adversarial_validation, num_folds=2, steps=3)
    key_pair = jax.random.split(KEY, 2)
    scanned = jax.lax.scan(
        lambda c, key: (c, jax.checkpoint(run)(train, test, key).test_logits), 0, key_pair
    )[1]
    for key, got in zip(key_pair, scanned, strict=True):
        np.testing.assert_allclose(got, run(train, test, key).test_logits, rtol=1e-5,
                                   atol=1e-6)
    with enable_x64():
        result = run(train.astype(np.float64), test.astype(np.float64), KEY)
        assert result.train_logits.dtype == jnp.float64
        np.testing.assert_allclose(result.test_logits, run(train, test, KEY).test_logits,
                                   rtol=1e-4, atol=1e-5)
    bf16 = run(train.astype(jnp.bfloat16), test.astype(jnp.bfloat16), KEY)
    as32 = run(np.asarray(train.astype(jnp.bfloat16), np.float32),
               np.asarray(test.astype(jnp.bfloat16), np.float32), KEY)
    np.testing.assert_array_equal(bf16.test_logits, as32.test_logits)
