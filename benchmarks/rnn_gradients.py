"""RNN gradient flow: vanishing/exploding d h_t/d h_0 of flax cells, forget-gate theory, clipping.

After Su's post on RNN gradient flow (https://kexue.fm/archives/7888). Four experiments:

1. Random flax cells (SimpleCell tanh, LSTMCell with forget bias 0 and 1, GRUCell) on
   random inputs: `||d carry_t / d carry_0||` against t up to T, fitted decay rate; the
   LSTM's measured c-path norm against the product of its measured forget gates
   `max_i prod_k f_k,i` (and the GRU's against its keep gates z, flax convention).
2. The same cells trained on the adding problem (T_train steps), diagnosed up to T.
3. Exploding case: recurrent matrix of spectral radius 1.5 (linear, ReLU, tanh cells);
   training a ReLU RNN with and without `optax.clip_by_global_norm`.
4. Timing of `jacobian_norms` (T=1000, hidden 256) against `jax.jacfwd` of the unrolled
   scan followed by the norms (the peer).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _harness, _plots, _train
from jaxtricks import rnn

_ALL_CELLS = None  # train on the adding problem every cell of `_random_cells`
SIZES = {
    "full": {"hidden": 64, "T": 1000, "T_train": 100, "train_steps": 400, "batch": 64,
             "explode_T": 40, "clip_steps": 100, "timing_T": 1000, "timing_hidden": 256,
             "spectral_T": 200, "spectral_hidden": 64, "trained_cells": _ALL_CELLS},
    "quick": {"hidden": 16, "T": 200, "T_train": 20, "train_steps": 60, "batch": 32,
              "explode_T": 40, "clip_steps": 30, "timing_T": 200, "timing_hidden": 64,
              "spectral_T": 200, "spectral_hidden": 64,
              "trained_cells": ("LSTMCell forget bias 1",)},
    "smoke": {"hidden": 40, "T": 20, "T_train": 4, "train_steps": 2, "batch": 4,
              "explode_T": 12, "clip_steps": 2, "timing_T": 10, "timing_hidden": 4,
              "spectral_T": 10, "spectral_hidden": 4,
              "trained_cells": ("LSTMCell forget bias 1",)},
}


def run(report: _harness.Report) -> None:
    sizes = report.sized(SIZES)
    report.note("sizes", sizes)
    key = jax.random.key(0)
    random_inputs = jax.random.normal(key, (sizes["T"], 2))
    random_rows, random_curves = _diagnose_cells(
        _random_cells(sizes["hidden"], key), random_inputs, "random init, N(0,1) inputs", key
    )
    trained_cells, training_rows = _train_on_adding(report, sizes, key)
    report.table("adding problem training (MSE; predicting 1 scores 1/6 = 0.167)", training_rows)
    adding_inputs = _adding_batch(jax.random.key(7), 1, sizes["T"])[0][0]
    trained_rows, trained_curves = _diagnose_cells(
        trained_cells, adding_inputs, f"trained on adding T={sizes['T_train']}", key
    )
    report.table("decay of ||d carry_t / d carry_0|| (spectral) and gate products",
                 random_rows + trained_rows)
    _plot_decay(report, {**random_curves, **trained_curves}, sizes["T"])
    report.table("exploding: recurrent spectral radius 1.5", _exploding_norms(sizes, key))
    report.table("exploding: linear RNN (radius 1.5) on the adding problem, SGD",
                 _clipping_runs(sizes, key))
    report.table("timing: jacobian_norms vs jax.jacfwd of the unrolled scan",
                 _timing(sizes, key))


# ----------------------------------------------------------------------------- cells


def _init(cell, hidden, key, input_size=2):
    carry = cell.initialize_carry(key, (input_size,))
    return cell.init(key, carry, jnp.zeros(input_size))["params"], carry


def _random_cells(hidden: int, key) -> dict:
    """name -> (cell, params, initial carry): the four cells of the issue."""
    cells = {}
    params, carry = _init(nn.SimpleCell(hidden), hidden, key)
    cells["SimpleCell tanh"] = (nn.SimpleCell(hidden), params, carry)
    for bias in (0.0, 1.0):
        params, carry = _init(nn.LSTMCell(hidden), hidden, key)
        params["hf"]["bias"] = jnp.full(hidden, bias)
        cells[f"LSTMCell forget bias {bias:g}"] = (nn.LSTMCell(hidden), params, carry)
    params, carry = _init(nn.GRUCell(hidden), hidden, key)
    cells["GRUCell"] = (nn.GRUCell(hidden), params, carry)
    return cells


def _gate_trajectory(cell, params, carry, inputs):
    """`[T, H]` LSTM forget gates f_t or GRU keep gates z_t along the trajectory."""
    names = ("if", "hf") if isinstance(cell, nn.LSTMCell) else ("iz", "hz")

    def body(state, x):
        h = state[1] if isinstance(cell, nn.LSTMCell) else state
        logits = sum(
            dense @ params[n]["kernel"] + params[n].get("bias", 0.0)
            for n, dense in zip(names, (x, h), strict=True)
        )
        return cell.apply({"params": params}, state, x)[0], jax.nn.sigmoid(logits)

    return jax.lax.scan(body, carry, inputs)[1]


def _fit_rate(log_norms: np.ndarray) -> float:
    """Per-step factor exp(slope) of log||.|| over the last 90% of the steps."""
    t = np.arange(1, len(log_norms) + 1)
    keep = (t > len(t) // 10) & np.isfinite(log_norms)
    return float(np.exp(np.polyfit(t[keep], log_norms[keep], 1)[0]))


def _diagnose_cells(cells: dict, inputs, setting: str, key):
    """Rows of decay rates and gate-product comparisons; log-norm curves for the plot."""
    rows, curves = [], {}
    for name, (cell, params, carry) in cells.items():
        step = rnn.linen_step(cell, params)
        diagnose = jax.jit(lambda c, x, step=step: rnn.jacobian_norms(
            step, c, x, key=key, log_space=True))
        log_whole = np.asarray(diagnose(carry, inputs), np.float64)
        curves[f"{name} ({setting})"] = log_whole
        row = {"setting": setting, "cell": name, "rate_whole": _fit_rate(log_whole),
               "log10_norm_t10": log_whole[9] / np.log(10),
               "log10_norm_tT": log_whole[-1] / np.log(10)}
        if isinstance(cell, nn.LSTMCell | nn.GRUCell):
            row.update(_gate_comparison(cell, params, carry, inputs, step, log_whole, key))
        rows.append(row)
    return rows, curves


def _gate_comparison(cell, params, carry, inputs, step, log_whole, key) -> dict:
    """Measured path norm vs the gate product ||prod_k D(gate_k)||_2 (the post's
    forget-gate argument).

    The LSTM's path is the c block d c_t / d c_0; the GRU's the whole h (keep gate z).
    Relative errors: of the fitted per-step rates, and of the norms at t = 10 and 100.
    """
    gates = np.asarray(_gate_trajectory(cell, params, carry, inputs), np.float64)
    log_product = np.log(gates).cumsum(axis=0).max(axis=1)  # log max_i prod_k gate_k,i
    log_path = log_whole
    if isinstance(cell, nn.LSTMCell):
        log_path = np.asarray(
            rnn.jacobian_norms(step, carry, inputs, key=key, per_leaf=True, log_space=True)[0],
            np.float64)
    rate_path, rate_product = _fit_rate(log_path), _fit_rate(log_product)
    norm_error = lambda t: abs(np.expm1(log_product[t - 1] - log_path[t - 1]))  # noqa: E731
    return {"path": "c" if isinstance(cell, nn.LSTMCell) else "h (keep gate z)",
            "rate_path": rate_path, "rate_gate_product": rate_product,
            "rate_rel_err": abs(rate_product - rate_path) / rate_path,
            "norm_rel_err_t10": norm_error(10),
            "norm_rel_err_t100": norm_error(min(100, len(log_path)))}


def _plot_decay(report, curves: dict, length: int) -> None:
    figure, axes = _plots.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    t = np.arange(1, length + 1)
    for label, log_norms in curves.items():
        axis = axes[0] if "random" in label else axes[1]
        axis.plot(t, log_norms / np.log(10), label=label.split(" (")[0])
    for axis, title in zip(axes, ("random init", "trained on adding problem"), strict=True):
        axis.set(title=title, xlabel="t", ylabel="log10 ||d carry_t / d carry_0||_2")
        axis.legend(fontsize=8)
    report.save_figure(figure, "decay")


# ----------------------------------------------------------------------------- adding


def _adding_batch(key, batch: int, length: int):
    """The adding problem: values U(0,1) and two markers; target = sum of marked values."""
    value_key, first_key, second_key = jax.random.split(key, 3)
    values = jax.random.uniform(value_key, (batch, length))
    first = jax.random.randint(first_key, (batch,), 0, length // 2)
    second = jax.random.randint(second_key, (batch,), length // 2, length)
    markers = jax.nn.one_hot(first, length) + jax.nn.one_hot(second, length)
    inputs = jnp.stack([values, markers], axis=-1)  # [B, T, 2]
    return inputs, jnp.sum(values * markers, axis=1)


class _Regressor(nn.Module):
    """A cell scanned over time and a linear read-out of its last hidden state."""

    cell: nn.Module

    @nn.compact
    def __call__(self, inputs):
        final, _ = nn.RNN(self.cell, return_carry=True)(inputs)
        hidden = final[1] if isinstance(final, tuple) else final
        return nn.Dense(1)(hidden)[..., 0]


def _fit_adding(cell, params_cell, sizes, key, optimizer, steps, length):
    """Trains a `_Regressor` on the adding problem; returns (cell params, losses)."""
    model = _Regressor(cell)
    params = model.init(key, jnp.zeros((1, length, 2)))["params"]
    if params_cell is not None:
        params["cell"] = params_cell

    def loss_fn(params, step_key):
        inputs, target = _adding_batch(step_key, sizes["batch"], length)
        return jnp.mean((model.apply({"params": params}, inputs) - target) ** 2)

    trained = jax.jit(lambda params, keys: _train.train(
        loss_fn, params, optimizer, keys, grad_norms=True))(params, jax.random.split(key, steps))
    losses, grad_norms = (np.asarray(v, np.float64) for v in jax.device_get(
        (trained.losses, trained.grad_norms)))
    return trained.params["cell"], losses, grad_norms


def _train_on_adding(report, sizes, key):
    cells = _random_cells(sizes["hidden"], key)
    if sizes["trained_cells"] is not _ALL_CELLS:
        cells = {name: cells[name] for name in sizes["trained_cells"]}
    trained, rows = {}, []
    for name in report.progress(cells, "train adding"):
        cell, params, carry = cells[name]
        params, losses, _ = _fit_adding(cell, params, sizes, key, optax.adam(3e-3),
                                        sizes["train_steps"], sizes["T_train"])
        trained[name] = (cell, params, carry)
        tail = max(1, len(losses) // 10)
        rows.append({"cell": name, "T_train": sizes["T_train"], "steps": len(losses),
                     "mse_first": float(losses[:tail].mean()),
                     "mse_last": float(losses[-tail:].mean())})
    return trained, rows


# ----------------------------------------------------------------------------- exploding


def _radius_matrix(hidden: int, key, radius: float) -> jax.Array:
    matrix = jax.random.normal(key, (hidden, hidden))
    return matrix * radius / np.max(np.abs(np.linalg.eigvals(np.asarray(matrix))))


def _exploding_norms(sizes, key) -> list[dict]:
    hidden, length = sizes["hidden"], sizes["explode_T"]
    matrix = _radius_matrix(hidden, key, 1.5)
    inputs = jax.random.normal(jax.random.key(3), (length, hidden))
    activations = {"linear": lambda a: a, "ReLU": jax.nn.relu, "tanh": jnp.tanh}
    rows = []
    for name, activation in activations.items():
        def step(h, x, activation=activation):
            h = activation(matrix @ h + x)
            return h, h

        log_norms = np.asarray(
            rnn.jacobian_norms(step, jnp.ones(hidden), inputs, key=key, log_space=True),
            np.float64)
        rows.append({"cell": name, "T": length, "log10_norm_t10": log_norms[9] / np.log(10),
                     "log10_norm_tT": log_norms[-1] / np.log(10),
                     "rate": _fit_rate(log_norms), "spectral_radius": 1.5})
    return rows


def _clipping_runs(sizes, key) -> list[dict]:
    hidden, length = sizes["hidden"], sizes["explode_T"]
    cell = nn.SimpleCell(hidden, activation_fn=lambda a: a)
    params, _ = _init(cell, hidden, key)
    params["h"]["kernel"] = _radius_matrix(hidden, jax.random.key(5), 1.5)
    rows = []
    for label, optimizer in (
        ("sgd(0.05)", optax.sgd(0.05)),
        ("clip_by_global_norm(1) + sgd(0.05)",
         optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.05))),
    ):
        _, losses, grad_norms = _fit_adding(cell, params, sizes, key, optimizer,
                                            sizes["clip_steps"], length)
        finite = np.isfinite(losses)
        rows.append({"optimizer": label, "T": length, "steps": len(losses),
                     "loss_first": losses[0], "max_grad_norm": np.nanmax(grad_norms),
                     "first_nonfinite_step": None if finite.all() else int(np.argmin(finite)),
                     "loss_last": losses[-1]})
    return rows


# ----------------------------------------------------------------------------- timing


def _timing(sizes, key) -> list[dict]:
    hidden, length = sizes["timing_hidden"], sizes["timing_T"]
    cell = nn.SimpleCell(hidden)
    params, carry = _init(cell, hidden, key)
    step = rnn.linen_step(cell, params)
    inputs = jax.random.normal(key, (length, 2))

    def jacfwd_jacobians(carry, inputs):
        return jax.jacfwd(lambda c: jax.lax.scan(lambda h, x: (step(h, x)[0],) * 2, c, inputs)[1])(
            carry)

    fro = {
        "jacobian_norms(ord='fro')": lambda c, x: rnn.jacobian_norms(step, c, x, ord="fro"),
        "jacobian_norms(spectral, power)": lambda c, x: rnn.jacobian_norms(
            step, c, x, method="power", key=key),
        "jax.jacfwd + Frobenius (peer)": lambda c, x: jnp.linalg.norm(
            jacfwd_jacobians(c, x), "fro", axis=(1, 2)),
    }
    rows = _harness.timing_rows(
        _harness.compare(fro, carry, inputs, rounds=3, min_round_s=0.0),
        "jax.jacfwd + Frobenius (peer)", T=length, hidden=hidden)
    # Spectral peer (an SVD per step) only where it is affordable: hidden 64, T 200.
    small_hidden, small_length = sizes["spectral_hidden"], sizes["spectral_T"]
    small_cell = nn.SimpleCell(small_hidden)
    small_params, small_carry = _init(small_cell, small_hidden, key)
    small_step = rnn.linen_step(small_cell, small_params)
    small_inputs = inputs[:small_length]
    spectral = {
        "jacobian_norms(spectral, exact)": lambda c, x: rnn.jacobian_norms(
            small_step, c, x, method="exact"),
        "jacobian_norms(spectral, power)": lambda c, x: rnn.jacobian_norms(
            small_step, c, x, method="power", key=key),
        "jax.jacfwd + SVD (peer)": lambda c, x: jnp.linalg.norm(jax.jacfwd(
            lambda c0: jax.lax.scan(lambda h, x: (small_step(h, x)[0],) * 2, c0, x)[1])(c),
            2, axis=(1, 2)),
    }
    rows += _harness.timing_rows(
        _harness.compare(spectral, small_carry, small_inputs, rounds=3, min_round_s=0.0),
        "jax.jacfwd + SVD (peer)", T=small_length, hidden=small_hidden)
    return rows
