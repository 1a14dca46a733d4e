"""MeZO's zeroth-order update: the parameters perturbed in place, no gradient stored."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtricks._src import checks
from jaxtricks._src.typing import KeyLike, PyTree
from jaxtricks.estimators import _baselines, _directions, _plan, _sampling


def zeroth_order_update(
    fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    key: KeyLike,
    *,
    learning_rate: jax.typing.ArrayLike | optax.Schedule,
    num_samples: int,
    sigma: jax.typing.ArrayLike = 1e-3,
    antithetic: bool = True,
    directions: str | _directions.DirectionKind = "gaussian",
    baseline: _baselines.Baseline = "unperturbed",
    chunk_size: int | None = None,
    step: jax.typing.ArrayLike | None = None,
) -> tuple[PyTree, jax.Array]:
    r"""One zeroth-order SGD step, `params - learning_rate * g`, without storing `g`.

    .. math::

        x \leftarrow x - \frac{\eta}{n} \sum_{i=1}^n c_i w_i

    with the directions, baseline and coefficients `c_i` of `zeroth_order_grad` for the
    same arguments and key (MeZO's Algorithm 1): each direction perturbs the params in
    place (`+sigma`, `-2 sigma`, restore), `f` is evaluated after each perturbation, and
    once every value is known the update is applied direction by direction, each drawn
    again from its key. One `lax.scan` does every in-place step with one draw per leaf
    and one copy of `f`. Jitted with the params donated, the planned peak is that of
    inference. In place, `x + sigma u - sigma u` is rounded twice: the result equals the
    explicit update to `~ n eps |x_j|` (keep float32 params, or use `zeroth_order_grad`
    for bfloat16). The technique page tabulates memory and precision.

    Args:
        fn: `fn(params) -> scalar`, the objective (need not be differentiable).
        params: the point `x`, a non-empty pytree of real floating arrays (donate it).
        key: a `jax.random.key` (threefry, rbg or unsafe_rbg) or a legacy `PRNGKey`.
        learning_rate: a finite scalar (a tracer too) or an optax schedule, evaluated at
            `step`.
        num_samples, sigma, antithetic, directions, baseline: as in `zeroth_order_grad`
            (a kind that draws groups, "orthogonal", cannot be drawn again one by one).
        chunk_size: evaluations per chunk, evaluated at copies of `params`; None (the
            default) for one direction at a time, in place.
        step: the step count at which a schedule is evaluated; only with a schedule.

    Returns:
        `(new_params, values)`: `values[2i], values[2i + 1] = f(x + sigma u_i), f(x -
        sigma u_i)` when antithetic, else `f(x + sigma u_i)`, shape `[num_samples]`.

    Raises:
        ValueError: as `zeroth_order_grad`; for a non-scalar or non-finite concrete
            `learning_rate`, a schedule without `step` (or `step` without one), or a
            kind that draws groups.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> loss = lambda p: jnp.sum((p["w"] - 1.0) ** 2)
        >>> step = jax.jit(lambda p, k: estimators.zeroth_order_update(
        ...     loss, p, k, learning_rate=0.1, num_samples=8), donate_argnums=0)
        >>> params, values = step({"w": jnp.zeros(3)}, jax.random.key(0))
        >>> values.shape, bool(loss(params) < 3.0)
        ((8,), True)

    References:
        Malladi et al., "Fine-Tuning Language Models with Just Forward Passes" (MeZO),
        https://arxiv.org/abs/2305.17333, Algorithm 1.
    """
    _plan.check_arguments(params, num_samples, sigma, antithetic, directions, baseline,
                          chunk_size)
    kind = _directions.resolve(directions)
    if not kind.regenerable:
        raise ValueError(
            f"directions must be drawn again one by one in zeroth_order_update, got {kind!r}, "
            "whose directions are drawn a group at a time: use zeroth_order_grad with "
            "an optax optimiser."
        )
    learning_rate = _learning_rate(learning_rate, step)
    in_place = chunk_size is None or chunk_size == (2 if antithetic else 1)
    sample_keys = _sampling.sample_keys(key, num_samples // 2 if antithetic else num_samples)
    plan = _plan.create(fn, params, num_samples=num_samples, sigma=sigma,
                        difference="central" if antithetic else "forward",
                        directions=kind, baseline=baseline)
    if in_place:
        if plan.unperturbed is not None:  # f(x) first, or XLA keeps a copy of x for it
            sample_keys = _sampling.regenerated(sample_keys, after=plan.unperturbed)
        evaluation = jax.eval_shape(functools.partial(_evaluate, plan), params, sample_keys[0])
        # The values and `||w||^2`, filled in by the loop; the last slot (-1) is scratch.
        # The squared norms start at 1, not 0: the update steps' coefficients are
        # computed (and discarded) at every step, and "optimal" divides by sums of them,
        # which must not be 0 (a 0/0 there is NaN in reverse mode, `where` or not).
        values = jnp.zeros(num_samples + 1, evaluation[0].dtype)
        seconds = jnp.ones(num_samples + 1, evaluation[1].dtype)
    else:
        assert chunk_size is not None
        chunk_keys = sample_keys.reshape(-1, chunk_size // plan.evaluations_per_direction)
        plus, second = jax.tree.map(
            lambda v: v.reshape(-1), jax.lax.map(plan.chunk_values, chunk_keys))
        values = jnp.stack([plus, second], axis=-1).reshape(-1) if antithetic else plus
        values, seconds = (jnp.append(v, jnp.ones((), v.dtype)) for v in (values, second))
    schedule = _schedule(plan.num_directions, antithetic, in_place)
    (params, values, _), _ = jax.lax.scan(
        functools.partial(_operation, plan, learning_rate, in_place), (params, values, seconds),
        (sample_keys[schedule[0]], *schedule),
    )
    return params, values[:-1]


def _learning_rate(
    learning_rate: jax.typing.ArrayLike | optax.Schedule, step: jax.typing.ArrayLike | None
) -> jax.typing.ArrayLike:
    """The step size: `learning_rate(step)` for an optax schedule, else `learning_rate`.

    Raises:
        ValueError: naming the argument, for a schedule without `step`, a `step` without
            a schedule, or a non-scalar or (concrete) non-finite step size.
    """
    if callable(learning_rate):
        if step is None:
            raise ValueError(
                "step must be given when learning_rate is a schedule (a function of the "
                "step count, as optax's), got None."
            )
        learning_rate = learning_rate(step)
        name = "learning_rate(step)"
    elif step is not None:
        raise ValueError(
            f"step is used with a schedule as learning_rate only, got step={step!r} with "
            f"learning_rate={learning_rate!r}."
        )
    else:
        name = "learning_rate"
    checks.check_shape(name, jnp.shape(learning_rate), ())
    checks.check_scalar(name, learning_rate)
    return learning_rate


def _schedule(num_directions: int, antithetic: bool, in_place: bool) -> tuple[np.ndarray, ...]:
    """The steps `x <- x + a_t w_t` of the loop: `(direction, a_t / sigma or 0 for an
    update step, slot of the value of f after the step or -1 for none)`, as arrays.

    In place: per direction `+sigma` and (antithetic) `-2 sigma`, each followed by an
    evaluation, and the restoring step; then (in place or not) one update step each."""
    directions = np.arange(num_directions)
    update: tuple[np.ndarray, ...] = (
        directions, np.zeros(num_directions, np.float32), np.full(num_directions, -1)
    )
    if not in_place:
        return update
    per_direction = 2 if antithetic else 1
    multiples = np.array([1.0, -2.0, 1.0] if antithetic else [1.0, -1.0], np.float32)
    slots = per_direction * directions[:, None] + np.arange(per_direction + 1)
    slots[:, -1] = -1  # no evaluation after restoring
    steps: tuple[np.ndarray, ...] = (
        np.repeat(directions, per_direction + 1), np.tile(multiples, num_directions),
        slots.reshape(-1),
    )
    return tuple(np.concatenate(parts) for parts in zip(steps, update, strict=True))


def _operation(
    plan: _plan.Plan,
    learning_rate: jax.typing.ArrayLike,
    evaluates: bool,
    carry: tuple[PyTree, jax.Array, jax.Array],
    operation: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
) -> tuple[tuple[PyTree, jax.Array, jax.Array], None]:
    """One step `x <- x + a_t w_t`, its direction drawn here, then `f` if it has a slot."""
    params, values, seconds = carry
    one_key, direction, multiple, slot = operation
    update = multiple == 0
    if plan.difference == "central":
        plus, second = values[0:-1:2], values[1:-1:2]
    else:
        plus, second = values[:-1], seconds[:-1]
    # Every value is known at the update steps, which come last.
    steps = learning_rate * plan.coefficients(plus, second) / plan.num_directions
    draw, scales = plan.kind.draw_scaled(one_key, params)
    if scales is not None:  # perturbation `a z`, weight `b z`
        draw = optax.tree.scale(jnp.where(update, scales[1], scales[0]), draw)
    params = _sampling.perturb(params, jnp.where(update, -steps[direction],
                                                 multiple.astype(plan.dtype) * plan.sigma), draw)
    if evaluates:
        value, sq_norm = jax.lax.cond(
            slot >= 0, functools.partial(_evaluate, plan),
            lambda p, k: (jnp.zeros((), values.dtype), jnp.zeros((), seconds.dtype)),
            params, one_key)
        values, seconds = values.at[slot].set(value), seconds.at[slot].set(sq_norm)
    return (params, values, seconds), None


def _evaluate(
    plan: _plan.Plan, params: PyTree, one_key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """`(f(x), ||w||^2)` at the perturbed point (the squared norm for "optimal", else 0)."""
    value = _sampling.value_at(plan.fn, params)
    central = plan.difference == "central"
    second = jnp.zeros((), plan.dtype) if central else plan.sq_norm(None, one_key)
    return value, second
