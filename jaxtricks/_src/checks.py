"""Argument checks that raise a clear `ValueError` at trace time.

Hyper-parameters may be Python numbers, concrete arrays or tracers (for example under
`optax.inject_hyperparams` or `jax.vmap` over a hyper-parameter). A check runs on the
concrete value when there is one and is skipped for a tracer, whose value is unknown
until run time; shape checks always run, since shapes are static.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


def concrete_value(value: Any) -> np.ndarray | None:
    """Returns `value` as a numpy array, or None when it is traced (no value yet)."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def check_scalar(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Checks that a concrete scalar (or every entry of an array) is finite and in range.

    Args:
        name: the argument's name, used in the message.
        value: the value to check; skipped when traced.
        low, high: the bounds, None for none.
        low_inclusive, high_inclusive: whether each bound itself is allowed.

    Raises:
        ValueError: naming the argument, the expected range and the value.
    """
    array = concrete_value(value)
    if array is None:
        return
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {_show(array)}.")
    too_low = low is not None and np.any(array < low if low_inclusive else array <= low)
    too_high = high is not None and np.any(
        array > high if high_inclusive else array >= high
    )
    if too_low or too_high:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must lie in {left}{lo}, {hi}{right}, got {_show(array)}.")


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> None:
    """Checks that `value` is a Python integer >= `minimum` (a static size or count)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}.")


def check_shape(name: str, shape: Sequence[int], expected: Sequence[int]) -> None:
    """Checks an array's shape against the expected one (both static)."""
    if tuple(shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {tuple(expected)}, got shape {tuple(shape)}."
        )


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Checks that `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")


def check_same_structure(name_a: str, tree_a: Any, name_b: str, tree_b: Any) -> None:
    """Checks that two pytrees have the same structure (e.g. params and a mask)."""
    # object: mypy cannot resolve jax's PyTreeDef annotation (a jaxlib extension type).
    structure_a: object = jax.tree.structure(tree_a)
    structure_b: object = jax.tree.structure(tree_b)
    if structure_a != structure_b:
        raise ValueError(
            f"{name_a} and {name_b} must have the same tree structure, got "
            f"{structure_a} and {structure_b}."
        )


def _show(array: np.ndarray) -> str:
    return str(array.item()) if array.size == 1 else np.array2string(array, threshold=8)
