"""The decoder (`body_fn`, `output_fn`) as a pure function, and its shapes checked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
from flax import errors, nnx

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
            hidden = _called("body_fn", body_fn, inputs)
            if check_hidden is not None:
                check_hidden(hidden)
            return hidden, _called("output_fn", output_fn, hidden), state

        return apply_functions, None
    graphdef, params, state = nnx.split(modules, nnx.Param, ...)  # type: ignore[misc]

    def apply(
        state: Any, inputs: jax.Array, check_hidden: CheckHidden | None = None
    ) -> tuple[jax.Array, jax.Array, Any]:
        # Fresh Variables at the current trace: flax >= 0.12's merge would reuse the
        # captured ones, which a nested nnx transform (nnx.RNN's scan) cannot split.
        fresh_params = jax.tree.map(lambda leaf: leaf, params)
        body, output = nnx.merge(graphdef, fresh_params, state)
        hidden = _called("body_fn", body, inputs)
        if check_hidden is not None:
            check_hidden(hidden)
        logits = _called("output_fn", output, hidden)
        return hidden, logits, nnx.state((body, output), nnx.Not(nnx.Param))

    return apply, state


def _called(name: str, fn: Callable[[jax.Array], jax.Array], inputs: jax.Array) -> jax.Array:
    """`fn(inputs)`, with flax's error for an nnx module written from a closure explained.

    A bound method or a closure hides its module from `pure_decoder`, so the state that
    the call writes (RNG counts, batch statistics) belongs to the trace outside
    `jax.eval_shape`, `lax.scan` or `jax.checkpoint`, where flax refuses the write.
    """
    try:
        return fn(inputs)
    except errors.TraceContextError as error:
        function = getattr(fn, "__qualname__", type(fn).__qualname__)
        raise ValueError(
            f"teaforn_loss's {name} must be the nnx module itself when its call writes the "
            f"module's state (dropout RNG counts, batch statistics), got {function}, a "
            "bound method or closure calling the module, whose writes teaforn_loss cannot "
            f"carry from pass to pass. Pass the module as {name} (for a method other than "
            "__call__, an nnx.Module whose __call__ calls it), or call module.eval() if it "
            "should not write state."
        ) from error


def checked_vocab_size(
    apply: Apply, state: Any, input_embeddings: jax.Array, targets: jax.Array,
    hidden_feed: bool,
) -> tuple[int, bool]:
    """Checks the outputs' shapes abstractly (no compute; `hidden_feed`: the hidden states
    are fed, so they must have the inputs' shape); returns V and whether a pass
    writes the decoder's state (one that does not, e.g. dropout in deterministic mode,
    is then never written, so it also runs as a closure under jax.jit)."""
    writes_state = []

    def check_hidden(hidden: jax.Array) -> None:
        if hidden_feed:
            checks.check_shape("body_fn's output (feed=HiddenFeed())", hidden.shape,
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
