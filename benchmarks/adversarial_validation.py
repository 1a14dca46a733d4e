"""Adversarial validation on shifted digits: which validation set predicts test accuracy.

The test set takes the digits with the most ink, softly: for shift strength `alpha`, the
`num_test` test images are drawn without replacement with probability proportional to
`exp(alpha * z_ink)` (Gumbel top-k), `z_ink` the standardised total ink; the rest form
the training pool. For each of 10 seeds, four validation sets of the same size are
taken from the pool:

- random: a uniform random subset;
- adversarial: the rows most like the test set by the out-of-fold discriminator score
  (`select_validation`);
- weighted: the random subset, its accuracy weighted by the importance weights
  `w = D/(1-D)` (`importance_weights`, self-normalised);
- resampled: drawn with replacement with probabilities proportional to `w`
  (`resample_validation`), duplicates kept.

Classifiers (softmax regression and two MLPs, trained in JAX, vmapped over seeds and
methods) are fitted on the pool minus the validation rows; the figure of merit is
|validation accuracy - test accuracy| of the same trained model. The discriminator
itself is timed against scikit-learn's StandardScaler + LogisticRegression
(class_weight="balanced", the same L2 strength) under cross_val_predict with the same
folds (PredefinedSplit).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _data, _harness, _models, _plots, _stats, _train
from jaxtricks import validation

METHODS = ("random", "adversarial", "weighted", "resampled")
WEIGHT_DECAY = 1e-3  # the discriminator's L2 strength (ours and the peer's)


SIZES = {  # models: name -> hidden sizes; av_steps: Adam steps of each discriminator
    "full": {"shifts": ("none", "ink", "atypical"), "seeds": 10, "steps": 200,
             "models": {"softmax": (), "mlp-16": (16,), "mlp-64": (64,)}, "rounds": 7,
             "av_steps": 500},
    "quick": {"shifts": ("atypical",), "seeds": 3, "steps": 100, "models": {"softmax": ()},
              "rounds": 3, "av_steps": 500},
    "smoke": {"shifts": ("atypical",), "seeds": 2, "steps": 5, "models": {"softmax": ()},
              "rounds": 1, "av_steps": 10},
}


def _shifted_split(key, shift_logits, num_test):
    """Pool and test indices: test drawn w/o replacement, prob. prop. to exp(shift_logits)."""
    order = jnp.argsort(-(shift_logits + jax.random.gumbel(key, shift_logits.shape)))
    return order[num_test:], order[:num_test]


def _validation_sets(key, train_logits, val_size):
    """Per method: (fit mask, validation weights) over the pool rows."""
    num_pool = train_logits.shape[0]
    split_key, resample_key = jax.random.split(key)
    ones = jnp.ones(num_pool)
    random_val = jax.random.permutation(split_key, num_pool)[:val_size]
    random_mask = ones.at[random_val].set(0.0)
    adversarial_val, _ = validation.select_validation(train_logits, val_size)
    adversarial_mask = ones.at[adversarial_val].set(0.0)
    weights = validation.importance_weights(train_logits).weights
    drawn, resampled_mask = validation.resample_validation(resample_key, weights, val_size)
    masks = jnp.stack([random_mask, adversarial_mask, random_mask,
                       resampled_mask.astype(ones.dtype)])
    val_weights = jnp.stack([
        1.0 - random_mask,
        1.0 - adversarial_mask,
        (1.0 - random_mask) * weights,
        jnp.zeros(num_pool).at[drawn].add(1.0),
    ])
    return masks, val_weights


@functools.partial(jax.jit, static_argnames=("val_size", "num_test", "av_steps"))
def _discriminate(keys, x, shift_logits, *, val_size, num_test, av_steps):
    """Per seed: the shifted split, the discriminator, the four validation sets."""
    one_seed = functools.partial(_discriminate_one, val_size=val_size, num_test=num_test,
                                 av_steps=av_steps)
    return jax.vmap(one_seed, in_axes=(0, None, None))(keys, x, shift_logits)


def _discriminate_one(key, x, shift_logits, *, val_size, num_test, av_steps):
    split_key, av_key, val_key = jax.random.split(key, 3)
    pool, test = _shifted_split(split_key, shift_logits, num_test)
    av = validation.adversarial_validation(x[pool], x[test], av_key, steps=av_steps,
                                           weight_decay=WEIGHT_DECAY)
    masks, val_weights = _validation_sets(val_key, av.train_logits, val_size)
    ess = validation.importance_weights(av.train_logits).ess
    return pool, test, masks, val_weights, av.auc, ess


def _train_classifier(key, x, y, fit_mask, *, hidden_sizes, steps, learning_rate):
    """Full-batch AdamW on the cross-entropy of the rows of `fit_mask`; the predictor."""
    model = _models.MLP(hidden_sizes)
    row_weight = fit_mask / jnp.sum(fit_mask)

    def loss_fn(params, _):
        losses = optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y)
        return row_weight @ losses

    trained = _train.train(loss_fn, model.init(key, x[:1]),
                           optax.adamw(learning_rate, weight_decay=1e-4), steps=steps)
    return functools.partial(model.apply, trained.params)


@functools.partial(jax.jit, static_argnames=("hidden_sizes", "steps"))
def _accuracies(keys, x, y, pools, tests, masks, val_weights, *, hidden_sizes, steps):
    """Per seed and method: (validation accuracy, test accuracy) of one trained model."""
    one_seed = functools.partial(_accuracies_one, hidden_sizes=hidden_sizes, steps=steps)
    return jax.vmap(one_seed, in_axes=(0, None, None, 0, 0, 0, 0))(
        keys, x, y, pools, tests, masks, val_weights
    )


def _accuracies_one(key, x, y, pool, test, masks, val_weights, *, hidden_sizes, steps):

    def evaluate(fit_mask, val_weight):
        predict = _train_classifier(
            key, x[pool], y[pool], fit_mask,
            hidden_sizes=hidden_sizes, steps=steps, learning_rate=1e-2,
        )
        pool_correct = jnp.argmax(predict(x[pool]), -1) == y[pool]
        test_accuracy = jnp.mean(jnp.argmax(predict(x[test]), -1) == y[test])
        return val_weight @ pool_correct / jnp.sum(val_weight), test_accuracy

    return jax.vmap(evaluate)(masks, val_weights)


def _gap_rows(shift, model_name, val_accuracy, test_accuracy):
    gap = np.abs(val_accuracy - test_accuracy)  # (seeds, methods)
    bias = val_accuracy - test_accuracy
    rows = []
    for index, method in enumerate(METHODS):
        spread = _stats.summary(gap[:, index])
        # Paired by seed; a method "wins" where its gap is smaller than random's.
        versus = _stats.paired(gap[:, 0], gap[:, index])
        rows.append({
            "shift": shift,
            "model": model_name,
            "method": method,
            "mean_abs_gap": spread.mean,
            "gap_se": spread.se,
            "mean_val_minus_test": float(bias[:, index].mean()),
            "test_acc": float(test_accuracy[:, index].mean()),
            "wins_vs_random": f"{versus.wins}/{versus.n}",
            "p_t_vs_random": versus.t_pvalue if index else None,
            "p_wilcoxon_vs_random": versus.wilcoxon_pvalue if index else None,
        })
    return rows


def _accuracy_study(report, x, y, shifts, *, models, seeds, steps, val_size, num_test,
                    av_steps):
    """Mean |val acc - test acc| per shift, model and method; returns the raw gaps."""
    rows, auc_rows, gaps = [], [], {}
    keys = jax.random.split(jax.random.key(0), seeds)
    for shift, shift_logits in report.progress(shifts.items(), "shifts"):
        pool, test, masks, val_weights, auc, ess = _discriminate(
            keys, x, shift_logits, val_size=val_size, num_test=num_test, av_steps=av_steps
        )
        auc_rows.append({
            "shift": shift,
            "auc": float(auc.mean()),
            "auc_sd_over_seeds": _stats.summary(auc).std,
            "ess_of_w_on_pool": float(ess.mean()),
            "pool_rows": x.shape[0] - num_test,
        })
        for name, hidden in models.items():
            val_accuracy, test_accuracy = jax.device_get(_accuracies(
                keys, x, y, pool, test, masks, val_weights, hidden_sizes=hidden, steps=steps
            ))
            rows += _gap_rows(shift, name, val_accuracy, test_accuracy)
            gaps[(shift, name)] = np.abs(val_accuracy - test_accuracy)
    report.table("discriminator: cross-validated AUC and ESS of w (mean over seeds)", auc_rows)
    report.table(f"|val acc - test acc| over {seeds} seeds (val size {val_size})", rows)
    return gaps


def _plot(report, gaps, shifts, models):
    # Constrained layout puts the suptitle above the subplot titles instead of on them.
    figure, axes = _plots.subplots(1, len(shifts), figsize=(4.2 * len(shifts), 3.4),
                                   sharey=True, squeeze=False, layout="constrained")
    width = 0.8 / len(METHODS)
    for axis, shift in zip(axes[0], shifts, strict=True):
        for index, method in enumerate(METHODS):
            spreads = [_stats.summary(gaps[(shift, name)][:, index]) for name in models]
            means = [spread.mean for spread in spreads]
            errors = [spread.se for spread in spreads]
            positions = np.arange(len(models)) + (index - 1.5) * width
            axis.bar(positions, 100 * np.array(means), width, yerr=100 * np.array(errors),
                     label=method, capsize=2)
        axis.set_xticks(np.arange(len(models)), list(models))
        axis.set_title(f"shift: {shift}")
    axes[0][0].set_ylabel("|val acc - test acc| (%)")
    axes[0][0].legend(fontsize=8)
    figure.suptitle("digits under covariate shift: mean gap over seeds (± s.e.)")
    report.save_figure(figure, "gaps")


def _sklearn_cross_fit(train_x, test_x, train_folds, test_folds, num_folds):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import PredefinedSplit, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.concatenate([train_x, test_x])
    labels = np.r_[np.zeros(len(train_x)), np.ones(len(test_x))]
    folds = np.r_[train_folds, test_folds]
    fit_rows = len(features) * (num_folds - 1) / num_folds
    peer = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=1.0 / (WEIGHT_DECAY * fit_rows), class_weight="balanced",
                           max_iter=2000),
    )
    logits = cross_val_predict(peer, features, labels, cv=PredefinedSplit(folds),
                               method="decision_function")
    auc = np.mean([roc_auc_score(labels[folds == k], logits[folds == k])
                   for k in range(num_folds)])
    return logits, auc


def _timing(report, x, shift_logits, *, num_test, rounds, av_steps):
    pool, test = jax.device_get(_shifted_split(jax.random.key(1), shift_logits, num_test))
    train_x, test_x = x[pool], x[test]
    key = jax.random.key(2)

    def ours(train_x, test_x, key):
        return validation.adversarial_validation(train_x, test_x, key, steps=av_steps,
                                                 weight_decay=WEIGHT_DECAY)

    compiled, compile_s = _harness.compile_timed(ours, train_x, test_x, key)
    result = jax.block_until_ready(compiled(train_x, test_x, key))
    folds = (np.asarray(result.train_folds), np.asarray(result.test_folds))
    peer_logits, peer_auc = _sklearn_cross_fit(train_x, test_x, *folds, 5)
    ours_s, peer_s = [], []
    for _ in report.progress(range(rounds), "timing"):  # interleaved rounds
        start = time.perf_counter()
        jax.block_until_ready(compiled(train_x, test_x, key))
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        _sklearn_cross_fit(train_x, test_x, *folds, 5)
        peer_s.append(time.perf_counter() - start)
    ours_ms, peer_ms = 1e3 * np.median(ours_s), 1e3 * np.median(peer_s)
    report.table(
        f"5-fold discriminator, digits {len(x)} rows x 64 (atypical shift), whole "
        f"procedure: median of {rounds} interleaved rounds",
        [
            {"name": f"jaxtricks adversarial_validation (logistic, {av_steps} Adam steps, "
                     "vmap)",
             "median_ms": ours_ms, "ratio": ours_ms / peer_ms, "compile_s": compile_s,
             "auc": float(result.auc)},
            {"name": "sklearn StandardScaler+LogisticRegression(lbfgs), cross_val_predict",
             "median_ms": peer_ms, "ratio": 1.0, "compile_s": None, "auc": float(peer_auc)},
        ],
    )
    difference = np.abs(np.r_[result.train_logits, result.test_logits] - peer_logits)
    report.note("|logit ours - logit sklearn| (same folds), median / max",
                f"{np.median(difference):.4f} / {np.max(difference):.4f}")


def _standardised(values):
    return jnp.asarray((values - values.mean()) / values.std())


def run(report: _harness.Report) -> None:
    size = report.sized(SIZES)
    seeds, steps, models = size["seeds"], size["steps"], size["models"]
    x, y = _data.digits("unit")
    num_test, val_size, alpha = 600, 240, 2.0
    # Shift log-probabilities of entering the test set (from the images only, never y).
    shifts = {
        "none": jnp.zeros(len(x)),
        "ink": alpha * _standardised(x.sum(1)),
        "atypical": alpha * _standardised(np.linalg.norm(x - x.mean(0), axis=1)),
    }
    shifts = {name: shifts[name] for name in size["shifts"]}
    report.note("setup", f"digits {len(x)} rows; test {num_test} rows drawn without "
                f"replacement with prob. prop. to exp({alpha} z), z the standardised ink or "
                f"distance to the mean image; validation {val_size} of the "
                f"{len(x) - num_test}-row pool; classifiers: {steps} AdamW steps")
    gaps = _accuracy_study(
        report, jnp.asarray(x), jnp.asarray(y), shifts, models=models, seeds=seeds,
        steps=steps, val_size=val_size, num_test=num_test, av_steps=size["av_steps"],
    )
    _plot(report, gaps, shifts, models)
    _timing(report, x, shifts["atypical"], num_test=num_test, rounds=size["rounds"],
            av_steps=size["av_steps"])
