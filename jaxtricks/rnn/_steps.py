"""Recurrent cells as step functions `(carry, x_t) -> (carry, y_t)`: flax linen and nnx.

The `jax.lax.scan` convention, which every function of `jaxtricks.rnn` takes, with the
checks of a step function and of an input sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

if TYPE_CHECKING:
    import flax.linen as nn

Carry = Any
StepFn = Callable[[Carry, Any], tuple[Carry, Any]]


def linen_step(cell: nn.Module, params: Any) -> StepFn:
    """A flax linen cell with its parameters, as a step function `(carry, x) -> (carry, y)`.

    Args:
        cell: a `flax.linen` recurrent cell (`SimpleCell`, `LSTMCell`, `GRUCell`, ...).
        params: its parameters, `cell.init(...)["params"]`.

    Returns:
        `step(carry, x) = cell.apply({"params": params}, carry, x)`.

    Examples:
        >>> import jax, jax.numpy as jnp, flax.linen as nn
        >>> from jaxtricks import rnn
        >>> cell = nn.SimpleCell(3)
        >>> params = cell.init(jax.random.key(0), jnp.zeros(3), jnp.zeros(2))["params"]
        >>> carry, y = rnn.linen_step(cell, params)(jnp.zeros(3), jnp.ones(2))
        >>> carry.shape, y.shape
        ((3,), (3,))
    """

    def step(carry: Carry, x: Any) -> tuple[Carry, Any]:
        return cell.apply({"params": params}, carry, x)

    return step


def nnx_step(cell: nnx.Module) -> StepFn:
    """A flax nnx cell as a pure step function `(carry, x) -> (carry, y)`.

    The cell is split into its graph and state once; each call merges them again, so
    the step is a pure function that traces under `jax.jit`, `jax.lax.scan` and `jax.jvp`.

    Args:
        cell: a `flax.nnx` recurrent cell (`nnx.SimpleCell`, `nnx.LSTMCell`, ...).

    Returns:
        `step(carry, x) = cell(carry, x)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxtricks import rnn
        >>> step = rnn.nnx_step(nnx.SimpleCell(2, 3, rngs=nnx.Rngs(0)))
        >>> carry, y = step(jnp.zeros(3), jnp.ones(2))
        >>> carry.shape, y.shape
        ((3,), (3,))
    """
    graphdef, state = nnx.split(cell)

    def step(carry: Carry, x: Any) -> tuple[Carry, Any]:
        # flax 0.11 does not type nnx.Module as callable.
        return nnx.merge(graphdef, state)(carry, x)  # type: ignore[operator, unused-ignore]

    return step


def check_sequence(inputs: Any) -> int:
    """Checks that every leaf of `inputs` has the same leading time axis; returns T."""
    shapes = [jnp.shape(leaf) for leaf in jax.tree.leaves(inputs)]
    if not shapes or any(len(shape) == 0 for shape in shapes):
        raise ValueError(
            f"inputs must be arrays with a leading time axis [T, ...], got shapes {shapes}."
        )
    lengths = {shape[0] for shape in shapes}
    if len(lengths) != 1:
        raise ValueError(
            f"inputs must share one leading time axis of length T, got shapes {shapes}."
        )
    return lengths.pop()


def check_step(step_fn: StepFn, carry: Carry, inputs: Any) -> None:
    """Checks that `step_fn` maps a floating carry to one of the same structure and shapes."""
    for leaf in jax.tree.leaves(carry):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"carry must hold floating-point arrays, got dtype {jnp.result_type(leaf)}."
            )
    first_input = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(jnp.shape(leaf)[1:], jnp.result_type(leaf)), inputs
    )
    result = jax.eval_shape(step_fn, carry, first_input)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ValueError(
            f"step_fn must return (new_carry, output), got {jax.tree.structure(result)}."
        )
    expected = [(jnp.shape(leaf), jnp.result_type(leaf)) for leaf in jax.tree.leaves(carry)]
    actual = [(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(result[0])]
    # object: mypy cannot resolve jax's PyTreeDef annotation (a jaxlib extension type).
    structure: object = jax.tree.structure(carry)
    if structure != jax.tree.structure(result[0]) or expected != actual:
        raise ValueError(
            "step_fn must return a new carry of the same structure, shapes and dtypes as "
            f"carry: expected {jax.tree.structure(carry)} with {expected}, got "
            f"{jax.tree.structure(result[0])} with {actual}."
        )
