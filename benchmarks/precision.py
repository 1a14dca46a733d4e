"""Precision floor of the zeroth-order estimators: rounding variance, predicted vs measured.

Two objectives. (1) The quadratic `0.5 x^T A x + b^T x + 1000` (A diagonal 0.5..2, b =
1, x = 0.1), whose offset makes `|f| >> ||g|| |x|`: with params in float32, bfloat16 and
float16, computed (a) as written, under XLA's default excess precision, and (b) in
float32 with the output rounded once to the dtype by `jax.lax.reduce_precision`; in a
subprocess also (c) as written with `--xla_allow_excess_precision=false`. (2) A mean of
`K` per-example values, each rounded, whose roundings are dithered (the regime of the
model, like a network's loss). Prediction: the intrinsic closed form of the estimator's
covariance (`_quadratic_traces` in `benchmarks/estimators.py`) plus `rounding_variance`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _harness, _plots
from benchmarks.estimators import _quadratic_traces
from jaxtricks import estimators
from jaxtricks.estimators import _directions, _sampling
from jaxtricks.estimators._precision import rounding_floor_sigma, rounding_variance

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
FORMATS = {"float32": (8, 23), "bfloat16": (8, 7), "float16": (5, 10)}
NUM_SAMPLES = 16
OFFSET = 1000.0
SIZES = {  # excess: the subprocess run with excess precision off (dtypes, sigmas, repeats)
    "full": {"repeats": 2048, "sigmas": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0), "dims": (10, 100),
             "dtypes": tuple(DTYPES), "dithered_sigmas": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
             "dithered_dtypes": ("bfloat16", "float16"), "timeout_s": 120,
             "excess": (("bfloat16", "float16"), (0.003, 0.01, 0.03, 0.1, 0.3, 1.0), 2048)},
    "quick": {"repeats": 256, "sigmas": (0.01, 0.1, 1.0), "dims": (10,),
              "dtypes": ("bfloat16",), "dithered_sigmas": (0.01, 0.1, 1.0),
              "dithered_dtypes": ("bfloat16",), "timeout_s": 60,
              "excess": (("bfloat16",), (0.01, 0.1, 1.0), 256)},
    "smoke": {"repeats": 16, "sigmas": (0.1,), "dims": (10,), "dtypes": ("bfloat16",),
              "dithered_sigmas": (0.1,), "dithered_dtypes": ("bfloat16",), "timeout_s": 60,
              "excess": (("bfloat16",), (0.1,), 16)},
}


def _quadratic(d, dtype_name, mode):
    """`(f, x, g, traces)`; `mode` "as written" (in the dtype) or "reduce_precision"."""
    a = jnp.linspace(0.5, 2.0, d)
    dtype = DTYPES[dtype_name]
    x = jnp.full((d,), 0.1, dtype)

    def f(w):
        if mode == "as written":
            return 0.5 * jnp.sum(a.astype(dtype) * w * w) + jnp.sum(w) + jnp.asarray(
                OFFSET, dtype)
        w = w.astype(jnp.float32)
        value = 0.5 * jnp.sum(a * w * w) + jnp.sum(w) + OFFSET
        return jax.lax.reduce_precision(value, *FORMATS[dtype_name])

    x64 = np.asarray(x, np.float64)
    an = np.asarray(a, np.float64)
    g = an * x64 + 1.0
    return f, x, g, _quadratic_traces(an, g, float(0.5 * an @ x64**2 + x64.sum() + OFFSET))


def _variance_traces(f, x, sigmas, antithetic, repeats, directions="gaussian"):
    """`[(variance trace, its standard error, sigma used)]` over `sigmas`, one compile."""
    estimate = jax.jit(jax.vmap(lambda k, sigma: estimators.zeroth_order_grad(
        f, x, k, num_samples=NUM_SAMPLES, sigma=sigma, antithetic=antithetic,
        directions=directions), in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(0), repeats)
    out = []
    for sigma in sigmas:
        values = np.asarray(estimate(keys, jnp.float32(sigma)), np.float64)
        deviations = np.sum((values - values.mean(0)) ** 2, axis=1)
        out.append((deviations.mean() * repeats / (repeats - 1),
                    deviations.std() / math.sqrt(repeats),
                    float(_sampling.resolved_sigma(sigma, x, _directions.resolve(directions)))))
    return out


def _row(measured, se, intrinsic, rounding, **fields):
    predicted = intrinsic + rounding
    return {**fields, "measured": measured, "s.e.": se, "predicted": predicted,
            "ratio": measured / predicted, "rounding_share": rounding / predicted}


def _quadratic_rows(d, dtype_names, modes, sigmas, repeats):
    rows = []
    for dtype_name in dtype_names:
        for mode in modes:
            f, x, g, traces = _quadratic(d, dtype_name, mode)
            grad_norm = float(np.linalg.norm(g))
            value = float(OFFSET + 0.5 * np.sum(np.linspace(0.5, 2.0, d) * 0.01) + 0.1 * d)
            for antithetic in (False, True):
                n = NUM_SAMPLES // 2 if antithetic else NUM_SAMPLES
                options = {"num_params": d, "antithetic": antithetic,
                           "value_dtype": DTYPES[dtype_name], "param_scale": 0.1}
                floor = float(rounding_floor_sigma(value, grad_norm, DTYPES[dtype_name],
                                                   **options))
                traces_at = _variance_traces(f, x, sigmas, antithetic, repeats)
                for sigma, (measured, se, used) in zip(sigmas, traces_at, strict=True):
                    rounding = float(rounding_variance(
                        used, value, grad_norm, DTYPES[dtype_name], num_directions=n,
                        **options))
                    intrinsic = traces["central" if antithetic else "forward"](used) / n
                    rows.append(_row(
                        measured, se, intrinsic, rounding, d=d, dtype=dtype_name,
                        mode=mode, sigma=sigma, sigma_used=used,
                        estimator="antithetic" if antithetic else "forward",
                        sigma_floor=floor))
    return rows


def dithered_objective(d, num_examples, dtype_name, sigma):
    """Mean of K per-example values, each rounded (tested in benchmarks/tests/).

    The per-example slopes and curvatures are scaled with `1/sigma` and `1/sigma^2`, so
    that at every `sigma` each value moves by ~30 (odd part) and ~10 (even part)
    spacings of the dtype near 640 between evaluations, staying in `[512, 1024)`; the
    mean stays `640 + 0.1 sum_j w_j` (gradient norm `0.1 sqrt(d)`).
    """
    rng = np.random.default_rng(0)
    spacing = 512 * float(jnp.finfo(DTYPES[dtype_name]).eps)
    z = rng.normal(size=(num_examples, d))
    beta = jnp.asarray(0.1 + 10 * spacing / sigma * (z - z.mean(0)), jnp.float32)
    a = rng.normal(size=(num_examples, 4, d))
    a = jnp.asarray(a / np.linalg.norm(a, axis=-1, keepdims=True), jnp.float32)
    alpha = 5 * spacing / sigma**2

    def f(w):
        exact = 640.0 + beta @ w + 0.5 * alpha * jnp.sum((a @ w) ** 2, axis=-1)
        return jnp.mean(jax.lax.reduce_precision(exact, *FORMATS[dtype_name]))

    return f


def _dithered_rows(report, size):
    d, num_examples, rows, n = 8, 16, [], NUM_SAMPLES // 2
    grad_norm = 0.1 * math.sqrt(d)
    repeats = size["repeats"]
    for dtype_name in report.progress(size["dithered_dtypes"], "dithered"):
        options = {"num_params": d, "value_dtype": DTYPES[dtype_name],
                   "num_roundings": 1 / num_examples}
        floor = float(rounding_floor_sigma(640.0, grad_norm, jnp.float32, **options))
        for sigma in size["dithered_sigmas"]:
            f = dithered_objective(d, num_examples, dtype_name, sigma)
            ((measured, se, _),) = _variance_traces(f, jnp.zeros(d), (sigma,), True,
                                                    repeats)
            rounding = float(rounding_variance(sigma, 640.0, grad_norm, jnp.float32,
                                               num_directions=n, **options))
            rows.append(_row(measured, se, (d + 1) * grad_norm**2 / n, rounding,
                             dtype=dtype_name, sigma=sigma, estimator="antithetic",
                             sigma_floor=floor))
    return rows


def excess_precision_rows(size: str) -> list[dict]:
    """The quadratic as written in bfloat16/float16 (run with excess precision off)."""
    dtype_names, sigmas, repeats = SIZES[size]["excess"]
    return _quadratic_rows(10, dtype_names, ("as written",), sigmas, repeats)


def _subprocess_rows(report):
    code = ("import json, sys; from benchmarks import precision; "
            f"print('ROWS' + json.dumps(precision.excess_precision_rows({report.size!r})))")
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                                       " --xla_allow_excess_precision=false").strip()}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=root,
                              capture_output=True, text=True,
                              timeout=SIZES[report.size]["timeout_s"], check=True)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as error:
        report.note("excess precision off: subprocess failed", repr(error)[:300])
        return []
    line = next(line for line in done.stdout.splitlines() if line.startswith("ROWS"))
    return [{**row, "mode": "excess precision off"} for row in json.loads(line[4:])]


def _matmul_precision(report, repeats):
    """`jax.default_matmul_precision("bfloat16")` on `0.5 w^T M w + 1000`, float32 params."""
    d = 32
    m = jnp.asarray(np.random.default_rng(0).normal(size=(d, d)) / math.sqrt(d), jnp.float32)
    x = jnp.full((d,), 0.1, jnp.float32)

    def f(w):
        return 0.5 * jnp.dot(w, jnp.dot(m, w)) + OFFSET

    rows = []
    for precision in ("float32", "bfloat16"):
        with jax.default_matmul_precision(precision):
            ((measured, se, _),) = _variance_traces(f, x, (1e-3,), True, repeats)
        rows.append({"matmul_precision": precision, "sigma": 1e-3, "measured": measured,
                     "s.e.": se})
    report.table("jax.default_matmul_precision on a matmul objective (float32 params, "
                 "antithetic, sigma = 1e-3)", rows)


def _plot(report, rows, dithered):
    # Constrained layout keeps the two titles (two lines each) from running into each other.
    figure, axes = _plots.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for index, key in enumerate(dict.fromkeys((r["dtype"], r["mode"], r["estimator"])
                                              for r in rows if r["d"] == 10)):
        mine = [r for r in rows if (r["dtype"], r["mode"], r["estimator"]) == key
                and r["d"] == 10]
        sigma = [r["sigma_used"] for r in mine]
        line = axes[0].loglog(sigma, [r["measured"] for r in mine], "o",
                              color=f"C{index % 10}", label=" ".join(key), ms=4)[0]
        axes[0].loglog(sigma, [r["predicted"] for r in mine], "-", lw=0.8,
                       color=line.get_color())
    axes[0].set_title("offset quadratic, d = 10\nmeasured (dots), predicted (lines)")
    for index, name in enumerate(dict.fromkeys(r["dtype"] for r in dithered)):
        mine = [r for r in dithered if r["dtype"] == name]
        sigma = [r["sigma"] for r in mine]
        axes[1].loglog(sigma, [r["measured"] for r in mine], "o", color=f"C{index}",
                       label=f"{name} measured")
        axes[1].loglog(sigma, [r["predicted"] for r in mine], "-", color=f"C{index}",
                       label=f"{name} predicted")
        axes[1].axvline(mine[0]["sigma_floor"], color=f"C{index}", ls=":", lw=0.8)
    axes[1].set_title("mean of 16 rounded examples\n(dithered), antithetic")
    for axis in axes:
        axis.set_xlabel("sigma")
        axis.set_ylabel("variance trace of one estimate")
        axis.legend(fontsize=6)
    report.save_figure(figure, "variance")


def run(report: _harness.Report) -> None:
    size = report.sized(SIZES)
    repeats = size["repeats"]
    rows = []
    for d in report.progress(size["dims"], "offset quadratic"):
        rows += _quadratic_rows(d, size["dtypes"], ("as written", "reduce_precision"),
                                size["sigmas"], repeats if d == 10 else repeats // 4)
    rows += _subprocess_rows(report)
    report.table("offset quadratic 0.5 x'Ax + b'x + 1000, 16 evaluations: variance trace, "
                 "measured vs intrinsic + rounding prediction", rows)
    dithered = _dithered_rows(report, size)
    report.table("mean of 16 per-example values each rounded (dithered roundings), d = 8",
                 dithered)
    _matmul_precision(report, repeats)
    _plot(report, rows, dithered)
    model = [r for r in dithered if r["rounding_share"] > 0.5]
    if model:
        report.note("dithered, rounding-dominated rows: worst |ratio - 1|",
                    max(abs(r["ratio"] - 1) for r in model))
