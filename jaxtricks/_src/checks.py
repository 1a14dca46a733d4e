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
import jax.numpy as jnp
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
    """Checks that `value` is a scalar (its shape, always) and, where concrete, a finite
    real number in range (see `check_values`).

    Raises:
        ValueError: naming the argument, for an array of another shape (a vector
            hyper-parameter would silently broadcast per example or per class), a string
            or a callable, or a value `check_values` refuses.
    """
    if callable(value) or isinstance(value, str):
        raise ValueError(f"{name} must be a scalar number, got {value!r}.")
    shape = getattr(value, "shape", None)
    check_shape(name, np.shape(value) if shape is None else shape, ())
    check_values(name, value, low=low, high=high, low_inclusive=low_inclusive,
                 high_inclusive=high_inclusive)


def check_values(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Checks that every entry of a concrete array is a finite real number in range.

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
    if np.iscomplexobj(array):
        raise ValueError(f"{name} must be a real number, got {_show(array)}.")
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


def check_floating(name: str, array: Any) -> None:
    """Raises a ValueError unless `array` has a (real) floating dtype."""
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {array.dtype}.")


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


def check_not_result(name: str, value: Any, field: str) -> None:
    """Checks that `value` is not a whole NamedTuple result passed for one of its fields.

    Raises:
        ValueError: naming the argument, the result's type and its fields, e.g. "pass
            its .weights" for `resample_validation(key, importance_weights(...), size)`.
    """
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        raise ValueError(
            f"{name} must be an array, got a whole {type(value).__name__} result "
            f"(fields {', '.join(value._fields)}): pass one of its fields, e.g. "
            f"its .{field}."
        )


def class_indices(
    labels: jax.typing.ArrayLike,
    num_classes: int,
    counted: jax.typing.ArrayLike | None = None,
    *,
    name: str = "labels",
) -> tuple[jax.Array, jax.Array]:
    """Integer labels of any dtype as int32 class indices, checked to lie in `[0, K)`.

    The one rule for labels across `jaxtricks` (the losses and metrics, `teaforn_loss`'s
    targets): a label outside `[0, K)` is an error. Concrete labels raise; traced ones
    (under `jit`) cannot, so they come back as the index `K`, for which every loss and
    metric gives NaN in its value and its derivatives (the losses'
    `log_target_probability` gathers no score there). Unlike optax, a
    negative label is not read as class `y + K`: -1 more often marks padding than a
    class counted from the end, so it is refused rather than silently trained on; mask
    padding with `where`. Labels at positions that `counted` excludes are not checked
    and come back as 0.

    The range is tested in the labels' own dtype, before the cast, so no label wraps
    into range (uint32, int64) and narrow dtypes (uint8 with K > 256) work.

    Args:
        labels: integer labels, any shape and integer dtype.
        num_classes: `K`, a Python int.
        counted: None, or a boolean mask of the labels' shape (the positions to check).
        name: the argument's name, used in the messages.

    Returns:
        `(indices, valid)`: int32 indices in `[0, K]` and a boolean array, False exactly
        where the index is `K`.

    Raises:
        ValueError: non-integer labels, or a concrete counted label outside `[0, K)`.
    """
    array = jnp.asarray(labels)
    if not jnp.issubdtype(array.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers, got dtype {array.dtype}.")
    value = concrete_value(array)
    keep = None if counted is None else concrete_value(counted)
    if value is not None and (counted is None or keep is not None):
        bad = (value < 0) | (value >= num_classes)
        if keep is not None:
            bad &= np.broadcast_to(keep.astype(bool), bad.shape)
        if np.any(bad):
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} must lie in [0, {num_classes}) (num_classes={num_classes}), got "
                f"{value[index]} at index {index}; mask padding with `where`."
            )
    in_range = array >= 0
    if num_classes <= jnp.iinfo(array.dtype).max:  # else every label is below K
        in_range &= array < num_classes
    indices = jnp.where(in_range, array, 0).astype(jnp.int32)
    valid = in_range if counted is None else in_range | ~jnp.asarray(counted, bool)
    return jnp.where(valid, indices, num_classes), valid


def _show(array: np.ndarray) -> str:
    return str(array.item()) if array.size == 1 else np.array2string(array, threshold=8)
