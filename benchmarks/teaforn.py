"""TeaForN vs teacher forcing: flax Transformer on running sums mod 10 (greedy accuracy, step cost).

Task: source digits x_1..x_L, target y_t = (x_1 + ... + x_t) mod 10, so a decoder that
copies its previous token forward turns one mistake into a wrong suffix (errors
compound). A small pre-LN Transformer encoder-decoder (linen, tied output projection,
sinusoidal positions added inside the body, so fed hidden states get positions like
embeddings do) is trained with teacher forcing and TeaForN: n=2 and 3 with uniform
weights, n=3 with decaying weights (1, 1/2, 1/4), and n=3 with feed="soft". Every
(method, seed) pair trains in one jitted, vmapped `lax.scan` per feed, the pass weights
being data (teacher forcing = weights (1, 0, 0)), with the same initial parameters and
data per seed across methods. Models are decoded greedily on held-out sequences of the
training lengths and longer. A table checks that feed="hidden" is sensible here: pass-1
hidden states against the embeddings of their targets (scale, cosine, nearest token).
The cost of a training step is timed against teacher forcing, passes unrolled vs
`lax.scan`, with and without `jax.checkpoint`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from benchmarks import _harness, _stats, _train
from jaxtricks.teaforn import ArgmaxFeed, HiddenFeed, SoftFeed, teaforn_loss

BOS, PAD, VOCAB = 10, 11, 12
LR = 3e-3
PAPER_CLAIMS = (
    "Goodman, Ding, Soricut (EMNLP 2020, arXiv 2010.03494): TeaForN improves BLEU on "
    "WMT14 En-Fr and ROUGE on CNN/DailyMail and Gigaword, and reaches similar quality "
    "with a smaller beam, for a moderate training cost; exact BLEU/ROUGE numbers not "
    "retrieved."
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


def loss_fn(params, batch, weights=None, *, n, feed="hidden", unroll=True, remat=False):
    source, valid, decoder_inputs, targets = batch
    memory = MODEL.apply(params, source, valid, method=Seq2Seq.encode)
    table = params["params"]["embedding"]["embedding"]
    feeds = {"hidden": HiddenFeed(), "soft": SoftFeed(table), "argmax": ArgmaxFeed(table)}
    return teaforn_loss(
        lambda vectors: MODEL.apply(params, vectors, memory, valid, method=Seq2Seq.body),
        lambda hidden: MODEL.apply(params, hidden, method=Seq2Seq.logits),
        MODEL.apply(params, decoder_inputs, method=Seq2Seq.embed),
        targets, n=n, weights=weights, feed=feeds[feed],
        where=valid, unroll=unroll, remat=remat,
    )


def make_train_step(optimizer, **loss_kwargs):
    """`(params, opt_state, batch) -> (params, opt_state, loss)`: one step, for timing."""
    step = _train.make_step(functools.partial(loss_fn, **loss_kwargs), optimizer,
                            has_aux=True)
    return lambda params, opt_state, batch: step(params, opt_state, batch)[:3]


def init_params(key):
    example = make_batch(key, 2, 1, 2, 2)
    return MODEL.init(key, *example[:3])


def train(seed_keys, weights, *, feed, steps, batch, max_len, lr):
    """Trains every (method, seed) pair in one jitted call; returns params and TF losses.

    `weights` `[M, N_MAX]` are the methods' pass weights, data rather than static
    arguments: teacher forcing is `(1, 0, 0)` and TeaForN n=2 is `(1, 1, 0)`, so one
    compiled n=N_MAX loss serves every method (a zero weight gives its pass exactly zero
    gradient). Seed s uses the same initial parameters and data under every method.
    """
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adam(optax.cosine_decay_schedule(lr, steps, 0.1)))

    def one_run(key, pass_weights):
        init_key, data_key = jax.random.split(key)

        def batch_loss(params, index):
            data = make_batch(jax.random.fold_in(data_key, index), batch, 1, max_len, max_len)
            return loss_fn(params, data, pass_weights, n=weights.shape[-1], feed=feed)

        trained = _train.train(batch_loss, init_params(init_key), optimizer,
                               jnp.arange(steps), has_aux=True)
        return trained.params, trained.aux[:, 0]  # the teacher-forced pass's loss

    over_seeds = jax.vmap(one_run, in_axes=(0, None))
    return jax.jit(jax.vmap(over_seeds, in_axes=(None, 0)))(seed_keys, weights)


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


def _over_runs(fn):
    """Maps `fn(params, ...)` over params stacked as [methods, seeds, ...]."""
    return jax.vmap(jax.vmap(fn, in_axes=(0, None)), in_axes=(0, None))


@functools.partial(jax.jit, static_argnames=("count", "width"))
def accuracies(params, key, min_len, max_len, *, count, width):
    """Exact-match and token accuracy of greedy decoding on fresh sequences, per run."""
    source, valid, _, targets = make_batch(key, count, min_len, max_len, width)
    decoded = _over_runs(lambda p, batch: greedy_decode(p, *batch))(params, (source, valid))
    correct = (decoded == targets) | ~valid
    exact = jnp.mean(jnp.all(correct, axis=-1), axis=-1)
    return exact, jnp.sum(correct & valid, axis=(-2, -1)) / jnp.sum(valid)


@jax.jit
def feed_geometry(params, batch):
    """Pass-1 hidden states h_t vs the embeddings e_{w_t} of their targets, per run.

    feed="hidden" hands h_t to the next pass in place of e_{w_t}, so the two should share
    a scale and direction. Returns mean |h_t| / mean |e_{w_t}|, the mean cosine, and how
    often w_t is the token whose embedding is nearest to h_t in cosine.
    """
    def one(params, batch):
        source, valid, decoder_inputs, targets = batch
        memory = MODEL.apply(params, source, valid, method=Seq2Seq.encode)
        inputs = MODEL.apply(params, decoder_inputs, method=Seq2Seq.embed)
        hidden = MODEL.apply(params, inputs, memory, valid, method=Seq2Seq.body)
        table = params["params"]["embedding"]["embedding"]
        unit_hidden = hidden / jnp.linalg.norm(hidden, axis=-1, keepdims=True)
        cosines = unit_hidden @ (table / jnp.linalg.norm(table, axis=-1, keepdims=True)).T
        gold = jnp.where(valid, targets, 0)
        norm_ratio = (jnp.mean(jnp.linalg.norm(hidden, axis=-1), where=valid)
                      / jnp.mean(jnp.linalg.norm(table[gold], axis=-1), where=valid))
        cosine = jnp.mean(jnp.take_along_axis(cosines, gold[..., None], -1)[..., 0],
                          where=valid)
        nearest = jnp.mean(jnp.argmax(cosines, axis=-1) == gold, where=valid)
        return norm_ratio, cosine, nearest

    return _over_runs(one)(params, batch)


# name: (feed, pass weights); the weights' length is n.
METHODS = {
    "teacher forcing": ("hidden", (1.0,)),
    "TeaForN n=2": ("hidden", (1.0, 1.0)),
    "TeaForN n=3": ("hidden", (1.0, 1.0, 1.0)),
    "n=3 decaying (1, 1/2, 1/4)": ("hidden", (1.0, 0.5, 0.25)),
    "n=3 feed=soft": ("soft", (1.0, 1.0, 1.0)),
}
GEOMETRY_COLUMNS = ("|h| / |e|", "cos(h_t, e_w_t)", "nearest e is w_t")
SOLVED = 0.99  # exact match on the training lengths above which a run counts as solved
SIZES = {  # timing_n: TeaForN depths timed; variants: also scan and remat
    "full": {"seeds": 5, "steps": 1500, "eval_count": 500, "methods": tuple(METHODS),
             "timing_n": (2, 3), "variants": True, "rounds": 7, "min_round_s": 0.05},
    "quick": {"seeds": 2, "steps": 40, "eval_count": 64,
              "methods": ("teacher forcing", "TeaForN n=2"), "timing_n": (2,),
              "variants": False, "rounds": 3, "min_round_s": 0.05},
    "smoke": {"seeds": 2, "steps": 2, "eval_count": 8,
              "methods": ("teacher forcing", "TeaForN n=2"), "timing_n": (2,),
              "variants": False, "rounds": 1, "min_round_s": 0.0},
}


def run(report: _harness.Report) -> None:
    size = report.sized(SIZES)
    seeds, steps, eval_count = size["seeds"], size["steps"], size["eval_count"]
    batch, train_len, lr = 32, 8, LR
    buckets = {"lengths 1-8": (1, 8), "length 8": (8, 8), "longer 9-12": (9, 12)}
    width = max(high for _, high in buckets.values())
    methods = {name: METHODS[name] for name in size["methods"]}
    report.note("setup", f"{seeds} seeds x {steps} steps, batch {batch}, lengths 1-"
                f"{train_len}, Transformer d={MODEL.dim} {MODEL.layers}+{MODEL.layers} "
                f"layers, adam lr {lr} cosine, clip 1")
    seed_keys = jax.random.split(jax.random.key(0), seeds)
    eval_key = jax.random.key(12345)  # held out: training data keys derive from key(0)
    # Outside a jitted function, one compiled program each, not one per operation.
    batch_of = jax.jit(make_batch, static_argnums=(1, 2, 3, 4))
    geometry_batch = batch_of(eval_key, eval_count, 1, train_len, train_len)

    rows, geometry_rows, exact_by_method = [], [], {}
    for feed in report.progress(sorted({feed for feed, _ in methods.values()}), "train"):
        names = [name for name, (method_feed, _) in methods.items() if method_feed == feed]
        n_max = max(len(methods[name][1]) for name in names)
        weights = jnp.array([methods[name][1] + (0.0,) * (n_max - len(methods[name][1]))
                             for name in names])
        params, losses = train(seed_keys, weights, feed=feed, steps=steps, batch=batch,
                               max_len=train_len, lr=lr)
        final_loss = losses[..., -max(steps // 20, 1):].mean(axis=-1)
        scores = {name: accuracies(params, eval_key, low, high, count=eval_count, width=width)
                  for name, (low, high) in buckets.items()}
        geometry = feed_geometry(params, geometry_batch)
        for index, name in enumerate(names):
            exact_train = scores["lengths 1-8"][0][index]
            exact_by_method[name] = exact_train
            row = {"method": name, "feed": feed,
                   "final_TF_loss": _stats.mean_std(final_loss[index], digits=3),
                   "solved": f"{int(jnp.sum(exact_train >= SOLVED))}/{seeds}"}
            for bucket, (exact, token) in scores.items():
                row[f"exact {bucket}"] = _stats.mean_std(exact[index], digits=3)
                row[f"token {bucket}"] = _stats.mean_std(token[index], digits=3)
            rows.append(row)
            if feed == "hidden":
                geometry_rows.append({"method": name, **{
                    column: _stats.mean_std(values[index], digits=3)
                    for column, values in zip(GEOMETRY_COLUMNS, geometry, strict=True)}})
    for row in rows:  # paired by seed: same initial parameters and data under every method
        row.update(_stats.paired_columns(exact_by_method[row["method"]],
                                         exact_by_method["teacher forcing"], "TF", digits=3))
    report.table(f"greedy decoding, mean ± std over {seeds} seeds (same inits and data "
                 f"across methods), {eval_count} held-out sequences per bucket; solved = "
                 f"seeds with exact match >= {SOLVED} on lengths 1-8; exact match on lengths "
                 "1-8 paired by seed with teacher forcing (± s.e., t and Wilcoxon p)", rows)
    report.table("feed='hidden' check: pass-1 hidden h_t vs the embedding of its target "
                 "w_t, held-out lengths 1-8", geometry_rows)

    timing_batch = batch_of(jax.random.key(1), batch, 1, train_len, train_len)
    params = jax.jit(init_params)(jax.random.key(2))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)
    candidates = {"teacher forcing": make_train_step(optimizer, n=1)}
    for n in size["timing_n"]:
        candidates[f"n={n} unrolled"] = make_train_step(optimizer, n=n, unroll=True)
        if size["variants"]:
            candidates[f"n={n} scan"] = make_train_step(optimizer, n=n, unroll=False)
            candidates[f"n={n} unrolled remat"] = make_train_step(optimizer, n=n, remat=True)
    timings = _harness.compare(candidates, params, opt_state, timing_batch,
                               rounds=size["rounds"], min_round_s=size["min_round_s"])
    report.table(f"training step time (one model, batch {batch}), ratio to teacher forcing",
                 _harness.timing_rows(timings, "teacher forcing"))
    report.note("paper claims", PAPER_CLAIMS)
