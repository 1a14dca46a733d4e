"""Machinery shared by the regularisers: masks, schedules, norms and the step count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks, dtypes

Mask = Any | Callable[[optax.Params], Any] | None
"""A pytree of bools shaped like the params, a callable of the params returning one, or
None for the default: every floating-point leaf with `ndim >= 2` (weight matrices,
convolution kernels, embeddings), leaving biases, normalisation scales and integer or
boolean leaves (step counters, index tables, masks) alone. An explicit mask may select
floating-point leaves only: the decay of an integer or boolean leaf cannot be
represented in its dtype."""

try:  # optax's own message, where the installed optax defines it
    from optax._src.base import NO_PARAMS_MSG
except ImportError:
    NO_PARAMS_MSG = (
        "You are using a transformation that requires the current value of parameters, "
        "but you are not passing `params` when calling `update`."
    )


class CountState(NamedTuple):
    """The state of `l2_regularization`, `decoupled_weight_decay` and `weissi`.

    One state type for constant and scheduled rates alike (so a state does not change
    type when a constant becomes a schedule, e.g. under `optax.inject_hyperparams`); each
    transform wraps it in `optax.MaskedState(inner_state=CountState(...))`.

    Attributes:
        count: number of updates applied so far; shape (), int32 (saturating).

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxtricks
        >>> state = jaxtricks.l2_regularization(1e-4).init({"w": jnp.ones((2, 2))})
        >>> isinstance(state.inner_state, jaxtricks.CountState), int(state.inner_state.count)
        (True, 0)

    References:
        Optax, `optax/_src/transform.py
        <https://github.com/google-deepmind/optax/blob/main/optax/_src/transform.py>`_
        (the convention followed: a transform's state is a NamedTuple holding the step
        count that its schedule reads, as `ScaleByScheduleState`)
    """

    count: jax.Array  # type: ignore[assignment]  # a field named like tuple.count


def init_count(params: optax.Params) -> CountState:
    """The initial `CountState` (the params are not used)."""
    del params
    return CountState(count=jnp.zeros([], jnp.int32))


def next_count(state: CountState) -> CountState:
    """The state after one more update (saturating at the int32 maximum)."""
    return CountState(count=cast(jax.Array, optax.safe_increment(state.count)))


def require_params(params: optax.Params | None) -> optax.Params:
    """The params given to a transform's `update`.

    Raises:
        ValueError: when `params` is None (optax's message for a transform that needs
            the params).
    """
    if params is None:
        raise ValueError(NO_PARAMS_MSG)
    return params


def is_default_selected(leaf: jax.typing.ArrayLike) -> bool:
    """The default mask: a floating-point leaf with `ndim >= 2`."""
    return jnp.ndim(leaf) >= 2 and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


def value_at(rate: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array | float:
    """A rate at step `count`: the schedule's value, or the constant itself."""
    # A schedule returns a scalar (optax types it as any array-like).
    return cast(jax.Array | float, rate(count)) if callable(rate) else rate


def check_rate(name: str, rate: optax.ScalarOrSchedule | jax.typing.ArrayLike) -> None:
    """Checks that a constant (non-schedule, concrete) rate is finite and >= 0."""
    if not callable(rate):
        checks.check_scalar(name, rate, low=0.0)


def _is_masked_node(node: Any) -> bool:
    return isinstance(node, optax.MaskedNode)


def resolve_mask(mask: Mask, tree: optax.Params) -> Any:
    """The pytree of bools that `mask` selects in `tree` (params or updates).

    Args:
        mask: see `Mask`.
        tree: the params (or updates). Leaves already masked out by an enclosing
            `optax.masked` (`optax.MaskedNode`) count as leaves of the structure.

    Returns:
        A pytree of bools with the structure of `tree`.

    Raises:
        ValueError: when the mask's structure differs from the tree's, or it selects a
            leaf that is not floating-point.
    """
    if mask is None:
        return jax.tree.map(is_default_selected, tree)
    mask_tree = mask(tree) if callable(mask) else mask
    skeleton = jax.tree.map(lambda _: True, tree, is_leaf=_is_masked_node)
    checks.check_same_structure("mask", mask_tree, "params", skeleton)
    _check_selects_floating(mask_tree, tree)
    return mask_tree


def _check_selects_floating(mask_tree: Any, tree: optax.Params) -> None:
    """Raises when `mask_tree` selects a leaf of `tree` that is not floating-point.

    Adding `coefficient * param` to an integer or boolean leaf would be truncated (to 0
    for small coefficients), so it is an error rather than a silent no-op.
    """
    paths_and_leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_masked_node)
    for (path, leaf), keep in zip(paths_and_leaves, jax.tree.leaves(mask_tree), strict=True):
        if keep and not _is_masked_node(leaf):
            dtype = jnp.result_type(leaf)
            if not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(
                    "mask must select floating-point leaves only (weight decay of an "
                    "integer or boolean parameter cannot be represented), got leaf "
                    f"{jax.tree_util.keystr(path)} of dtype {dtype} selected."
                )


def masked(
    inner: optax.GradientTransformation, mask: Mask
) -> optax.GradientTransformationExtraArgs:
    """`optax.masked(inner, ...)` on the leaves that `mask` selects (see `Mask`)."""
    return optax.masked(inner, lambda tree: resolve_mask(mask, tree))


def selected_leaves(params: optax.Params, mask: Mask) -> list[jax.Array]:
    """The leaves of `params` that `mask` selects, in tree order."""
    mask_tree = resolve_mask(mask, params)
    return [
        leaf
        for leaf, keep in zip(
            jax.tree.leaves(params), jax.tree.leaves(mask_tree), strict=True
        )
        if keep
    ]


def add_scaled_params(
    updates: optax.Updates, params: optax.Params, coefficient: jax.typing.ArrayLike
) -> optax.Updates:
    """`updates + coefficient * params`, leaf by leaf, in the updates' dtypes.

    Unlike `optax.add_decayed_weights`, a float32 (e.g. scheduled) coefficient does not
    promote bfloat16 updates, so the optimiser states after it keep their dtypes.
    """

    def add(update: jax.Array, param: jax.Array) -> jax.Array:
        scaled = jnp.multiply(*dtypes.promoted(coefficient, param))
        return update + scaled.astype(update.dtype)

    return jax.tree.map(add, updates, params)


def accumulation_dtype(leaf: jax.typing.ArrayLike) -> jnp.dtype:
    """The dtype in which a leaf's norms are summed: at least float32."""
    return dtypes.compute_dtype(jnp.result_type(leaf))


def squared_norm(leaf: jax.typing.ArrayLike) -> jax.Array:
    """`||leaf||^2` of the flattened leaf, summed in at least float32."""
    return jnp.sum(jnp.square(jnp.asarray(leaf, accumulation_dtype(leaf))))
