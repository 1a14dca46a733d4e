"""Gradient estimators: variance vs closed forms, throughput, memory, evosax and optax peers.

Problems: (1) the quadratic `0.5 x^T A x + b^T x + c` (closed-form covariances), also on
a `[rows, rows]` matrix leaf plus a `[rows]` bias, where every direction kind (Gaussian,
orthogonal, low rank 1 and 4, sphere, Rademacher), `forward_gradient` and evosax's
`Open_ES` meet their closed-form variance traces for `n` from about `d/64` to `d`
directions (evosax has Gaussian directions only: no orthogonal sampler); (2)
the Gaussian-measure costs `(x-k)^2`, `exp(-k x^2)`, `cos(k x)` of Mohamed et al. (2020),
exact variances by Gauss-Hermite quadrature; (3) the accuracy of a linear classifier on
scikit-learn's digits (not differentiable): policy gradient over its categorical outputs
vs zeroth-order over its weights. Against the two anchors: the speed of antithetic
`zeroth_order_grad` beside evosax's `Open_ES` on the same estimate, and MeZO's memory
table (inference, `jax.grad`, backprop + Adam, the default `zeroth_order_grad` and
`forward_gradient`, the ZO update; ratios to inference and to `jax.grad`) as XLA plans
it for an MLP, a flax Transformer decoder and OPT-1.3B shapes (`_zo_memory`; compiled,
never run). The speed of `forward_gradient` (n jvps) beside `jax.grad` and antithetic
`zeroth_order_grad` with as many directions, on an MLP.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _data, _harness, _plots, _stats, _zo_memory
from jaxtricks import estimators


@dataclasses.dataclass(frozen=True)
class Size:
    cost_ks: tuple[float, ...]
    cost_count: int
    variance_cases: tuple[tuple[int, int], ...]  # (d, num_samples)
    variance_repeats: int
    budget_repeats: int
    budget_sigmas: tuple[float, ...]
    budget_curvatures: tuple[float, ...]
    throughput_sizes: tuple[int, ...]
    throughput_tanh: bool
    evosax_grid: tuple[tuple[int, int], ...]  # (d, num_samples)
    timing_rounds: int
    memory_d: int
    # (problem builder, zeroth_order_grad (n, chunk)s, forward_gradient ns, update n, grad?)
    memory_models: tuple
    digits_size: int
    digits_reference_samples: int
    digits_samples_repeats: tuple[int, int]
    digits_all_estimators: bool
    kinds_rows: int  # the direction kinds' quadratic: a [rows, rows] leaf and a [rows] one
    kinds_directions: tuple[int, ...]  # numbers of directions n
    kinds_repeats: int  # estimates per (kind, n)
    speed_mlp: tuple[tuple[int, ...], int]  # (widths, batch) of the forward-gradient speed
    speed_directions: tuple[int, ...]
    # the variance and throughput sections' estimators (None: every one of `_estimators`)
    estimator_names: tuple[str, ...] | None = None


def _models(mlp, decoder, opt):
    """The memory table's problems: (build, ZO-grad (n, chunk) pairs, forward-gradient
    ns, update n, jax.grad?); `decoder` None leaves the unscanned decoder out.

    Every model gets inference, `jax.grad`, backprop + Adam, `zeroth_order_grad(...,
    num_samples=16)` and `forward_gradient(..., num_samples=16)` with no other option
    (their default strategies) and the ZO update; OPT-1.3B (its blocks scanned: stacked
    leaves) no chunked ZO grads."""
    models = ((lambda: _zo_memory.mlp(*mlp), ((16, 2), (16, 8), (16, None)), (16,), 2, True),
              (lambda: _zo_memory.decoder(**decoder), ((16, 2), (16, 8), (16, None)), (16,),
               2, True),
              (lambda: _zo_memory.decoder(**opt), ((16, None),), (16,), 2, True))
    return models if decoder else models[::2]


OPT_1_3B = {"layers": 24, "d_model": 2048, "heads": 32, "ffn": 8192, "vocab": 50272,
            "seq": 400, "batch_size": 1, "positions": 2050,  # MeZO's profile: ~400 tokens
            "scan_layers": True,  # nn.scan over the blocks, as large flax models are written
            "name": "OPT-1.3B shapes"}
SIZES = {
    "full": Size(
        (0.5, 1.0, 2.0, 3.0), 2**16, ((10, 4), (10, 16), (10, 64), (10, 256), (1000, 64)),
        2**14, 2**12, (0.01, 0.1, 0.3, 1.0, 3.0, 10.0), (0.1, 1.0, 10.0),
        (1000, 100_000, 1_000_000), True,
        tuple((d, n) for d in (1000, 100_000, 1_000_000) for n in (32, 64, 256)), 5,
        10_000_000,
        _models(((1024, 4096, 4096, 4096, 1024), 64),
                {"layers": 8, "d_model": 640, "heads": 10, "ffn": 2560, "vocab": 8192,
                 "seq": 128, "batch_size": 8}, OPT_1_3B),
        512, 2**15, (128, 16), True,
        kinds_rows=16, kinds_directions=(4, 17, 68, 272), kinds_repeats=2**12,
        speed_mlp=((256, 1024, 1024, 256), 64), speed_directions=(4, 16, 64)),
    "quick": Size(
        (2.0,), 2**13, ((10, 16),), 2**11, 2**9, (0.1, 10.0), (1.0,), (1000,), False,
        ((1000, 32), (100_000, 64)), 3, 100_000,
        # the MLP (chunked ZO grads) and the scanned OPT-style decoder; the unscanned
        # decoder's programs, the slowest to compile, at the full size only
        _models(((256, 1024, 1024, 256), 16), None,
                {**OPT_1_3B, "layers": 2, "d_model": 256, "heads": 4, "ffn": 1024,
                 "seq": 64, "positions": 64, "name": "OPT-style, 2 layers"}),
        256, 2**11, (32, 4), False,
        # d = 72 instead of 272: the same contrasts (n = d/18, d/4 and d) at 1/14 the cost
        kinds_rows=8, kinds_directions=(4, 18, 72), kinds_repeats=2**10,
        speed_mlp=((256, 1024, 1024, 256), 16), speed_directions=(4, 16)),
    "smoke": Size(
        (2.0,), 2**8, ((10, 4),), 2**6, 2**5, (0.1,), (1.0,), (100,), False,
        ((100, 8),), 1, 1000,
        # the decoder's ZO programs take tens of seconds to compile: the MLP only
        ((lambda: _zo_memory.mlp((16, 32, 8), 4), ((4, 2), (4, None)), (2,), 2, True),),
        64, 2**6, (8, 2), False,
        kinds_rows=4, kinds_directions=(5,), kinds_repeats=2**8,
        speed_mlp=((16, 32, 8), 4), speed_directions=(2,),
        # one zeroth-order and one policy-gradient estimator, and the two peers
        estimator_names=("ZO antithetic", "PG none", "evosax Open_ES", "optax perturbed")),
}


# ------------------------------------------------------------------ the quadratic
def _quadratic(d: int):
    """Diagonal A (eigenvalues 0.5..2), b = 1, c = 1, x = 0.1: `(f, x, g, theory)`."""
    a = jnp.linspace(0.5, 2.0, d)
    x = jnp.full((d,), 0.1)

    def f(w):
        return 0.5 * jnp.sum(a * w * w) + jnp.sum(w) + 1.0

    g = np.asarray(a * x + 1.0, np.float64)
    an = np.asarray(a, np.float64)
    return f, x, g, _quadratic_traces(an, g, float(f(x)))


def _quadratic_traces(a: np.ndarray, g: np.ndarray, f0: float):
    """Single-direction covariance traces for diagonal A (closed forms); name -> fn(sigma)."""
    d, g2, t, t2 = len(a), g @ g, a.sum(), (a**2).sum()

    def forward(s):
        return (d + 1) * g2 + s**2 / 4 * (d + 4) * (t**2 + 2 * t2)

    return {
        "forward": forward,
        "central": lambda s: (d + 1) * g2,
        "sphere_central": lambda s: (d - 1) * g2,
        "spsa_central": lambda s: (d - 1) * g2,
        "raw": lambda s: forward(s) + d * f0**2 / s**2 + (d + 2) * f0 * t,
    }


def _evosax_grad(f, x, num_samples, sigma):
    """evosax Open_ES antithetic gradient: one ask/tell with SGD(1), identity shaping."""
    from evosax.algorithms import Open_ES
    from evosax.core.fitness_shaping import identity_fitness_shaping_fn

    strategy = Open_ES(
        num_samples, x, use_antithetic_sampling=True, optimizer=optax.sgd(1.0),
        std_schedule=optax.constant_schedule(sigma),
        fitness_shaping_fn=identity_fitness_shaping_fn,
    )
    params = strategy.default_params

    def estimate(point, key):
        init_key, ask_key, tell_key = jax.random.split(key, 3)
        state = strategy.init(init_key, point, params)
        population, state = strategy.ask(ask_key, state, params)
        fitness = jax.vmap(f)(population)
        new_state, _ = strategy.tell(tell_key, population, fitness, state, params)
        return state.mean - new_state.mean  # SGD(1): mean - grad

    return estimate


def _optax_grad(f, num_samples, sigma):
    """optax.perturbations.make_perturbed_fun (Normal noise, baseline f(x)), its grad."""
    perturbed = optax.perturbations.make_perturbed_fun(
        f, num_samples, sigma, noise=optax.perturbations.Normal(), use_baseline=True
    )
    return lambda point, key: jax.grad(perturbed, argnums=1)(key, point)


def _estimators(f, x, n, sigma, names=None):
    """name -> (estimate(x, key), theory trace key or None, directions used); `names`
    keeps those only (None: all)."""
    zo = estimators.zeroth_order_grad
    policy = estimators.gaussian_policy(sigma)
    rows = {
        "ZO forward": (lambda p, k: zo(f, p, k, num_samples=n, sigma=sigma, antithetic=False),
                       "forward", n),
        "ZO antithetic": (lambda p, k: zo(f, p, k, num_samples=n, sigma=sigma), "central",
                          n // 2),
        "ZO sphere": (lambda p, k: zo(f, p, k, num_samples=n, sigma=sigma,
                                      directions="sphere"), "sphere_central", n // 2),
        "SPSA": (lambda p, k: zo(f, p, k, num_samples=n, sigma=sigma,
                                 directions="rademacher"), "spsa_central", n // 2),
        "PG none": (lambda p, k: estimators.policy_gradient(
            *policy, f, p, k, num_samples=n, baseline=None), "raw", n),
        "PG mean": (lambda p, k: estimators.policy_gradient(
            *policy, f, p, k, num_samples=n, baseline="mean"), None, n),
        "PG RLOO": (lambda p, k: estimators.policy_gradient(
            *policy, f, p, k, num_samples=n, baseline="leave_one_out"), None, n),
    }
    rows["evosax Open_ES"] = (_evosax_grad(f, x, n, sigma), "central", n // 2)
    rows["optax perturbed"] = (_optax_grad(f, n, sigma), "forward", n)
    return rows if names is None else {name: rows[name] for name in names}


def _error_statistics(estimates, x, g, repeats, key):
    """name -> `_statistics` of `repeats` estimates of each of `estimates` (name ->
    estimate(x, key)), the same keys for each, drawn in one compiled program (one
    compile, not one per estimator: most of a small run's time)."""
    keys = jax.random.split(key, repeats)
    # A divisor of `repeats`: a remainder would compile the estimators a second time.
    bound = max(1, min(repeats, 2**22 // max(1, x.size * 64 * len(estimates))))
    batch = next(b for b in range(bound, 0, -1) if repeats % b == 0)
    samples = jax.jit(lambda ks: jax.lax.map(
        lambda k: {name: estimate(x, k) for name, estimate in estimates.items()}, ks,
        batch_size=batch))
    return {name: _statistics(np.asarray(values, np.float64), g)
            for name, values in samples(keys).items()}


def _statistics(values, g):
    """Variance trace (+ s.e.), MSE (+ relative s.e.) and mean cosine of the estimates
    `values` (`[repeats, d]`) of the gradient `g`."""
    repeats = len(values)
    errors = np.sum((values - g) ** 2, axis=1)
    cosine = values @ g / (np.linalg.norm(values, axis=1) * np.linalg.norm(g) + 1e-30)
    # The trace is the mean of ||v_r - mean||^2 (times R/(R-1)): its s.e. is theirs.
    spread = np.sum((values - values.mean(0)) ** 2, axis=1)
    return {
        "variance": float(np.sum(np.var(values, axis=0, ddof=1))),
        "variance_se": float(spread.std() / math.sqrt(repeats)),
        "mse": float(errors.mean()),
        "rel_se": float(errors.std() / math.sqrt(repeats) / errors.mean()),
        "cosine": float(cosine.mean()),
    }


def _variance_sweep(report, size, key):
    sigma, rows = 0.5, []
    for d, n in report.progress(size.variance_cases, "quadratic variance"):
        f, x, g, traces = _quadratic(d)
        repeats = size.variance_repeats // (1 if d <= 10 else 8)
        candidates = _estimators(f, x, n, sigma, size.estimator_names)
        statistics = _error_statistics({name: estimate for name, (estimate, _, _)
                                        in candidates.items()}, x, g, repeats, key)
        for name, (_, theory_key, directions) in candidates.items():
            stats = statistics[name]
            theory = None if theory_key is None else traces[theory_key](sigma) / directions
            rows.append({
                "d": d, "num_samples": n, "estimator": name, "repeats": repeats,
                "variance": stats["variance"], "variance_se": stats["variance_se"],
                "theory": theory,
                "ratio": None if theory is None else stats["variance"] / theory,
                "mse": stats["mse"], "mse_rel_se": stats["rel_se"], "cosine": stats["cosine"],
            })
        rows.append({"d": d, "num_samples": n, "estimator": "jax.grad", "variance": 0.0,
                     "theory": 0.0, "mse": 0.0, "cosine": 1.0})
    report.table("quadratic: variance trace of one estimate vs closed form (sigma = 0.5)", rows)
    _plot_variance(report, rows, 10)


def _plot_variance(report, rows, d):
    figure, axis = _plots.subplots(figsize=(6, 4))
    names = dict.fromkeys(r["estimator"] for r in rows if r["d"] == d and r["variance"])
    for index, name in enumerate(names):
        mine = [r for r in rows if r["d"] == d and r["estimator"] == name]
        n = [r["num_samples"] for r in mine]
        line = axis.loglog(n, [r["variance"] for r in mine], "o", label=name,
                           color=f"C{index}")[0]
        if mine[0]["theory"] is not None:
            axis.loglog(n, [r["theory"] for r in mine], "-", color=line.get_color(), lw=0.8)
    axis.set_xlabel("num_samples (evaluations of f)")
    axis.set_ylabel("trace of the covariance of one estimate")
    axis.set_title(f"quadratic, d = {d}: measured (dots) vs closed form (lines)")
    axis.legend(fontsize=7)
    report.save_figure(figure, "variance")


# ------------------------------------------- direction kinds and the forward gradient
KINDS = {
    "gaussian": estimators.Gaussian(),
    "orthogonal": estimators.Orthogonal(),
    "low_rank r=1": estimators.LowRank(1),
    "low_rank r=4": estimators.LowRank(4),
    "sphere": estimators.Sphere(),
    "rademacher": estimators.Rademacher(),
}


def _matrix_quadratic(rows: int):
    """`_quadratic` of `d = rows^2 + rows` on the pytree `{"b": [rows], "w": [rows, rows]}`:
    `(f of the pytree, f of the flat vector, flat x, flat g, unravel)`."""
    d = rows * rows + rows
    f, x, g, _ = _quadratic(d)
    _, unravel = jax.flatten_util.ravel_pytree(
        {"b": jnp.zeros(rows), "w": jnp.zeros((rows, rows))})
    return lambda tree: f(_flat(tree)), f, x, g, unravel


def _flat(tree) -> jax.Array:
    """The leaves of `tree` flattened and concatenated, in `jax.tree.leaves` order."""
    return jax.flatten_util.ravel_pytree(tree)[0]


def _closed_form_trace(kind, leaf_grads, num_directions: int) -> float:
    """Variance trace of the mean of `num_directions` central estimates `(g . p_i) w_i`
    of `kind` (exact on a quadratic), `leaf_grads` the gradient's leaves (numpy).

    Orthogonal: `((d + 2)/n - 1/k) ||g||^2`, `k` groups; low rank `r`: `(sum_L ||g_L||^2
    (d + e_L) - ||g||^2) / n`, `e_L = 2 (m + n + r + 1) / r` on an `[m, n]` leaf, 2 on
    others; else the kind's `variance_factor(d) ||g||^2 / n` (`d + 1` Gaussian, `d - 1`
    sphere and Rademacher); see their docstrings."""
    d = sum(leaf.size for leaf in leaf_grads)
    norms = [float(np.sum(leaf**2)) for leaf in leaf_grads]
    g2, n = sum(norms), num_directions
    if isinstance(kind, estimators.Orthogonal):
        return ((d + 2) / n - 1 / (n // kind.group_size(n, d))) * g2
    if isinstance(kind, estimators.LowRank):
        excess = [2 * (sum(leaf.shape) + kind.rank + 1) / kind.rank if leaf.ndim == 2 else 2.0
                  for leaf in leaf_grads]
        return (sum(s * (d + e) for s, e in zip(norms, excess, strict=True)) - g2) / n
    return kind.variance_factor(d) * g2 / n


def _kind_estimators(problem, num_directions: int, sigma: float):
    """name -> (estimate(flat x, key) -> flat estimate, num_samples, kind of its closed
    form) with `num_directions` directions each on `problem` (`_matrix_quadratic`'s):
    antithetic `zeroth_order_grad` of every kind of `KINDS`, `forward_gradient` and
    evosax's Open_ES (Gaussian directions)."""
    f_tree, f_flat, x, _, unravel = problem
    n, zo = num_directions, estimators.zeroth_order_grad
    table = {
        name: (lambda p, k, kind=kind: _flat(zo(f_tree, unravel(p), k, num_samples=2 * n,
                                                sigma=sigma, directions=kind)), 2 * n, kind)
        for name, kind in KINDS.items()
    }
    table["forward_gradient"] = (lambda p, k: _flat(estimators.forward_gradient(
        f_tree, unravel(p), k, num_samples=n)), n, estimators.Gaussian())
    table["evosax Open_ES"] = (_evosax_grad(f_flat, x, 2 * n, sigma), 2 * n,
                               estimators.Gaussian())
    return table


def _direction_kinds(report, size, key):
    """Variance trace of each direction kind, the forward gradient and evosax against
    their closed forms, by number of directions."""
    sigma, rows, repeats = 0.5, [], size.kinds_repeats
    problem = _matrix_quadratic(size.kinds_rows)
    _, _, x, g, unravel = problem
    leaf_grads = [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(unravel(g))]
    for n in report.progress(size.kinds_directions, "direction kinds"):
        candidates = _kind_estimators(problem, n, sigma)
        statistics = _error_statistics({name: estimate for name, (estimate, _, _)
                                        in candidates.items()}, x, g, repeats, key)
        for name, (_, num_samples, kind) in candidates.items():
            stats = statistics[name]
            theory = _closed_form_trace(kind, leaf_grads, n)
            rows.append({
                "d": x.size, "num_directions": n, "estimator": name,
                "num_samples": num_samples, "repeats": repeats,
                "variance": stats["variance"], "variance_se": stats["variance_se"],
                "closed_form": theory, "ratio": stats["variance"] / theory,
                "ratio_se": stats["variance_se"] / theory,
            })
    shape = f"[{size.kinds_rows}, {size.kinds_rows}] + [{size.kinds_rows}]"
    report.table(
        f"direction kinds: variance trace of the antithetic estimate of a quadratic on "
        f"{shape} (d = {x.size}, sigma = {sigma}) vs closed form, over {repeats} keys; "
        f"forward_gradient: n jvps (on a quadratic the Gaussian rows' numbers: same keys, "
        f"same directions); evosax Open_ES: population 2n", rows)
    report.note("direction kinds: evosax", _EVOSAX_NOTE.format(
        version=importlib.metadata.version("evosax")))
    worst = max(abs(r["ratio"] - 1) / r["ratio_se"] for r in rows)
    report.note("direction kinds: worst |ratio - 1| / s.e.", worst)
    _plot_kinds(report, rows)


_EVOSAX_NOTE = (
    "evosax {version} Open_ES draws i.i.d. Gaussian directions only (no orthogonal, "
    "low-rank, sphere or Rademacher sampler): its rows stand beside the Gaussian ones")


def _plot_kinds(report, rows):
    """Variance trace against n, one log-log panel per estimator: measured (± s.e.), its
    closed form dashed, and the i.i.d. Gaussian one dotted for reference."""
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    columns = math.ceil(len(names) / 2)
    figure, axes = _plots.subplots(2, columns, figsize=(3.2 * columns, 6), sharex=True,
                                   sharey=True, layout="constrained", squeeze=False)
    gaussian = [r["closed_form"] for r in rows if r["estimator"] == "gaussian"]
    for index, (axis, name) in enumerate(zip(axes.flat, names, strict=False)):
        mine = [r for r in rows if r["estimator"] == name]
        n = [r["num_directions"] for r in mine]
        axis.plot(n, gaussian, ":", color="gray", label="Gaussian closed form")
        axis.plot(n, [r["closed_form"] for r in mine], "--_", color=f"C{index}", ms=12,
                  label="closed form")
        axis.errorbar(n, [r["variance"] for r in mine], [r["variance_se"] for r in mine],
                      fmt="o", ms=4, color=f"C{index}", label="measured")
        axis.set(xscale="log", yscale="log", title=name)
        axis.legend(fontsize=7)
    for axis in axes.flat[len(names):]:
        axis.set_visible(False)
    figure.supxlabel("directions n")
    figure.supylabel("trace of the covariance of one estimate")
    figure.suptitle(f"quadratic, d = {rows[0]['d']}: measured (± s.e.) vs closed form")
    report.save_figure(figure, "kinds_variance")


# -------------------------------------------------- Mohamed et al. Gaussian costs
COSTS = {  # name -> (cost(x, k, numpy module), its derivative in x)
    "(x-k)^2": (lambda x, k, m: (x - k) ** 2, lambda x, k, m: 2 * (x - k)),
    "exp(-k x^2)": (lambda x, k, m: m.exp(-k * x**2),
                    lambda x, k, m: -2 * k * x * m.exp(-k * x**2)),
    "cos(k x)": (lambda x, k, m: m.cos(k * x), lambda x, k, m: -k * m.sin(k * x)),
}


def _quadrature_variances(cost, derivative, mu, sigma, k):
    """Exact single-sample variances by 200-point Gauss-Hermite (weight exp(-u^2/2))."""
    u, weights = np.polynomial.hermite_e.hermegauss(200)
    weights = weights / math.sqrt(2 * math.pi)
    plus, minus = cost(mu + sigma * u, k, np), cost(mu - sigma * u, k, np)
    terms = {
        "PG none (score function)": plus * u / sigma,
        "ZO forward": (plus - cost(mu, k, np)) * u / sigma,
        "ZO antithetic": (plus - minus) * u / (2 * sigma),
        "jax.grad (pathwise)": derivative(mu + sigma * u, k, np),
    }
    return {name: float(weights @ t**2 - (weights @ t) ** 2) for name, t in terms.items()}


def _gaussian_costs(report, size, key):
    mu, sigma = 1.0, 1.0
    ks, count = size.cost_ks, size.cost_count
    rows, zo = [], estimators.zeroth_order_grad
    for cost_name, (cost, derivative) in report.progress(COSTS.items(), "Gaussian costs"):

        @jax.jit
        def samples(k, cost=cost):
            f = lambda p: cost(p[0], k, jnp)  # noqa: E731
            point = jnp.array([mu])
            options = {"sigma": sigma, "return_samples": True}
            grads = jax.vmap(jax.grad(f))(
                point + sigma * jax.random.normal(key, (count, 1)))
            return {
                "PG none (score function)": zo(f, point, key, num_samples=count,
                                               antithetic=False, baseline=None, **options),
                "ZO forward": zo(f, point, key, num_samples=count, antithetic=False,
                                 **options),
                "ZO antithetic": zo(f, point, key, num_samples=2 * count, **options),
                "jax.grad (pathwise)": grads,
            }

        for k in ks:
            exact = _quadrature_variances(cost, derivative, mu, sigma, k)
            measured = samples(k)
            for name, values in measured.items():
                values = np.asarray(values[:, 0], np.float64)
                variance = float(values.var(ddof=1))
                # s.e. of a sample variance: sqrt((m4 - var^2) / N).
                m4 = float(np.mean((values - values.mean()) ** 4))
                rows.append({
                    "cost": cost_name, "k": k, "estimator": name, "variance": variance,
                    "exact (quadrature)": exact[name], "ratio": variance / exact[name]
                    if exact[name] > 1e-12 else None,  # zero exact variance: no ratio
                    "rel_se": math.sqrt(max(m4 - variance**2, 0.0) / len(values)) / variance
                    if variance > 0 else None,
                })
    report.table(
        f"Mohamed et al. costs, N(mu={mu}, sigma={sigma}): single-sample variance vs "
        f"exact ({count} samples)", rows)
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    report.note("Gaussian costs: worst |ratio - 1|", float(max(abs(r - 1) for r in ratios)))


# -------------------------------------------- forward vs antithetic, equal budget
def _equal_budget(report, size, key):
    d, budget, repeats = 10, 16, size.budget_repeats
    sigmas, curvatures = size.budget_sigmas, size.budget_curvatures
    zo = estimators.zeroth_order_grad

    def make(antithetic):
        def estimate(curvature, sigma, key):
            f = lambda w: 0.5 * curvature * jnp.sum(w * w) + jnp.sum(w)  # noqa: E731
            # forward spends one evaluation on f(x): budget - 1 directions.
            n = budget if antithetic else budget - 1
            return zo(f, jnp.full((d,), 0.1), key, num_samples=n, sigma=sigma,
                      antithetic=antithetic)
        return jax.jit(jax.vmap(estimate, in_axes=(None, None, 0)))

    forward, central = make(False), make(True)
    keys = jax.random.split(key, repeats)
    rows = []
    for curvature in curvatures:
        g = np.full(d, 0.1 * curvature + 1.0)
        a = np.full(d, curvature)
        traces = _quadratic_traces(a, g, 0.0)
        for sigma in sigmas:
            measured_f = np.sum(np.var(np.asarray(forward(curvature, sigma, keys)), 0, ddof=1))
            measured_c = np.sum(np.var(np.asarray(central(curvature, sigma, keys)), 0, ddof=1))
            predicted_f = traces["forward"](sigma) / (budget - 1)
            predicted_c = traces["central"](sigma) / (budget // 2)
            rows.append({
                "curvature": curvature, "sigma": sigma,
                "forward_var": float(measured_f), "antithetic_var": float(measured_c),
                "measured_fwd/anti": float(measured_f / measured_c),
                "predicted_fwd/anti": predicted_f / predicted_c,
                "winner": "forward" if measured_f < measured_c else "antithetic",
                "predicted_winner": "forward" if predicted_f < predicted_c else "antithetic",
            })
    report.table(
        f"equal budget of {budget} evaluations (forward: {budget - 1} directions + f(x); "
        f"antithetic: {budget // 2} pairs), d = {d}, A = curvature * I, x = 0.1", rows)
    agree = sum(r["winner"] == r["predicted_winner"] for r in rows)
    report.note("equal budget: measured winner == predicted winner", f"{agree}/{len(rows)}")


# ------------------------------------------------------ throughput and memory
def _throughput(report, size, key):
    sizes, rows = size.throughput_sizes, []
    problems = [("quadratic", d) for d in sizes]
    problems += [("tanh(Mw), M 256 x d", 1000)] if size.throughput_tanh else []
    for problem, d in report.progress(problems, "throughput"):
        n = 32 if d >= 1_000_000 else 64
        if problem == "quadratic":
            f, x, _, _ = _quadratic(d)
        else:
            m = jax.random.normal(jax.random.key(1), (256, d)) / math.sqrt(d)
            x = jnp.full((d,), 0.1)
            f = lambda w, m=m: jnp.sum(jnp.tanh(m @ w))  # noqa: E731

        def bare(point, k, f=f, n=n):
            keys = jax.random.split(k, n)
            draws = jax.vmap(lambda kk: optax.tree.random_like(kk, point))(keys)
            return jnp.sum(jax.vmap(lambda u: f(point + 0.5 * u))(draws))

        candidates = {"bare: n vmapped evaluations": bare}
        candidates |= {name: est for name, (est, _, _) in _estimators(
            f, x, n, 0.5, size.estimator_names).items()}
        candidates["jax.grad"] = lambda point, k, f=f: jax.grad(f)(point)
        timings = _harness.compare(candidates, x, key, rounds=size.timing_rounds,
                                   min_round_s=0.02 if size.timing_rounds > 1 else 0.0)
        base = timings["bare: n vmapped evaluations"].median_s
        for row in _harness.timing_rows(timings, "bare: n vmapped evaluations",
                                        problem=problem, d=d, num_samples=n):
            row["estimates_per_s"] = 1e3 / row["median_ms"]
            row["throughput_vs_bare"] = base / (row["median_ms"] / 1e3)
            rows.append(row)
    report.table("throughput (one estimate per call; ratio = time / bare)", rows)
    _plot_throughput(report, [r for r in rows if r["d"] == sizes[-1]], sizes[-1])
    return rows


def _plot_throughput(report, rows, d):
    figure, axis = _plots.subplots(figsize=(7, 4))
    axis.barh([r["name"] for r in rows], [r["estimates_per_s"] for r in rows])
    axis.set_xscale("log")
    axis.set_xlabel("estimates per second")
    axis.set_title(f"quadratic, d = {d}, num_samples = {rows[0]['num_samples']} "
                   f"({jax.default_backend()}, {jax.device_count()} device(s))")
    report.save_figure(figure, "throughput")


def _memory(report, size, key):
    d, n, chunk = size.memory_d, 64, 8
    f, x, _, _ = _quadratic(d)
    rows = []
    for chunk_size in (None, chunk):
        def estimate(point, k, chunk_size=chunk_size):
            return estimators.zeroth_order_grad(f, point, k, num_samples=n, sigma=0.5,
                                                chunk_size=chunk_size)
        compiled, compile_s = _harness.compile_timed(estimate, x, key)
        peak = _harness.peak_bytes(compiled)
        row = {"d": d, "num_samples": n, "chunk_size": chunk_size, "compile_s": compile_s,
               "peak_MiB": None if peak is None else peak / 2**20, "median_s": None}
        if peak is not None and peak < 3 * 2**30:
            row["median_s"] = _harness.time_one(estimate, x, key, rounds=1,
                                                min_round_s=0.0).median_s
        else:
            row["note"] = "planned peak only (not run: > 3 GiB)"
        rows.append(row)
    report.table("memory: antithetic ZO, XLA's planned peak (compiled.memory_analysis)", rows)
    if rows[0]["peak_MiB"] and rows[1]["peak_MiB"]:
        report.note("memory: default (blocks) / chunk_size=8 peak",
                    rows[0]["peak_MiB"] / rows[1]["peak_MiB"])


def _forward_speed(report, size, key):
    """`forward_gradient` against `jax.grad` and antithetic `zeroth_order_grad` with as
    many directions (`2 n` evaluations), on an MLP, in interleaved rounds."""
    widths, batch_size = size.speed_mlp
    problem = _zo_memory.mlp(widths, batch_size)
    params_key, batch_key = jax.random.split(key)
    params = _zo_memory.random_values(problem.params, params_key)
    batch = _zo_memory.random_values(problem.batch, batch_key)
    loss = problem.loss
    candidates = {"jax.grad": lambda p, data, k: jax.grad(loss)(p, data)}
    for n in size.speed_directions:
        candidates[f"forward_gradient n={n}"] = (
            lambda p, data, k, n=n: estimators.forward_gradient(
                lambda q: loss(q, data), p, k, num_samples=n))
        candidates[f"zeroth_order_grad n={2 * n}"] = (
            lambda p, data, k, n=n: estimators.zeroth_order_grad(
                lambda q: loss(q, data), p, k, num_samples=2 * n))
    timings = _harness.compare(candidates, params, batch, key, rounds=size.timing_rounds,
                               min_round_s=0.02 if size.timing_rounds > 1 else 0.0)
    grad_s = timings["jax.grad"].median_s
    rows = []
    for n in size.speed_directions:
        forward = timings[f"forward_gradient n={n}"]
        zo = timings[f"zeroth_order_grad n={2 * n}"]
        rows.append({
            "model": problem.name, "num_directions": n, "jax.grad_ms": 1e3 * grad_s,
            "forward_ms": 1e3 * forward.median_s, "zo_antithetic_ms": 1e3 * zo.median_s,
            "forward/jax.grad": forward.median_s / grad_s,
            "zo/jax.grad": zo.median_s / grad_s,
            "forward/zo": forward.median_s / zo.median_s,
            "forward_compile_s": forward.compile_s, "zo_compile_s": zo.compile_s,
        })
    report.table("speed: forward_gradient (n jvps) vs jax.grad and antithetic "
                 "zeroth_order_grad (n directions, 2n evaluations), default options, "
                 "interleaved rounds (ratios of median times)", rows)


# ------------------------------------------------------- digits, accuracy objective
def _digits(report, size, key):
    x, y = _data.digits("centered")
    rows_used = size.digits_size
    inputs, labels = jnp.asarray(x[:rows_used]), jnp.asarray(y[:rows_used])
    params = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}

    def logits_fn(p):
        return inputs @ p["w"] + p["b"]

    def cross_entropy(p):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p), labels).mean()

    @jax.jit  # one program, not one per operation (the same numbers as op by op)
    def partly_trained(params):  # a few steps of gradient descent on CE
        for _ in range(10):
            params = jax.tree.map(lambda p, g: p - 0.5 * g, params,
                                  jax.grad(cross_entropy)(params))
        return params

    params = partly_trained(params)

    def accuracy(p):  # the non-differentiable objective, of the weights
        return jnp.mean(jnp.argmax(logits_fn(p), -1) == labels)

    def expected_accuracy(p):  # E_{y ~ softmax}[accuracy(y)], the PG objective
        probs = jax.nn.softmax(logits_fn(p))
        return jnp.mean(jnp.take_along_axis(probs, labels[:, None], -1))

    def sampled_accuracy(actions):
        return jnp.mean(actions == labels)

    exact_pg = jax.grad(expected_accuracy)(params)
    sigma = 0.05
    reference_zo = jax.jit(lambda k: estimators.zeroth_order_grad(
        accuracy, params, k, num_samples=size.digits_reference_samples, sigma=sigma,
        chunk_size=min(2**10, size.digits_reference_samples)))(jax.random.key(99))
    n, repeats = size.digits_samples_repeats
    policy = estimators.categorical_policy(logits_fn)
    zo = estimators.zeroth_order_grad
    candidates = {
        f"PG {b or 'none'} (categorical outputs)": (lambda p, k, b=b: estimators.policy_gradient(
            *policy, sampled_accuracy, p, k, num_samples=n, baseline=b), exact_pg)
        for b in (None, "mean", "leave_one_out")
    }
    candidates |= {
        "ZO antithetic (weights)": (lambda p, k: zo(accuracy, p, k, num_samples=n,
                                                    sigma=sigma), reference_zo),
        "ZO forward (weights)": (lambda p, k: zo(accuracy, p, k, num_samples=n, sigma=sigma,
                                                 antithetic=False), reference_zo),
        "SPSA (weights)": (lambda p, k: zo(accuracy, p, k, num_samples=n, sigma=sigma / 8,
                                           directions="rademacher"), reference_zo),
        "jax.grad of E[accuracy] (exact PG)": (lambda p, k: jax.grad(expected_accuracy)(p),
                                               exact_pg),
    }
    if not size.digits_all_estimators:
        kept = ("PG leave_one_out (categorical outputs)", "ZO antithetic (weights)")
        candidates = {name: candidates[name] for name in kept}
    flat = lambda tree: np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])  # noqa: E731
    keys = jax.random.split(key, repeats)
    batched = {name: jax.vmap(est, in_axes=(None, 0)) for name, (est, _) in candidates.items()}
    timings = _harness.compare(batched, params, keys, rounds=size.timing_rounds,
                               min_round_s=0.02 if size.timing_rounds > 1 else 0.0)
    rows = []
    for name, (_, target) in candidates.items():
        values = jax.jit(batched[name])(params, keys)
        values = np.stack([flat(jax.tree.map(lambda v, i=i: v[i], values))
                           for i in range(repeats)])

        def cosine(v, t):
            return float(np.mean(v @ t / (np.linalg.norm(v, axis=1) * np.linalg.norm(t)
                                          + 1e-30)))

        rows.append({
            "estimator": name, "num_samples": n,
            "cos to own target": cosine(values, flat(target)),
            "cos to grad E[acc]": cosine(values, flat(exact_pg)),
            "estimates_per_s": repeats / timings[name].median_s,
            "compile_s": timings[name].compile_s,
        })
    report.table(
        f"digits ({rows_used} examples, linear model at accuracy "
        f"{float(accuracy(params)):.3f}): own target = exact grad E[acc] for PG, a "
        f"{size.digits_reference_samples}-evaluation ZO estimate (sigma={sigma}) for ZO", rows)


def _versus_evosax(report, size, key):
    """Antithetic `zeroth_order_grad` (default arguments) vs evosax Open_ES, interleaved."""
    sigma, zo, rows = 0.5, estimators.zeroth_order_grad, []
    for d, n in report.progress(size.evosax_grid, "vs evosax"):
        f, x, _, _ = _quadratic(d)
        candidates = {
            "zeroth_order_grad": lambda p, k, f=f, n=n: zo(f, p, k, num_samples=n,
                                                           sigma=sigma),
            "evosax Open_ES": _evosax_grad(f, x, n, sigma),
        }
        timings = _harness.compare(candidates, x, key, rounds=size.timing_rounds,
                                   min_round_s=0.05 if size.timing_rounds > 1 else 0.0)
        ours, theirs = timings["zeroth_order_grad"], timings["evosax Open_ES"]
        rows.append({
            "d": d, "num_samples": n, "ours_ms": 1e3 * ours.median_s,
            "evosax_ms": 1e3 * theirs.median_s,
            "throughput ours/evosax": theirs.median_s / ours.median_s,
            "goal >= 1.1": theirs.median_s / ours.median_s >= 1.1,
            # paired over the interleaved rounds: log(evosax time / ours) per round
            **_stats.paired_columns(np.log(theirs.round_s), np.log(ours.round_s), "parity",
                                    digits=3),
            "ours_peak_MiB": None if ours.peak_bytes is None else ours.peak_bytes / 2**20,
            "evosax_peak_MiB": None if theirs.peak_bytes is None else
            theirs.peak_bytes / 2**20,
        })
    report.table("speed vs evosax Open_ES: antithetic estimate of a quadratic, sigma = 0.5, "
                 "same process, interleaved rounds (throughput ratio = evosax time / ours; "
                 "diff = mean log ratio over the rounds, paired tests against parity)",
                 rows)


def _memory_table(report, size):
    """MeZO's memory table: planned peaks of inference, `jax.grad`, backprop + Adam, ZO
    grads, the forward gradient and the ZO update, as ratios to inference and `jax.grad`."""
    for build, zo_grads, forward_grads, update_samples, grad in report.progress(
            size.memory_models, "planned memory"):
        problem = build()
        rows = _zo_memory.table(problem, zo_grads, update_samples, grad=grad,
                                forward_grads=forward_grads)
        report.table(f"planned peak vs inference: {problem.name}", rows,
                     screen=[column for column in rows[0] if column != "model"])  # in the title
        peaks = {row["computation"]: row["peak_MiB"] for row in rows}
        adam = peaks["backprop + Adam step (donated)"]
        update = peaks[f"zeroth_order_update n={update_samples} (donated)"]
        if adam and update:
            report.note(f"memory: backprop+Adam / ZO update, {problem.name}", adam / update)


def run(report: _harness.Report) -> None:
    """Runs every section (see the module docstring)."""
    size = report.sized(SIZES)
    key = jax.random.key(0)
    _gaussian_costs(report, size, key)
    _variance_sweep(report, size, key)
    _equal_budget(report, size, key)
    _direction_kinds(report, size, key)
    _throughput(report, size, key)
    _forward_speed(report, size, key)
    _versus_evosax(report, size, key)
    _memory(report, size, key)
    _memory_table(report, size)
    _digits(report, size, key)
