"""Zeroth-order fine-tuning (MeZO) vs backprop: pre-train on digits 0-4, fine-tune on 5-9.

Malladi et al. (MeZO, https://arxiv.org/abs/2305.17333) fine-tune a pre-trained model
with zeroth-order SGD: each step perturbs the parameters along a direction regenerated
from its seed, evaluates the loss at `x +- sigma u` and moves along `u`, with the memory
of inference. Here a flax ReLU MLP is pre-trained with Adam on scikit-learn's digits 0-4
(5 logits), then fine-tuned on digits 5-9 (labels 5-9 as 0-4: the features carry over,
the classes are new) from the same pre-trained parameters by

- ZO-SGD, `jaxtricks.estimators.zeroth_order_update` (antithetic, Gaussian directions),
- backprop SGD and backprop Adam (`optax`),

all full-batch on the same few-shot training set, for the same number of steps (equal
steps) and read off at the same wall time (equal time: the budget is what the fastest
method spends on all its steps; each method is read at the last evaluation within it).
Test accuracy on held-out 5-9 digits over several seeds (split, initialisation and
directions), with paired t and Wilcoxon tests against ZO (`_stats.paired`); the planned
peak of one jitted, donated step of each method (`_zo_memory.planned_peak`), and the
peak RSS of a fresh process that runs only that method's fine-tuning.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys

import jax
import numpy as np
import optax

from benchmarks import _data, _harness, _models, _plots, _stats, _train, _zo_memory
from jaxtricks import estimators

ZO = "ZO-SGD (zeroth_order_update)"
METHODS = {  # name -> learning rate; ZO's the best of {2e-3, 5e-3, 1e-2, 2e-2} on seed 0
    ZO: 2e-2,
    "backprop SGD": 0.5,
    "backprop Adam": 3e-3,
}


@dataclasses.dataclass(frozen=True)
class Size:
    seeds: int
    hidden: tuple[int, ...]
    pretrain_steps: int
    steps: int  # fine-tuning steps of every method
    segments: int  # test-accuracy evaluations along them
    num_samples: int  # ZO evaluations per step (antithetic: num_samples / 2 directions)
    per_class: int  # fine-tuning examples per class (few-shot)
    rss_hidden: tuple[int, ...] | None  # the wider MLP of the RSS processes (None: no RSS)
    rss_steps: int


SIZES = {
    "full": Size(7, (64,), 400, 2000, 40, 16, 50, (4096, 4096), 4),
    "quick": Size(5, (32,), 200, 400, 10, 8, 50, (2048, 2048), 2),
    "smoke": Size(2, (8,), 10, 8, 2, 4, 10, None, 1),
}
SIGMA = 1e-3  # MeZO's perturbation scale


def _tasks(seed: int, per_class: int):
    """(pre-training split of 0-4, fine-tuning split of 5-9 with labels 0-4)."""
    x, y = _data.digits("unit")
    first, second = y < 5, y >= 5
    pretrain = _data.split(x[first], y[first], train=500, test=100, seed=seed)
    finetune = _data.split(x[second], y[second] - 5, train=5 * per_class, test=300,
                           seed=seed)
    return pretrain, finetune


def _loss(model, x, y):
    return lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, x), y).mean()


def _runs(model, size: Size):
    """method -> jit-able `run(params, key, x, y, x_test, y_test) -> curve[segments]`."""
    per_segment = size.steps // size.segments

    def backprop(optimizer):
        def run(params, key, x, y, x_test, y_test):
            del key  # full batch: deterministic
            evals = _train.train(lambda p, _: _loss(model, x, y)(p), params, optimizer,
                                 steps=size.steps, segments=size.segments,
                                 eval_fn=lambda p: _train.accuracy(model.apply(p, x_test),
                                                                   y_test)).evals
            return evals
        return run

    def zeroth_order(params, key, x, y, x_test, y_test):
        loss = _loss(model, x, y)

        def step(p, k):
            return estimators.zeroth_order_update(
                loss, p, k, learning_rate=METHODS[ZO], num_samples=size.num_samples,
                sigma=SIGMA)[0], None

        def segment(p, ks):
            p, _ = jax.lax.scan(step, p, ks)
            return p, _train.accuracy(model.apply(p, x_test), y_test)

        keys = _train.step_keys(key, size.steps, size.segments)
        return jax.lax.scan(segment, params,
                            keys.reshape(size.segments, per_segment, *keys.shape[1:]))[1]

    return {ZO: zeroth_order, "backprop SGD": backprop(optax.sgd(METHODS["backprop SGD"])),
            "backprop Adam": backprop(optax.adam(METHODS["backprop Adam"]))}


def _pretrained(model, size: Size, seed: int):
    pretrain, finetune = _tasks(seed, size.per_class)
    params = model.init(jax.random.key(seed), pretrain.x_train[:1])
    params = jax.jit(lambda p: _train.train(
        lambda q, _: _loss(model, pretrain.x_train, pretrain.y_train)(q), p,
        optax.adam(1e-2), steps=size.pretrain_steps).params)(params)
    return params, finetune


def _planned_step_peaks(model, size: Size, params, data):
    """method -> planned peak (MiB) of one jitted step, the parameters (and state) donated."""
    loss = _loss(model, data.x_train, data.y_train)
    peaks = {ZO: _zo_memory.planned_peak(
        lambda p, k: estimators.zeroth_order_update(
            loss, p, k, learning_rate=1.0, num_samples=size.num_samples, sigma=SIGMA)[0],
        (params, jax.random.key(0)), (0,))[0]}
    for name in ("backprop SGD", "backprop Adam"):
        optimizer = optax.sgd(1.0) if name == "backprop SGD" else optax.adam(1.0)
        step = _train.make_step(lambda p, _: loss(p), optimizer)
        peaks[name] = _zo_memory.planned_peak(
            lambda p, s, step=step: step(p, s, None)[:2], (params, optimizer.init(params)),
            (0, 1))[0]
    peaks["inference"] = _zo_memory.planned_peak(loss, (params,), ())[0]
    return {name: None if peak is None else peak / 2**20 for name, peak in peaks.items()}


def rss_main(method: str, size_name: str) -> None:
    """Fine-tunes the wider MLP `rss_hidden` for `rss_steps` steps with `method` alone
    (random initial parameters, seed 0) and prints the process's peak RSS in MiB as JSON;
    "inference" only evaluates the loss. The fine-tuned MLP itself is too small to show
    above the runtime's few hundred MiB."""
    size = dataclasses.replace(SIZES[size_name], hidden=SIZES[size_name].rss_hidden,
                               steps=SIZES[size_name].rss_steps, segments=1)
    model = _models.MLP(size.hidden, num_outputs=5)
    _, data = _tasks(0, size.per_class)
    params = model.init(jax.random.key(0), data.x_train[:1])
    args = (data.x_train, data.y_train, data.x_test, data.y_test)
    if method == "inference":
        jax.block_until_ready(jax.jit(_loss(model, *args[:2]))(params))
    else:
        jax.block_until_ready(jax.jit(_runs(model, size)[method])(params, jax.random.key(0),
                                                                  *args))
    print(json.dumps({"rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _fresh_process_rss(size_name: str) -> dict[str, float]:
    rss = {}
    for method in ("inference", *METHODS):
        code = ("import sys; from benchmarks import zo_finetune; "
                "zo_finetune.rss_main(sys.argv[1], sys.argv[2])")
        out = subprocess.run([sys.executable, "-c", code, method, size_name], check=True,
                             capture_output=True, text=True).stdout
        rss[method] = json.loads(out.strip().splitlines()[-1])["rss_MiB"]
    return rss


def run(report: _harness.Report) -> None:
    """Pre-trains, fine-tunes with every method on every seed, tabulates and plots."""
    size = report.sized(SIZES)
    model = _models.MLP(size.hidden, num_outputs=5)
    plain = _runs(model, size)
    # Jits of the plain functions share `compare`'s compiles (a jit of a jitted function
    # would compile it once more).
    runs = {name: jax.jit(fn) for name, fn in plain.items()}
    curves = {name: [] for name in METHODS}
    initial, seconds = [], {}
    for seed in report.progress(range(size.seeds), "seeds"):
        params, data = _pretrained(model, size, seed)
        args = (data.x_train, data.y_train, data.x_test, data.y_test)
        initial.append(float(_train.accuracy(model.apply(params, data.x_test), data.y_test)))
        key = jax.random.key(1000 + seed)
        if seed == 0:  # time the whole fine-tuning runs side by side, interleaved
            timings = _harness.compare(plain, params, key, *args, rounds=3 if size.steps >
                                       100 else 1, min_round_s=0.0)
            seconds = {name: t.median_s for name, t in timings.items()}
            peaks = _planned_step_peaks(model, size, params, data)
        for name, fn in runs.items():
            curves[name].append(np.asarray(fn(params, key, *args)))
    rss = _fresh_process_rss(report.size) if size.rss_hidden else {}
    per_segment = size.steps // size.segments
    budget = min(seconds.values())  # the fastest method's time for all steps
    equal_steps = {name: np.stack(c)[:, -1] for name, c in curves.items()}
    equal_time, steps_in_budget = {}, {}
    for name, c in curves.items():
        segments_done = int(budget / seconds[name] * size.segments + 1e-9)
        steps_in_budget[name] = segments_done * per_segment
        equal_time[name] = (np.stack(c)[:, segments_done - 1] if segments_done
                            else np.asarray(initial))
    rows = []
    for name in METHODS:
        row = {
            "method": name, "learning_rate": METHODS[name], "seeds": size.seeds,
            "acc @ equal steps": _stats.mean_std(equal_steps[name], 100, 1),
            "acc @ equal time": _stats.mean_std(equal_time[name], 100, 1),
            "steps in the time budget": steps_in_budget[name],
            "ms/step": 1e3 * seconds[name] / size.steps,
            "planned step peak MiB": peaks[name],
            f"fresh-process RSS MiB, MLP {size.rss_hidden}": rss.get(name),
        }
        if name != ZO:
            row |= _stats.paired_columns(equal_steps[ZO], equal_steps[name], "steps", 100, 1)
            row |= _stats.paired_columns(equal_time[ZO], equal_time[name], "time", 100, 1)
        rows.append(row)
    report.table(
        f"fine-tuning digits 5-9 from a digits 0-4 MLP {size.hidden}: test accuracy (%, mean "
        f"± std over seeds) after {size.steps} steps and within {budget:.3g} s; paired tests "
        f"ZO minus the method (diff in points)", rows)
    report.note("fine-tuning: pre-trained accuracy on 5-9 before fine-tuning (%)",
                _stats.mean_std(initial, 100, 1))
    report.note("fine-tuning: planned inference peak MiB", peaks["inference"])
    if rss:
        report.note(f"fine-tuning: fresh-process RSS MiB of inference alone, MLP "
                    f"{size.rss_hidden}", rss["inference"])
    _plot(report, size, curves, initial, seconds)


def _plot(report, size, curves, initial, seconds):
    figure, (by_step, by_time) = _plots.subplots(1, 2, figsize=(10, 4), sharey=True)
    steps = np.arange(size.segments + 1) * (size.steps // size.segments)
    for index, (name, c) in enumerate(curves.items()):
        values = 100 * np.concatenate([np.asarray(initial)[:, None], np.stack(c)], axis=1)
        mean, se = values.mean(0), values.std(0, ddof=_stats.DDOF) / np.sqrt(len(values))
        for axis, x in ((by_step, steps), (by_time, steps * seconds[name] / size.steps)):
            axis.plot(x, mean, color=f"C{index}", label=name)
            axis.fill_between(x, mean - se, mean + se, color=f"C{index}", alpha=0.2)
    by_step.set_xlabel("fine-tuning step")
    by_time.set_xlabel("wall time (s)")
    by_step.set_ylabel("test accuracy on digits 5-9 (%), mean ± s.e.")
    by_step.legend(fontsize=8)
    figure.suptitle(f"ZO vs backprop fine-tuning, {size.seeds} seeds "
                    f"({jax.default_backend()})")
    report.save_figure(figure, "accuracy")


if __name__ == "__main__":
    rss_main(*sys.argv[1:3])
