"""Generalisation on digits: none/L2/AdamW/WEISSI, flooding under label noise, WEISSI speed.

Three parts, all on scikit-learn's digits (8x8 images, 10 classes) with a ReLU MLP and
Adam; every configuration is trained for several seeds at once (`jax.vmap` over seeds
and hyper-parameters around one jitted `lax.scan` training loop):

1. Regularisers: none / coupled L2 / AdamW (decoupled decay) / WEISSI coupled / WEISSI
   decoupled, each over a small grid of coefficients, the coefficient picked by
   validation accuracy; test accuracy, test loss and accuracy under Gaussian input
   noise (the WEISSI paper claims generalisation and robustness).
2. Flooding at several levels vs none (level 0) vs the gradient-norm penalty, with 20%
   symmetric label noise on the training labels (where the flooding paper reports its
   largest gains); test accuracy, and loss curves with the training loss at the level.
3. Speed: the optimiser step (update + apply, params and state updated in place inside
   a `fori_loop`, like a donated jitted step) of `chain(weissi, adam)` and the other
   transforms vs `optax.adamw` on a ~10M-parameter MLP pytree, and the full train step
   (forward, backward, update) on that MLP, as ratios in one interleaved run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxtricks
from benchmarks import _data, _harness, _models, _plots, _stats, _train

LEARNING_RATE = 1e-3
NOISE_SIGMAS = (0.5, 1.0)  # Gaussian input noise, in units of the standardised pixels


def load_data(*, seed: int = 0) -> _data.Split:
    """Digits split 1000 / 297 / 500, standardised with the training statistics."""
    x, y = _data.digits("raw")
    return _data.standardized(_data.split(x, y, train=1000, test=500, seed=seed))


def mlp(widths: Sequence[int]) -> _models.MLP:
    """The ReLU MLP `widths[0] -> ... -> widths[-1]`, He-initialised (positively
    homogeneous: WEISSI's setting)."""
    return _models.MLP(tuple(widths[1:-1]), widths[-1], kernel_init=_models.HE_NORMAL)


def init_mlp(key: jax.Array, widths: Sequence[int]):
    return mlp(widths).init(key, jnp.zeros((1, widths[0])))


def mean_cross_entropy(model, params, x, y) -> jax.Array:
    logits = model.apply(params, x)
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, y))


def accuracy(model, params, x, y) -> jax.Array:
    return _train.accuracy(model.apply(params, x), y)


def regularised_adam(h: dict[str, jax.Array]) -> optax.GradientTransformation:
    """Adam with every regulariser of part 1, each weighted by its own coefficient.

    With a coefficient 0 a transform adds exactly 0, so one compiled training loop
    serves every method (a run sets one coefficient and leaves the others at 0).
    """
    return optax.chain(
        jaxtricks.l2_regularization(h["L2 (coupled)"]),
        jaxtricks.weissi(h["WEISSI (coupled)"]),
        optax.adam(LEARNING_RATE),
        jaxtricks.decoupled_weight_decay(h["AdamW (decoupled)"], learning_rate=LEARNING_RATE),
        jaxtricks.decoupled_weissi(h["WEISSI (decoupled)"], learning_rate=LEARNING_RATE),
    )


REGULARISER_GRIDS = {
    "none": (0.0,),
    "L2 (coupled)": (1e-4, 1e-3, 1e-2),
    "AdamW (decoupled)": (0.1, 1.0, 10.0),
    "WEISSI (coupled)": (0.01, 0.1, 1.0),
    "WEISSI (decoupled)": (1.0, 10.0, 100.0),
}
FLOOD_LEVELS = (0.0, 0.3, 0.6, 0.9, 1.2)  # 0: no flooding
GRADIENT_PENALTIES = (0.01, 0.1)


class Schedule(NamedTuple):
    """Training length and shape: `segments * steps_per_segment` Adam steps."""

    widths: tuple[int, ...]
    segments: int
    steps_per_segment: int
    batch: int
    seeds: int


_FULL = Schedule((64, 128, 128, 10), segments=20, steps_per_segment=100, batch=64, seeds=5)
_QUICK = Schedule((64, 64, 64, 10), segments=4, steps_per_segment=50, batch=64, seeds=2)
_SMOKE = Schedule((64, 8, 10), segments=2, steps_per_segment=2, batch=16, seeds=2)
SIZES = {  # grid_size: coefficients per regulariser; speed: (widths, steps, rounds, round s)
    "full": {"regularise": _FULL, "grid_size": 3, "flood": _FULL._replace(segments=30),
             "flood_levels": FLOOD_LEVELS, "penalties": GRADIENT_PENALTIES,
             "speed": ((1024, 2048, 2048, 1024, 1024), 8, 9, 0.05)},
    "quick": {"regularise": _QUICK, "grid_size": 1, "flood": _QUICK,
              "flood_levels": FLOOD_LEVELS[::2], "penalties": GRADIENT_PENALTIES[-1:],
              "speed": ((512, 1024, 512), 2, 3, 0.05)},
    "smoke": {"regularise": _SMOKE, "grid_size": 1, "flood": _SMOKE,
              "flood_levels": FLOOD_LEVELS[:2], "penalties": GRADIENT_PENALTIES[-1:],
              "speed": ((16, 32, 16), 2, 1, 0.0)},
}


def flooded(loss_fn: Callable, h: dict[str, jax.Array]) -> Callable:
    return lambda *args: jaxtricks.flood(loss_fn(*args), level=h["level"])


def penalised(loss_fn: Callable, h: dict[str, jax.Array]) -> Callable:
    return jaxtricks.gradient_norm_penalty(loss_fn, coefficient=h["coefficient"])


def unchanged(loss_fn: Callable, h: dict[str, jax.Array]) -> Callable:
    del h
    return loss_fn


def plain_adam(h: dict[str, jax.Array]) -> optax.GradientTransformation:
    del h
    return optax.adam(LEARNING_RATE)


def train(
    optimizer_fn: Callable[[dict], optax.GradientTransformation],
    objective_fn: Callable[[Callable, dict], Callable],
    hypers: dict[str, Sequence[float]],
    y_train: np.ndarray,
    data: _data.Split,
    schedule: Schedule,
):
    """Trains `configs * seeds` MLPs at once (vmap), in one jitted scan.

    Args:
        optimizer_fn: coefficients -> optimiser.
        objective_fn: `(loss_fn, coefficients) -> loss_fn`, the training objective.
        hypers: coefficient name -> its value in each configuration.
        y_train: the training labels (possibly noisy).
        data: the inputs, and the clean test labels.
        schedule: sizes.

    Returns:
        (params stacked over runs, curves `(runs, segments, 3)` of the training loss on
        the whole training set (labels `y_train`), the test loss and the test accuracy
        after every segment); runs are configuration-major, seeds within.
    """
    x_train, x_test, y_test = (jnp.asarray(a) for a in (data.x_train, data.x_test, data.y_test))
    y_train = jnp.asarray(y_train)
    model = mlp(schedule.widths)
    loss_fn = functools.partial(mean_cross_entropy, model)
    steps = schedule.segments * schedule.steps_per_segment

    def one_run(key, h):
        init_key, batch_key = jax.random.split(key)
        objective = objective_fn(loss_fn, h)

        def batch_loss(params, key):
            index = _train.minibatch(key, x_train.shape[0], schedule.batch)
            return objective(params, x_train[index], y_train[index])

        def curve_point(params):
            return jnp.stack([loss_fn(params, x_train, y_train),
                              loss_fn(params, x_test, y_test),
                              accuracy(model, params, x_test, y_test)])

        trained = _train.train(
            batch_loss, init_mlp(init_key, schedule.widths), optimizer_fn(h),
            _train.step_keys(batch_key, steps, schedule.segments),
            eval_fn=curve_point, segments=schedule.segments,
        )
        return trained.params, trained.evals

    configs = len(next(iter(hypers.values())))
    keys = jnp.tile(jax.random.split(jax.random.key(0), schedule.seeds), configs)
    per_run = {
        name: jnp.repeat(jnp.asarray(values, jnp.float32), schedule.seeds)
        for name, values in hypers.items()
    }
    params, curves = jax.jit(jax.vmap(one_run))(keys, per_run)
    return params, np.asarray(curves)


@functools.partial(jax.jit, static_argnums=0)
def _metrics(model, params, x_val, y_val, x_test, y_test, noise):
    def metrics(p):
        out = {
            "val_acc": accuracy(model, p, x_val, y_val),
            "test_acc": accuracy(model, p, x_test, y_test),
            "test_loss": mean_cross_entropy(model, p, x_test, y_test),
        }
        for sigma in NOISE_SIGMAS:
            out[f"noisy_acc_{sigma}"] = accuracy(model, p, x_test + sigma * noise, y_test)
        return out

    return jax.vmap(metrics)(params)


def evaluate(params, data: _data.Split, schedule: Schedule) -> list[dict[str, np.ndarray]]:
    """Final metrics of each configuration (arrays over its seeds)."""
    noise = jax.random.normal(jax.random.key(123), data.x_test.shape)
    metrics = _metrics(mlp(schedule.widths), params, data.x_val, data.y_val, data.x_test,
                       data.y_test, noise)
    metrics = {key: np.asarray(value).reshape(-1, schedule.seeds)
               for key, value in metrics.items()}
    configs = next(iter(metrics.values())).shape[0]
    return [{key: value[i] for key, value in metrics.items()} for i in range(configs)]


def regulariser_rows(report, data: _data.Split, schedule: Schedule, grid_size: int) -> None:
    grids = {name: grid[:grid_size] for name, grid in REGULARISER_GRIDS.items()}
    configs = [(name, value) for name, grid in grids.items() for value in grid]
    hypers = {
        name: [value if name == method else 0.0 for method, value in configs]
        for name in REGULARISER_GRIDS if name != "none"
    }
    params, curves = train(regularised_adam, unchanged, hypers, data.y_train, data, schedule)
    metrics = evaluate(params, data, schedule)
    curves = curves.reshape(len(configs), schedule.seeds, *curves.shape[1:])
    rows, curves_by_method, selected = [], {}, {}
    for name in grids:
        indices = [i for i, (method, _) in enumerate(configs) if method == name]
        best = max(indices, key=lambda i: metrics[i]["val_acc"].mean())
        curves_by_method[name], selected[name] = curves[best], metrics[best]
        for i in indices:
            m = metrics[i]
            rows.append({
                "method": name,
                "coefficient": configs[i][1],
                "selected": "yes" if i == best else "",
                "val_acc_%": _stats.mean_std(m["val_acc"], 100),
                "test_acc_%": _stats.mean_std(m["test_acc"], 100),
                "test_loss": _stats.mean_std(m["test_loss"], digits=3),
                **{f"acc_noise_{s}_%": _stats.mean_std(m[f"noisy_acc_{s}"], 100)
                   for s in NOISE_SIGMAS},
            })
    report.table(
        f"regularisers: digits, MLP {schedule.widths}, Adam lr {LEARNING_RATE}, "
        f"{schedule.segments * schedule.steps_per_segment} steps, batch {schedule.batch}, "
        f"mean ± std over {schedule.seeds} seeds (coefficient selected by val accuracy)",
        rows,
    )
    report.table("regularisers: selected coefficients; test accuracy (%) paired by seed "
                 "with no regulariser (t and Wilcoxon p-values)", [
        {**{key: row[key] for key in row if key not in ("selected", "val_acc_%")},
         **_stats.paired_columns(selected[row["method"]]["test_acc"],
                                 selected["none"]["test_acc"], "none", 100)}
        for row in rows if row["selected"]
    ])
    plot_curves(
        report, curves_by_method, schedule, "regularisers",
        "digits: test loss and accuracy (selected coefficient, mean over seeds)",
        levels={}, columns=(1, 2), labels=("test loss", "test accuracy"),
    )


def flooding_rows(report, data: _data.Split, schedule: Schedule, levels, penalties) -> None:
    noisy = _data.with_symmetric_label_noise(data.y_train, 0.2, seed=1)
    report.note("flooding: training labels flipped", f"{np.mean(noisy != data.y_train):.3f}")
    flood_metrics, flood_curves = evaluate_and_curves(
        plain_adam, flooded, {"level": levels}, noisy, data, schedule
    )
    penalty_metrics, penalty_curves = evaluate_and_curves(
        plain_adam, penalised, {"coefficient": penalties}, noisy, data, schedule
    )
    runs = [
        (f"flooding {level:g}" if level else "none", level, m, c)
        for level, m, c in zip(levels, flood_metrics, flood_curves, strict=True)
    ] + [
        (f"gradient-norm penalty {coefficient:g}", None, m, c)
        for coefficient, m, c in zip(penalties, penalty_metrics, penalty_curves, strict=True)
    ]
    rows = [
        {
            "method": name,
            "test_acc_%": _stats.mean_std(m["test_acc"], 100),
            "best_test_acc_%": _stats.mean_std(c[:, :, 2].max(1), 100),
            "test_loss": _stats.mean_std(m["test_loss"], digits=3),
            "final_train_loss": _stats.mean_std(c[:, -1, 0], digits=3),
            **_stats.paired_columns(m["test_acc"], runs[0][2]["test_acc"], "none", 100),
        }
        for name, _, m, c in runs
    ]
    report.table(
        f"flooding: digits with 20% symmetric label noise on the training labels, MLP "
        f"{schedule.widths}, Adam lr {LEARNING_RATE}, "
        f"{schedule.segments * schedule.steps_per_segment} steps, batch {schedule.batch}, "
        f"mean ± std over {schedule.seeds} seeds (train loss on the noisy labels); test "
        "accuracy paired by seed with no flooding",
        rows,
    )
    plot_curves(
        report, {name: c for name, _, _, c in runs}, schedule, "flooding",
        "digits, 20% label noise: training loss (noisy labels) and test loss",
        levels={name: level for name, level, _, _ in runs if level},
        columns=(0, 1), labels=("training loss", "test loss"),
    )


def evaluate_and_curves(optimizer_fn, objective_fn, hypers, y_train, data, schedule):
    """(metrics, curves) of each configuration (see `train` and `evaluate`)."""
    params, curves = train(optimizer_fn, objective_fn, hypers, y_train, data, schedule)
    curves = curves.reshape(-1, schedule.seeds, *curves.shape[1:])
    return evaluate(params, data, schedule), list(curves)


def plot_curves(report, curves_by_name, schedule, stem, title, *, levels, columns, labels):
    steps = schedule.steps_per_segment * np.arange(1, schedule.segments + 1)
    figure, axes = _plots.subplots(1, 2, figsize=(11, 4))
    for index, (name, curves) in enumerate(curves_by_name.items()):
        color = f"C{index}"
        for axis, column in zip(axes, columns, strict=True):
            axis.plot(steps, curves[:, :, column].mean(0), color=color, label=name)
        if name in levels:
            axes[0].axhline(levels[name], color=color, linestyle=":", linewidth=1)
    for axis, label in zip(axes, labels, strict=True):
        axis.set_xlabel("step")
        axis.set_ylabel(label)
    if columns[0] == 0:
        axes[0].set_yscale("log")
    axes[1].legend(fontsize=8)
    figure.suptitle(title)
    report.save_figure(figure, stem)


def speed_optimizers() -> dict[str, optax.GradientTransformation]:
    """The optimisers of the speed part; `optax.adamw` first (the reference)."""

    def kernels(p):
        return jax.tree.map(lambda leaf: leaf.ndim >= 2, p)

    return {
        "optax.adamw": optax.adamw(LEARNING_RATE, weight_decay=1e-2, mask=kernels),
        "chain(adam, decoupled_weight_decay)": optax.chain(
            optax.adam(LEARNING_RATE),
            jaxtricks.decoupled_weight_decay(1e-2, learning_rate=LEARNING_RATE),
        ),
        "chain(weissi, adam)": optax.chain(jaxtricks.weissi(1e-3), optax.adam(LEARNING_RATE)),
        "chain(adam, weissi decoupled)": optax.chain(
            optax.adam(LEARNING_RATE), jaxtricks.decoupled_weissi(1.0, learning_rate=LEARNING_RATE)
        ),
        "chain(weissi product + direction, adam)": optax.chain(
            jaxtricks.weissi(1e-3, direction_weight=1e-4, form="product"),
            optax.adam(LEARNING_RATE),
        ),
    }


def training_loop(optimizer, gradient_fn: Callable, steps: int) -> Callable:
    """`steps` train steps (gradient, update, `optax.apply_updates`) in one `fori_loop`.

    The params and the optimiser state are the loop's carry, so XLA updates them in
    place, as a jitted step with `donate_argnums` does; the loop's entry copies them
    once per call (amortised over `steps`).
    """

    def run_steps(params, batch):
        def step(i, carry):
            params, state = carry
            grads = gradient_fn(params, batch, i)
            updates, state = optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return jax.lax.fori_loop(0, steps, step, (params, optimizer.init(params)))

    return run_steps


def per_step_rows(timings, steps: int) -> list[dict]:
    """`timing_rows` per train step (one call runs `steps`), plus the ratio of the
    fastest rounds (`min_ratio`: less sensitive to background load than the median's)."""
    rows = _harness.timing_rows(timings, "optax.adamw")
    for row in rows:
        row["median_ms"] /= steps
        row["min_ratio"] = timings[row["name"]].min_s / timings["optax.adamw"].min_s
    return rows


def speed_rows(report, widths: tuple[int, ...], steps: int, rounds: int,
               min_round_s: float) -> None:
    """Optimiser step alone (fixed gradients) and full train step, ratios to AdamW."""
    model = mlp(widths)
    params = init_mlp(jax.random.key(0), widths)
    count = sum(p.size for p in jax.tree.leaves(params))
    optimizers = speed_optimizers()

    def fixed_gradient(params, grads, i):
        # A step-dependent scale keeps XLA from hoisting gradient terms out of the loop.
        return jax.tree.map(lambda g: g * (1.0 + i), grads)

    grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
    timings = _harness.compare(
        {name: training_loop(opt, fixed_gradient, steps) for name, opt in optimizers.items()},
        params, grads, rounds=rounds, min_round_s=min_round_s,
    )
    report.table(
        f"speed: optimiser step (update + apply, params and state updated in place) on an "
        f"MLP pytree of {count / 1e6:.1f}M parameters {widths}, per step, ratio to optax.adamw",
        per_step_rows(timings, steps),
    )

    batch_size = 64
    x = jax.random.normal(jax.random.key(1), (batch_size, widths[0]))
    y = jax.random.randint(jax.random.key(2), (batch_size,), 0, widths[-1])

    def data_gradient(params, batch, i):
        del i
        return jax.grad(mean_cross_entropy, argnums=1)(model, params, *batch)

    names = ("optax.adamw", "chain(weissi, adam)", "chain(adam, weissi decoupled)")
    timings = _harness.compare(
        {name: training_loop(optimizers[name], data_gradient, steps // 2) for name in names},
        params, (x, y), rounds=rounds, min_round_s=min_round_s,
    )
    report.table(
        f"speed: full train step (forward, backward, update, apply) on the same MLP, batch "
        f"{batch_size}, per step, ratio to optax.adamw",
        per_step_rows(timings, steps // 2),
    )


def run(report: _harness.Report) -> None:
    size = report.sized(SIZES)
    data = load_data()
    regulariser_rows(report, data, size["regularise"], size["grid_size"])
    flooding_rows(report, data, size["flood"], size["flood_levels"], size["penalties"])
    speed_rows(report, *size["speed"])
