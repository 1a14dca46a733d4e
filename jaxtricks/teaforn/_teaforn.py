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

    The decoder is split into the input embedding `E`, the body `M` (`body_fn`:
    positions, self-attention, attention to the encoder, layers) and the output layer
    (`output_fn`). With `e_0..e_{T-1} = E(w_0..w_{T-1})` (`w_0` the start token) and
    targets `w_1..w_T`::

        h^(1) = M(e_0, e_1,     ..., e_{T-1})          (pass 1: teacher forcing)
        h^(i) = M(e_0, v_1^(i-1), ..., v_{T-1}^(i-1))    (pass i > 1)
        ce[i-1, t] = -log softmax(output_fn(h^(i)))_t[w_t]
        per_pass_losses[i-1] = mean_{scored t} ce[i-1, t]     (reduction="mean")
        loss = sum_i weights[i-1] * per_pass_losses[i-1]

    where `v^(i-1)` is computed from pass i-1 by `feed`, an object that carries the
    options of its kind only:

    - `HiddenFeed()`: `v = h` itself (the paper's main variant). Needs `h` and `e` in
      one space, e.g. an output projection tied to the input embedding.
    - `SoftFeed(E)`: `v_t = p_t^T E`, the probability-weighted embedding (top-k with
      `k = |V|`).
    - `TopKFeed(E, k)`:
      `v_t = sum_{w in top_k(p_t)} p_t[w] e_w / sum_{w in top_k(p_t)} p_t[w]`.
    - `ArgmaxFeed(E)`: `v_t = e_{argmax p_t}` forward, with the gradient of `p_t^T E`
      (straight-through). An extension beyond the paper, which feeds only `h` or
      top-k mixtures.

    Every pass is scored against the same targets: the look-ahead comes from the shifted
    inputs (position t of pass i has seen gold tokens `w_0..w_{t-i}` only). Gradients
    flow from pass i back through `h^(i-1), ..., h^(1)`, so with `weights=(0, 1)` the
    parameters still get gradients through pass 1's outputs. With `n=1` this is the
    teacher-forcing cross-entropy. Inference uses pass 1 only (ordinary decoding).

    Repeated positions: for a causal body, position t (1-based) of pass i equals that
    of pass i-1 when `t < i`, since it sees only inputs that coincide. By default
    (`mask_repeated=False`, the post's loss, which sums over every t and i) these
    positions are scored in every pass; `mask_repeated=True` drops them from pass i.

    Padding: `where` marks the valid target positions (right or left padding). A pass
    feeds `v_{t-1}` at input position t only when target position t-1 is valid and
    keeps the original `e_t` otherwise, so outputs at padded positions never reach the
    next pass; with `where=None` the feed is exactly `(e_0, v_1, ..., v_{T-1})`.
    Packed sequences (several per row) are not supported.

    Reductions: a position is scored in pass i when `where` marks it valid and (with
    `mask_repeated`) `t >= i`. `"mean"` averages the scored CEs of the whole batch
    (token-pooled: long sequences weigh more); `"per_example"` averages each sequence's
    own scored CEs (a batch mean of these weighs sequences alike); `"none"` returns
    `ce` itself, 0 at the positions not scored, so that any other reduction is one
    line (e.g. `per_token.sum(-1)` for per-sequence sums).

    Args:
        body_fn: the causal decoder body, `[B, T, D] -> hidden [B, T, H]` (any
            architecture: a closure over parameters and the encoder output, a linen
            `apply`, or an nnx module itself). With `HiddenFeed()`, `H = D`.
            Leading batch dimensions may be any.
        output_fn: `hidden [B, T, H] -> logits [B, T, V]`, a function or an nnx
            module. An nnx module with RNG streams or other state (`nnx.Dropout`,
            `nnx.RNN`, batch statistics) works in every mode (`unroll`, `remat`):
            its state other than `nnx.Param` goes from pass to pass (each pass
            draws new dropout masks) and is written back to the module after the
            last pass, so call it eagerly or inside nnx transforms (`nnx.jit`,
            `nnx.grad`), as any stateful nnx module. Pass the module itself, not a
            closure calling it.
        input_embeddings: `E(w_0..w_{T-1})`, shape `[B, T, D]`.
        targets: `w_1..w_T`, integers of any integer dtype in `[0, V)`, shape `[B, T]`,
            as the labels of `jaxtricks.losses`: a concrete target outside `[0, V)`
            (e.g. -1 or -100 padding) raises unless `where` masks it out; a traced one
            (under `jit`) gives NaN in the loss and its derivatives.
        n: number of passes, >= 1.
        weights: `n` non-negative loss weights, one per pass (default all ones).
        feed: what a pass feeds the next: `HiddenFeed()` (default), `SoftFeed(E)`,
            `TopKFeed(E, k)` or `ArgmaxFeed(E)`, `E` the token embedding table `[V, D]`
            and `k` in `[1, V]`. Deprecated (removed in 0.3.0, a `DeprecationWarning`
            once): the former strings `"hidden"`, `"soft"`, `"topk"`, `"argmax"`.
        where: valid target positions, bools of shape `[B, T]` (default all valid).
        mask_repeated: drop positions `t < i` (1-based) of pass i, which repeat pass i-1.
        reduction: `"mean"`, `"per_example"` or `"none"` (see Reductions).
        unroll: run the passes as a Python loop (default, faster in our benchmark and
            any `body_fn` works) instead of a `jax.lax.scan` (one trace of `body_fn`,
            shorter compile; `body_fn` must be scannable: a pure function or an nnx
            module).
        remat: wrap each pass in `jax.checkpoint`, keeping only its inputs for the
            backward pass (memory ~1 pass instead of n, for about one more forward).
        embedding: deprecated, with a string `feed` only: the table of `SoftFeed`,
            `TopKFeed` and `ArgmaxFeed`.
        top_k: deprecated, with `feed="topk"` only: `TopKFeed`'s `k`.

    Returns:
        `(loss, per_pass_losses)`, float32, with `loss = sum_i weights[i] *
        per_pass_losses[i]`. Shapes by `reduction` (`B` any batch dimensions):
        `"mean"`: `()` and `[n]`, a pass with no scored position giving 0;
        `"per_example"`: `[B]` and `[n, B]`, a sequence with no scored position
        giving 0; `"none"`: `[B, T]` and `[n, B, T]`.

    Raises:
        ValueError: for `n < 1`, `weights` of the wrong length or negative, shapes
            that disagree (checked abstractly, with `jax.eval_shape`), non-integer
            `targets` or concrete ones outside `[0, V)` where `where` marks them valid,
            a `feed` that is not a feed object (or a former string), an embedding table
            of the wrong shape, `k` outside `[1, V]`, an unknown `reduction`, `embedding`
            or `top_k` given with a feed object (or, with a string `feed`, missing where
            it needs them or given where it does not), or a `body_fn` or `output_fn`
            that writes the state of an nnx module it reaches through a bound method or
            a closure.

    Examples:
        A causal body (a prefix sum) and an output layer tied to the embedding:

        >>> import jax.numpy as jnp
        >>> from jaxtricks.teaforn import teaforn_loss
        >>> table = jnp.linspace(-1.0, 1.0, 20).reshape(5, 4)  # V=5 tokens, D=4
        >>> tokens = jnp.array([[0, 3, 1, 4, 2], [0, 2, 2, 1, 3]])  # w_0 = 0 starts
        >>> body = lambda e: jnp.tanh(jnp.cumsum(e, axis=-2))
        >>> output = lambda h: h @ table.T
        >>> inputs, targets = table[tokens[:, :-1]], tokens[:, 1:]
        >>> loss, per_pass = teaforn_loss(body, output, inputs, targets, n=2)
        >>> round(float(loss), 4), per_pass.shape
        (6.4226, (2,))
        >>> token_loss, ce = teaforn_loss(body, output, inputs, targets, n=2,
        ...                               reduction="none")
        >>> token_loss.shape, ce.shape
        ((2, 4), (2, 2, 4))
        >>> bool(jnp.allclose(ce.mean(axis=(1, 2)), per_pass))
        True

        The other feeds need the embedding table, which their object carries:

        >>> from jaxtricks.teaforn import SoftFeed
        >>> loss, _ = teaforn_loss(body, output, inputs, targets, n=2, feed=SoftFeed(table))
        >>> round(float(loss), 4)
        6.4246

    References:
        Goodman, Ding & Soricut, `TeaForN: Teacher-Forcing with N-grams
        <https://arxiv.org/abs/2010.03494>`_, EMNLP 2020, section 3 (the N decoders,
        the hidden and top-k embedding feeds, the summed per-decoder losses).

        Su, `TeaForN：让Teacher Forcing更有“远见”一些
        <https://kexue.fm/archives/7818>`_, 2020 (the notation used here).
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
    return jnp.sum(token_ce, axis=axis) / jnp.maximum(jnp.sum(scored, axis=axis), 1)


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
