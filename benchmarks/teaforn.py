"""TeaForN vs teacher forcing: flax Transformer on running sums mod 10 (greedy accuracy, step cost).

Task: source digits x_1..x_L, target y_t = (x_1 + ... + x_t) mod 10, so a decoder that
copies its previous token forward turns one mistake into a wrong suffix (errors
compound). A small pre-LN Transformer encoder-decoder (linen, tied output projection,
sinusoidal positions) is trained with teacher forcing (TeaForN n=1) and TeaForN n=2, 3
(feed="hidden", weights all ones), same steps, data and seeds (seeds vmapped inside one
jitted `lax.scan` training loop), then decoded greedily on held-out sequences of the
training lengths and longer. The cost of a training step is timed against teacher
forcing, passes unrolled vs `lax.scan`, with and without `jax.checkpoint`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _harness
from jaxtricks.teaforn import teaforn_loss

BOS, PAD, VOCAB = 10, 11, 12
PAPER_CLAIMS = (
    "Goodman, Ding, Soricut (EMNLP 2020, arXiv 2010.03494): TeaForN improves BLEU on "
    "WMT14 En-Fr and ROUGE on CNN/DailyMail and Gigaword, and reaches similar quality "
    "with a smaller beam, for a moderate training cost; exact BLEU/ROUGE numbers not "
    "retrieved (spec 6.2)."
)


def sinusoid(length: int, dim: int) -> jax.Array:
    """Sinusoidal positions [length, dim] (defined for any length, also unseen ones)."""
    positions = jnp.arange(length)[:, None]
    rates = jnp.exp(-jnp.log(10_000.0) * jnp.arange(0, dim, 2) / dim)
    angles = positions * rates
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Block(nn.Module):
    """Pre-LN Transformer block: self-attention, optional cross-attention, MLP."""

    dim: int
    heads: int

    @nn.compact
    def __call__(self, x, mask, memory=None, memory_mask=None):
        attend = functools.partial(nn.MultiHeadDotProductAttention, num_heads=self.heads)
        x = x + attend()(nn.LayerNorm()(x), mask=mask)
        if memory is not None:
            x = x + attend()(nn.LayerNorm()(x), memory, mask=memory_mask)
        hidden = nn.gelu(nn.Dense(4 * self.dim)(nn.LayerNorm()(x)))
        return x + nn.Dense(self.dim)(hidden)


class Seq2Seq(nn.Module):
    """Encoder-decoder split as TeaForN needs: embed, body (decoder M), logits (tied)."""

    dim: int = 32
    heads: int = 2
    layers: int = 1

    def setup(self):
        self.embedding = nn.Embed(VOCAB, self.dim, embedding_init=nn.initializers.normal(1.0))
        self.encoder = [Block(self.dim, self.heads) for _ in range(self.layers)]
        self.decoder = [Block(self.dim, self.heads) for _ in range(self.layers)]
        self.encoder_norm = nn.LayerNorm()
        self.decoder_norm = nn.LayerNorm()

    def embed(self, tokens):
        return self.embedding(tokens)

    def encode(self, source, source_valid):
        x = self.embed(source) + sinusoid(source.shape[-1], self.dim)
        mask = nn.make_attention_mask(source_valid, source_valid)
        for block in self.encoder:
            x = block(x, mask)
        return self.encoder_norm(x)

    def body(self, vectors, memory, source_valid):
        positions = jnp.ones(vectors.shape[:-1], bool)
        x = vectors + sinusoid(vectors.shape[-2], self.dim)
        causal = nn.make_causal_mask(positions)
        cross = nn.make_attention_mask(positions, source_valid)
        for block in self.decoder:
            x = block(x, causal, memory, cross)
        return self.decoder_norm(x)

    def logits(self, hidden):
        return self.embedding.attend(hidden) / jnp.sqrt(self.dim)

    def __call__(self, source, source_valid, decoder_inputs):
        memory = self.encode(source, source_valid)
        return self.logits(self.body(self.embed(decoder_inputs), memory, source_valid))


MODEL = Seq2Seq()


def make_batch(key, batch: int, min_len: int, max_len: int, width: int):
    """Running sums mod 10 of random digit strings, right-padded to `width`."""
    digit_key, length_key = jax.random.split(key)
    digits = jax.random.randint(digit_key, (batch, width), 0, 10)
    lengths = jax.random.randint(length_key, (batch, 1), min_len, max_len + 1)
    valid = jnp.arange(width) < lengths
    source = jnp.where(valid, digits, PAD)
    targets = jnp.where(valid, jnp.cumsum(digits, axis=-1) % 10, PAD)
    decoder_inputs = jnp.concatenate([jnp.full((batch, 1), BOS), targets[:, :-1]], axis=-1)
    return source, valid, decoder_inputs, targets


def loss_fn(params, batch, *, n, unroll=True, remat=False):
    source, valid, decoder_inputs, targets = batch
    memory = MODEL.apply(params, source, valid, method=Seq2Seq.encode)
    return teaforn_loss(
        lambda vectors: MODEL.apply(params, vectors, memory, valid, method=Seq2Seq.body),
        lambda hidden: MODEL.apply(params, hidden, method=Seq2Seq.logits),
        MODEL.apply(params, decoder_inputs, method=Seq2Seq.embed),
        targets, n=n, where=valid, unroll=unroll, remat=remat,
    )


def make_train_step(optimizer, **loss_kwargs):
    def train_step(params, opt_state, batch):
        (_, per_pass), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch, **loss_kwargs)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, per_pass[0]
    return train_step


def train(seed_keys, *, n, steps, batch, max_len, lr):
    """Trains one model per seed (vmapped) in a single jitted scan; returns the params."""
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adam(optax.cosine_decay_schedule(lr, steps, 0.1)))
    train_step = make_train_step(optimizer, n=n)

    def one_seed(key):
        init_key, data_key = jax.random.split(key)
        example = make_batch(data_key, 2, 1, max_len, max_len)
        params = MODEL.init(init_key, example[0], example[1], example[2])
        opt_state = optimizer.init(params)

        def step(carry, index):
            params, opt_state = carry
            data = make_batch(jax.random.fold_in(data_key, index), batch, 1, max_len, max_len)
            params, opt_state, tf_loss = train_step(params, opt_state, data)
            return (params, opt_state), tf_loss

        (params, _), losses = jax.lax.scan(step, (params, opt_state), jnp.arange(steps))
        return params, losses

    return jax.jit(jax.vmap(one_seed))(seed_keys)


def greedy_decode(params, source, valid):
    """Greedy decoding with pass 1 only (ordinary inference), one token per position."""
    memory = MODEL.apply(params, source, valid, method=Seq2Seq.encode)
    width = source.shape[-1]

    def step(position, tokens):
        decoder_inputs = jnp.concatenate([jnp.full_like(tokens[:, :1], BOS), tokens[:, :-1]],
                                         axis=-1)
        vectors = MODEL.apply(params, decoder_inputs, method=Seq2Seq.embed)
        hidden = MODEL.apply(params, vectors, memory, valid, method=Seq2Seq.body)
        logits = MODEL.apply(params, hidden[:, position], method=Seq2Seq.logits)
        return tokens.at[:, position].set(jnp.argmax(logits, axis=-1))

    return jax.lax.fori_loop(0, width, step, jnp.full(source.shape, PAD))


@functools.partial(jax.jit, static_argnames=("count", "width"))
def accuracies(params, key, min_len, max_len, *, count, width):
    """Exact-match and token accuracy of greedy decoding on fresh sequences, per seed."""
    source, valid, _, targets = make_batch(key, count, min_len, max_len, width)
    decoded = jax.vmap(greedy_decode, in_axes=(0, None, None))(params, source, valid)
    correct = (decoded == targets) | ~valid
    exact = jnp.mean(jnp.all(correct, axis=-1), axis=-1)
    return exact, jnp.sum(correct & valid, axis=(1, 2)) / jnp.sum(valid)


def run(report: _harness.Report) -> None:
    quick = report.quick
    seeds, steps = (2, 30) if quick else (3, 800)
    batch, train_len, lr = 32, 8, 3e-3
    eval_count = 128 if quick else 1000
    buckets = {"lengths 1-8": (1, 8), "length 8": (8, 8), "longer 9-12": (9, 12)}
    width = max(high for _, high in buckets.values())
    report.note("setup", f"{seeds} seeds x {steps} steps, batch {batch}, lengths 1-"
                f"{train_len}, Transformer d={MODEL.dim} {MODEL.layers}+{MODEL.layers} "
                f"layers, adam lr {lr} cosine, clip 1")
    seed_keys = jax.random.split(jax.random.key(0), seeds)
    eval_key = jax.random.key(12345)  # held out: training data keys derive from key(0)

    rows = []
    for n in report.progress((1, 2) if quick else (1, 2, 3), "train"):
        params, losses = train(seed_keys, n=n, steps=steps, batch=batch,
                               max_len=train_len, lr=lr)
        row = {"method": "teacher forcing" if n == 1 else f"TeaForN n={n}",
               "final_TF_loss": _mean_std(losses[:, -max(steps // 20, 1):].mean(axis=1))}
        for name, (low, high) in buckets.items():
            exact, token = accuracies(params, eval_key, low, high, count=eval_count,
                                      width=width)
            row[f"exact {name}"] = _mean_std(exact)
            row[f"token {name}"] = _mean_std(token)
        rows.append(row)
    report.table(f"greedy decoding, mean ± std over {seeds} seeds, {eval_count} held-out "
                 "sequences per bucket", rows)

    timing_batch = make_batch(jax.random.key(1), batch, 1, train_len, train_len)
    params = MODEL.init(jax.random.key(2), *timing_batch[:3])
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)
    candidates = {"teacher forcing": make_train_step(optimizer, n=1)}
    for n in (2,) if quick else (2, 3):
        candidates[f"n={n} unrolled"] = make_train_step(optimizer, n=n, unroll=True)
        candidates[f"n={n} scan"] = make_train_step(optimizer, n=n, unroll=False)
        if not quick:
            candidates[f"n={n} unrolled remat"] = make_train_step(optimizer, n=n, remat=True)
    timings = _harness.compare(candidates, params, opt_state, timing_batch,
                               rounds=3 if quick else 7)
    report.table(f"training step time (one seed, batch {batch}), ratio to teacher forcing",
                 _harness.timing_rows(timings, "teacher forcing"))
    report.note("paper claims", PAPER_CLAIMS)


def _mean_std(values) -> str:
    values = np.asarray(values, np.float64)
    return f"{values.mean():.3f} ± {values.std():.3f}"
