"""Recurrent cells as step functions `(carry, x_t) -> (carry, y_t)`: flax linen and nnx.

The `jax.lax.scan` convention, which every function of `jaxtricks.rnn` takes, with the
checks of a step function and of an input sequence.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

if TYPE_CHECKING:
    import flax.linen as nn

Carry = Any
StepFn = Callable[[Carry, Any], tuple[Carry, Any]]


@dataclasses.dataclass(frozen=True)
class CellStep:
    """A flax cell as a step function, with its `initialize_carry(input_shape)` (None for
    a cell without one): `check_step` compares a carry that the cell fails on with it."""

    apply: StepFn
    initialize_carry: Callable[[tuple[int, ...]], Carry] | None

    def __call__(self, carry: Carry, x: Any) -> tuple[Carry, Any]:
        return self.apply(carry, x)


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

    References:
        JAX, `jax.lax.scan <https://docs.jax.dev/en/latest/_autosummary/jax.lax.scan.html>`_
        (the convention followed: a step `f(carry, x) -> (carry, y)`)

        Flax, `flax/linen/recurrent.py
        <https://github.com/google/flax/blob/main/flax/linen/recurrent.py>`_ (its cells'
        `__call__(carry, inputs) -> (carry, output)`)
    """

    def step(carry: Carry, x: Any) -> tuple[Carry, Any]:
        return cell.apply({"params": params}, carry, x)

    carry_of = getattr(cell, "initialize_carry", None)
    return CellStep(step, None if carry_of is None else
                    lambda input_shape: carry_of(jax.random.key(0), input_shape))


def nnx_step(cell: nnx.Module) -> StepFn:
    """A flax nnx cell as a pure step function `(carry, x) -> (carry, y)`.

    The cell is split into its graph and state once; each call merges them again, so
    the step is a pure function that traces under `jax.jit`, `jax.lax.scan` and `jax.jvp`.

    A pure step cannot advance the cell's RNG streams, so a cell that draws dropout
    masks is refused: it would reuse one mask at every step, or fail under a trace.

    Args:
        cell: a `flax.nnx` recurrent cell (`nnx.SimpleCell`, `nnx.LSTMCell`, ...),
            without an active `nnx.Dropout` (call `cell.eval()` first).

    Returns:
        `step(carry, x) = cell(carry, x)`.

    Raises:
        ValueError: a cell holding an `nnx.Dropout` with `rate > 0` and
            `deterministic=False`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxtricks import rnn
        >>> step = rnn.nnx_step(nnx.SimpleCell(2, 3, rngs=nnx.Rngs(0)))
        >>> carry, y = step(jnp.zeros(3), jnp.ones(2))
        >>> carry.shape, y.shape
        ((3,), (3,))

    References:
        JAX, `jax.lax.scan <https://docs.jax.dev/en/latest/_autosummary/jax.lax.scan.html>`_
        (the convention followed: a step `f(carry, x) -> (carry, y)`)

        Flax, `nnx.split and nnx.merge
        <https://flax.readthedocs.io/en/latest/api_reference/flax.nnx/graph.html>`_
        (a module as a graph definition and a state, merged again inside the pure step)
    """
    _check_no_dropout(cell)
    graphdef, state = nnx.split(cell)

    def step(carry: Carry, x: Any) -> tuple[Carry, Any]:
        # flax 0.11 does not type nnx.Module as callable.
        return nnx.merge(graphdef, state)(carry, x)  # type: ignore[operator, unused-ignore]

    carry_of = getattr(cell, "initialize_carry", None)
    return CellStep(step, None if carry_of is None else
                    lambda input_shape: carry_of(input_shape, rngs=nnx.Rngs(0)))


def _check_no_dropout(cell: nnx.Module) -> None:
    """Refuses a cell holding an nnx.Dropout that draws masks (its RNG count would be
    written at each call, which a pure step cannot carry)."""
    for path, node in nnx.iter_graph(cell):
        if isinstance(node, nnx.Dropout) and node.rate > 0 and node.deterministic is False:
            raise ValueError(
                "cell must not draw dropout masks: nnx_step makes a pure step function, "
                "which cannot advance the cell's RNG stream (it would reuse one mask at "
                "every step, and fails under jax.jit or lax.scan), got an nnx.Dropout at "
                f"path {path} with rate={node.rate} and deterministic=False. Call "
                "cell.eval() (or build it with nnx.Dropout(..., deterministic=True)) to "
                "measure the cell without dropout."
            )


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
    try:
        result = jax.eval_shape(step_fn, carry, first_input)
    except Exception as error:  # e.g. flax's shape error for a carry of the wrong width
        _check_cell_carry(step_fn, carry, first_input, error)
        raise
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


def _check_cell_carry(step_fn: StepFn, carry: Carry, first_input: Any, error: Exception) -> None:
    """For the step of a cell (`CellStep`) that failed with `error`: a ValueError from it
    when `carry` does not have the shapes of `cell.initialize_carry` for `x_t`."""
    if not (isinstance(step_fn, CellStep) and step_fn.initialize_carry is not None
            and isinstance(first_input, jax.ShapeDtypeStruct)):
        return
    try:
        cell_carry = jax.eval_shape(functools.partial(step_fn.initialize_carry,
                                                      first_input.shape))
    except NotImplementedError:  # RNNCellBase's, for a cell that does not define it
        return
    expected = jax.tree.map(lambda leaf: leaf.shape, cell_carry)
    actual = jax.tree.map(jnp.shape, carry)
    if actual != expected:
        raise ValueError(
            f"carry must have the shapes of the cell's carry for x_t of shape "
            f"{first_input.shape} (cell.initialize_carry), expected {expected}, got "
            f"{actual}."
        ) from error
