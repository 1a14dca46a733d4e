"""Zeroth-order optimisers' paper claims, reproduced small: HiZOO, MeZO-SVRG, FZOO, ZO-Bench,
guided ES.

Each claim runs two or more methods on the same seeds (a seed fixes the data, the
initial point and the directions of every method), each method's hyper-parameters the
best of a small grid (lanes of one compiled program) on `TUNING_SEEDS` other seeds; the
reported seeds give each method's median and interquartile range and paired tests
(`_stats.paired`: paired t and Wilcoxon signed-rank, two-sided) against the reference.
The paper's own figure is noted beside each table (`PAPERS`).

1. HiZOO (arXiv:2402.15173) against MeZO on a quadratic of condition number 10^3, every
   curvature mode holding an equal share of the initial loss: steps to a target loss.
   Both are `hizoo_estimate` + `optax.sgd`, MeZO with smoothing 0 (`Sigma` stays 1:
   MeZO's estimate), one direction per step, float32, `sigma = 0.1` (central differences
   are exact on a quadratic for any `sigma`; 0.1 keeps HiZOO's curvature, a second
   difference over `sigma^2`, far above float32 rounding).
2. MeZO-SVRG (arXiv:2404.08080) against MeZO on least squares: excess loss after equal
   forward passes, counted in examples evaluated (a full-batch evaluation costs `N`).
3. FZOO (arXiv:2506.09034) against MeZO: forward passes to a target training loss,
   fine-tuning `zo_finetune`'s MLP pre-trained on digits 0-4 (one checkpoint, its
   pre-training and data) on digits 5-9.
4. ZO-Bench (arXiv:2402.11592): ZO-SGD, ZO-SGD with momentum, ZO-SGD-Sign, ZO-Adam and
   forward-gradient SGD against backprop SGD, test accuracy after equal steps on the
   same fine-tuning task.
5. Guided ES (arXiv:1806.10230): evosax's `GuidedES` against `estimators.Guided` on the
   paper's least-squares toy with a biased surrogate gradient, beside vanilla ES and
   gradient descent on the surrogate gradient, at the notebook's settings.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _harness, _models, _plots, _stats, _train, zo_finetune
from jaxtricks import estimators

TUNING_SEEDS = 4  # seeds 1000-1003: pick the learning rate, not reported
SIGMA = 1e-3  # MeZO's, for the digits MLP


@dataclasses.dataclass(frozen=True)
class Size:
    seeds: int
    quadratic_dim: int  # claim 1
    quadratic_steps: int
    lstsq_rows: int  # claim 2
    lstsq_dim: int
    svrg_budget: int  # examples evaluated (forward passes x batch rows)
    finetune: zo_finetune.Size  # claims 3, 4: its hidden, pretrain_steps, per_class
    bench_steps: int  # ZO-Bench's steps; FZOO's budget: the passes of ZO-SGD's
    guided_dim: int  # claim 5 (rows: twice as many)
    guided_steps: int


SIZES = {
    "full": Size(16, 16, 40_000, 512, 32, 200_000, zo_finetune.SIZES["quick"], 3000, 500,
                 5000),
    "quick": Size(8, 8, 12_000, 256, 16, 20_000,
                  dataclasses.replace(zo_finetune.SIZES["quick"], hidden=(16,), per_class=20),
                  1000, 100, 800),
    "smoke": Size(3, 4, 200, 32, 4, 2_000, zo_finetune.SIZES["smoke"], 40, 8, 40),
}


def _seeds(size: Size) -> np.ndarray:
    """The reported seeds, then the tuning seeds."""
    return np.concatenate([np.arange(size.seeds), 1000 + np.arange(TUNING_SEEDS)])


def _grid(run, hypers, *per_seed):
    """`run(hyper, *seed_args)` on every hyper-parameter lane (learning rates, or a dict of
    equally long arrays) and every seed, in one compile: `[lanes, seeds, ...]`."""
    lanes = jax.vmap(lambda hyper: jax.vmap(lambda *args: run(hyper, *args))(*per_seed))
    hypers = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32),
                          hypers if isinstance(hypers, dict) else np.asarray(hypers))
    return jax.tree.map(np.asarray, jax.jit(lanes)(hypers))


def _pick(metric: np.ndarray) -> int:
    """The index of the lane (learning rate) whose mean `metric` `[lanes, seeds]` over the
    tuning seeds is least (lower is better; NaN worst): the mean, so that a rate that
    fails on one tuning seed (a capped figure) is not chosen for its other seeds."""
    tuned = np.mean(metric[:, -TUNING_SEEDS:], axis=1)
    return int(np.argmin(np.where(np.isnan(tuned), np.inf, tuned)))


def _trajectory(step, carry, steps: int, every: int, record):
    """`record(carry)` after every `every` of `steps` steps of `step(carry, t)`."""
    def segment(carry, start):
        carry, _ = jax.lax.scan(lambda c, t: (step(c, t), None), carry,
                                start + jnp.arange(every))
        return carry, record(carry)

    return jax.lax.scan(segment, carry, every * jnp.arange(steps // every))[1]


def _first_below(curves: np.ndarray, target: float, every: int) -> np.ndarray:
    """Steps until a curve `[..., records]` first reaches `target`; `inf` if never."""
    reached = curves <= target
    first = np.argmax(reached, axis=-1).astype(np.float64)
    return np.where(reached.any(axis=-1), (first + 1) * every, np.inf)


def _spread(values) -> str:
    """`median [q25, q75]` (`inf`: not reached; then the quantiles are order statistics)."""
    values = np.asarray(values, np.float64)
    method = "linear" if np.all(np.isfinite(values)) else "inverted_cdf"
    q25, median, q75 = np.percentile(values, [25, 50, 75], method=method)
    return f"{median:.4g} [{q25:.3g}, {q75:.3g}]"


def _rows(figures: dict[str, np.ndarray], lrs: dict[str, float | str], reference: str,
          better: str = "lower", finite_cap: float | None = None) -> list[dict]:
    """A table row per method: its learning rate, median [IQR] and paired tests of
    `method - reference` (a value `inf`, not reached, counts as `finite_cap` in the tests);
    "better" counts the seeds where the method beats the reference."""
    rows = []
    for name, values in figures.items():
        row = {"method": name, "lr": lrs[name], "median [q25, q75]": _spread(values)}
        if finite_cap is not None:
            row["not reached"] = f"{int(np.sum(~np.isfinite(values)))}/{len(values)}"
        if name != reference:
            a, b = (np.where(np.isfinite(v), v, finite_cap) for v in (values, figures[reference]))
            test = _stats.paired(a, b)
            wins = np.sum(a < b) if better == "lower" else np.sum(a > b)
            row |= {"median diff": float(np.median(a - b)), "p_wilcoxon": test.wilcoxon_pvalue,
                    "p_t": test.t_pvalue, f"better ({better})": f"{int(wins)}/{test.n}"}
        rows.append(row)
    return rows


def _plot(report, stem: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str,
          ylabel: str, title: str, log: bool = True, target: float | None = None) -> None:
    """Median and interquartile band over seeds of each method's `(x, [seeds, records])`."""
    figure, axis = _plots.subplots(figsize=(6, 4))
    for index, (name, (x, y)) in enumerate(curves.items()):
        q25, median, q75 = np.percentile(y, [25, 50, 75], axis=0)
        axis.plot(x, median, color=f"C{index}", label=name)
        axis.fill_between(x, q25, q75, color=f"C{index}", alpha=0.2)
    if target is not None:
        axis.axhline(target, color="k", linestyle=":", linewidth=1)
    if log:
        axis.set_yscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.legend(fontsize=8)
    axis.set_title(title, fontsize=9)
    report.save_figure(figure, stem)


# ---- 1. HiZOO against MeZO on an ill-conditioned quadratic ---------------------------

HIZOO_SIGMA = 0.1
HIZOO_SMOOTHINGS = (0.01, 0.05, 0.2)  # HiZOO's alpha, tuned with the learning rate
QUADRATIC_TARGET = 1e-3  # of the initial loss


def hizoo_claim(report, size: Size) -> None:
    """MeZO is HiZOO with smoothing 0 (`Sigma` stays 1, the estimate `c u`): one program
    runs both, a lane per (learning rate, smoothing)."""
    d = size.quadratic_dim
    curvature = jnp.logspace(0.0, 3.0, d)  # condition number 10^3

    def loss(x):
        return 0.5 * jnp.sum(curvature * x**2)

    def one(hyper, seed):
        # Every mode holds the same share of the initial loss: all must converge.
        x0 = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 0), (d,)) / jnp.sqrt(
            curvature)
        tx = optax.chain(estimators.hizoo_estimate(
            jax.random.fold_in(jax.random.key(seed), 1), num_samples=2,
            smoothing=lambda count: hyper["smoothing"], sigma=HIZOO_SIGMA),
            optax.sgd(hyper["lr"]))

        def step(carry, t):
            x, state = carry
            updates, state = tx.update(x, state, x, value_fn=loss)
            return optax.apply_updates(x, updates), state

        return _trajectory(step, (x0, tx.init(x0)), size.quadratic_steps, every,
                           lambda c: loss(c[0]) / loss(x0))

    every = max(1, size.quadratic_steps // 200)
    grids = {  # name -> (learning rates, smoothings): every pair is a lane
        "MeZO (ZO-SGD)": (np.geomspace(1e-5, 1e-3, 5), [0.0]),
        "HiZOO": (np.geomspace(3e-3, 0.3, 5), HIZOO_SMOOTHINGS)}
    pairs = {name: [(lr, a) for a in smoothings for lr in lrs]
             for name, (lrs, smoothings) in grids.items()}
    lanes = np.concatenate([np.asarray(p) for p in pairs.values()])
    relative = _grid(one, {"lr": lanes[:, 0], "smoothing": lanes[:, 1]}, _seeds(size))
    steps, hypers, curves, start = {}, {}, {}, 0
    for name, grid in pairs.items():
        runs = relative[start:start + len(grid)]
        start += len(grid)
        reached = _first_below(runs, QUADRATIC_TARGET, every)
        best = _pick(np.where(np.isfinite(reached), reached, 2.0 * size.quadratic_steps))
        lr, smoothing = grid[best]
        hypers[name] = f"{lr:.3g}" + (f", a = {smoothing:g}" if smoothing else "")
        steps[name] = reached[best, :-TUNING_SEEDS]
        curves[name] = (every * np.arange(1, runs.shape[-1] + 1), runs[best, :-TUNING_SEEDS])
    evaluations = {"MeZO (ZO-SGD)": 2, "HiZOO": 3}
    report.table(
        f"1. HiZOO vs MeZO: steps to loss <= {QUADRATIC_TARGET:g} x initial, quadratic d = {d}, "
        f"condition 10^3, one direction per step (MeZO 2, HiZOO 3 evaluations; HiZOO's "
        f"smoothing a tuned with the rate), "
        f"{size.quadratic_steps} steps at most (not reached: twice that in the tests)",
        [row | {"evals/step": evaluations[row["method"]]}
         for row in _rows(steps, hypers, "MeZO (ZO-SGD)",
                          finite_cap=2.0 * size.quadratic_steps)])
    _plot(report, "hizoo", curves, "step", "loss / initial loss (median, IQR)",
          f"HiZOO vs MeZO, quadratic d = {d}, condition 10^3, {size.seeds} seeds",
          target=QUADRATIC_TARGET)


# ---- 2. MeZO-SVRG against MeZO on least squares --------------------------------------

SVRG_BATCH = 8
SVRG_SIGMA = 1e-2


def _least_squares(seeds, rows: int, dim: int, stream: int, planted: bool = True):
    """`A [seeds, rows, dim]`, `b [seeds, rows]` (`A x* + 0.5 noise` for a random `x*`
    if `planted`, else pure noise) and the least loss `0.5 mean((A x - b)^2)` of each
    seed, drawn and solved in numpy (float64), outside the compiled programs."""
    a, b, best = [], [], []
    for seed in seeds:
        rng = np.random.default_rng([int(seed), stream])
        a_s = rng.standard_normal((rows, dim))
        signal = a_s @ rng.standard_normal(dim) if planted else 0.0
        b_s = signal + (0.5 if planted else 1.0) * rng.standard_normal(rows)
        residual = a_s @ np.linalg.lstsq(a_s, b_s, rcond=None)[0] - b_s
        a.append(a_s)
        b.append(b_s)
        best.append(0.5 * np.mean(residual**2))
    return np.float32(a), np.float32(b), np.float32(best)


def svrg_claim(report, size: Size) -> None:
    rows_n, dim = size.lstsq_rows, size.lstsq_dim
    interval = rows_n // (2 * SVRG_BATCH) + 1  # the full-batch step costs ~ the others
    mezo_steps = size.svrg_budget // (2 * SVRG_BATCH)
    # SVRG: 2N examples every `interval`-th step, 4b otherwise.
    cycle = 2 * rows_n + (interval - 1) * 4 * SVRG_BATCH
    svrg_steps = interval * (size.svrg_budget // cycle)
    records = 50

    def run(method, steps):
        every = max(1, steps // records)

        def one(lr, seed, a, b, best):
            def full(x):
                return 0.5 * jnp.mean((a @ x - b) ** 2)

            key = jax.random.fold_in(jax.random.key(seed), 3)
            if method == "svrg":
                estimate = estimators.svrg_estimate(key, num_samples=2, sigma=SVRG_SIGMA,
                                                    update_interval=interval)
            else:
                estimate = estimators.zeroth_order_estimate(key, num_samples=2, sigma=SVRG_SIGMA)
            tx = optax.chain(estimate, optax.sgd(lr))
            batch_key = jax.random.fold_in(jax.random.key(seed), 4)

            def step(carry, t):
                x, state = carry
                rows = _train.minibatch(jax.random.fold_in(batch_key, t), rows_n, SVRG_BATCH)

                def minibatch(p):
                    return 0.5 * jnp.mean((a[rows] @ p - b[rows]) ** 2)

                extra = {"full_value_fn": full} if method == "svrg" else {}
                updates, state = tx.update(x, state, x, value_fn=minibatch, **extra)
                return optax.apply_updates(x, updates), state

            x0 = jnp.zeros(dim)
            return _trajectory(step, (x0, tx.init(x0)), steps, every,
                               lambda c: (full(c[0]) - best) / (full(x0) - best))
        return one, every

    seeds = _seeds(size)
    problems = _least_squares(seeds, rows_n, dim, stream=2)
    grid = np.geomspace(1e-3, 1e-2, 3)
    excess, lrs, curves = {}, {}, {}
    methods = {"MeZO (ZO-SGD)": ("mezo", mezo_steps), "MeZO-SVRG": ("svrg", svrg_steps)}
    for name, (method, steps) in report.progress(methods.items(), "MeZO-SVRG vs MeZO"):
        one, every = run(method, steps)
        relative = _grid(one, grid, seeds, *problems)
        final = np.log10(np.maximum(relative[..., -1], 1e-12))
        best = _pick(np.where(np.isfinite(final), final, np.inf))
        lrs[name], excess[name] = float(grid[best]), final[best, :-TUNING_SEEDS]
        step_index = every * np.arange(1, relative.shape[-1] + 1)
        if method == "svrg":
            full_steps = (step_index - 1) // interval + 1
            examples = 2 * rows_n * full_steps + 4 * SVRG_BATCH * (step_index - full_steps)
        else:
            examples = 2 * SVRG_BATCH * step_index
        curves[name] = (examples, np.maximum(relative[best, :-TUNING_SEEDS], 1e-12))
    report.table(
        f"2. MeZO-SVRG vs MeZO: log10 relative excess loss after {size.svrg_budget} examples "
        f"evaluated, least squares N = {rows_n}, d = {dim}, batch {SVRG_BATCH}, one direction "
        f"per estimate, full batch every {interval} steps",
        _rows(excess, lrs, "MeZO (ZO-SGD)"))
    _plot(report, "svrg", curves, "examples evaluated (forward passes x rows)",
          "(F - F*) / (F0 - F*) (median, IQR)",
          f"MeZO-SVRG vs MeZO, least squares N = {rows_n}, d = {dim}, {size.seeds} seeds")


# ---- 3 and 4: fine-tuning the pre-trained digits MLP ---------------------------------


def _pretrained(size: Size, seeds):
    """zo_finetune's MLP pre-trained on digits 0-4 (seed 0: one checkpoint, as a paper
    fine-tunes one pre-trained model) and the fine-tuning split of 5-9 of every seed."""
    model = _models.MLP(size.finetune.hidden, num_outputs=5)
    params, _ = zo_finetune._pretrained(model, size.finetune, 0)
    splits = [zo_finetune._tasks(int(seed), size.finetune.per_class)[1] for seed in seeds]
    data = [np.stack([getattr(split, field) for split in splits])
            for field in ("x_train", "y_train", "x_test", "y_test")]
    return model, params, data


def _finetune(model, params, make_tx, steps: int, every: int, backprop: bool = False,
              accuracy: bool = True):
    """`run(lr, seed, x, y, x_test, y_test)`: the training loss (and the test accuracy)
    after every `every` of `steps` full-batch fine-tuning steps of `params` by
    `make_tx(lr, key)`."""
    def run(lr, seed, x, y, x_test, y_test):
        loss = zo_finetune._loss(model, x, y)
        tx = make_tx(lr, jax.random.fold_in(jax.random.key(seed), 5))

        def step(carry, t):
            p, state = carry
            if backprop:
                updates, state = tx.update(jax.grad(loss)(p), state, p)
            else:
                updates, state = tx.update(p, state, p, value_fn=loss)
            return optax.apply_updates(p, updates), state

        def record(carry):
            if not accuracy:
                return loss(carry[0])
            return loss(carry[0]), _train.accuracy(model.apply(carry[0], x_test), y_test)

        return _trajectory(step, (params, tx.init(params)), steps, every, record)
    return run


def _zo(key, optimizer, num_samples=2, **kwargs):
    return optax.chain(estimators.zeroth_order_estimate(
        key, num_samples=num_samples, sigma=SIGMA, **kwargs), optimizer)


FZOO_DIRECTIONS = 8
FZOO_TARGET = 0.3  # training cross-entropy
FZOO_RESOLUTION = 40  # forward passes between two readings of the loss


def fzoo_claim(report, size: Size, model, params, data, seeds, mezo) -> None:
    """FZOO's runs against MeZO's (`mezo`: ZO-SGD's `(grid, losses, every)` of ZO-Bench's
    runs), forward passes to the target within the passes of MeZO's run."""
    fzoo = estimators.GroupBaseline(center="unperturbed", scale="batch", ddof=0, eps=0.0)
    cost = FZOO_DIRECTIONS + 1
    every = max(1, FZOO_RESOLUTION // cost)
    budget = 2 * size.bench_steps
    grid = np.geomspace(3e-5, 3e-4, 3)
    losses = _grid(_finetune(model, params, lambda lr, key: _zo(
        key, optax.sgd(lr), FZOO_DIRECTIONS, antithetic=False, directions="rademacher",
        baseline=fzoo), budget // cost // every * every, every, accuracy=False),
        grid, seeds, *data)
    runs = {"MeZO (ZO-SGD)": (mezo[0], mezo[1], 2, mezo[2]),
            f"FZOO (N = {FZOO_DIRECTIONS})": (grid, losses, cost, every)}
    cap = 2.0 * budget
    passes, lrs, curves = {}, {}, {}
    for name, (grid, losses, cost, every) in runs.items():
        reached = _first_below(losses, FZOO_TARGET, every) * cost
        best = _pick(np.where(np.isfinite(reached), reached, cap))
        lrs[name], passes[name] = float(grid[best]), reached[best, :-TUNING_SEEDS]
        curves[name] = (cost * every * np.arange(1, losses.shape[-1] + 1),
                        losses[best, :-TUNING_SEEDS])
    report.table(
        f"3. FZOO vs MeZO: forward passes to training loss <= {FZOO_TARGET} fine-tuning the "
        f"digits MLP {size.finetune.hidden} of zo_finetune ({5 * size.finetune.per_class} "
        f"examples), at most {budget} passes (not reached: {cap:g} in the tests)",
        _rows(passes, lrs, "MeZO (ZO-SGD)", finite_cap=cap))
    _plot(report, "fzoo", curves, "forward passes", "training loss (median, IQR)",
          f"FZOO vs MeZO fine-tuning digits 5-9, {size.seeds} seeds", target=FZOO_TARGET)


ZO_SGD_FAMILY = {"ZO-SGD": (0.0, (3e-3, 1e-2, 3e-2)), "ZO-SGD-MMT": (0.9, (3e-4, 1e-3, 3e-3))}
ZO_BENCH = {  # name -> (make_tx, backprop, learning rates)
    "ZO-SGD-Sign": (lambda lr, key: _zo(key, optax.sgd(lr), sign_coefficients=True), False,
                    (1e-3, 3e-3, 1e-2)),
    "ZO-Adam": (lambda lr, key: _zo(key, optax.adam(lr)), False, (3e-3, 1e-2, 3e-2)),
    "forward-grad SGD": (lambda lr, key: optax.chain(estimators.forward_gradient_estimate(
        key, num_samples=1), optax.sgd(lr)), False, (3e-3, 1e-2, 3e-2)),
    "FO-SGD (backprop)": (lambda lr, key: optax.sgd(lr), True, (0.1, 0.3, 1.0)),
}


def zo_bench_runs(report, size: Size, model, params, data, seeds) -> tuple[dict, int]:
    """Every ZO-Bench optimiser's fine-tuning runs: name -> `(grid, losses, accuracies)`,
    `[lrs, seeds, records]`, and the steps between records. ZO-SGD and its momentum
    variant share one program (a momentum of 0 is plain SGD)."""
    every = max(1, size.bench_steps // 50)
    lrs = np.concatenate([grid for _, grid in ZO_SGD_FAMILY.values()])
    momenta = np.concatenate([np.full(len(grid), m) for m, grid in ZO_SGD_FAMILY.values()])
    runs, start = {}, 0
    family = _grid(_finetune(model, params, lambda h, key: _zo(
        key, optax.sgd(h["lr"], momentum=h["momentum"])), size.bench_steps, every),
        {"lr": lrs, "momentum": momenta}, seeds, *data)
    for name, (_, grid) in ZO_SGD_FAMILY.items():
        runs[name] = (np.asarray(grid), *(x[start:start + len(grid)] for x in family))
        start += len(grid)
    for name, (make_tx, backprop, grid) in report.progress(ZO_BENCH.items(), "ZO-Bench"):
        runs[name] = (np.asarray(grid), *_grid(_finetune(
            model, params, make_tx, size.bench_steps, every, backprop), grid, seeds, *data))
    return runs, every


def zo_bench_claim(report, size: Size, runs: dict, every: int) -> None:
    final, lrs, curves = {}, {}, {}
    for name, (grid, _, accuracy) in runs.items():
        accuracy = 100 * accuracy
        best = _pick(-accuracy[..., -1])
        lrs[name], final[name] = float(grid[best]), accuracy[best, :-TUNING_SEEDS, -1]
        curves[name] = (every * np.arange(1, accuracy.shape[-1] + 1),
                        accuracy[best, :-TUNING_SEEDS])
    report.table(
        f"4. ZO-Bench: test accuracy (%) on digits 5-9 after {size.bench_steps} steps from "
        f"the pre-trained MLP {size.finetune.hidden}; ZO: one direction (2 evaluations) per "
        f"step, forward gradient one jvp; paired tests method - ZO-SGD",
        _rows(final, lrs, "ZO-SGD", better="higher"))
    _plot(report, "zo_bench", curves, "step", "test accuracy (%) (median, IQR)",
          f"ZO-Bench's optimisers fine-tuning digits 5-9, {size.seeds} seeds", log=False)


# ---- 5. evosax's GuidedES against estimators.Guided ----------------------------------

GUIDED = {"sigma": 0.1, "alpha": 0.5, "learning_rate": 0.2, "gd_learning_rate": 5e-3}


def _guided_problems(seeds, dim: int):
    """The notebook's toy per seed: least squares `A [2d, d]`, `b` noise, `f*`, and a
    unit bias `e` of the surrogate gradient `g + ||g|| e`."""
    bias = np.stack([np.random.default_rng([int(seed), 7]).standard_normal(dim)
                     for seed in seeds])
    bias /= np.linalg.norm(bias, axis=1, keepdims=True)
    return (*_least_squares(seeds, 2 * dim, dim, stream=6, planted=False), np.float32(bias))


def _guided_functions(a, b, bias):
    def loss(x):
        return 0.5 * jnp.mean((a @ x - b) ** 2)

    def surrogate(x):
        gradient = jax.grad(loss)(x)
        return gradient + jnp.linalg.norm(gradient) * bias

    return loss, surrogate


def guided_claim(report, size: Size) -> None:
    from evosax.algorithms import GuidedES

    dim, sigma = size.guided_dim, GUIDED["sigma"]
    every = max(1, size.guided_steps // 100)
    x0 = jnp.zeros(dim)

    def ours(directions):
        def run(seed, a, b, best, bias):
            loss, surrogate = _guided_functions(a, b, bias)
            key = jax.random.fold_in(jax.random.key(seed), 7)
            sgd = optax.sgd(GUIDED["learning_rate"])

            def step(carry, t):
                x, state = carry
                kind = (estimators.Guided(subspace=surrogate(x)[None], alpha=GUIDED["alpha"])
                        if directions == "guided" else "gaussian")
                # Vanilla ES of the notebook: N(0, sigma^2 / d I) perturbations, its step
                # 1/d times the Gaussian estimate at sigma / sqrt(d).
                scale, weight = (sigma, 1.0) if directions == "guided" else (
                    sigma / math.sqrt(dim), 1.0 / dim)
                g = estimators.zeroth_order_grad(loss, x, jax.random.fold_in(key, t),
                                                 num_samples=2, sigma=scale, directions=kind)
                updates, state = sgd.update(optax.tree.scale(weight, g), state, x)
                return optax.apply_updates(x, updates), state

            return _trajectory(step, (x0, sgd.init(x0)), size.guided_steps, every,
                               lambda c: loss(c[0]) - best)
        return run

    def evosax_run(seed, a, b, best, bias):
        loss, surrogate = _guided_functions(a, b, bias)
        es = GuidedES(population_size=2, solution=x0, subspace_dims=1,
                      optimizer=optax.sgd(GUIDED["learning_rate"]),
                      std_schedule=optax.constant_schedule(sigma))
        params = es.default_params.replace(alpha=GUIDED["alpha"], beta=1.0)
        key = jax.random.fold_in(jax.random.key(seed), 8)

        def step(state, t):
            ask_key, tell_key = jax.random.split(jax.random.fold_in(key, t))
            state = state.replace(grad=surrogate(state.mean))
            population, state = es.ask(ask_key, state, params)
            state, _ = es.tell(tell_key, population, jax.vmap(loss)(population), state, params)
            return state

        return _trajectory(step, es.init(key, x0, params), size.guided_steps, every,
                           lambda s: loss(s.mean) - best)

    def gradient_descent(seed, a, b, best, bias):
        loss, surrogate = _guided_functions(a, b, bias)
        return _trajectory(lambda x, t: x - GUIDED["gd_learning_rate"] * surrogate(x), x0,
                           size.guided_steps, every, lambda x: loss(x) - best)

    methods = {"evosax GuidedES": evosax_run, "estimators.Guided": ours("guided"),
               "vanilla ES (gaussian)": ours("gaussian"),
               "GD on the surrogate": gradient_descent}
    seeds = np.arange(size.seeds)
    problems = _guided_problems(seeds, dim)
    final, curves = {}, {}
    for name, run in report.progress(methods.items(), "guided ES"):
        excess = np.maximum(np.asarray(jax.jit(jax.vmap(run))(seeds, *problems)), 1e-12)
        final[name] = np.log10(excess[:, -1])
        curves[name] = (every * np.arange(1, excess.shape[-1] + 1), excess)
    fixed = {name: GUIDED["gd_learning_rate"] if name.startswith("GD") else
             GUIDED["learning_rate"] for name in methods}
    report.table(
        f"5. Guided ES: log10 (f - f*) after {size.guided_steps} steps, least squares "
        f"{2 * dim} x {dim}, surrogate gradient g + ||g|| e (the paper's toy); the "
        f"notebook's settings (sigma {sigma}, alpha {GUIDED['alpha']}, beta 1, k 1), no tuning; "
        f"paired tests method - estimators.Guided",
        _rows(final, fixed, "estimators.Guided"))
    _plot(report, "guided", curves, "step", "f - f* (median, IQR)",
          f"Guided ES toy, d = {dim}, {size.seeds} seeds")


PAPERS = {  # each claim's figure in its paper, printed and saved beside the table
    1: "HiZOO (arXiv:2402.15173): 8x fewer steps than MeZO on SST-2 (abstract); on test "
       "functions of heterogeneous curvature it converges where MeZO oscillates",
    2: "MeZO-SVRG (arXiv:2404.08080): up to 20 points higher test accuracy than MeZO, and "
       "MeZO's peak accuracy in about half the GPU-hours (abstract)",
    3: "FZOO (arXiv:2506.09034): 3x fewer forward passes than MeZO on average, 18x on "
       "RoBERTa-large, +3 points of accuracy (abstract)",
    4: "ZO-Bench (arXiv:2402.11592): the forward gradient is a strong baseline, ZO "
       "accuracy trails FO, and a more complex ZO optimiser is not uniformly better "
       "(README: 'the balance between algorithm complexity and fine-tuning performance')",
    5: "Guided ES (arXiv:1806.10230, Fig. 1, the notebook's toy): guided ES ends below "
       "both vanilla ES and gradient descent on the biased surrogate gradient",
}


def run(report: _harness.Report) -> None:
    """Runs the five claims: each the paper's figure (a note), a table and a plot."""
    size = report.sized(SIZES)
    report.note("setup", f"{size.seeds} reported seeds per claim (a seed fixes data, "
                f"initial point and directions of every method), learning rates the best "
                f"of a grid on {TUNING_SEEDS} other seeds; median [q25, q75]; paired t and "
                "Wilcoxon tests, two-sided; float32")
    seeds = _seeds(size)
    report.note("1. paper", PAPERS[1])
    hizoo_claim(report, size)
    report.note("2. paper", PAPERS[2])
    svrg_claim(report, size)
    model, params, data = _pretrained(size, seeds)
    runs, every = zo_bench_runs(report, size, model, params, data, seeds)
    report.note("3. paper", PAPERS[3])
    fzoo_claim(report, size, model, params, data, seeds,
               mezo=(runs["ZO-SGD"][0], runs["ZO-SGD"][1], every))
    report.note("4. paper", PAPERS[4])
    zo_bench_claim(report, size, runs, every)
    report.note("5. paper", PAPERS[5])
    guided_claim(report, size)
