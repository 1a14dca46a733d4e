"""Long-tail learning: class-imbalance losses on long-tailed digits, and the Bayes check.

Two experiments of Menon et al., "Long-tail learning via logit adjustment", ICLR 2021,
https://arxiv.org/abs/2007.07314:

1. Digits-LT. scikit-learn's digits (8x8 images, 10 classes, shipped offline), split
   once with a fixed seed into a balanced test set (`TEST_PER_CLASS` images per class)
   and a training set made long-tailed with the exponential profile of CIFAR-10-LT:
   class c keeps `int(N_MAX * RHO ** (-c / 9))` images, imbalance ratio `RHO = 100`.
   One small MLP is trained with plain cross-entropy (ERM), inverse-frequency weighted
   cross-entropy, softmax focal loss (gamma = 2), and the logit-adjusted loss (tau = 1);
   the ERM model is also evaluated with post-hoc logit adjustment, and both adjustments
   are swept over tau. Every model (method x split x seed) trains at once: `jax.vmap`s
   over a `lax.scan` training loop, under one `jax.jit`. Reported: balanced accuracy
   (mean per-class recall) mean ± std over seeds on the fixed split, beside the paper's
   CIFAR-10-LT ResNet-32 figures (Table 3), and the same over other random splits.
2. The paper's synthetic check (section 6.1): two 2-D Gaussians `N(y·(1, 1), I)`,
   `y ∈ {±1}`, `P(y = +1) = 5%`, 10,000 training and 10,000 test points per trial, an
   affine classifier trained to convergence (Newton's method on the convex logistic
   objective), many trials vmapped. Balanced error of each method against the Bayes
   balanced error `Φ(-‖μ_1 - μ_{-1}‖ / 2) = Φ(-√2)` of the rule `x_1 + x_2 > 0`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _data, _harness, _models, _plots, _stats, _train
from jaxtricks import losses

NUM_CLASSES = 10
RHO = 100.0  # imbalance ratio n_max / n_min, as CIFAR-10-LT
N_MAX = 100  # training images of the largest class
TEST_PER_CLASS = 70  # balanced test split
SPLIT_SEED = 0
HIDDEN = 128
BATCH = 64
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4
FOCAL_GAMMA = 2.0
POST_HOC_TAUS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
LA_LOSS_TAUS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
TRAINED_METHODS = ("ERM (CE)", "weighted CE (1/pi)", f"focal (gamma={FOCAL_GAMMA:g})", "LA loss")
HEAD_MIN, TAIL_MAX = 30, 4  # class groups by training count: head >= 30, tail <= 4

# Menon et al. (ICLR 2021), Table 3, CIFAR-10-LT (Exp profile, rho = 100), ResNet-32,
# mean of 5 trials: balanced error 27.16 / 22.60 / 22.33 -> balanced accuracy (%).
PAPER_CIFAR10_LT = {"ERM (CE)": 72.84, "CE + post-hoc (tau=1)": 77.40, "LA loss (tau=1)": 77.67}
# The reference code's README, single runs (balanced accuracy %), quoted apart.
PAPER_CODE_README = {"ERM (CE)": 71.36, "CE + post-hoc (tau=1)": 77.32, "LA loss (tau=1)": 77.89}

SYNTH_METHODS = ("ERM", "ERM + post-hoc (tau=1)", "weighted CE (1/pi)", "LA loss (tau=1)")
BAYES_RULE = "Bayes rule (x1+x2>0)"
SYNTH_TRAIN = SYNTH_TEST = 10_000
SYNTH_POSITIVE_RATE = 0.05
NEWTON_STEPS = 12

SIZES = {
    "full": {"splits": 5, "seeds": 8, "steps": 3000, "trials": 100},
    "quick": {"splits": 2, "seeds": 2, "steps": 300, "trials": 8},
    "smoke": {"splits": 2, "seeds": 2, "steps": 4, "trials": 2},
}

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def long_tail_counts(n_max: int = N_MAX, rho: float = RHO) -> np.ndarray:
    """Training images per class: `int(n_max * rho ** (-c / (C - 1)))`, at least 1."""
    classes = np.arange(NUM_CLASSES)
    return np.maximum(1, (n_max * rho ** (-classes / (NUM_CLASSES - 1)) + 1e-9).astype(int))


def long_tailed_digits(seed: int = SPLIT_SEED) -> _data.Split:
    """Digits in [0, 1] with a balanced test split and an exponentially long-tailed
    training split (jax arrays)."""
    x, y = _data.digits("unit")
    split = _data.long_tailed(x, y, long_tail_counts(), test_per_class=TEST_PER_CLASS,
                              seed=seed)
    return jax.tree.map(jnp.asarray, split)


MODEL = _models.MLP((HIDDEN,), NUM_CLASSES)
OPTIMIZER = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)


def train_model(loss_fn: LossFn, key: jax.Array, data: _data.Split, steps: int) -> Any:
    """Trains one MLP with minibatch AdamW in a `lax.scan`; returns its params.

    Each step draws `BATCH` training examples uniformly (so batches follow the long-tailed
    training distribution) and minimises the mean of `loss_fn`'s per-example values.
    """
    init_key, data_key = jax.random.split(key)

    def objective(params, step_key):
        batch = _train.minibatch(step_key, data.y_train.shape[0], BATCH)
        logits = MODEL.apply(params, data.x_train[batch])
        return jnp.mean(loss_fn(logits, data.y_train[batch]))

    params = MODEL.init(init_key, data.x_train[:1])
    return _train.train(objective, params, OPTIMIZER, _train.step_keys(data_key, steps)).params


def training_losses(priors: jax.Array) -> tuple[Callable, ...]:
    """Per-example losses `(logits, labels, tau)`, one per entry of `TRAINED_METHODS`,
    all from `jaxtricks.losses` (optax's for plain CE); only the LA loss uses `tau`."""
    class_weights = 1.0 / (NUM_CLASSES * priors)  # inverse frequency, sum_c pi_c w_c = 1

    def cross_entropy(logits, labels, tau):
        del tau
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    def weighted(logits, labels, tau):
        del tau
        return losses.softmax_weighted_cross_entropy(logits, labels, class_weights=class_weights)

    def focal(logits, labels, tau):
        del tau
        return losses.softmax_focal_loss(logits, labels, gamma=FOCAL_GAMMA)

    def logit_adjusted(logits, labels, tau):
        return losses.softmax_logit_adjusted_cross_entropy(
            logits, labels, class_priors=priors, tau=tau
        )

    return cross_entropy, weighted, focal, logit_adjusted


def digits_test_logits(
    method_ids: jax.Array,
    taus: jax.Array,
    splits: _data.Split,
    keys: jax.Array,
    *,
    priors: jax.Array,
    steps: int,
) -> jax.Array:
    """Trains one model per (run, split, seed) and returns its test logits,
    `[runs, splits, seeds, n_test, classes]`.

    Run r trains with loss `training_losses(priors)[method_ids[r]]` at `taus[r]`; the
    three `jax.vmap`s (runs, splits, seeds) make every model one lane of a single
    compiled `lax.scan`. Under `vmap` the `lax.switch` on a batched index evaluates every
    loss and selects, which costs little: the losses are tiny next to the MLP.
    """
    branches = training_losses(priors)

    def one_model(method_id, tau, data, key):
        def loss_fn(logits, labels):
            return jax.lax.switch(method_id, branches, logits, labels, tau)

        params = train_model(loss_fn, key, data, steps)
        return MODEL.apply(params, data.x_test)

    per_seed = jax.vmap(one_model, in_axes=(None, None, None, 0))
    per_split = jax.vmap(per_seed, in_axes=(None, None, 0, None))
    per_run = jax.vmap(per_split, in_axes=(0, 0, None, None))
    return per_run(method_ids, taus, splits, keys)


def per_class_recall(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Recall of each class, `[..., num_classes]`, from logits `[..., n, num_classes]`."""
    hits = np.argmax(logits, axis=-1) == labels
    return np.stack([hits[..., labels == c].mean(-1) for c in range(NUM_CLASSES)], -1)


def balanced_accuracy_percent(logits: jax.Array, labels: jax.Array) -> np.ndarray:
    """Balanced accuracy (library metric) in %, `[splits, seeds]`, from logits
    `[splits, seeds, n, classes]` and labels `[splits, n]`."""
    per_seed = jax.vmap(losses.balanced_accuracy_from_logits, in_axes=(0, None))
    per_split = jax.vmap(per_seed, in_axes=(0, 0))
    return 100 * np.asarray(per_split(logits, labels))


def digits_row(
    method: str, balanced: np.ndarray, logits: jax.Array, labels: jax.Array,
    priors: jax.Array, erm: np.ndarray,
) -> dict:
    """Table row for one split, in %: balanced accuracy per seed `balanced`, its paired
    gain over ERM's `erm` (same seeds), and recall by class group from `logits`."""
    recall = 100 * per_class_recall(np.asarray(logits), np.asarray(labels))
    counts = long_tail_counts()
    prior_accuracy = recall @ np.asarray(priors)  # accuracy on a test set with train priors
    return {
        "method": method,
        "balanced_acc_%": _stats.mean_std(balanced),
        **_stats.paired_columns(balanced, erm, "ERM"),
        "head_recall_%": _stats.mean_std(recall[:, counts >= HEAD_MIN].mean(-1)),
        "tail_recall_%": _stats.mean_std(recall[:, counts <= TAIL_MAX].mean(-1)),
        "train_prior_acc_%": _stats.mean_std(prior_accuracy),
        "paper_CIFAR10LT_bal_acc_%": PAPER_CIFAR10_LT.get(method),
        "paper_gain_vs_ERM_%": _paper_gain(method),
        "_balanced": balanced,
    }


def _paper_gain(method: str) -> float | None:
    if method not in PAPER_CIFAR10_LT:
        return None
    return round(PAPER_CIFAR10_LT[method] - PAPER_CIFAR10_LT["ERM (CE)"], 2)


def stack_splits(split_seeds: Sequence[int]) -> _data.Split:
    """Digits-LT splits drawn with each seed, stacked on a leading axis (same counts)."""
    splits = [long_tailed_digits(seed) for seed in split_seeds]
    return jax.tree.map(lambda *arrays: jnp.stack(arrays), *splits)


def run_digits(
    report: _harness.Report, num_splits: int, seeds: int, steps: int
) -> tuple[list, list, list]:
    """Every method on `num_splits` Digits-LT splits x `seeds` seeds, in one jitted call.

    Returns the headline rows (the fixed split `SPLIT_SEED`, over seeds), the tau-sweep
    rows (same split) and the split-robustness rows (per split the mean over seeds, then
    mean ± std over splits: which images form the one-shot tail changes with the split).
    """
    splits = stack_splits([SPLIT_SEED + index for index in range(num_splits)])
    priors = losses.class_priors(splits.y_train[0], NUM_CLASSES)  # same counts every split
    counts = long_tail_counts()
    runs = [(name, index, 0.0) for index, name in enumerate(TRAINED_METHODS[:3])] + [
        (f"LA loss (tau={tau:g})", 3, tau) for tau in LA_LOSS_TAUS
    ]
    report.note(
        "digits_LT",
        f"train counts per class {counts.tolist()} (n={int(counts.sum())}, ratio "
        f"{counts[0] / counts[-1]:g}); balanced test {TEST_PER_CLASS}/class "
        f"(n={splits.y_test.shape[1]}); MLP 64-{HIDDEN}-10, AdamW lr {LEARNING_RATE:g} "
        f"wd {WEIGHT_DECAY:g}, batch {BATCH}, {steps} steps; {len(runs)} runs x "
        f"{num_splits} splits x {seeds} seeds = {len(runs) * num_splits * seeds} models",
    )
    start = time.perf_counter()
    train = jax.jit(functools.partial(digits_test_logits, priors=priors, steps=steps))
    all_logits = train(
        jnp.asarray([method_id for _, method_id, _ in runs]),
        jnp.asarray([tau for _, _, tau in runs]),
        splits,
        jax.random.split(jax.random.key(1), seeds),
    )
    all_logits = jax.block_until_ready(all_logits)
    report.note("digits_train_s_incl_compile", round(time.perf_counter() - start, 2))
    logits = dict(zip([name for name, _, _ in runs], all_logits, strict=True))

    for tau in POST_HOC_TAUS:  # 1.0 among them
        logits[f"CE + post-hoc (tau={tau:g})"] = losses.adjust_logits(
            logits["ERM (CE)"], class_priors=priors, tau=tau
        )
    accuracy = {name: balanced_accuracy_percent(values, splits.y_test)
                for name, values in logits.items()}
    erm = accuracy["ERM (CE)"]

    def row(method: str, name: str) -> dict:  # headline split
        return digits_row(method, accuracy[name][0], logits[name][0], splits.y_test[0],
                          priors, erm[0])

    headline = ("ERM (CE)", "CE + post-hoc (tau=1)", *TRAINED_METHODS[1:3], "LA loss (tau=1)")
    rows = [row(name, name) for name in headline]

    def sweep_row(method: str, tau: float) -> dict:
        name = f"{method} (tau={tau:g})"
        return {"tau": tau, **row(method, name),
                "all_splits_bal_acc_%": _stats.mean_std(accuracy[name].mean(axis=1))}

    sweep = [sweep_row("CE + post-hoc", tau) for tau in POST_HOC_TAUS]
    sweep += [sweep_row("LA loss", tau) for tau in LA_LOSS_TAUS]

    split_means = {name: accuracy[name].mean(axis=1) for name in headline}
    robustness = [
        {
            "method": name,
            "balanced_acc_%": _stats.mean_std(means),
            **_stats.paired_columns(means, split_means["ERM (CE)"], "ERM"),
            "worst_split_%": float(means.min()),
            "best_split_%": float(means.max()),
        }
        for name, means in split_means.items()
    ]
    return rows, sweep, robustness


def _drop(row: dict, *keys: str) -> dict:
    return {key: value for key, value in row.items() if key not in keys}


def _public(row: dict) -> dict:
    return {key: value for key, value in row.items() if not key.startswith("_")}


# --------------------------------------------------------------------------------------
# Synthetic check (paper section 6.1).


def gaussian_task(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """`n` points of the two-Gaussian task; label 1 is the rare class y = +1."""
    label_key, noise_key = jax.random.split(key)
    labels = jax.random.bernoulli(label_key, SYNTH_POSITIVE_RATE, (n,)).astype(jnp.int32)
    sign = (2 * labels - 1).astype(jnp.float32)
    return sign[:, None] + jax.random.normal(noise_key, (n, 2)), labels


def affine_logits(theta: jax.Array, x: jax.Array) -> jax.Array:
    """Two-class logits `[0, w·x + b]` of an affine (logistic) classifier, theta = (w, b)."""
    score = x @ theta[:2] + theta[2]
    return jnp.stack([jnp.zeros_like(score), score], axis=-1)


def fit_affine(loss_fn: LossFn, x: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Minimises the mean loss over theta by Newton's method; returns theta and |grad|."""

    def objective(theta):
        return jnp.mean(loss_fn(affine_logits(theta, x), labels))

    def newton(theta, _):
        gradient = jax.grad(objective)(theta)
        return theta - jnp.linalg.solve(jax.hessian(objective)(theta), gradient), None

    theta, _ = jax.lax.scan(newton, jnp.zeros(3), None, length=NEWTON_STEPS)
    return theta, jnp.linalg.norm(jax.grad(objective)(theta))


def synthetic_trial(key: jax.Array) -> dict[str, jax.Array]:
    """One trial: balanced error, boundary offset and final gradient norm of each method."""
    train_key, test_key = jax.random.split(key)
    x, labels = gaussian_task(train_key, SYNTH_TRAIN)
    x_test, labels_test = gaussian_task(test_key, SYNTH_TEST)
    priors = losses.class_priors(labels, 2)

    def ce(logits, labels):
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    def weighted(logits, labels):
        return losses.softmax_weighted_cross_entropy(
            logits, labels, class_weights=1.0 / (2 * priors)
        )

    def logit_adjusted(logits, labels):
        return losses.softmax_logit_adjusted_cross_entropy(logits, labels, class_priors=priors)

    def balanced_error(logits):
        return 1.0 - losses.balanced_accuracy_from_logits(logits, labels_test)

    def offset(theta):  # signed distance of the boundary w·x + b = 0 from the origin
        return -theta[2] / jnp.linalg.norm(theta[:2])

    trained = {"ERM": ce, "weighted CE (1/pi)": weighted, "LA loss (tau=1)": logit_adjusted}
    out = {}
    for name, loss_fn in trained.items():
        theta, grad_norm = fit_affine(loss_fn, x, labels)
        logits = affine_logits(theta, x_test)
        out[name] = (balanced_error(logits), offset(theta), grad_norm)
        if name == "ERM":
            adjusted = losses.adjust_logits(logits, class_priors=priors)
            # Post-hoc shifts the score by -log(pi_1/pi_0): boundary w·x + b' = 0.
            shifted = theta.at[2].add(-jnp.log(priors[1] / priors[0]))
            out["ERM + post-hoc (tau=1)"] = (balanced_error(adjusted), offset(shifted), grad_norm)
    bayes = affine_logits(jnp.array([1.0, 1.0, 0.0]), x_test)  # x1 + x2 > 0
    out[BAYES_RULE] = (balanced_error(bayes), jnp.zeros(()), jnp.zeros(()))
    return out


def run_synthetic(report: _harness.Report, trials: int) -> list[dict]:
    """Runs `trials` vmapped synthetic trials; rows of balanced error against Bayes."""
    bayes_ber = float(jax.scipy.stats.norm.cdf(-jnp.sqrt(2.0)))  # Φ(-‖μ_1 - μ_-1‖/2)
    report.note("synthetic_bayes_balanced_error_%", round(100 * bayes_ber, 4))
    start = time.perf_counter()
    keys = jax.random.split(jax.random.key(2), trials)
    results = jax.block_until_ready(jax.jit(jax.vmap(synthetic_trial))(keys))
    report.note("synthetic_s", round(time.perf_counter() - start, 2))
    empirical_bayes = np.asarray(results[BAYES_RULE][0])
    rows = []
    for name in (*SYNTH_METHODS, BAYES_RULE):  # jax returns dicts with sorted keys
        error, offset, grad_norm = (np.asarray(value) for value in results[name])
        rows.append(
            {
                "method": name,
                "balanced_error_%": _stats.mean_std(100 * error),
                "gap_to_Bayes_%": f"{100 * (error.mean() - bayes_ber):+.3f}",
                **_stats.paired_columns(error, empirical_bayes, "Bayes", 100, digits=3),
                "boundary_offset": _stats.mean_std(offset),
                "max_final_grad": float(np.max(grad_norm)),
                "_error": error,
            }
        )
    return rows


# --------------------------------------------------------------------------------------


def plot(report: _harness.Report, rows: list, sweep: list, synthetic: list) -> None:
    """Bar plots: digits-LT against the paper, the tau sweeps, the synthetic errors."""
    figure, (left, middle, right) = _plots.subplots(1, 3, figsize=(17, 4.8))
    names = [row["method"] for row in rows]
    means = [row["_balanced"].mean() for row in rows]
    stds = [_stats.summary(row["_balanced"]).std for row in rows]
    positions = np.arange(len(rows))
    left.bar(positions - 0.2, means, 0.4, yerr=stds, capsize=3, label="ours: digits-LT MLP")
    paper = [PAPER_CIFAR10_LT.get(name, np.nan) for name in names]
    left.bar(positions + 0.2, paper, 0.4, hatch="//", alpha=0.6,
             label="Menon et al. Table 3: CIFAR-10-LT ResNet-32")
    left.set_xticks(positions, names, rotation=30, ha="right")
    left.set_ylabel("balanced accuracy (%)")
    left.set_ylim(min([*means, 72.0]) - 10, 100)
    left.set_title(f"Long-tailed training (ratio {RHO:g}), balanced test")
    left.legend(fontsize=8)

    for method, marker in (("CE + post-hoc", "o"), ("LA loss", "s")):
        points = [row for row in sweep if row["method"] == method]
        middle.errorbar(
            [row["tau"] for row in points],
            [row["_balanced"].mean() for row in points],
            yerr=[_stats.summary(row["_balanced"]).std for row in points],
            marker=marker, capsize=3, label=method,
        )
    middle.set_xlabel("tau")
    middle.set_ylabel("balanced accuracy (%)")
    middle.set_title("digits-LT: tau sweep")
    middle.legend(fontsize=8)

    errors = [100 * row["_error"] for row in synthetic]
    right.boxplot(errors)
    right.set_xticks(np.arange(1, len(synthetic) + 1), [row["method"] for row in synthetic],
                     rotation=30, ha="right")
    right.axhline(100 * float(jax.scipy.stats.norm.cdf(-np.sqrt(2.0))), color="k", ls="--",
                  label="Bayes balanced error Φ(-√2)")
    right.set(ylabel="test balanced error (%)", title="two Gaussians, 5% positives, affine model")
    right.legend(fontsize=8)
    report.save_figure(figure, "balanced_accuracy")


def run(report: _harness.Report) -> None:
    """Digits-LT (methods, tau sweeps) and the synthetic Bayes check."""
    size = report.sized(SIZES)
    num_splits, seeds = size["splits"], size["seeds"]
    rows, sweep, robustness = run_digits(report, num_splits, seeds, size["steps"])
    report.table(
        f"digits-LT: balanced accuracy, mean ± std over {seeds} seeds; difference to ERM "
        "paired by seed (± s.e., t and Wilcoxon p-values); paper column: Menon et al. 2021 "
        "Table 3, CIFAR-10-LT, ResNet-32, 5 trials",
        [_public(row) for row in rows],
    )
    report.note("paper_code_readme_CIFAR10LT_bal_acc_%_single_run", PAPER_CODE_README)
    report.table(
        f"digits-LT: tau sweep (post-hoc adjustment of the CE model; LA loss trained per tau); "
        f"headline split over {seeds} seeds, last column over {num_splits} splits",
        [_public(_drop(row, "paper_CIFAR10LT_bal_acc_%", "paper_gain_vs_ERM_%"))
         for row in sweep],
    )
    report.table(
        f"digits-LT over {num_splits} random splits (the headline one included) x {seeds} "
        "seeds: per split the seed mean, then mean ± std over splits; difference to ERM paired "
        "by split (± s.e., t and Wilcoxon p-values)",
        robustness,
    )
    trials = size["trials"]
    synthetic = run_synthetic(report, trials)
    report.table(
        f"synthetic (Menon et al. 6.1): test balanced error over {trials} trials; "
        "gap to Bayes Φ(-√2); diff_vs_Bayes: paired with the Bayes rule on the same test set",
        [_public(row) for row in synthetic],
    )
    plot(report, rows, sweep, synthetic)
