"""What one TeaForN pass feeds the next: the vectors `v_t` and their right shift."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks._src import checks

FEEDS = ("hidden", "soft", "topk", "argmax")
NEEDS_EMBEDDING = ("soft", "topk", "argmax")


def feed_vectors(
    feed: str, hidden: jax.Array, logits: jax.Array, embedding: Any, top_k: Any
) -> jax.Array:
    """The vectors `v_t` a pass hands to the next (before the right shift)."""
    if feed == "hidden":
        return hidden
    if feed == "topk":
        top_logits, top_tokens = jax.lax.top_k(logits, top_k)
        # softmax over the k kept logits = p restricted to the top k, renormalised.
        top_probs = jax.nn.softmax(top_logits.astype(jnp.float32), axis=-1)
        return jnp.einsum("...k,...kd->...d", top_probs.astype(embedding.dtype),
                          embedding[top_tokens])
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(embedding.dtype)
    soft = probs @ embedding
    if feed == "soft":
        return soft
    hard = embedding[jnp.argmax(logits, axis=-1)]
    # Straight-through: the value of `hard`, the derivative of `soft`.
    return soft + jax.lax.stop_gradient(hard - soft)


def shift_in(vectors: jax.Array, input_embeddings: jax.Array, valid: jax.Array) -> jax.Array:
    """`(e_0, v_1, ..., v_{T-1})`, keeping `e_t` where target position t-1 is padding."""
    vectors = vectors.astype(input_embeddings.dtype)
    shifted = jnp.concatenate([input_embeddings[..., :1, :], vectors[..., :-1, :]], axis=-2)
    # Input position t is fed from output position t-1: only when that one is valid.
    previous_valid = jnp.concatenate(
        [jnp.zeros_like(valid[..., :1]), valid[..., :-1]], axis=-1
    )
    return jnp.where(previous_valid[..., None], shifted, input_embeddings)


def checked_embedding(
    embedding: jax.typing.ArrayLike | None, feed: str, input_embeddings: jax.Array, vocab_size: int
) -> jax.Array | None:
    """The embedding table `[V, D]` a feed needs (None for "hidden"), checked."""
    if feed == "hidden":
        if embedding is not None:
            raise ValueError("embedding is only used with feed in "
                             f"{NEEDS_EMBEDDING}, got feed='hidden'.")
        return None
    if embedding is None:
        raise ValueError(f"feed={feed!r} needs embedding [V, D], got None.")
    checks.check_shape("embedding", np.shape(embedding),
                       (vocab_size, input_embeddings.shape[-1]))
    return jnp.asarray(embedding)


def check_top_k(top_k: int | None, feed: str, vocab_size: int) -> None:
    if feed != "topk":
        if top_k is not None:
            raise ValueError(f"top_k is only used with feed='topk', got feed={feed!r}.")
        return
    if top_k is None:
        raise ValueError("feed='topk' needs top_k, an integer in [1, V], got None.")
    checks.check_positive_int("top_k", top_k)
    if top_k > vocab_size:
        raise ValueError(f"top_k must lie in [1, {vocab_size}] (V), got {top_k}.")
