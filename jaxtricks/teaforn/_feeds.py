"""What one TeaForN pass feeds the next: the feed objects, their vectors `v_t` and the
right shift.

A feed is a small frozen dataclass carrying only its own options (the embedding table
of the feeds that need one, `k` of the top-k feed); each is a pytree (the table a leaf,
`k` static), so it may be built inside or passed through `jax.jit`, `jax.vmap` and
`jax.grad`.
"""

from __future__ import annotations

import dataclasses
from typing import TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks._src import checks


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HiddenFeed:
    """Feed the hidden states themselves, `v_t = h_t` (the paper's main variant).

    Needs `h` and `e` in one space (`H = D`), e.g. an output projection tied to the
    input embedding.

    Examples:
        >>> from jaxtricks import teaforn
        >>> teaforn.HiddenFeed()
        HiddenFeed()

    References:
        Goodman, Ding & Soricut, `TeaForN: Teacher-Forcing with N-grams
        <https://arxiv.org/abs/2010.03494>`_, EMNLP 2020, section 3 (the hidden state
        fed as the next input)
    """

    def vectors(self, hidden: jax.Array, logits: jax.Array) -> jax.Array:
        """`v_t` from a pass's hidden states `[..., T, H]` and logits `[..., T, V]`."""
        del logits
        return hidden

    def checked(self, input_embeddings: jax.Array, vocab_size: int) -> HiddenFeed:
        """The feed, its options checked against `[B, T, D]` inputs and `V` tokens."""
        del input_embeddings, vocab_size
        return self


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SoftFeed:
    """Feed the probability-weighted embedding `v_t = p_t^T E` (top-k with `k = V`).

    Attributes:
        embedding: the token embedding table `E`, `[V, D]`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import teaforn
        >>> teaforn.SoftFeed(jnp.eye(3)).embedding.shape
        (3, 3)

    References:
        Goodman, Ding & Soricut, `TeaForN: Teacher-Forcing with N-grams
        <https://arxiv.org/abs/2010.03494>`_, EMNLP 2020, section 3 (the top-k embedding
        mixture, here with `k = V`)
    """

    embedding: jax.typing.ArrayLike

    def vectors(self, hidden: jax.Array, logits: jax.Array) -> jax.Array:
        """`v_t` from a pass's hidden states `[..., T, H]` and logits `[..., T, V]`."""
        del hidden
        return _soft_vectors(logits, jnp.asarray(self.embedding))

    def checked(self, input_embeddings: jax.Array, vocab_size: int) -> SoftFeed:
        """The feed, its options checked against `[B, T, D]` inputs and `V` tokens."""
        return SoftFeed(_checked_embedding(self.embedding, input_embeddings, vocab_size))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TopKFeed:
    """Feed the renormalised top-k mixture of embeddings,
    `v_t = sum_{w in top_k(p_t)} p_t[w] e_w / sum_{w in top_k(p_t)} p_t[w]`.

    Attributes:
        embedding: the token embedding table `E`, `[V, D]`.
        k: the number of tokens kept, an integer in `[1, V]` (static).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import teaforn
        >>> teaforn.TopKFeed(jnp.eye(3), k=2).k
        2

    References:
        Goodman, Ding & Soricut, `TeaForN: Teacher-Forcing with N-grams
        <https://arxiv.org/abs/2010.03494>`_, EMNLP 2020, section 3 (the top-k embedding
        mixture)
    """

    embedding: jax.typing.ArrayLike
    k: int = dataclasses.field(metadata={"static": True})

    def vectors(self, hidden: jax.Array, logits: jax.Array) -> jax.Array:
        """`v_t` from a pass's hidden states `[..., T, H]` and logits `[..., T, V]`."""
        del hidden
        embedding = jnp.asarray(self.embedding)
        top_logits, top_tokens = jax.lax.top_k(logits, self.k)
        # softmax over the k kept logits = p restricted to the top k, renormalised.
        top_probs = jax.nn.softmax(top_logits.astype(jnp.float32), axis=-1)
        return jnp.einsum("...k,...kd->...d", top_probs.astype(embedding.dtype),
                          embedding[top_tokens])

    def checked(self, input_embeddings: jax.Array, vocab_size: int) -> TopKFeed:
        """The feed, its options checked against `[B, T, D]` inputs and `V` tokens."""
        checks.check_positive_int("k", self.k)
        if self.k > vocab_size:
            raise ValueError(f"k must lie in [1, {vocab_size}] (V), got {self.k}.")
        embedding = _checked_embedding(self.embedding, input_embeddings, vocab_size)
        return TopKFeed(embedding, self.k)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ArgmaxFeed:
    """Feed the embedding of the argmax token, `v_t = e_{argmax p_t}` forward, with the
    gradient of `p_t^T E` (straight-through). An extension beyond the paper, which feeds
    only `h` or top-k mixtures.

    Attributes:
        embedding: the token embedding table `E`, `[V, D]`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import teaforn
        >>> teaforn.ArgmaxFeed(jnp.eye(3)).embedding.shape
        (3, 3)

    References:
        Goodman, Ding & Soricut, `TeaForN: Teacher-Forcing with N-grams
        <https://arxiv.org/abs/2010.03494>`_, EMNLP 2020, section 3 (the embedding fed to
        the next decoder, here the argmax token's)

        Bengio, Léonard & Courville, `Estimating or Propagating Gradients Through
        Stochastic Neurons for Conditional Computation <https://arxiv.org/abs/1308.3432>`_,
        2013 (the straight-through estimator)
    """

    embedding: jax.typing.ArrayLike

    def vectors(self, hidden: jax.Array, logits: jax.Array) -> jax.Array:
        """`v_t` from a pass's hidden states `[..., T, H]` and logits `[..., T, V]`."""
        del hidden
        embedding = jnp.asarray(self.embedding)
        soft = _soft_vectors(logits, embedding)
        hard = embedding[jnp.argmax(logits, axis=-1)]
        # Straight-through: the value of `hard`, the derivative of `soft`.
        return soft + jax.lax.stop_gradient(hard - soft)

    def checked(self, input_embeddings: jax.Array, vocab_size: int) -> ArgmaxFeed:
        """The feed, its options checked against `[B, T, D]` inputs and `V` tokens."""
        return ArgmaxFeed(_checked_embedding(self.embedding, input_embeddings, vocab_size))


Feed: TypeAlias = HiddenFeed | SoftFeed | TopKFeed | ArgmaxFeed
FEED_TYPES = (HiddenFeed, SoftFeed, TopKFeed, ArgmaxFeed)
FEEDS = ("hidden", "soft", "topk", "argmax")  # the former string forms (deprecated)


def _soft_vectors(logits: jax.Array, embedding: jax.Array) -> jax.Array:
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(embedding.dtype)
    return probs @ embedding


def _checked_embedding(
    embedding: jax.typing.ArrayLike, input_embeddings: jax.Array, vocab_size: int
) -> jax.Array:
    checks.check_shape("embedding", np.shape(embedding),
                       (vocab_size, input_embeddings.shape[-1]))
    embedding = jnp.asarray(embedding)
    checks.check_floating("embedding", embedding)
    return embedding


def check_feed(feed: object) -> None:
    """Raises a ValueError unless `feed` is one of the feed objects."""
    if not isinstance(feed, FEED_TYPES):
        raise ValueError(
            "feed must be a HiddenFeed, SoftFeed, TopKFeed or ArgmaxFeed "
            f"(jaxtricks.teaforn), got {feed!r}."
        )


def from_strings(
    feed: str, embedding: jax.typing.ArrayLike | None, top_k: int | None
) -> Feed:
    """The feed object of the former (deprecated) `feed=str, embedding=, top_k=` form,
    with the former checks and messages."""
    checks.check_choice("feed", feed, FEEDS)
    if feed == "hidden":
        if embedding is not None:
            raise ValueError("embedding is only used with feed in "
                             f"{FEEDS[1:]}, got feed='hidden'.")
        if top_k is not None:
            raise ValueError("top_k is only used with feed='topk', got feed='hidden'.")
        return HiddenFeed()
    if embedding is None:
        raise ValueError(f"feed={feed!r} needs embedding [V, D], got None.")
    if feed == "topk":
        if top_k is None:
            raise ValueError("feed='topk' needs top_k, an integer in [1, V], got None.")
        return TopKFeed(embedding, top_k)
    if top_k is not None:
        raise ValueError(f"top_k is only used with feed='topk', got feed={feed!r}.")
    return SoftFeed(embedding) if feed == "soft" else ArgmaxFeed(embedding)


def shift_in(vectors: jax.Array, input_embeddings: jax.Array, valid: jax.Array) -> jax.Array:
    """`(e_0, v_1, ..., v_{T-1})`, keeping `e_t` where target position t-1 is padding."""
    vectors = vectors.astype(input_embeddings.dtype)
    shifted = jnp.concatenate([input_embeddings[..., :1, :], vectors[..., :-1, :]], axis=-2)
    # Input position t is fed from output position t-1: only when that one is valid.
    previous_valid = jnp.concatenate(
        [jnp.zeros_like(valid[..., :1]), valid[..., :-1]], axis=-1
    )
    return jnp.where(previous_valid[..., None], shifted, input_embeddings)
