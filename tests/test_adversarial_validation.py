"""Adversarial validation (jaxtricks/validation/_adversarial.py, _discriminator.py): the
cross-fitted discriminator, its density ratio, out-of-fold scores and injectable loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64, standard_promotion

from jaxtricks import validation

KEY = jax.random.key(0)


def gaussian_sets(num_train, num_test, mean, seed):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(num_train, len(mean))).astype(np.float32)
    test = (rng.normal(size=(num_test, len(mean))) + mean).astype(np.float32)
    return train, test


@pytest.mark.slow
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
    # p = N(0, I), q = N(mu, I): log q/p = mu.x - |mu|^2/2, sizes unbalanced
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_scores_do_not_depend_on_the_scale_of_the_features_near_the_float32_range(scale):
    # The standardisation squared the raw features: NaN scores and AUC at 1e20 (the
    # squares overflow float32), AUC 1/2 at 1e-30 (they underflow: a zero std, so the
    # features went unscaled into the discriminator, ~1e-30 each).
    # The sizes and steps of test_pytree_features_sharded_rows_...: one compilation.
    train, test = gaussian_sets(100, 60, np.array([1.0, -0.5, 0.0]), seed=12)
    run = functools.partial(validation.adversarial_validation, steps=50)
    plain = run(train, test, KEY)
    scaled = run(train * np.float32(scale), test * np.float32(scale), KEY)
    assert float(plain.auc) > 0.6
    for name in ("train_logits", "test_logits", "auc", "auc_stderr"):
        np.testing.assert_allclose(getattr(scaled, name), getattr(plain, name), rtol=1e-4,
                                   atol=1e-5, err_msg=name)


def test_a_constant_feature_of_any_value_gives_the_scores_of_a_zero_feature():
    # A constant column is centred to exactly 0 whatever its value (1e20 included), so
    # it is no spurious intercept.
    train, test = gaussian_sets(100, 60, np.array([1.0, 0.0]), seed=13)
    run = functools.partial(validation.adversarial_validation, steps=50)

    def with_column(x, value):
        return np.c_[x, np.full(len(x), value, np.float32)]

    zero = run(with_column(train, 0.0), with_column(test, 0.0), KEY)
    for value in (3.7, -1e20):
        constant = run(with_column(train, value), with_column(test, value), KEY)
        for got, want in zip(constant, zero, strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.slow
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

@pytest.mark.slow
def test_a_memorising_discriminator_still_scores_noise_at_half_out_of_fold():
    # The training objective each fold's MLP reaches in sample (read out of the loop
    # through `fit`) is far below log 2: it memorises noise; out of fold the AUC is 1/2.
    train, test = gaussian_sets(64, 64, np.zeros(16), seed=5)
    optimizer = standard_promotion(optax.adam(1e-2))
    final_losses = []

    def fit(loss_fn, params):
        def step(carry, _):
            params, state = carry
            updates, state = optimizer.update(jax.grad(loss_fn)(params), state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), length=200)
        jax.debug.callback(lambda loss: final_losses.append(np.asarray(loss)), loss_fn(params))
        return params

    result = validation.adversarial_validation(
        train, test, KEY, model="mlp", hidden_sizes=(64,), weight_decay=0.0, fit=fit
    )
    jax.effects_barrier()
    assert final_losses and np.max(np.concatenate([np.ravel(x) for x in final_losses])) < 0.05
    assert abs(float(result.auc) - 0.5) < 3 * float(result.auc_stderr)


@pytest.mark.slow
def test_the_default_loop_is_adam_and_an_injected_equal_loop_gives_the_same_numbers():
    train, test = gaussian_sets(60, 40, np.full(3, 0.5), seed=12)
    run = functools.partial(validation.adversarial_validation, train, test, KEY, num_folds=2)
    default = run(steps=30)
    adam = standard_promotion(optax.adam(0.05))

    def adam_loop(loss_fn, params):  # an independent copy of the documented default loop
        def step(carry, _):
            params, state = carry
            updates, state = adam.update(jax.grad(loss_fn)(params), state, params)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, (params, adam.init(params)), length=30)[0][0]

    for same in (run(steps=30, learning_rate=0.05), run(steps=30, optimizer=adam),
                 run(fit=adam_loop)):
        for got, want in zip(same, default, strict=True):
            np.testing.assert_array_equal(got, want)
    sgd = run(steps=30, optimizer=optax.sgd(0.5))
    assert np.max(np.abs(sgd.test_logits - default.test_logits)) > 1e-3


@pytest.mark.slow
def test_an_injected_loop_sees_the_balanced_objective_with_the_l2_penalty_on_kernels():
    # `fit` returning the initial params: per fold it records loss_fn at those params and
    # with zero kernels and bias 1 (every logit 1: the balanced BCE of one constant logit,
    # whatever the 15 train and 5 test rows). Two runs differing only in
    # weight_decay differ by weight_decay / 2 * ||kernel||^2 (biases excluded).
    train, test = gaussian_sets(30, 10, np.zeros(2), seed=13)

    def recorded(weight_decay):
        seen = []

        def record(loss_fn, params):
            no_kernel = jax.tree_util.tree_map_with_path(
                lambda path, leaf: leaf * 0 if path[-1].key == "kernel" else leaf * 0 + 1,
                params)
            jax.debug.callback(lambda *values: seen.append(values),
                               loss_fn(params), loss_fn(no_kernel), params)
            return params

        validation.adversarial_validation(train, test, KEY, num_folds=2,
                                          weight_decay=weight_decay, fit=record)
        jax.effects_barrier()
        return seen

    with_decay, without = recorded(0.3), recorded(0.0)
    assert len(with_decay) == len(without) == 2  # one call per fold
    for (loss, loss_no_kernel, params), (plain_loss, _, _) in zip(with_decay, without,
                                                                  strict=True):
        dense = params["params"]["Dense_0"]
        kernel = np.asarray(dense["kernel"], np.float64)
        np.testing.assert_allclose(loss - plain_loss, 0.15 * np.sum(kernel**2), rtol=1e-4)
        balanced = 0.5 * (np.logaddexp(0, 1.0) + np.logaddexp(0, -1.0))
        np.testing.assert_allclose(loss_no_kernel, balanced, rtol=1e-5)


def test_loop_arguments_of_different_loops_are_rejected():
    train, test = gaussian_sets(20, 20, np.zeros(3), seed=7)
    run = functools.partial(validation.adversarial_validation, train, test, KEY)
    loop = lambda loss_fn, params: params  # noqa: E731
    with pytest.raises(ValueError, match="learning_rate"):
        run(optimizer=optax.sgd(0.1), learning_rate=0.1)
    with pytest.raises(ValueError, match="fit replaces the default loop: leave steps"):
        run(fit=loop, steps=10)
    with pytest.raises(ValueError, match="optimizer"):
        run(fit=loop, optimizer=optax.sgd(0.1))
    with pytest.raises(ValueError, match="optimizer must be an optax"):
        run(optimizer="adam")
    with pytest.raises(ValueError, match="fit must be callable"):
        run(fit=3)
    with pytest.raises(ValueError, match="steps"):
        run(steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        run(learning_rate=-1.0)


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
    with pytest.raises(ValueError, match="train_x must have at least num_folds=2 rows"):
        run(np.zeros((0, 2)), np.zeros((4, 2)), KEY, num_folds=2)


@pytest.mark.slow
def test_adversarial_validation_gives_the_same_numbers_for_typed_and_legacy_keys():
    train, test = gaussian_sets(8, 6, np.full(2, 0.5), seed=9)
    run = functools.partial(validation.adversarial_validation, num_folds=2, steps=3)
    typed, legacy = run(train, test, jax.random.key(1)), run(train, test, jax.random.PRNGKey(1))
    for got, want in zip(legacy, typed, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="key"):
        run(train, test, 0)


def test_malformed_arguments_raise_value_errors_naming_the_argument():
    train, test = gaussian_sets(20, 20, np.zeros(3), seed=7)
    run = functools.partial(validation.adversarial_validation, steps=2)
    cases = [
        # Each used to fail deep inside: IndexError, "'int' object is not iterable",
        # optax's dtype TypeError, a scan carry mismatch, numpy's isfinite TypeError.
        ((np.float32(1), np.float32(1), KEY), {}, r"train_x must be an array of shape"),
        ((train, np.float32(1), KEY), {}, r"test_x .*got a scalar"),
        ((train, test, KEY), {"model": "mlp", "hidden_sizes": 4},
         r"hidden_sizes must be a sequence of positive integers.*got 4"),
        ((train, test, KEY), {"model": "mlp", "hidden_sizes": (4, 0)}, "hidden_sizes"),
        ((train.astype(np.complex64), test.astype(np.complex64), KEY), {},
         "train_x must be real, got dtype complex64"),
        ((train, test.astype(np.complex64), KEY), {}, "test_x must be real"),
        ((train, test, KEY), {"learning_rate": np.array([0.05, 0.1])}, "learning_rate"),
        ((train, test, KEY), {"weight_decay": np.array([0.0, 1e-3])}, "weight_decay"),
        ((train, test, None), {}, "key"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            run(*args, **kwargs)


@pytest.mark.slow
def test_a_schedule_learning_rate_is_adam_with_that_schedule():
    train, test = gaussian_sets(16, 12, np.full(2, 0.5), seed=14)
    run = functools.partial(validation.adversarial_validation, train, test, KEY,
                            num_folds=2, steps=4)
    schedule = optax.linear_schedule(0.2, 0.01, 4)
    scheduled = run(learning_rate=schedule)  # used to fail in numpy's isfinite
    for got, want in zip(scheduled, run(optimizer=optax.adam(schedule)), strict=True):
        np.testing.assert_array_equal(got, want)
    constant = run(learning_rate=optax.constant_schedule(0.05))
    for got, want in zip(constant, run(learning_rate=0.05), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="learning_rate sets the default Adam"):
        run(learning_rate=schedule, optimizer=optax.sgd(0.1))
