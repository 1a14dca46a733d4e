"""An LSTM encoder-decoder with attention, split as TeaForN needs it, and beam search.

Model (linen): a bidirectional LSTM encoder over the source tokens; a decoder LSTM over
the input vectors, whose state `s_t` attends to the encoder memory (scaled dot
product, Luong et al., arXiv:1508.04025) and gives `h_t = LayerNorm(W [s_t; c_t])`;
logits `h_t E^T / sqrt(D)` with the target embedding `E` tied, so `h_t` lives where
the embeddings do (TeaForN's feed="hidden" hands `h_t` on in place of `E w_t`). The
decoder body is causal by construction and one step of it is as cheap as one token,
which keeps beam search cheap (no recomputed prefixes).

Beam search: a `lax.fori_loop` over the output positions; each of the `K` hypotheses
of an example is extended by every token, the `K` best of the `K x V` candidates kept.
Scores are summed log-probabilities (no length normalisation); a hypothesis ends with
`<eos>`, after which it only takes `<pad>` at no cost; `<pad>` and `<bos>` are never
emitted otherwise. Beam size 1 is greedy decoding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks._g2p_data import BOS, EOS, PAD


class Seq2Seq(nn.Module):
    """LSTM encoder-decoder: `encode`, `embed`, `body` (decoder M), `logits`, `step`."""

    source_vocab: int
    target_vocab: int
    dim: int = 64

    def setup(self):
        lstm = nn.OptimizedLSTMCell
        self.source_embedding = nn.Embed(self.source_vocab, self.dim)
        self.target_embedding = nn.Embed(self.target_vocab, self.dim,
                                         embedding_init=nn.initializers.normal(1.0))
        self.encoder = nn.Bidirectional(nn.RNN(lstm(self.dim)), nn.RNN(lstm(self.dim)))
        self.memory_projection = nn.Dense(self.dim)
        self.cell = lstm(self.dim)
        self.query = nn.Dense(self.dim, use_bias=False)
        self.readout = nn.Dense(self.dim)
        self.readout_norm = nn.LayerNorm()

    def encode(self, source):
        """Source ids `[B, S]` -> (memory `[B, S, D]`, valid `[B, S]`)."""
        valid = source != PAD
        states = self.encoder(self.source_embedding(source), seq_lengths=valid.sum(-1))
        return self.memory_projection(states), valid

    def embed(self, tokens):
        return self.target_embedding(tokens)

    def _hidden(self, states, memory, valid):
        """Decoder states `[B, T, D]` attending to the memory -> `h` `[B, T, D]`."""
        scores = jnp.einsum("btd,bsd->bts", self.query(states), memory) / jnp.sqrt(self.dim)
        scores = jnp.where(valid[:, None, :], scores, -jnp.inf)
        context = jnp.einsum("bts,bsd->btd", jax.nn.softmax(scores, axis=-1), memory)
        return self.readout_norm(self.readout(jnp.concatenate([states, context], -1)))

    def _initial_carry(self, memory):
        zeros = jnp.zeros((memory.shape[0], self.dim), memory.dtype)
        return zeros, zeros

    def body(self, vectors, memory, valid):
        """The decoder body M: input vectors `[B, T, D]` -> hidden `[B, T, D]` (causal)."""
        scan = nn.scan(lambda cell, carry, x: cell(carry, x), variable_broadcast="params",
                       split_rngs={"params": False}, in_axes=1, out_axes=1)
        _, states = scan(self.cell, self._initial_carry(memory), vectors)
        return self._hidden(states, memory, valid)

    def logits(self, hidden):
        return self.target_embedding.attend(hidden) / jnp.sqrt(self.dim)

    def __call__(self, source, decoder_inputs):
        memory, valid = self.encode(source)
        return self.logits(self.body(self.embed(decoder_inputs), memory, valid))

    def start(self, memory):
        """The decoder's carry before the first token, `[B, ...]`."""
        return self._initial_carry(memory)

    def step(self, carry, tokens, memory, valid):
        """One decoding step: previous tokens `[B]` -> (carry, log-probs `[B, V]`)."""
        carry, state = self.cell(carry, self.embed(tokens))
        hidden = self._hidden(state[:, None], memory, valid)[:, 0]
        return carry, jax.nn.log_softmax(self.logits(hidden), axis=-1)


def beam_search(step_fn, carry, *, beam: int, width: int):
    """Beam search over `width` output positions; returns (tokens, scores), best first.

    Args:
        step_fn: `(carry, tokens [B, K]) -> (carry, log_probs [B, K, V])`, carry leaves
            `[B, K, ...]`.
        carry: the initial carry, leaves `[B, ...]` (copied to the `K` hypotheses).
        beam: the beam size `K` (1 = greedy decoding).
        width: output positions; a hypothesis without `<eos>` by then ends there.

    Returns:
        tokens int32 `[B, K, width]` (each up to `<eos>`, `<pad>` after) and their
        summed log-probabilities `[B, K]`, sorted in decreasing order.
    """
    batch = jax.tree.leaves(carry)[0].shape[0]
    carry = jax.tree.map(lambda leaf: jnp.repeat(leaf[:, None], beam, axis=1), carry)
    # Only hypothesis 0 starts live, so the first step does not pick K copies of one.
    scores = jnp.where(jnp.arange(beam) == 0, 0.0, -jnp.inf) * jnp.ones((batch, 1))
    state = (carry, jnp.full((batch, beam, width), PAD, jnp.int32), scores,
             jnp.zeros((batch, beam), bool), jnp.full((batch, beam), BOS, jnp.int32))

    def extend(position, state):
        carry, tokens, scores, finished, last = state
        carry, log_probs = step_fn(carry, last)
        ids = jnp.arange(log_probs.shape[-1])
        log_probs = jnp.where((ids == PAD) | (ids == BOS), -jnp.inf, log_probs)
        log_probs = jnp.where(finished[..., None], jnp.where(ids == PAD, 0.0, -jnp.inf),
                              log_probs)
        candidates = (scores[..., None] + log_probs).reshape(batch, -1)
        scores, index = jax.lax.top_k(candidates, beam)
        origin, token = index // ids.size, (index % ids.size).astype(jnp.int32)

        def gather(leaf):
            where = origin.reshape(origin.shape + (1,) * (leaf.ndim - 2))
            return jnp.take_along_axis(leaf, where, axis=1)

        carry, tokens, finished = jax.tree.map(gather, (carry, tokens, finished))
        tokens = tokens.at[:, :, position].set(token)
        return carry, tokens, scores, finished | (token == EOS), token

    _, tokens, scores, _, _ = jax.lax.fori_loop(0, width, extend, state)
    return tokens, scores


def decode(model: Seq2Seq, params, source, *, beam: int, width: int):
    """Beam search of `model` on source ids `[B, S]`: (tokens `[B, K, width]`, scores)."""
    memory, valid = model.apply(params, source, method=Seq2Seq.encode)
    one_hypothesis = jax.vmap(
        lambda carry, tokens: model.apply(params, carry, tokens, memory, valid,
                                          method=Seq2Seq.step),
        in_axes=(1, 1), out_axes=1)
    carry = model.apply(params, memory, method=Seq2Seq.start)
    return beam_search(one_hypothesis, carry, beam=beam, width=width)
