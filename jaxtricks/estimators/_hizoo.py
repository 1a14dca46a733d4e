"""HiZOO: the zeroth-order estimate with directions scaled by a diagonal Hessian estimate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks
from jaxtricks._src.typing import KeyLike, PyTree
from jaxtricks.estimators import _plan, _sampling, _transforms


class HiZOOState(NamedTuple):
    """The state of `hizoo_estimate`.

    Attributes:
        count: the number of updates so far (int32).
        key: the raw data of the transform's threefry key (uint32[2]).
        hessian: `Sigma`, the diagonal Hessian estimate, shaped like the params (ones
            at first).

    References:
        Zhao et al. (HiZOO), https://arxiv.org/abs/2402.15173.
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
    key: jax.Array
    hessian: PyTree


def hizoo_estimate(
    key: KeyLike,
    *,
    num_samples: int,
    smoothing: optax.ScalarOrSchedule,
    sigma: jax.typing.ArrayLike = 1e-3,
) -> optax.GradientTransformationExtraArgs:
    r"""HiZOO: a central estimate along `Sigma^{-1/2} u`, `Sigma` a diagonal Hessian EMA.

    .. math::

        \ell^\pm_i = f(x \pm \sigma \Sigma_t^{-1/2} u_i), \quad
        \Sigma_{t+1} = (1 - \alpha_t) \Sigma_t + \frac{\alpha_t}{n} \sum_i
        \frac{|\ell^+_i + \ell^-_i - 2 f(x)|}{2 \sigma^2} \Sigma_t u_i^2, \quad
        g_t = \frac{1}{n} \sum_i \frac{\ell^+_i - \ell^-_i}{2 \sigma}
        \Sigma_{t+1}^{-1/2} u_i

    (elementwise), `u_i ~ N(0, I)` drawn as `zeroth_order_grad` draws them from
    `fold_in(key, t)`, `f = value_fn` passed to `update`, `Sigma_0 = 1`: the official
    code's step (`n = 1` there), `2n + 1` evaluations. On a quadratic the expected update
    settles at `Sigma = (1 + d / 2) diag(H)`. ZO-SGD with it: `chain(hizoo_estimate(...),
    optax.sgd(lr))`; the state holds `Sigma`, one params-sized buffer. The curvature is
    divided by `sigma^2`: choose `sigma` above its rounding (:ref:`estimators-zo-state`).

    Args:
        key: a `jax.random.key` (threefry, rbg or unsafe_rbg) or a legacy `PRNGKey`.
        num_samples: perturbed evaluations per step, even (`n = num_samples / 2`).
        smoothing: `alpha_t` in `[0, 1)`, or an optax schedule of the step count.
        sigma: the perturbation scale `> 0` (raised to the dtype's floor).

    Returns:
        An `optax.GradientTransformationExtraArgs` whose state is a `HiZOOState`.

    Raises:
        ValueError: naming the argument, for a `key` that is not a key, an odd or
            non-positive `num_samples`, `smoothing` outside `[0, 1)`, a bad `sigma`; at
            `update`, without `params` or `value_fn`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> loss = lambda p: jnp.sum(jnp.array([1.0, 100.0]) * p ** 2)  # H = diag(2, 200)
        >>> tx = estimators.hizoo_estimate(jax.random.key(0), num_samples=16,
        ...                                smoothing=0.05, sigma=0.1)
        >>> step = jax.jit(lambda s: tx.update(None, s, jnp.ones(2), value_fn=loss)[1])
        >>> state = tx.init(jnp.ones(2))
        >>> for _ in range(200):
        ...     state = step(state)
        >>> jnp.round(state.hessian / jnp.array([2.0, 200.0]))  # (1 + d/2) diag(H)
        Array([2., 2.], dtype=float32)

    References:
        Zhao et al., "Second-order fine-tuning without pain for LLMs: a Hessian informed
        zeroth-order optimizer" (HiZOO), https://arxiv.org/abs/2402.15173, Algorithm 1;
        code https://github.com/Yanjun-Zhao/HiZOO, `zo_Hessian_step_update`.
    """
    checks.check_positive_int("num_samples", num_samples, minimum=2)
    if num_samples % 2:
        raise ValueError(
            "num_samples must be even (two evaluations per direction), got "
            f"{num_samples}.")
    if not callable(smoothing):
        checks.check_scalar("smoothing", smoothing, low=0.0, high=1.0, high_inclusive=False)
    _plan.check_sigma(sigma)
    key_data = _transforms.stored_key(key)

    def init(params: PyTree) -> HiZOOState:
        return HiZOOState(count=jnp.zeros((), jnp.int32), key=key_data,
                          hessian=jax.tree.map(jnp.ones_like, params))

    def update(updates: optax.Updates, state: Any, params: optax.Params | None = None,
               *, value_fn: Callable[[PyTree], jax.Array] | None = None,
               **extra_args: Any) -> tuple[optax.Updates, HiZOOState]:
        del updates, extra_args
        params, value_fn = _transforms.require_objective(params, value_fn)
        _sampling.check_params(params)
        step_key = _transforms.key_at_step(state)
        alpha = smoothing(state.count) if callable(smoothing) else smoothing
        estimate, hessian = _step(value_fn, params, state.hessian, step_key, num_samples,
                                  sigma, alpha)
        count = jnp.asarray(optax.safe_increment(state.count))
        return estimate, HiZOOState(count=count, key=state.key, hessian=hessian)

    return optax.GradientTransformationExtraArgs(init, update)


def _step(
    value_fn: Callable[[PyTree], jax.Array], params: PyTree, hessian: PyTree,
    step_key: jax.Array, num_samples: int, sigma: jax.typing.ArrayLike,
    alpha: jax.typing.ArrayLike,
) -> tuple[PyTree, PyTree]:
    """`(g_t, Sigma_{t+1})`: one `lax.scan` over the directions, each drawn once and kept
    for its two evaluations and its two sums, `sum_i c_i u_i` and `sum_i h_i u_i^2`."""
    plan = _plan.create(value_fn, params, num_samples=num_samples, sigma=sigma,
                        difference="central", directions="gaussian")
    unperturbed = _sampling.value_at(value_fn, params)
    inverse_sqrt = jax.tree.map(lambda h, z: jax.lax.rsqrt(h.astype(z.dtype)), hessian,
                                plan.zeros())

    def add(sums: tuple[PyTree, PyTree], sample_key: jax.Array) -> tuple[
            tuple[PyTree, PyTree], None]:
        direction = plan.draw(sample_key, stored=True)[0]
        perturbation = jax.tree.map(lambda r, u: r * u.astype(r.dtype), inverse_sqrt, direction)
        plus, minus = plan.values(perturbation, perturbation)
        slope = plan.coefficients(plus, minus)
        curvature = jnp.abs(plus + minus - 2 * unperturbed) / (
            2 * jnp.square(plan.sigma).astype(plus.dtype))

        def accumulate(weight: jax.Array, total: PyTree, power: int) -> PyTree:
            return jax.tree.map(
                lambda s, u: s + (weight * u.astype(weight.dtype) ** power).astype(s.dtype),
                total, direction)

        return (accumulate(slope, sums[0], 1), accumulate(curvature, sums[1], 2)), None

    sample_keys = _sampling.sample_keys(step_key, plan.num_directions)
    (slopes, curvatures), _ = jax.lax.scan(add, (plan.zeros(), plan.zeros()), sample_keys)
    new_hessian = jax.tree.map(
        lambda h, c: (h.astype(c.dtype) * (1 - alpha + alpha * c / plan.num_directions)
                      ).astype(h.dtype),
        hessian, curvatures)
    estimate = jax.tree.map(
        lambda s, h, x: (s / plan.num_directions * jax.lax.rsqrt(h.astype(s.dtype))).astype(
            x.dtype), slopes, new_hessian, params)
    return estimate, new_hessian
