"""Training loops of the benchmarks: one optimiser step and one `lax.scan` over steps.

`train` is pure, so callers `jax.jit` it and `jax.vmap` it over seeds, methods or
hyper-parameters (every lane one model). The batch of a step is the loss function's
business: `loss_fn(params, x)` receives the step's slice `x` of `xs` (a key, an index,
a batch) and draws or slices its batch from it; `minibatch` draws row indices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Trained(NamedTuple):
    """What `train` returns.

    Attributes:
        params: the trained parameters.
        losses: `[steps]` loss of each step's batch, before the step's update.
        aux: `[steps, ...]` the auxiliary output of each step (`has_aux`), else None.
        grad_norms: `[steps]` global norm of each step's gradient (`grad_norms=True`),
            else None.
        evals: `[segments, ...]` `eval_fn(params)` after each segment, else None.
    """

    params: Any
    losses: jax.Array
    aux: Any
    grad_norms: jax.Array | None
    evals: Any


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
              has_aux: bool = False) -> Callable:
    """`step(params, opt_state, x) -> (params, opt_state, loss, aux, grads)`: one update
    by `optimizer` on the gradient of `loss_fn(params, x)` (aux None without `has_aux`)."""

    def step(params, opt_state, x):
        value, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(params, x)
        loss, aux = value if has_aux else (value, None)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux, grads

    return step


def train(
    loss_fn: Callable,
    params: Any,
    optimizer: optax.GradientTransformation,
    xs: Any = None,
    *,
    steps: int | None = None,
    has_aux: bool = False,
    grad_norms: bool = False,
    eval_fn: Callable | None = None,
    segments: int = 1,
) -> Trained:
    """Trains `params` for `steps` optimiser steps in one `lax.scan`.

    Args:
        loss_fn: `(params, x) -> loss` (or `(loss, aux)` with `has_aux`), `x` the step's
            slice of `xs` (None without `xs`: full-batch training).
        params: the initial parameters.
        optimizer: an optax optimiser, initialised here.
        xs: per-step inputs with a leading axis of `steps`, or None.
        steps: the number of steps; taken from `xs` when given.
        has_aux: whether `loss_fn` returns `(loss, aux)`.
        grad_norms: whether to record each step's gradient norm.
        eval_fn: `params -> metrics`, evaluated after each of `segments` equal segments.
        segments: how many segments the steps are cut into (divides `steps`).

    Returns:
        A `Trained`.
    """
    steps = steps if xs is None else jax.tree.leaves(xs)[0].shape[0]
    if steps is None or steps % segments:
        raise ValueError(f"steps ({steps}) must be given and divisible by segments "
                         f"({segments}).")
    step = make_step(loss_fn, optimizer, has_aux=has_aux)

    def one_step(carry, x):
        params, opt_state, loss, aux, grads = step(*carry, x)
        norm = optax.tree.norm(grads) if grad_norms else None
        return (params, opt_state), (loss, aux, norm)

    def one_segment(carry, segment_xs):
        carry, outputs = jax.lax.scan(one_step, carry, segment_xs, length=steps // segments)
        return carry, (outputs, None if eval_fn is None else eval_fn(carry[0]))

    segment_xs = jax.tree.map(lambda x: x.reshape(segments, -1, *x.shape[1:]), xs)
    (params, _), ((losses, aux, norms), evals) = jax.lax.scan(
        one_segment, (params, optimizer.init(params)), segment_xs, length=segments
    )
    flat = jax.tree.map(lambda x: x.reshape(steps, *x.shape[2:]), (losses, aux, norms))
    return Trained(params, *flat, evals)


def minibatch(key: jax.Array, num_rows: int, batch_size: int) -> jax.Array:
    """`batch_size` row indices drawn uniformly with replacement from `num_rows`."""
    return jax.random.randint(key, (batch_size,), 0, num_rows)


def step_keys(key: jax.Array, steps: int, segments: int = 1) -> jax.Array:
    """`[steps]` keys: `jax.random.split(key, steps)`, or with `segments > 1` split per
    segment, then per step (as `train` cuts its steps)."""
    if segments == 1:
        return jax.random.split(key, steps)
    keys = jax.vmap(lambda k: jax.random.split(k, steps // segments))(
        jax.random.split(key, segments))
    return keys.reshape(steps, *keys.shape[2:])


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose largest logit is the label."""
    return jnp.mean(jnp.argmax(logits, -1) == labels)
