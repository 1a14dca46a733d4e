"""ROC AUC and DeLong's variance (jaxtricks/validation/_auc.py), against all-pairs numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compat import enable_x64

from jaxtricks import validation

KEY = jax.random.key(0)


def pairwise_auc(scores, labels):
    """The Mann-Whitney statistic over all O(n^2) (positive, negative) pairs."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    difference = positive[:, None] - negative[None, :]
    return np.mean((difference > 0) + 0.5 * (difference == 0))


def delong_auc_and_variance(scores, labels):
    """DeLong (1988) from the pairwise kernel psi = 1[>] + 1/2 1[=], float64 numpy."""
    scores = np.asarray(scores, np.float64)
    positive, negative = scores[labels == 1], scores[labels == 0]
    kernel = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative)
    variance = (kernel.mean(1).var(ddof=1) / len(positive)
                + kernel.mean(0).var(ddof=1) / len(negative))
    return kernel.mean(), variance


def test_roc_auc_matches_all_pairs_with_ties_and_mask():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=200).astype(np.float32)  # many ties
    labels = rng.integers(0, 2, size=200)
    mask = rng.random(200) < 0.6
    auc = jax.jit(validation.roc_auc)(scores, labels)
    masked = validation.roc_auc(scores, labels, where=mask)
    np.testing.assert_allclose(auc, pairwise_auc(scores, labels), rtol=1e-6)
    np.testing.assert_allclose(masked, pairwise_auc(scores[mask], labels[mask]), rtol=1e-6)


@pytest.mark.slow
def test_auc_stderr_is_the_delong_variance_of_each_fold_combined_over_folds():
    # Features with 4 values: each fold's discriminator gives tied logits to equal rows,
    # so the tie terms of DeLong's placement values are exercised.
    rng = np.random.default_rng(1)
    train = rng.integers(0, 4, size=(150, 1)).astype(np.float32)
    test = np.minimum(rng.integers(0, 4, size=(60, 1)) + rng.integers(0, 2, (60, 1)),
                      3).astype(np.float32)
    num_folds = 3
    result = validation.adversarial_validation(train, test, KEY, num_folds=num_folds,
                                               steps=50)
    logits = np.concatenate([result.train_logits, result.test_logits])
    labels = np.r_[np.zeros(150, int), np.ones(60, int)]
    folds = np.concatenate([result.train_folds, result.test_folds])
    assert len(np.unique(logits)) <= 4 * num_folds  # ties
    aucs, variances = zip(*(delong_auc_and_variance(logits[folds == k], labels[folds == k])
                            for k in range(num_folds)), strict=True)
    np.testing.assert_allclose(result.fold_auc, aucs, rtol=1e-6)
    np.testing.assert_allclose(result.auc, np.mean(aucs), rtol=1e-6)
    np.testing.assert_allclose(result.auc_stderr, np.sqrt(np.sum(variances)) / num_folds,
                               rtol=1e-5)


def test_roc_auc_is_nan_for_nan_scores_or_labels():
    labels = np.array([0, 1, 0, 1, 1])
    scores = np.array([0.1, 0.7, 0.3, 0.9, 0.2], np.float32)
    # NaN sorts above +inf, so all-NaN scores used to rank every positive "highest".
    assert np.isnan(validation.roc_auc(np.full(5, np.nan, np.float32), labels))
    one_nan = scores.copy()
    one_nan[0] = np.nan
    assert np.isnan(jax.jit(validation.roc_auc)(one_nan, labels))
    assert np.isnan(validation.roc_auc(scores, np.array([0, 1, np.nan, 1, 1])))
    # A masked-out NaN does not count; infinite scores rank normally.
    keep = np.arange(5) != 0
    np.testing.assert_allclose(validation.roc_auc(one_nan, labels, where=keep),
                               pairwise_auc(scores[keep], labels[keep]))
    infinite = np.array([-np.inf, np.inf, 0.3, np.inf, 0.2], np.float32)
    np.testing.assert_allclose(validation.roc_auc(infinite, labels),
                               pairwise_auc(infinite, labels))


def test_roc_auc_of_no_rows_is_nan():
    assert np.isnan(validation.roc_auc(jnp.zeros(0), jnp.zeros(0, jnp.int32)))


@pytest.mark.slow
def test_roc_auc_works_under_vmap_scan_checkpoint_and_any_dtype():
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


@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0])
def test_roc_auc_refuses_concrete_labels_that_are_not_binary(bad):
    scores = np.array([0.1, 0.4, 0.35, 0.8], np.float32)
    labels = np.array([0, bad, 1, 1])
    # 0.5 used to count as a positive: AUC 1.0 instead of an error.
    with pytest.raises(ValueError, match=f"labels must be binary .*got {bad} at index 1"):
        validation.roc_auc(scores, labels)
    # A masked-out row's label is not read; traced labels cannot raise: NaN.
    keep = np.arange(4) != 1
    np.testing.assert_allclose(validation.roc_auc(scores, labels, where=keep),
                               pairwise_auc(scores[keep], labels[keep]))
    assert np.isnan(jax.jit(validation.roc_auc)(scores, labels))
    # bool and float 0/1 labels are the integer ones.
    binary = np.array([0, 0, 1, 1])
    want = pairwise_auc(scores, binary)
    for same in (binary.astype(bool), binary.astype(np.float32)):
        np.testing.assert_allclose(validation.roc_auc(scores, same), want)


def test_roc_auc_refuses_complex_scores_or_labels_and_a_whole_result():
    scores, labels = jnp.array([0.1, 0.4, 0.35, 0.8]), jnp.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="scores must be real, got dtype complex64"):
        validation.roc_auc(scores.astype(jnp.complex64), labels)  # used to rank the real parts
    with pytest.raises(ValueError, match="labels must be real, got dtype complex64"):
        validation.roc_auc(scores, labels.astype(jnp.complex64))
    result = validation.AdversarialValidation(*[jnp.zeros(4)] * 9)
    with pytest.raises(ValueError, match=r"scores .* whole AdversarialValidation.*\.test_sc"):
        validation.roc_auc(result, labels)  # used to fail in jnp.concatenate
