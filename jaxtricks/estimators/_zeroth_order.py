"""Zeroth-order (random-perturbation) gradient estimator."""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxtricks._src import keys
from jaxtricks._src.typing import KeyLike, PyTree
from jaxtricks.estimators import _baselines, _one_pass, _plan, _sampling, _two_phase


def zeroth_order_grad(
    fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    key: KeyLike,
    *,
    num_samples: int,
    sigma: jax.typing.ArrayLike = 1e-3,
    antithetic: bool = True,
    directions: str = "gaussian",
    baseline: str | jax.typing.ArrayLike | None = "unperturbed",
    chunk_size: int | None = None,
    return_samples: bool = False,
    sample_sharding: jax.sharding.Sharding | None = None,
) -> PyTree:
    r"""Estimates the gradient of the smoothed `fn` at `params` from values of `fn` alone.

    With directions `u_1..u_n` (shaped like `params`) and `sigma > 0`:

    - antithetic (central): `g = (1/n) sum_i (f(x + sigma u_i) - f(x - sigma u_i)) /
      (2 sigma) w_i`, `n = num_samples / 2` directions;
    - forward: `g = (1/n) sum_i (f(x + sigma u_i) - b_i) / sigma w_i`, `n = num_samples`
      directions, with the baseline `b_i = f(x)` ("unperturbed", the default, one more
      evaluation), `b_i = 0` (None, the raw score-function form, whose variance grows
      like `1/sigma^2`), the post's variance-minimising `b* = E[f(x + sigma u) ||w||^2]
      / E[||w||^2]` ("optimal"), estimated from the other samples
      (`b_i = sum_{j!=i} f_j ||w_j||^2 / sum_{j!=i} ||w_j||^2`) so that it stays
      unbiased, "mean", "leave_one_out" or a scalar, as in `policy_gradient`.

    `w_i = u_i ~ N(0, I)` ("gaussian"; unbiased for the gradient of the Gaussian smoothing
    `E_u f(x + sigma u)`, which on a quadratic is the gradient itself), `u_i = v_i`
    uniform on the unit sphere and `w_i = d v_i` ("sphere", `d` the number of
    parameters; the gradient of the ball smoothing), `u_i = w_i = ±1` ("rademacher",
    SPSA; Spall, 1992); Nesterov & Spokoiny (2017) derive the Gaussian and ball
    smoothings. With Gaussian directions the forward estimate is exactly, sample by
    sample, REINFORCE on the Gaussian policy `N(x, sigma^2 I)` over the parameters (an
    identity; see `gaussian_policy`, which also says how this differs from Su's post).

    Sample `i` uses the key `jax.random.split(key, n)[i]` alone. Without `chunk_size`,
    where each coefficient needs its own direction only (antithetic, or the baseline
    "unperturbed", None or a scalar), one `lax.scan` over blocks of directions draws
    each block once, evaluates it and adds it to the estimate; a block's arrays hold at
    most 2^20 numbers on CPU (2^27 on accelerators) and at least two directions, the
    largest such divisor of their number: memory `O(params + block)`, and speed from
    arrays that stay in cache. With a pooled baseline ("mean", "leave_one_out",
    "optimal"), `return_samples` or `sample_sharding`, every direction is drawn once,
    evaluated in one `jax.vmap` and kept (memory `O(num_samples x params)`). With
    `chunk_size`, in two phases (MeZO's seed trick): a loop evaluates `chunk_size`
    perturbed points at a time and keeps only the values, then the estimate is built
    leaf by leaf, each direction's leaf drawn again from its key, fused with its
    accumulation. Planned peak, in params `P` (float32):
    with one direction per chunk (`chunk_size` 2 antithetic, 1 forward) the perturbed
    points are built in the output's buffers, `2 P` plus one evaluation's activations,
    no more than `jax.grad` (`2 P` plus the backward pass' activations; "sphere" and
    "optimal", whose draws feed a reduction, may add up to `P`); with more, `(2 +
    chunk_size) P`. Every direction is drawn once per use (twice forward, three times
    antithetic), which costs no more time than one chunked pass. The numbers are those
    of the default estimate up to float32 summation order (a few ulps). For MeZO's
    memory (no gradient at all, inference plus a leaf), `zeroth_order_update`.

    Precision: the perturbed points are added in float32 (or wider) and rounded once
    to the params' dtype, and the estimate uses `max(sigma, sigma_min)` with
    `sigma_min = 4 max_j eps_j |x_j| / s`: four spacings of the dtype
    (`eps = jnp.finfo(dtype).eps`) at the largest parameter, `s` the typical `|u_j|`
    (1 for "gaussian" and "rademacher", `1/sqrt(d)` for "sphere"). A smaller step is
    rounded away (`x + sigma u == x` coordinate by coordinate once `sigma |u_j| <
    eps |x_j| / 2`), which would give an estimate of exactly 0: bfloat16 params with
    the default `sigma = 1e-3` are so estimated at `sigma = 2^-5 max_j |x_j|`. At
    `sigma_min` the rounding biases Gaussian and sphere estimates by a relative
    `2 exp(-2 pi^2 16)`, negligible, and moves each SPSA step by at most `sigma / 8`
    (see `_sampling.resolved_sigma` for the derivation). `sigma_min` is computed from
    `params` at run time, so it applies under `jit` and `vmap` too; in float32 it is
    below `1e-3` unless `max |x_j| > 2000`. The objective's value must resolve the
    differences `f(x + sigma u) - f(x) ~ sigma u . grad f` as well: compute it in
    float32 for low-precision params (the estimator cannot check that), or keep
    `sigma` above `rounding_floor_sigma(f(x), ||grad f||, dtype, ...)`, below which the
    rounding of the values dominates the estimate's variance (`rounding_variance`
    predicts it).

    Args:
        fn: `fn(params) -> scalar`, the objective (need not be differentiable).
        params: the point `x`, any pytree of float arrays.
        key: a `jax.random.key` or a legacy `jax.random.PRNGKey` (the same numbers).
        num_samples: the number of perturbed evaluations of `fn`.
        sigma: the perturbation scale, `> 0`, raised to `sigma_min` where the dtype
            does not resolve it (see Precision). The default 1e-3 is MeZO's, for smooth
            objectives; a non-smooth one (accuracy, a hard threshold) needs a `sigma` of
            the scale over which it changes (e.g. 0.05-0.5), or the estimate is mostly 0.
            Checked when concrete; a traced `sigma` is not (it has no value at trace
            time) and enters the same `max`, so a traced `sigma <= 0` acts as
            `sigma_min` (and gives inf/NaN where that is 0, all params 0).
        antithetic: central differences over `±u` (`num_samples` must be even); the
            baseline then cancels and is ignored.
        directions: "gaussian", "sphere" or "rademacher".
        baseline: a name of `BASELINES` ("unperturbed" for `f(x)`, None for none,
            "mean", "leave_one_out", "optimal") or a scalar array; forward differences
            only. Booleans are refused: the former True is "unperturbed", False None.
            `fn(params)` is evaluated (and traced) for "unperturbed" only.
        chunk_size: evaluations per chunk (a divisor of `num_samples`, even when
            antithetic), or None for the blocks above (see above for the memory of each).
        return_samples: return the per-direction estimates `c_i w_i`, each leaf with a
            leading axis of the number of directions (`num_samples / 2` when antithetic,
            else `num_samples`); their mean over that axis is the estimate.
        sample_sharding: a `jax.sharding.Sharding` of the 1-D array of sample keys (e.g.
            `NamedSharding(mesh, P("samples"))`): the samples are then evaluated on
            the mesh's devices, all at once, `params` replicated; same numbers as on
            one device.
            With `chunk_size`, the evaluations of a chunk are (one direction per
            chunk: nothing to shard).

    Returns:
        The gradient estimate, shaped like `params` (or the per-direction estimates).

    Raises:
        ValueError: for `num_samples < 1`, odd `num_samples` with `antithetic`,
            a concrete `sigma <= 0`, a non-scalar `fn` output, a `chunk_size` that does
            not divide `num_samples`, an unknown `directions`, a boolean or unknown
            `baseline` (the message lists the accepted ones), a baseline that needs
            more samples, or a `key` that is neither a typed key nor a `PRNGKey`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> def loss(p):
        ...     return jnp.sum(p["w"] ** 2)
        >>> params = {"w": jnp.array([1.0, -2.0])}
        >>> g = estimators.zeroth_order_grad(
        ...     loss, params, jax.random.key(0), num_samples=64, chunk_size=2)
        >>> g["w"].shape
        (2,)

    References:
        Su, "殊途同归的策略梯度与零阶优化", https://kexue.fm/archives/7737 (2020), for the
        "optimal" baseline. Nesterov & Spokoiny, "Random gradient-free minimization of
        convex functions" (2017). Spall, SPSA (1992). Salimans et al., https://arxiv.org/abs/1703.03864.
        Malladi et al. (MeZO), https://arxiv.org/abs/2305.17333.
    """
    key = keys.as_key(key, "key")
    _plan.check_arguments(num_samples, sigma, antithetic, directions, baseline, chunk_size)
    plan = _plan.Plan(fn, params, num_samples, sigma, antithetic, directions, baseline,
                 chunk_size, sample_sharding)
    sample_keys = _sampling.sample_keys(key, plan.num_directions)
    if chunk_size is None:
        one_pass = antithetic or not _baselines.pools_samples(baseline)
        if one_pass and not return_samples and sample_sharding is None:
            return _one_pass.estimate(plan, sample_keys)
        coefficients, weights = plan.stored(sample_keys)  # every direction at once
        if return_samples:
            return _sampling.scale_samples(coefficients, weights)
        return plan.mean(_sampling.weighted_sum(coefficients, weights))

    if not return_samples:
        return _two_phase.estimate(plan, sample_keys, chunk_size)
    chunk_keys = sample_keys.reshape(plan.num_chunks, -1)
    coefficients = plan.coefficients(
        *jax.tree.map(lambda v: v.reshape(-1), jax.lax.map(plan.chunk_values, chunk_keys))
    ).reshape(chunk_keys.shape)
    samples = jax.lax.map(
        lambda chunk: _sampling.scale_samples(chunk[1], plan.chunk_weights(chunk[0])),
        (chunk_keys, coefficients),
    )
    return jax.tree.map(lambda s: s.reshape((plan.num_directions, *s.shape[2:])), samples)
