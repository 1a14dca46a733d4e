"""The decoder (`body_fn`, `output_fn`) as a pure function, and its shapes checked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
from flax import nnx

from jaxtricks._src import checks

CheckHidden = Callable[[jax.Array], None]


class Apply(Protocol):
    """`apply(state, inputs, check_hidden=None) -> (hidden, logits, state)`."""

    def __call__(
        self, state: Any, inputs: jax.Array, check_hidden: CheckHidden | None = None
    ) -> tuple[jax.Array, jax.Array, Any]: ...


def pure_decoder(
    body_fn: Callable[[jax.Array], jax.Array], output_fn: Callable[[jax.Array], jax.Array]
) -> tuple[Apply, Any]:
    """The decoder as a pure `apply(state, inputs) -> (hidden, logits, state)`, and its state.

    `apply(..., check_hidden=f)` calls `f(hidden)` before the output layer.

    An nnx module (as `body_fn` or `output_fn`) keeps RNG streams and other state
    that its call may write, which jax.eval_shape, jax.checkpoint and lax.scan do not
    allow; split off (`nnx.split`), the state that is not an `nnx.Param` is passed
    from pass to pass explicitly instead. For plain functions the state is None.
    """
    modules = (body_fn, output_fn)
    if not any(nnx.graph.is_graph_node(fn) for fn in modules):
        def apply_functions(
            state: Any, inputs: jax.Array, check_hidden: CheckHidden | None = None
        ) -> tuple[jax.Array, jax.Array, Any]:
            hidden = body_fn(inputs)
            if check_hidden is not None:
                check_hidden(hidden)
            return hidden, output_fn(hidden), state

        return apply_functions, None
    graphdef, params, state = nnx.split(modules, nnx.Param, ...)  # type: ignore[misc]

    def apply(
        state: Any, inputs: jax.Array, check_hidden: CheckHidden | None = None
    ) -> tuple[jax.Array, jax.Array, Any]:
        # Fresh Variables at the current trace: flax >= 0.12's merge would reuse the
        # captured ones, which a nested nnx transform (nnx.RNN's scan) cannot split.
        fresh_params = jax.tree.map(lambda leaf: leaf, params)
        body, output = nnx.merge(graphdef, fresh_params, state)
        hidden = body(inputs)
        if check_hidden is not None:
            check_hidden(hidden)
        return hidden, output(hidden), nnx.state((body, output), nnx.Not(nnx.Param))

    return apply, state


def checked_vocab_size(
    apply: Apply, state: Any, input_embeddings: jax.Array, targets: jax.Array, feed: str
) -> tuple[int, bool]:
    """Checks the outputs' shapes abstractly (no compute); returns V and whether a pass
    writes the decoder's state (one that does not, e.g. dropout in deterministic mode,
    is then never written, so it also runs as a closure under jax.jit)."""
    writes_state = []

    def check_hidden(hidden: jax.Array) -> None:
        if feed == "hidden":
            checks.check_shape("body_fn's output (feed='hidden')", hidden.shape,
                               input_embeddings.shape)
        elif hidden.shape[:-1] != input_embeddings.shape[:-1]:
            raise ValueError(
                f"body_fn's output must have shape {input_embeddings.shape[:-1]} + (H,), "
                f"got shape {hidden.shape}."
            )

    def shapes(state: Any, inputs: jax.Array) -> jax.Array:
        old = jax.tree.leaves(state)  # before the call, which may write to `state`
        _, logits, new_state = apply(state, inputs, check_hidden)
        new = jax.tree.leaves(new_state)
        writes_state.append(len(old) != len(new) or any(
            new_leaf is not old_leaf for old_leaf, new_leaf in zip(old, new, strict=False)
        ))
        return logits

    logits = jax.eval_shape(shapes, state, input_embeddings)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"output_fn's output must have shape {targets.shape} + (V,), "
            f"got shape {logits.shape}."
        )
    return logits.shape[-1], writes_state[0]
