"""Su's ZO/PG equivalence on digits: ZO over the parameters vs the softmax policy gradient.

Su's post (https://kexue.fm/archives/7737) argues that for an objective computed on a
model's argmax output (here the accuracy `R(θ) = mean_i [argmax_c f_θ(x_i)_c = y_i]`),
the zeroth-order estimate over the parameters,

    ĝ = (1/m) Σ_j (R(θ + σ u_j) - R(θ - σ u_j)) / (2σ) u_j,   u_j ~ N(0, I),

approximates the policy gradient of the model's own softmax policy,

    g = ∇_θ mean_i Σ_c softmax(f_θ(x_i))_c r_ic,   r_ic = [c = y_i],

through a Taylor step `f_{θ+σu} ≈ f_θ + σ J u`: the parameter noise becomes logit
noise, and the argmax of noisy logits is a random (policy-like) choice of class. This
is an approximation, unlike the exact identity of the library (forward ZO with
Gaussian directions is REINFORCE on the Gaussian policy `N(θ, σ² I)` over the
parameters). Here it is measured: a ReLU MLP trained on scikit-learn's digits, at an
early checkpoint and a trained one, the accuracy of held-out rows as the objective;
`ĝ` from `jaxtricks.estimators.zeroth_order_grad` (antithetic, Gaussian) over a grid
of `σ` and of the number of samples `m`, `g` exact (`jax.grad` of the expected reward).

Reported per `(checkpoint, σ, m)`, over independent keys (mean ± s.e.): the cosine
`cos(ĝ, g)`, the norm ratio `|ĝ| / |g|`, and the fraction of estimates exactly 0 (no
perturbation flipped an argmax). The noise-free limit `m → ∞` is estimated from pairs
of independent estimates (`E[ĝ_k · ĝ_l] = |E ĝ|²`): `cos(E ĝ, g)` and `|E ĝ| / |g|`,
with jackknife standard errors over keys, also against the policy gradient of the
tempered policy `softmax(f / τ)`, to show which temperature the ZO estimate matches.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from benchmarks import _data, _models, _stats, _train
from jaxtricks import estimators


@dataclasses.dataclass(frozen=True)
class Size:
    """One size of the benchmark.

    Attributes:
        checkpoints: Adam steps of the checkpoints at which the gradients are compared
            (multiples of `CHECKPOINT_EVERY`).
        sigmas: the ZO perturbation scales.
        num_samples: the ZO sample counts `m` (evaluations of the objective).
        keys: independent ZO estimates per `(σ, m)` (the spread is over these).
        temperatures: the tempered softmax policies compared in the `m → ∞` table.
    """

    checkpoints: tuple[int, ...]
    sigmas: tuple[float, ...]
    num_samples: tuple[int, ...]
    keys: int
    temperatures: tuple[float, ...]


SIZES = {
    "full": Size(checkpoints=(20, 300), sigmas=(1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
                 num_samples=(16, 64, 256, 1024, 4096), keys=6,
                 temperatures=(0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)),
    "quick": Size(checkpoints=(20, 300), sigmas=(1e-3, 1e-2, 0.1, 1.0),
                  num_samples=(16, 256), keys=4, temperatures=(0.1, 0.3, 1.0, 3.0)),
    "smoke": Size(checkpoints=(5,), sigmas=(0.01, 0.3), num_samples=(4, 8), keys=3,
                  temperatures=(1.0,)),
}
HIDDEN = (32,)
CHECKPOINT_EVERY = 5  # divides every checkpoint
LEARNING_RATE = 1e-2
SPLIT = {"train": 1000, "test": 400, "seed": 0}


# ------------------------------------------------------------------ the two gradients
def argmax_reward(logits: jax.Array, rewards: jax.Array) -> jax.Array:
    """`mean_i r_{i, argmax_c logits_ic}`: the reward of the greedy choice.

    Args:
        logits: `[B, C]`.
        rewards: `[B, C]`, the reward of each class for each row (one-hot labels give
            the accuracy).

    Returns:
        A scalar, piecewise constant in `logits`.
    """
    chosen = jnp.argmax(logits, axis=-1)
    return jnp.mean(jnp.take_along_axis(rewards, chosen[:, None], axis=-1))


def expected_reward(logits: jax.Array, rewards: jax.Array,
                    temperature: float = 1.0) -> jax.Array:
    """`mean_i Σ_c softmax(logits_i / τ)_c r_ic`: the reward of the softmax policy."""
    probs = jax.nn.softmax(logits / temperature, axis=-1)
    return jnp.mean(jnp.sum(probs * rewards, axis=-1))


def expected_reward_policy_gradient(logits_fn, params, rewards: jax.Array,
                                    temperature: float = 1.0):
    r"""The exact policy gradient of the softmax policy of a classifier.

    With `p_i = softmax(logits_fn(params)_i / τ)` and rewards `r_ic`::

        g = ∇_θ mean_i Σ_c p_ic r_ic = mean_i E_{c ~ p_i}[r_ic ∇_θ log p_ic],

    the expectation REINFORCE samples, here summed over the classes exactly (by
    `jax.grad` of the expected reward, the score-function identity being
    `∇ p = p ∇ log p`).

    Args:
        logits_fn: `params -> logits [B, C]`.
        params: any pytree of float arrays.
        rewards: `[B, C]`.
        temperature: `τ > 0`.

    Returns:
        The gradient, shaped like `params`.
    """
    return jax.grad(lambda p: expected_reward(logits_fn(p), rewards, temperature))(params)


# ------------------------------------------------------------------ comparisons
def cosines_and_ratios(estimates: np.ndarray, target: np.ndarray):
    """Per-estimate `cos(ĝ_k, g)` and `|ĝ_k| / |g|`; estimates `[K, d]`, target `[d]`.

    An estimate of exactly 0 has cosine 0 (it points nowhere), not NaN.
    """
    estimates = np.asarray(estimates, np.float64)
    target = np.asarray(target, np.float64)
    norms = np.linalg.norm(estimates, axis=1)
    target_norm = np.linalg.norm(target)
    dots = estimates @ target
    cosines = np.divide(dots, norms * target_norm, out=np.zeros_like(dots), where=norms > 0)
    return cosines, norms / target_norm


def noise_free_comparison(samples: np.ndarray, target: np.ndarray):
    """`cos(μ, g)` and `|μ| / |g|` for the mean `μ = E s` of i.i.d. per-direction samples.

    With `N` samples `s_j` (the per-direction estimates, whose mean is the ZO
    estimate), `|μ|²` is estimated without the noise by the mean of `s_j · s_l` over
    pairs `j != l`, `(|Σ s|² - Σ |s|²) / (N (N - 1))` (unbiased: independent samples
    share only their mean), and `μ · g` by `mean_j s_j · g`. Standard errors by the
    jackknife over the groups (keys) of `samples` `[K, J, d]`. Where the noise swamps
    `|μ|²` (its estimate <= 0) the figures are NaN.

    Returns:
        `((cosine, se), (ratio, se))`.
    """
    samples = np.asarray(samples, np.float64)
    target = np.asarray(target, np.float64)
    target_norm = np.linalg.norm(target)
    sums = samples.sum(1)                                  # [K, d]
    squares = np.einsum("kjd,kjd->k", samples, samples)    # [K]
    per_group = samples.shape[1]

    def figures(groups):
        count = per_group * groups.sum()
        if count < 2:
            return math.nan, math.nan
        total = sums[groups].sum(0)
        mean_square = (total @ total - squares[groups].sum()) / (count * (count - 1))
        if not mean_square > 0:
            return math.nan, math.nan
        mean_norm = math.sqrt(mean_square)
        return float(total @ target / count / (mean_norm * target_norm)), mean_norm / target_norm

    keys = len(samples)
    full = figures(np.ones(keys, bool))
    if keys < 2:
        return (full[0], math.nan), (full[1], math.nan)
    leave_one_out = np.array([figures(np.arange(keys) != k) for k in range(keys)])
    spread = np.sqrt((keys - 1) * np.mean(
        (leave_one_out - leave_one_out.mean(0)) ** 2, axis=0))
    return (full[0], float(spread[0])), (full[1], float(spread[1]))


# ------------------------------------------------------------------ the experiment
def _checkpoints(size: Size):
    """The data, the model's apply and its params after each checkpoint's Adam steps."""
    x, y = _data.digits("unit")
    data = _data.split(x, y, **SPLIT)
    model = _models.MLP(HIDDEN)
    params = jax.jit(model.init)(jax.random.key(0), data.x_train[:1])
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

    def loss_fn(params, _):
        logits = model.apply(params, x_train)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_train).mean()

    # One training run; `eval_fn` keeps the params after every CHECKPOINT_EVERY steps.
    trained = jax.jit(lambda p: _train.train(
        loss_fn, p, optax.adam(LEARNING_RATE), steps=max(size.checkpoints),
        segments=max(size.checkpoints) // CHECKPOINT_EVERY, eval_fn=lambda q: q))(params)
    checkpoints = {steps: jax.tree.map(lambda leaf, s=steps: leaf[s // CHECKPOINT_EVERY - 1],
                                       trained.evals)
                   for steps in size.checkpoints}
    return model, data, checkpoints


def _zo_samples(objective, params, sigma, keys, num_samples):
    """`[K, num_samples / 2, d]`: the flattened per-direction antithetic ZO estimates
    of each key (their mean over the middle axis is the key's ZO estimate)."""
    def one(key):
        samples = estimators.zeroth_order_grad(objective, params, key,
                                               num_samples=num_samples, sigma=sigma,
                                               return_samples=True)
        return jax.vmap(lambda tree: ravel_pytree(tree)[0])(samples)

    return jax.lax.map(one, keys)


@jax.jit
def _logit_jacobian_rms(logits, params) -> jax.Array:
    """`sqrt(mean_ic |∇_θ logits_ic|²)` of `logits(params)`: the std of a logit moved by
    `J u`, `u ~ N(0, I)`, per unit of `σ` (the Taylor step's logit noise)."""
    flat, unravel = ravel_pytree(params)
    jacobian = jax.jacrev(lambda flat: logits(unravel(flat)))(flat)
    return jnp.sqrt(jnp.mean(jnp.sum(jacobian ** 2, axis=-1)))


def run(report) -> None:
    size = report.sized(SIZES)
    model, data, checkpoints = _checkpoints(size)
    x_test = jnp.asarray(data.x_test)
    rewards = jax.nn.one_hot(data.y_test, _data.NUM_CLASSES)
    report.note("setup", f"MLP {HIDDEN} on digits ({SPLIT['train']} train rows, Adam), "
                f"accuracy of {len(data.y_test)} held-out rows as the objective; ZO "
                f"antithetic Gaussian, {size.keys} keys per (sigma, m), the estimate for m "
                f"samples the mean of a key's first m/2 directions")

    logits_fn = jax.tree_util.Partial(lambda params, x: model.apply(params, x), x=x_test)

    samples_fn = jax.jit(
        lambda params, sigma, keys: _zo_samples(
            lambda p: argmax_reward(logits_fn(p), rewards), params, sigma, keys,
            max(size.num_samples)))
    policy_gradient = jax.jit(lambda params, tau: ravel_pytree(
        expected_reward_policy_gradient(logits_fn, params, rewards, tau))[0])
    main_rows, limit_rows, key = [], [], jax.random.key(0)
    for steps, params in checkpoints.items():
        accuracy = float(jax.jit(argmax_reward)(logits_fn(params), rewards))
        pg = {tau: np.asarray(policy_gradient(params, tau))
              for tau in sorted({1.0, *size.temperatures})}
        jacobian_rms = float(_logit_jacobian_rms(logits_fn, params))
        checkpoint = f"{steps} steps (acc {accuracy:.3f})"
        for sigma in report.progress(size.sigmas, f"sigma, checkpoint {steps}"):
            key, cell_key = jax.random.split(key)
            samples = np.asarray(samples_fn(params, sigma, jax.random.split(cell_key,
                                                                            size.keys)))
            prefix_sums = np.cumsum(samples, axis=1)
            for num_samples in sorted(size.num_samples):
                estimates = prefix_sums[:, num_samples // 2 - 1] / (num_samples // 2)
                cosines, ratios = cosines_and_ratios(estimates, pg[1.0])
                main_rows.append({
                    "checkpoint": checkpoint, "sigma": sigma, "m": num_samples,
                    "cos": _stats.mean_se(cosines, digits=3),
                    "norm_ratio": _format(_stats.summary(ratios)),
                    "zero_frac": float(np.mean(~np.any(estimates != 0, axis=1))),
                })
            limit_rows.append(_limit_row(checkpoint, sigma, samples, pg,
                                         sigma * jacobian_rms))
    report.table("ZO over the parameters vs the softmax policy gradient (tau=1), "
                 "mean ± s.e. over keys", main_rows)
    report.table(f"m -> infinity (all {size.keys} x {max(size.num_samples) // 2} "
                 "directions, noise removed), ± jackknife s.e. over keys; the tempered "
                 "policy that matches best", limit_rows)


def _limit_row(checkpoint, sigma, samples, pg, logit_noise) -> dict:
    (cos, cos_se), (ratio, ratio_se) = noise_free_comparison(samples, pg[1.0])
    matched = {tau: noise_free_comparison(samples, g) for tau, g in pg.items()}
    best = max(matched, key=lambda tau: np.nan_to_num(matched[tau][0][0], nan=-np.inf))
    (best_cos, best_se), (best_ratio, _) = matched[best]
    return {
        "checkpoint": checkpoint, "sigma": sigma,
        "cos_limit": f"{cos:.3f} ± {cos_se:.3f}",
        "norm_ratio_limit": f"{ratio:.3g} ± {ratio_se:.2g}",
        # Gaussian logit noise of std s on two logits vs the logistic difference of
        # two Gumbels: Phi(z / (sqrt(2) s)) ~ sigmoid(1.7 z / (sqrt(2) s)), tau ~ 0.83 s.
        "logit_noise": logit_noise, "tau_probit": 0.83 * logit_noise,
        "best_tau": best, "cos_at_best_tau": f"{best_cos:.3f} ± {best_se:.3f}",
        "norm_ratio_at_best_tau": f"{best_ratio:.3g}",
    }


def _format(summary: _stats.Summary) -> str:
    return f"{summary.mean:.3g} ± {summary.se:.2g}"
