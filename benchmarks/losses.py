"""Speed of every jaxtricks loss (forward+backward) against optax cross-entropy, and weight curves.

Each row times `jax.grad` of the batch mean of a loss with respect to the logits,
jitted, as a ratio to `optax.softmax_cross_entropy_with_integer_labels` (softmax losses)
or `optax.sigmoid_binary_cross_entropy` (elementwise binary losses) measured in the same
interleaved rounds. A naive multi-class focal loss (plain autodiff through
`log_softmax`) is timed for contrast, and the multi-label loss next to its peer, optax's
sigmoid BCE summed over the classes of the same multi-hot labels. The plot shows the
cross-entropy weight `w(p_y)` of each loss, measured with `cross_entropy_weights` (every
loss of `p_y` is a re-weighted cross-entropy: Su, https://kexue.fm/archives/7708).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _harness, _plots
from jaxtricks import losses

# (batch, num_classes) and timing rounds: long calls and many rounds keep the medians
# steady on a shared machine.
SIZES = {
    "full": {"shape": (8192, 1000), "rounds": 15, "min_round_s": 0.2},
    "quick": {"shape": (512, 100), "rounds": 3, "min_round_s": 0.05},
    "smoke": {"shape": (64, 10), "rounds": 1, "min_round_s": 0.0},
}


def _naive_softmax_focal_loss(logits, labels, gamma=2.0):
    """Multi-class focal loss written directly, differentiated by plain autodiff."""
    log_probs = jax.nn.log_softmax(logits)
    log_p = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    return -((1.0 - jnp.exp(log_p)) ** gamma) * log_p


def _softmax_losses(num_classes: int) -> dict:
    """name -> per-example loss of `(logits, labels, multi_hot)`."""
    priors = jnp.exp(-jnp.linspace(0.0, np.log(100.0), num_classes))
    alpha = 1.0 / priors / jnp.sum(1.0 / priors)
    return {
        "optax CE (reference)": lambda s, y, m: optax.softmax_cross_entropy_with_integer_labels(
            s, y),
        "softmax_focal_loss(gamma=2)": lambda s, y, m: losses.softmax_focal_loss(s, y),
        "softmax_focal_loss(gamma=2, alpha[K])": lambda s, y, m: losses.softmax_focal_loss(
            s, y, alpha=alpha),
        "naive focal, plain autodiff (contrast)": lambda s, y, m: _naive_softmax_focal_loss(s, y),
        "softmax_weighted_cross_entropy": lambda s, y, m: losses.softmax_weighted_cross_entropy(
            s, y, class_weights=alpha),
        "softmax_logit_adjusted_cross_entropy": (
            lambda s, y, m: losses.softmax_logit_adjusted_cross_entropy(s, y, class_priors=priors)),
        "softmax_smoothed_accuracy_loss": (
            lambda s, y, m: losses.softmax_smoothed_accuracy_loss(s, y)),
        "softmax_hard_truncated_cross_entropy": (
            lambda s, y, m: losses.softmax_hard_truncated_cross_entropy(s, y)),
        "softmax_soft_truncated_cross_entropy": (
            lambda s, y, m: losses.softmax_soft_truncated_cross_entropy(s, y, steepness=2.0)),
        "softmax_multilabel_cross_entropy": (
            lambda s, y, m: losses.softmax_multilabel_cross_entropy(s, m)),
        "optax sigmoid BCE summed (multilabel peer)": (
            lambda s, y, m: jnp.sum(optax.sigmoid_binary_cross_entropy(s, m), axis=-1)),
        "softmax_smoothed_f1_loss (batch-level)": (
            lambda s, y, m: losses.softmax_smoothed_f1_loss(s, y)),
    }


def _binary_losses() -> dict:
    """name -> elementwise (or batch-level) binary loss of `(logits, labels)`."""
    return {
        "optax sigmoid BCE (reference)": optax.sigmoid_binary_cross_entropy,
        "optax sigmoid_focal_loss(gamma=2) (peer)": lambda z, t: optax.sigmoid_focal_loss(z, t),
        "sigmoid_hard_truncated_cross_entropy": losses.sigmoid_hard_truncated_cross_entropy,
        "sigmoid_soft_truncated_cross_entropy": losses.sigmoid_soft_truncated_cross_entropy,
        "sigmoid_smoothed_accuracy_loss": losses.sigmoid_smoothed_accuracy_loss,
        "sigmoid_f1_weighted_cross_entropy": losses.sigmoid_f1_weighted_cross_entropy,
        "sigmoid_smoothed_f1_loss (batch-level)": losses.sigmoid_smoothed_f1_loss,
    }


def _mean_gradient(loss_fn):
    def gradient(logits, *labels):
        return jax.grad(lambda s: jnp.mean(loss_fn(s, *labels)))(logits)

    return gradient


def _speed_rows(report: _harness.Report, size: dict) -> None:
    shape = size["shape"]
    batch, num_classes = shape
    key_logits, key_labels, key_multi = jax.random.split(jax.random.key(0), 3)
    logits = 4.0 * jax.random.normal(key_logits, shape, jnp.float32)
    labels = jax.random.randint(key_labels, (batch,), 0, num_classes)
    multi_hot = (jax.random.uniform(key_multi, shape) < 5.0 / num_classes).astype(jnp.float32)

    groups = (
        ("softmax losses", _softmax_losses(num_classes), (logits, labels, multi_hot)),
        ("binary losses", _binary_losses(), (logits, multi_hot)),
    )
    for title, candidates, args in report.progress(groups, "speed"):
        timings = _harness.compare(
            {name: _mean_gradient(fn) for name, fn in candidates.items()}, *args,
            rounds=size["rounds"], min_round_s=size["min_round_s"],
        )
        reference = next(iter(candidates))
        rows = _harness.timing_rows(timings, reference, shape=f"{batch}x{num_classes}")
        report.table(f"{title}: jitted grad of the mean, ratio to {reference}", rows)


def _weight_curves(report: _harness.Report) -> None:
    """w(p_y) of each loss on two-class logits, measured by `cross_entropy_weights`."""
    p = jnp.linspace(0.002, 0.998, 499)
    logits = jnp.stack([jnp.log(p), jnp.log1p(-p)], axis=-1)
    labels = jnp.zeros(p.shape, jnp.int32)
    curves = {
        **{f"focal gamma={g:g}": (lambda s, y, g=g: losses.softmax_focal_loss(s, y, gamma=g))
           for g in (0.0, 0.5, 1.0, 2.0, 5.0)},
        "smoothed accuracy": losses.softmax_smoothed_accuracy_loss,
        "hard truncation m=0.6": (
            lambda s, y: losses.softmax_hard_truncated_cross_entropy(s, y, margin=0.6)),
        **{f"soft truncation K={k:g}": (
            lambda s, y, k=k: losses.softmax_soft_truncated_cross_entropy(s, y, steepness=k))
           for k in (1.0, 5.0)},
    }
    figure, axes = _plots.subplots(figsize=(7, 4.5))
    rows = []
    for name, loss_fn in curves.items():
        weights = np.asarray(losses.cross_entropy_weights(loss_fn, logits, labels))
        style = "--" if name.startswith("soft") else "-"
        axes.plot(np.asarray(p), weights, style, label=name)
        rows.append({"loss": name, **{f"w(p={q})": float(np.interp(q, p, weights))
                                      for q in (0.1, 0.5, 0.9)}})
    axes.set_xlabel("p_y (probability of the target class)")
    axes.set_ylabel("weight w on the cross-entropy gradient")
    axes.set_title("Every loss of p_y is a re-weighted cross-entropy")
    axes.set_ylim(0.0, 2.5)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    report.table("cross-entropy weights w(p_y), measured", rows)
    report.save_figure(figure, "weights")


def run(report: _harness.Report) -> None:
    _speed_rows(report, report.sized(SIZES))
    _weight_curves(report)
