"""Recurrent cells as step functions `(carry, x_t) -> (carry, y_t)`: flax linen and nnx.

The `jax.lax.scan` convention, which every function of `jaxtricks.rnn` takes, with the
checks of a step function and of an input sequence.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

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

    Raises:
        ValueError: a `cell` that is not a `flax.linen.Module` (an nnx cell goes to
            `nnx_step`).

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

    if not isinstance(cell, nn.Module):
        hint = ("use nnx_step(cell) for a flax.nnx cell" if isinstance(cell, nnx.Module)
                else "pass a plain function (carry, x) -> (carry, y) as step_fn directly")
        raise ValueError(f"cell must be a flax.linen Module, got {_type_name(cell)}; {hint}.")

    def step(carry: Carry, x: Any) -> tuple[Carry, Any]:
        return cell.apply({"params": params}, carry, x)

    carry_of = getattr(cell, "initialize_carry", None)
    return CellStep(step, None if carry_of is None else
                    lambda input_shape: carry_of(jax.random.key(0), input_shape))


def nnx_step(cell: nnx.Module) -> StepFn:
    """A flax nnx cell as a pure step function `(carry, x) -> (carry, y)`.

    The cell is split into its graph and state once; each call merges them again, so
    the step is a pure function that traces under `jax.jit`, `jax.lax.scan` and `jax.jvp`.

    A pure step cannot carry the state that a module writes when called in nnx's train
    mode (an `nnx.Dropout` advancing its RNG stream, an `nnx.BatchNorm` updating its
    running statistics), so a cell holding such a module is refused: the writes would
    be lost at every step (one dropout mask reused at every step), and they fail under
    a trace. A write that the check misses (a module outside nnx's train-mode
    convention) is refused when the step is traced.

    Args:
        cell: a `flax.nnx` recurrent cell (`nnx.SimpleCell`, `nnx.LSTMCell`, ...) in
            eval mode (call `cell.eval()` first): no submodule with
            `use_running_average=False`, nor with `deterministic=False` and a positive
            dropout rate.

    Returns:
        `step(carry, x) = cell(carry, x)`.

    Raises:
        ValueError: a `cell` that is not a `flax.nnx.Module` (a `flax.linen` cell goes
            to `linen_step`), a cell holding a submodule in train mode (e.g. an
            `nnx.Dropout` with `rate > 0` and `deterministic=False`, an `nnx.BatchNorm`
            with `use_running_average=False`), or, when the step is traced, a cell
            whose call writes its state.

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
    if not isinstance(cell, nnx.Module):
        hint = ("use linen_step(cell, params) for a flax.linen cell"
                if isinstance(cell, nn.Module)
                else "pass a plain function (carry, x) -> (carry, y) as step_fn directly")
        raise ValueError(f"cell must be a flax.nnx Module, got {_type_name(cell)}; {hint}.")
    _check_no_state_writes(cell)
    graphdef, state = nnx.split(cell)

    def step(carry: Carry, x: Any) -> tuple[Carry, Any]:
        try:
            # flax 0.11 does not type nnx.Module as callable.
            return nnx.merge(graphdef, state)(carry, x)  # type: ignore[operator, unused-ignore]
        except flax.errors.TraceContextError as error:  # a write under a trace
            raise ValueError(
                "cell must not write its state when called: nnx_step makes a pure step "
                "function, which cannot carry the update, got a cell that wrote a "
                f"Variable under a trace ({type(error).__name__}). Call cell.eval() if a "
                "submodule is in train mode, or keep the write out of the cell's "
                "__call__ (e.g. an attention cache: decode=False)."
            ) from error

    carry_of = getattr(cell, "initialize_carry", None)
    return CellStep(step, None if carry_of is None else
                    lambda input_shape: carry_of(input_shape, rngs=nnx.Rngs(0)))


def _check_no_state_writes(cell: nnx.Module) -> None:
    """Refuses a cell holding a module in nnx's train mode (what `cell.train()` sets and
    `cell.eval()` unsets) whose call writes its state: `use_running_average=False`
    (batch statistics), or `deterministic=False` with a dropout rate that is not 0 (an
    RNG count); a pure step cannot carry those writes."""
    for path, node in nnx.iter_graph(cell):
        if not isinstance(node, nnx.Module):
            continue
        if getattr(node, "use_running_average", None) is False:
            found = ("use_running_average=False, which updates its running statistics at "
                     "every call")
        elif getattr(node, "deterministic", None) is False:
            rates = [(name, getattr(node, name)) for name in ("rate", "dropout_rate")
                     if hasattr(node, name)]
            if rates and not rates[0][1] > 0:
                continue  # deterministic=False with a dropout rate of 0 draws nothing
            found = ("deterministic=False" + "".join(f" and {n}={r}" for n, r in rates[:1])
                     + ", which draws random numbers (advancing its RNG stream) at every "
                     "call")
        else:
            continue
        raise ValueError(
            "cell must not write its state when called (every submodule in eval mode): "
            "nnx_step makes a pure step function, which cannot carry the update (it would "
            "be lost at every step, reusing one dropout mask, and fails under jax.jit or "
            f"lax.scan), got {_type_name(node)} at path {path} with {found}. Call "
            "cell.eval() (it sets deterministic=True and use_running_average=True) to "
            "measure the cell in inference mode."
        )


def _type_name(value: Any) -> str:
    """`flax.nnx.Dropout`-style name of `value`'s class, for messages."""
    module = type(value).__module__
    if module == "builtins":
        return type(value).__qualname__
    for public in ("flax.nnx", "flax.linen"):
        if module.startswith(public + "."):
            module = public
    return f"{module}.{type(value).__qualname__}"


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
    if not callable(step_fn):
        raise ValueError(
            "step_fn must be a callable (carry, x_t) -> (new_carry, y_t) (e.g. linen_step "
            f"or nnx_step of a cell), got {_type_name(step_fn)} {step_fn!r:.80}."
        )
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
