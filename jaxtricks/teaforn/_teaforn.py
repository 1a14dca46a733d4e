"""TeaForN: teacher forcing with N-grams (Goodman, Ding, Soricut, EMNLP 2020)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtricks._src import checks, deprecation
from jaxtricks.teaforn import _decoder, _feeds

REDUCTIONS = ("mean", "per_example", "none")
_HIDDEN = _feeds.HiddenFeed()


def teaforn_loss(
    body_fn: Callable[[jax.Array], jax.Array],
    output_fn: Callable[[jax.Array], jax.Array],
    input_embeddings: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    n: int,
    weights: Sequence[float] | jax.typing.ArrayLike | None = None,
    feed: _feeds.Feed | str = _HIDDEN,
    where: jax.typing.ArrayLike | None = None,
    mask_repeated: bool = False,
    reduction: str = "mean",
    unroll: bool = True,
    remat: bool = False,
    embedding: jax.typing.ArrayLike | None = None,
    top_k: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""TeaForN loss: N decoding passes, each fed the previous pass's shifted outputs.

    .. math::

        h^{(i)} = M\bigl(e_0, v^{(i-1)}_1, \dots, v^{(i-1)}_{T-1}\bigr),\ v^{(0)} = e, \qquad
        \mathcal{L} = -\sum_{i=1}^{n} \lambda_i \operatorname{mean}_t \log p^{(i)}_t[w_t],

    with `M = body_fn`, `p^{(i)} = softmax(output_fn(h^{(i)}))`, `e_t = E(w_t)` and `v^{(i)}` fed
    by `feed` from pass i; `n=1` is teacher forcing. More in :ref:`teaforn-options`.

    Args:
        body_fn: the causal body `[B, T, D] -> [B, T, H]`, a function or an nnx module.
        output_fn: `[B, T, H] -> logits [B, T, V]`, a function or an nnx module.
        input_embeddings: `E(w_0..w_{T-1})`, floating, `[B, T, D]`.
        targets: `w_1..w_T`, integers in `[0, V)`, `[B, T]`.
        n: the number of passes, >= 1.
        weights: `n` non-negative loss weights `lambda_i` (default all ones).
        feed: `HiddenFeed()` (default), `SoftFeed(E)`, `TopKFeed(E, k)` or `ArgmaxFeed(E)`.
        where: valid target positions, bools `[B, T]` (default all valid).
        mask_repeated: drop positions `t < i` (1-based) of pass i, which repeat pass i-1.
        reduction: `"mean"` (over the batch's scored tokens), `"per_example"` or `"none"`.
        unroll: a Python loop over the passes (default) rather than `jax.lax.scan`.
        remat: `jax.checkpoint` each pass (memory of one pass, one more forward).
        embedding, top_k: deprecated (removed in 0.3.0), with a former string `feed` only.

    Returns:
        `(loss, per_pass_losses)`, float32: `()`, `[n]` ("mean"); `[B]`, `[n, B]`
        ("per_example"); `[B, T]`, `[n, B, T]` ("none", 0 where not scored).

    Raises:
        ValueError: for a bad `n`, `weights`, `feed`, `k`, `reduction` or `targets`, shapes
            that disagree, misused `embedding` or `top_k`, or a closure writing nnx state.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks.teaforn import teaforn_loss
        >>> table = jnp.linspace(-1.0, 1.0, 20).reshape(5, 4)  # V=5 tokens, D=4
        >>> tokens = jnp.array([[0, 3, 1, 4, 2], [0, 2, 2, 1, 3]])  # w_0 = 0 starts
        >>> body, output = lambda e: jnp.tanh(jnp.cumsum(e, -2)), lambda h: h @ table.T
        >>> inputs, targets = table[tokens[:, :-1]], tokens[:, 1:]
        >>> loss, per_pass = teaforn_loss(body, output, inputs, targets, n=2)
        >>> round(float(loss), 4), per_pass.shape
        (6.4226, (2,))

    References:
        Goodman, Ding & Soricut, `TeaForN: Teacher-Forcing with N-grams
        <https://arxiv.org/abs/2010.03494>`_, EMNLP 2020, section 3.

        Su, `TeaForN：让Teacher Forcing更有“远见”一些 <https://kexue.fm/archives/7818>`_, 2020.
    """
    input_embeddings = jnp.asarray(input_embeddings)
    targets = jnp.asarray(targets)
    checks.check_positive_int("n", n)
    feeder = _feed_object(feed, embedding, top_k)
    checks.check_choice("reduction", reduction, REDUCTIONS)
    weights = _checked_weights(weights, n)
    valid = _checked_where(where, targets, input_embeddings)
    apply, state = _decoder.pure_decoder(body_fn, output_fn)
    vocab_size, writes_state = _decoder.checked_vocab_size(
        apply, state, input_embeddings, targets, isinstance(feeder, _feeds.HiddenFeed)
    )
    targets = checks.class_indices(targets, vocab_size, valid, name="targets")[0]
    feeder = feeder.checked(input_embeddings, vocab_size)

    def one_pass(
        inputs: jax.Array, state: Any, pass_index: int | jax.Array
    ) -> tuple[jax.Array, jax.Array, Any]:
        hidden, logits, state = apply(state, inputs)
        scored = valid
        if mask_repeated:
            scored = scored & (jnp.arange(targets.shape[-1]) >= pass_index)
        pass_loss = _reduced(_token_cross_entropy(logits, targets, scored), scored,
                             reduction)
        vectors = feeder.vectors(hidden, logits)
        return pass_loss, _feeds.shift_in(vectors, input_embeddings, valid), state

    if remat:
        # jax 0.7 does not re-export jax.checkpoint for the type checker.
        one_pass = jax.checkpoint(one_pass)  # type: ignore[attr-defined, unused-ignore]
    if unroll:
        per_pass, inputs = [], input_embeddings
        for pass_index in range(n):
            pass_loss, inputs, state = one_pass(inputs, state, pass_index)
            per_pass.append(pass_loss)
        per_pass_losses = jnp.stack(per_pass)
    else:
        def scan_step(
            carry: tuple[jax.Array, Any], pass_index: jax.Array
        ) -> tuple[tuple[jax.Array, Any], jax.Array]:
            pass_loss, next_inputs, next_state = one_pass(*carry, pass_index)
            return (next_inputs, next_state), pass_loss

        (_, state), per_pass_losses = jax.lax.scan(
            scan_step, (input_embeddings, state), jnp.arange(n)
        )
    if writes_state:
        nnx.update((body_fn, output_fn), state)
    pass_weights = weights.reshape((n,) + (1,) * (per_pass_losses.ndim - 1))
    return jnp.sum(pass_weights * per_pass_losses, axis=0), per_pass_losses


def _feed_object(
    feed: _feeds.Feed | str, embedding: jax.typing.ArrayLike | None, top_k: int | None
) -> _feeds.Feed:
    """The feed object; the former `feed=str, embedding=, top_k=` form converted to it
    (checked first, then deprecated, once)."""
    if not isinstance(feed, str):
        if embedding is not None or top_k is not None:
            raise ValueError(
                "embedding and top_k belong to the feed object (SoftFeed(embedding), "
                "TopKFeed(embedding, k), ArgmaxFeed(embedding)); they are deprecated "
                f"as arguments of teaforn_loss and only taken with a string feed, got "
                f"feed={type(feed).__name__}(...) and "
                f"{'embedding' if embedding is not None else 'top_k'}."
            )
        _feeds.check_feed(feed)
        return feed
    converted = _feeds.from_strings(feed, embedding, top_k)
    replacement = {"hidden": "HiddenFeed()", "soft": "SoftFeed(embedding)",
                   "topk": "TopKFeed(embedding, k=top_k)", "argmax": "ArgmaxFeed(embedding)"}
    deprecation.warn_once(
        "jaxtricks.teaforn.teaforn_loss(feed=str)",
        f"teaforn_loss's string feed (here {feed!r}) and its embedding= and top_k= "
        f"arguments are deprecated and will be removed in jaxtricks "
        f"{deprecation.REMOVED_IN}: pass a feed object instead, here "
        f"feed=jaxtricks.teaforn.{replacement[feed]}.",
        stacklevel=4,
    )
    return converted


def _token_cross_entropy(logits: jax.Array, targets: jax.Array, scored: jax.Array) -> jax.Array:
    """The CE at every position in float32, 0 where not scored (any label there), NaN in
    value and derivatives where a scored target is `V` (`checks.class_indices`' index for
    a traced target outside `[0, V)`)."""
    out_of_range = scored & (targets == logits.shape[-1])
    safe_targets = jnp.where(scored & ~out_of_range, targets, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe_targets)
    ce = jnp.where(scored, ce.astype(jnp.float32), 0.0)
    return ce * jnp.where(out_of_range, jnp.nan, 1.0)


def _reduced(token_ce: jax.Array, scored: jax.Array, reduction: str) -> jax.Array:
    """Token CEs reduced over the batch ("mean"), each sequence, or not at all."""
    if reduction == "none":
        return token_ce
    axis = None if reduction == "mean" else -1
    count = jnp.sum(scored, axis=axis, dtype=token_ce.dtype)
    return jnp.sum(token_ce, axis=axis) / jnp.maximum(count, 1)


def _checked_weights(
    weights: Sequence[float] | jax.typing.ArrayLike | None, n: int
) -> jax.Array:
    if weights is None:
        return jnp.ones((n,), jnp.float32)
    checks.check_shape("weights", np.shape(weights), (n,))
    checks.check_values("weights", weights, low=0.0)
    return jnp.asarray(weights, jnp.float32)


def _checked_where(
    where: jax.typing.ArrayLike | None, targets: jax.Array, input_embeddings: jax.Array
) -> jax.Array:
    if input_embeddings.ndim < 2:
        raise ValueError(
            "input_embeddings must have shape [B, T, D], got shape "
            f"{input_embeddings.shape}."
        )
    # Integer vectors would truncate the fed hidden states and mixtures of every pass.
    checks.check_floating("input_embeddings", input_embeddings)
    checks.check_shape("targets", targets.shape, input_embeddings.shape[:-1])
    if where is None:
        return jnp.ones(targets.shape, bool)
    checks.check_shape("where", np.shape(where), targets.shape)
    return jnp.asarray(where, bool)
