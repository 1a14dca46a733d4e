"""TeaForN: teacher forcing with N-grams (Goodman, Ding, Soricut, EMNLP 2020).

Post (notation used here): https://kexue.fm/archives/7818.
Paper: https://arxiv.org/abs/2010.03494, https://aclanthology.org/2020.emnlp-main.702.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtricks._src import checks

FEEDS = ("hidden", "soft", "topk", "argmax")
_NEEDS_EMBEDDING = ("soft", "topk", "argmax")


def teaforn_loss(
    body_fn: Callable[[jax.Array], jax.Array],
    output_fn: Callable[[jax.Array], jax.Array],
    input_embeddings: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    n: int,
    weights: Sequence[float] | jax.typing.ArrayLike | None = None,
    feed: str = "hidden",
    embedding: jax.typing.ArrayLike | None = None,
    top_k: int | None = None,
    where: jax.typing.ArrayLike | None = None,
    mask_repeated: bool = False,
    unroll: bool = True,
    remat: bool = False,
) -> tuple[jax.Array, jax.Array]:
    r"""TeaForN loss: N decoding passes, each fed the previous pass's shifted outputs.

    The decoder is split into the input embedding `E`, the body `M` (`body_fn`:
    positions, self-attention, attention to the encoder, layers) and the output layer
    (`output_fn`). With `e_0..e_{T-1} = E(w_0..w_{T-1})` (`w_0` the start token) and
    targets `w_1..w_T`::

        h^(1) = M(e_0, e_1,     ..., e_{T-1})          (pass 1: teacher forcing)
        h^(i) = M(e_0, v_1^(i-1), ..., v_{T-1}^(i-1))    (pass i > 1)
        per_pass_losses[i-1] = mean_{valid t} -log softmax(output_fn(h^(i)))_t[w_t]
        loss = sum_i weights[i-1] * per_pass_losses[i-1]

    where `v^(i-1)` is computed from pass i-1 by `feed`:

    - `"hidden"`: `v = h` itself (the paper's main variant). Needs `h` and `e` in one
      space, e.g. an output projection tied to the input embedding.
    - `"soft"`: `v_t = p_t^T E`, the probability-weighted embedding (top-k with k = |V|).
    - `"topk"`: `v_t = sum_{w in top_k(p_t)} p_t[w] e_w / sum_{w in top_k(p_t)} p_t[w]`.
    - `"argmax"`: `v_t = e_{argmax p_t}` forward, with the gradient of `p_t^T E`
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

    Args:
        body_fn: the causal decoder body, `[B, T, D] -> hidden [B, T, H]` (any
            architecture: a closure over parameters and the encoder output, a linen
            `apply`, or an nnx module itself). With `feed="hidden"`, `H = D`.
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
        targets: `w_1..w_T`, integers, shape `[B, T]`.
        n: number of passes, >= 1.
        weights: `n` non-negative loss weights, one per pass (default all ones).
        feed: what a pass feeds the next: `"hidden"`, `"soft"`, `"topk"` or `"argmax"`.
        embedding: the token embedding table `[V, D]`, for every feed but `"hidden"`.
        top_k: k for `feed="topk"`, in `[1, V]`.
        where: valid target positions, bools of shape `[B, T]` (default all valid).
        mask_repeated: drop positions `t < i` (1-based) of pass i, which repeat pass i-1.
        unroll: run the passes as a Python loop (default, faster in our benchmark and
            any `body_fn` works) instead of a `jax.lax.scan` (one trace of `body_fn`,
            shorter compile; `body_fn` must be scannable: a pure function or an nnx
            module).
        remat: wrap each pass in `jax.checkpoint`, keeping only its inputs for the
            backward pass (memory ~1 pass instead of n, for about one more forward).

    Returns:
        `(loss, per_pass_losses)`: the weighted sum (float32 scalar) and the `n`
        per-pass mean cross-entropies (float32 `[n]`). A pass with no valid position
        has loss 0.

    Raises:
        ValueError: for `n < 1`, `weights` of the wrong length or negative, shapes
            that disagree (checked abstractly, with `jax.eval_shape`), an unknown
            `feed`, a missing `embedding` or a missing or out-of-range `top_k`.
    """
    input_embeddings = jnp.asarray(input_embeddings)
    targets = jnp.asarray(targets)
    checks.check_positive_int("n", n)
    checks.check_choice("feed", feed, FEEDS)
    weights = _checked_weights(weights, n)
    valid = _checked_where(where, targets, input_embeddings)
    apply, state = _pure_decoder(body_fn, output_fn)
    vocab_size, writes_state = _checked_vocab_size(
        apply, state, input_embeddings, targets, feed
    )
    if feed == "hidden":
        if embedding is not None:
            raise ValueError("embedding is only used with feed in "
                             f"{_NEEDS_EMBEDDING}, got feed='hidden'.")
    else:
        embedding = _checked_embedding(embedding, feed, input_embeddings, vocab_size)
    _check_top_k(top_k, feed, vocab_size)

    def feed_fn(hidden, logits):
        return _feed_vectors(feed, hidden, logits, embedding, top_k)

    def one_pass(inputs, state, pass_index):
        hidden, logits, state = apply(state, inputs)
        scored = valid
        if mask_repeated:
            scored = scored & (jnp.arange(targets.shape[-1]) >= pass_index)
        pass_loss = _mean_cross_entropy(logits, targets, scored)
        next_inputs = _shift_in(feed_fn(hidden, logits), input_embeddings, valid)
        return pass_loss, next_inputs, state

    if remat:
        one_pass = jax.checkpoint(one_pass)
    if unroll:
        per_pass, inputs = [], input_embeddings
        for pass_index in range(n):
            pass_loss, inputs, state = one_pass(inputs, state, pass_index)
            per_pass.append(pass_loss)
        per_pass_losses = jnp.stack(per_pass)
    else:
        def scan_step(carry, pass_index):
            pass_loss, *carry = one_pass(*carry, pass_index)
            return tuple(carry), pass_loss

        (_, state), per_pass_losses = jax.lax.scan(
            scan_step, (input_embeddings, state), jnp.arange(n)
        )
    if writes_state:
        nnx.update((body_fn, output_fn), state)
    return jnp.sum(weights * per_pass_losses), per_pass_losses


def _pure_decoder(body_fn, output_fn):
    """The decoder as a pure `apply(state, inputs) -> (hidden, logits, state)`, and its state.

    `apply(..., check_hidden=f)` calls `f(hidden)` before the output layer.

    An nnx module (as `body_fn` or `output_fn`) keeps RNG streams and other state
    that its call may write, which jax.eval_shape, jax.checkpoint and lax.scan do not
    allow; split off (`nnx.split`), the state that is not an `nnx.Param` is passed
    from pass to pass explicitly instead. For plain functions the state is None.
    """
    modules = (body_fn, output_fn)
    if not any(nnx.graph.is_graph_node(fn) for fn in modules):
        def apply(state, inputs, check_hidden=None):
            hidden = body_fn(inputs)
            if check_hidden is not None:
                check_hidden(hidden)
            return hidden, output_fn(hidden), state

        return apply, None
    graphdef, params, state = nnx.split(modules, nnx.Param, ...)

    def apply(state, inputs, check_hidden=None):
        # Fresh Variables at the current trace: flax >= 0.12's merge would reuse the
        # captured ones, which a nested nnx transform (nnx.RNN's scan) cannot split.
        fresh_params = jax.tree.map(lambda leaf: leaf, params)
        body, output = nnx.merge(graphdef, fresh_params, state)
        hidden = body(inputs)
        if check_hidden is not None:
            check_hidden(hidden)
        return hidden, output(hidden), nnx.state((body, output), nnx.Not(nnx.Param))

    return apply, state


def _mean_cross_entropy(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean over valid positions of the CE (0 when none is valid), in float32."""
    safe_targets = jnp.where(valid, targets, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe_targets)
    total = jnp.sum(jnp.where(valid, ce.astype(jnp.float32), 0.0))
    return total / jnp.maximum(jnp.sum(valid), 1)


def _feed_vectors(feed, hidden, logits, embedding, top_k) -> jax.Array:
    """The vectors `v_t` a pass hands to the next (before the right shift)."""
    if feed == "hidden":
        return hidden
    if feed == "topk":
        top_logits, top_tokens = jax.lax.top_k(logits, top_k)
        top_probs = jax.nn.softmax(top_logits.astype(jnp.float32), axis=-1)
        return jnp.einsum("...k,...kd->...d", top_probs.astype(embedding.dtype),
                          embedding[top_tokens])
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(embedding.dtype)
    soft = probs @ embedding
    if feed == "soft":
        return soft
    hard = embedding[jnp.argmax(logits, axis=-1)]
    return soft + jax.lax.stop_gradient(hard - soft)


def _shift_in(vectors: jax.Array, input_embeddings: jax.Array, valid: jax.Array) -> jax.Array:
    """`(e_0, v_1, ..., v_{T-1})`, keeping `e_t` where target position t-1 is padding."""
    vectors = vectors.astype(input_embeddings.dtype)
    shifted = jnp.concatenate([input_embeddings[..., :1, :], vectors[..., :-1, :]], axis=-2)
    previous_valid = jnp.concatenate(
        [jnp.zeros_like(valid[..., :1]), valid[..., :-1]], axis=-1
    )
    return jnp.where(previous_valid[..., None], shifted, input_embeddings)


def _checked_weights(weights, n: int) -> jax.Array:
    if weights is None:
        return jnp.ones((n,), jnp.float32)
    checks.check_shape("weights", np.shape(weights), (n,))
    checks.check_scalar("weights", weights, low=0.0)
    return jnp.asarray(weights, jnp.float32)


def _checked_where(where, targets: jax.Array, input_embeddings: jax.Array) -> jax.Array:
    if input_embeddings.ndim < 2:
        raise ValueError(
            "input_embeddings must have shape [B, T, D], got shape "
            f"{input_embeddings.shape}."
        )
    checks.check_shape("targets", targets.shape, input_embeddings.shape[:-1])
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"targets must be integers, got dtype {targets.dtype}.")
    if where is None:
        return jnp.ones(targets.shape, bool)
    checks.check_shape("where", np.shape(where), targets.shape)
    return jnp.asarray(where, bool)


def _checked_vocab_size(apply, state, input_embeddings, targets, feed: str):
    """Checks the outputs' shapes abstractly (no compute); returns V and whether a pass
    writes the decoder's state (one that does not, e.g. dropout in deterministic mode,
    is then never written, so it also runs as a closure under jax.jit)."""
    writes_state = []

    def check_hidden(hidden):
        if feed == "hidden":
            checks.check_shape("body_fn's output (feed='hidden')", hidden.shape,
                               input_embeddings.shape)
        elif hidden.shape[:-1] != input_embeddings.shape[:-1]:
            raise ValueError(
                f"body_fn's output must have shape {input_embeddings.shape[:-1]} + (H,), "
                f"got shape {hidden.shape}."
            )

    def shapes(state, inputs):
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


def _checked_embedding(embedding, feed: str, input_embeddings, vocab_size: int) -> jax.Array:
    if embedding is None:
        raise ValueError(f"feed={feed!r} needs embedding [V, D], got None.")
    checks.check_shape("embedding", np.shape(embedding),
                       (vocab_size, input_embeddings.shape[-1]))
    return jnp.asarray(embedding)


def _check_top_k(top_k, feed: str, vocab_size: int) -> None:
    if feed != "topk":
        if top_k is not None:
            raise ValueError(f"top_k is only used with feed='topk', got feed={feed!r}.")
        return
    if top_k is None:
        raise ValueError("feed='topk' needs top_k, an integer in [1, V], got None.")
    checks.check_positive_int("top_k", top_k)
    if top_k > vocab_size:
        raise ValueError(f"top_k must lie in [1, {vocab_size}] (V), got {top_k}.")
