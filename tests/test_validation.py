"""Adversarial validation (spec 7): discriminator, AUC, splits, importance weights."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks import validation
from jaxtricks.validation import _adversarial

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
    auc, variance = _adversarial._auc_and_variance(scores, labels, None)
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
