"""Zeroth-order (random-perturbation) gradient estimator (spec sections 5.2-5.5)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks
from jaxtricks.estimators import _baselines, _sampling

ZEROTH_ORDER_BASELINES = (True, False, "optimal")


def zeroth_order_grad(
    fn: Callable,
    params,
    key: jax.Array,
    *,
    num_samples: int,
    sigma: jax.typing.ArrayLike = 1e-3,
    antithetic: bool = True,
    directions: str = "gaussian",
    baseline: bool | str = True,
    chunk_size: int | None = None,
    return_samples: bool = False,
    sample_sharding: jax.sharding.Sharding | None = None,
):
    r"""Estimates the gradient of the smoothed `fn` at `params` from values of `fn` alone.

    With directions `u_1..u_n` (shaped like `params`) and `sigma > 0`:

    - antithetic (central): `g = (1/n) sum_i (f(x + sigma u_i) - f(x - sigma u_i)) /
      (2 sigma) w_i`, `n = num_samples / 2` directions;
    - forward: `g = (1/n) sum_i (f(x + sigma u_i) - b_i) / sigma w_i`, `n = num_samples`
      directions, with the baseline `b_i = f(x)` (`baseline=True`, one more evaluation),
      `b_i = 0` (`False`, the raw score-function form, whose variance grows like
      `1/sigma^2`) or the post's variance-minimising `b* = E[f(x + sigma u) ||w||^2] /
      E[||w||^2]` (`"optimal"`), estimated from the other samples
      (`b_i = sum_{j!=i} f_j ||w_j||^2 / sum_{j!=i} ||w_j||^2`) so that it stays unbiased.

    `w_i = u_i ~ N(0, I)` ("gaussian"; unbiased for the gradient of the Gaussian smoothing
    `E_u f(x + sigma u)`, which on a quadratic is the gradient itself), `u_i = v_i`
    uniform on the unit sphere and `w_i = d v_i` ("sphere", `d` the number of
    parameters; the gradient of the ball smoothing), `u_i = w_i = ±1` ("rademacher",
    SPSA). Spec section 5.4 lists them, 5.5 their covariances on a quadratic. With
    Gaussian directions the forward estimate is exactly the policy gradient of the
    Gaussian policy `N(x, sigma^2 I)` (see `gaussian_policy`).

    Sample `i` uses the key `jax.random.split(key, n)[i]` alone. Without `chunk_size`
    all samples are evaluated in one `jax.vmap` (memory `O(num_samples x params)`); with
    it, `chunk_size` evaluations at a time in a `lax.map`/`lax.scan` loop, each direction
    regenerated from its key for the weighted sum instead of stored (MeZO's seed trick),
    so the memory is `O(chunk_size x params)`, for the same numbers.

    Args:
        fn: `fn(params) -> scalar`, the objective (need not be differentiable).
        params: the point `x`, any pytree of float arrays.
        key: a `jax.random` key.
        num_samples: the number of perturbed evaluations of `fn`.
        sigma: the perturbation scale, `> 0`. The default 1e-3 is MeZO's, for smooth
            objectives; a non-smooth one (accuracy, a hard threshold) needs a `sigma` of
            the scale over which it changes (e.g. 0.05-0.5), or the estimate is mostly 0.
        antithetic: central differences over `±u` (`num_samples` must be even); the
            baseline then cancels and is ignored.
        directions: "gaussian", "sphere" or "rademacher".
        baseline: True (`f(x)`), False (none) or "optimal"; forward differences only.
        chunk_size: evaluations per chunk (a divisor of `num_samples`, even when
            antithetic), or None for all at once.
        return_samples: return the per-direction estimates `c_i w_i`, each leaf with a
            leading axis of the number of directions (`num_samples / 2` when antithetic,
            else `num_samples`); their mean over that axis is the estimate.
        sample_sharding: a `jax.sharding.Sharding` of the 1-D array of sample keys (e.g.
            `NamedSharding(mesh, P("samples"))`): the samples are then evaluated on
            the mesh's devices, `params` replicated; same numbers as on one device.

    Returns:
        The gradient estimate, shaped like `params` (or the per-direction estimates).

    Raises:
        ValueError: for `num_samples < 1`, odd `num_samples` with `antithetic`,
            `sigma <= 0`, a non-scalar `fn` output, a `chunk_size` that does not divide
            `num_samples`, an unknown `directions` or `baseline`.

    References:
        Su, "殊途同归的策略梯度与零阶优化", https://kexue.fm/archives/7737 (2020).
        Nesterov & Spokoiny, "Random gradient-free minimization of convex functions"
        (2017). Spall, SPSA (1992). Salimans et al., https://arxiv.org/abs/1703.03864.
        Malladi et al. (MeZO), https://arxiv.org/abs/2305.17333.
    """
    _check_arguments(fn, params, num_samples, sigma, antithetic, directions, baseline,
                     chunk_size)
    num_directions = num_samples // 2 if antithetic else num_samples
    per_chunk = num_directions if chunk_size is None else chunk_size * num_directions // (
        num_samples)
    keys = jax.random.split(key, num_directions).reshape(-1, per_chunk)

    def evaluate(chunk_keys):
        def one_direction(one_key):
            perturbation, weight = _sampling.direction(one_key, params, directions)
            plus = fn(optax.tree.add_scale(params, sigma, perturbation))
            if antithetic:
                return plus, fn(optax.tree.add_scale(params, -sigma, perturbation))
            return plus, optax.tree.norm(weight, squared=True)

        return jax.vmap(one_direction)(_sampling.constrain(chunk_keys, sample_sharding))

    plus, second = jax.tree.map(lambda v: v.reshape(-1), jax.lax.map(evaluate, keys))
    if antithetic:
        coefficients = (plus - second) / (2 * sigma)
    else:
        centre = {True: fn(params), False: None, "optimal": "optimal"}[baseline]
        coefficients = _baselines.centred_rewards(plus, centre, second) / sigma
    coefficients = coefficients.reshape(keys.shape)

    def weights(chunk_keys):
        chunk_keys = _sampling.constrain(chunk_keys, sample_sharding)
        return jax.vmap(lambda k: _sampling.direction(k, params, directions)[1])(chunk_keys)

    if return_samples:
        samples = jax.lax.map(
            lambda chunk: _sampling.scale_samples(chunk[1], weights(chunk[0])),
            (keys, coefficients),
        )
        return jax.tree.map(lambda s: s.reshape((num_directions, *s.shape[2:])), samples)

    def accumulate(total, chunk):
        return optax.tree.add(total, _sampling.weighted_sum(chunk[1], weights(chunk[0]))), None

    zeros = jax.tree.map(
        lambda p: jnp.zeros(p.shape, jnp.result_type(coefficients, p)), params
    )
    total, _ = jax.lax.scan(accumulate, zeros, (keys, coefficients))
    return jax.tree.map(lambda t, p: (t / num_directions).astype(p.dtype), total, params)


def _check_arguments(fn, params, num_samples, sigma, antithetic, directions, baseline,
                     chunk_size) -> None:
    checks.check_positive_int("num_samples", num_samples)
    if antithetic and num_samples % 2:
        raise ValueError(
            "num_samples must be even with antithetic=True (two evaluations per "
            f"direction), got {num_samples}."
        )
    checks.check_scalar("sigma", sigma, low=0.0, low_inclusive=False)
    _sampling.check_direction_kind(directions)
    checks.check_choice("baseline", baseline, ZEROTH_ORDER_BASELINES)
    if baseline == "optimal" and not antithetic:
        checks.check_positive_int("num_samples", num_samples, minimum=2)
    if chunk_size is not None:
        checks.check_positive_int("chunk_size", chunk_size)
        if num_samples % chunk_size or (antithetic and chunk_size % 2):
            raise ValueError(
                f"chunk_size must divide num_samples={num_samples}"
                + (" and be even with antithetic=True" if antithetic else "")
                + f", got {chunk_size}."
            )
    _sampling.check_scalar_output("fn", jax.eval_shape(fn, params))
