"""Planned memory of zeroth-order training beside inference and backprop (MeZO's table),
and of the forward gradient.

Every figure is XLA's plan for one call, `_harness.peak_bytes` of
`jax.jit(f).lower(*args).compile()` (arguments + outputs + temporaries - aliased),
lowered from `jax.ShapeDtypeStruct`s, so nothing the size of the model is allocated:
a 1.3B-parameter decoder compiles on a machine that could not hold its Adam state.
Training steps donate the parameters (and the Adam state), as a training loop would.

Malladi et al. (MeZO, https://arxiv.org/abs/2305.17333) report that MeZO fine-tunes
with the memory of inference, up to 12x less than fine-tuning with Adam (OPT-13B,
MultiRC), and that one 80 GB A100 fine-tunes a 30B model with MeZO but only a 2.7B
one with Adam; their memory profile uses MultiRC, about 400 tokens per example.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _harness
from jaxtricks import estimators

LEARNING_RATE, SIGMA = 1e-6, 1e-3  # MeZO's scale; the plan does not depend on them


@dataclasses.dataclass(frozen=True)
class Problem:
    """A loss, the shapes of its parameters and of one batch (no values)."""

    name: str
    loss: Callable  # loss(params, batch) -> scalar
    params: object  # pytree of jax.ShapeDtypeStruct
    batch: object


def mlp(widths: tuple[int, ...], batch_size: int) -> Problem:
    """ReLU MLP `widths[0] -> ... -> widths[-1]`, squared error, float32."""
    params = [{"w": jax.ShapeDtypeStruct((a, b), jnp.float32),
               "b": jax.ShapeDtypeStruct((b,), jnp.float32)}
              for a, b in itertools.pairwise(widths)]
    batch = (jax.ShapeDtypeStruct((batch_size, widths[0]), jnp.float32),
             jax.ShapeDtypeStruct((batch_size, widths[-1]), jnp.float32))

    def loss(p, data):
        h, target = data
        for index, layer in enumerate(p):
            h = h @ layer["w"] + layer["b"]
            h = jax.nn.relu(h) if index < len(p) - 1 else h
        return jnp.mean((h - target) ** 2)

    return Problem(f"ReLU MLP {'-'.join(map(str, widths))}, batch {batch_size}", loss,
                   params, batch)


def decoder(*, layers: int, d_model: int, heads: int, ffn: int, vocab: int, seq: int,
            batch_size: int, positions: int | None = None, scan_layers: bool = False,
            name: str = "decoder") -> Problem:
    """An OPT-style flax decoder: learned positions (`positions` rows, default `seq`),
    pre-LN blocks, ReLU FFN, logits tied to the token embedding (Zhang et al. 2022,
    https://arxiv.org/abs/2205.01068); next-token cross-entropy on a `[batch, seq]` batch.

    `scan_layers` stacks the blocks' parameters (`nn.scan`): one leaf per kind, `layers`
    times larger, and a program whose size does not grow with `layers`, as large flax
    models are usually written (unrolled, the update of OPT-1.3B shapes compiles in about
    30 s on a 2-core CPU)."""
    import flax.linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, h, mask):
            h = h + nn.MultiHeadDotProductAttention(num_heads=heads)(
                nn.LayerNorm()(h), mask=mask)
            return h + nn.Dense(d_model)(nn.relu(nn.Dense(ffn)(nn.LayerNorm()(h)))), None

    Stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=nn.broadcast, length=layers)

    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            embed = nn.Embed(vocab, d_model)
            where = jnp.arange(tokens.shape[-1])
            h = embed(tokens) + nn.Embed(positions or seq, d_model)(where)
            mask = nn.make_causal_mask(tokens)
            if scan_layers:
                h = Stack()(h, mask)[0]
            for _ in range(0 if scan_layers else layers):
                h = Block()(h, mask)[0]
            return embed.attend(nn.LayerNorm()(h))

    model = Decoder()
    tokens = jax.ShapeDtypeStruct((batch_size, seq), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), tokens)

    def loss(p, data):
        logits = model.apply(p, data)[:, :-1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, data[:, 1:]).mean()

    label = (f"{name}: {layers} layers, d_model {d_model}, ffn {ffn}, vocab {vocab}, "
             f"seq {seq}, batch {batch_size}")
    return Problem(label, loss, params, tokens)


def computations(problem: Problem, zo_grads: tuple[tuple[int, int | None], ...],
                 update_samples: int, *, grad: bool = True,
                 forward_grads: tuple[int, ...] = ()):
    """name -> (function, args, donated argnums, (num_samples, chunk_size)).

    `zo_grads` are `zeroth_order_grad`'s `(num_samples, chunk_size)`s (`chunk_size`
    None: its default strategy), `forward_grads` the `num_samples` of `forward_gradient`
    rows (its other arguments left at their defaults)."""
    loss, params, batch = problem.loss, problem.params, problem.batch
    key = jax.random.key(0)
    adam = optax.adam(1e-4)
    rows = {"inference loss(params)": (loss, (params, batch), (), (None, None))}
    if grad:
        rows["jax.grad(loss)"] = (jax.grad(loss), (params, batch), (), (None, None))

    def adam_step(p, state, data):
        updates, state = adam.update(jax.grad(loss)(p, data), state, p)
        return optax.apply_updates(p, updates), state

    rows["backprop + Adam step (donated)"] = (
        adam_step, (params, jax.eval_shape(adam.init, params), batch), (0, 1), (None, None))
    for n, chunk in zo_grads:
        def zo_grad(p, data, k, n=n, chunk=chunk):
            return estimators.zeroth_order_grad(lambda q: loss(q, data), p, k, num_samples=n,
                                                sigma=SIGMA, chunk_size=chunk)
        rows[f"zeroth_order_grad n={n} chunk={chunk}"] = (zo_grad, (params, batch, key), (),
                                                          (n, chunk))
    for n in forward_grads:
        def forward(p, data, k, n=n):
            return estimators.forward_gradient(lambda q: loss(q, data), p, k, num_samples=n)
        rows[f"forward_gradient n={n}"] = (forward, (params, batch, key), (), (n, None))

    def zo_update(p, data, k):
        return estimators.zeroth_order_update(
            lambda q: loss(q, data), p, k, learning_rate=LEARNING_RATE,
            num_samples=update_samples, sigma=SIGMA)

    rows[f"zeroth_order_update n={update_samples} (donated)"] = (
        zo_update, (params, batch, key), (0,), (update_samples, None))
    return rows


def planned_peak(fn, args, donate):
    """(peak bytes, compile seconds) of `jax.jit(fn, donate_argnums=donate)` on `args`."""
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    return _harness.peak_bytes(compiled), time.perf_counter() - start


def random_values(tree, key: jax.Array, scale: float = 0.1):
    """Arrays for a pytree of float `ShapeDtypeStruct`s (the params or batch of an MLP
    `Problem`, to run it): `scale * N(0, 1)` draws."""
    return jax.tree.map(lambda s, k: scale * jax.random.normal(k, s.shape, s.dtype), tree,
                        optax.tree.split_key_like(key, tree))


def nbytes(tree) -> int:
    """Bytes of a pytree of arrays or `ShapeDtypeStruct`s."""
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))


def table(problem: Problem, zo_grads, update_samples, *, grad: bool = True,
          forward_grads: tuple[int, ...] = ()):
    """Rows of the memory table of one problem (MiB, and ratios to inference and, where
    planned, to `jax.grad`)."""
    params_mib = nbytes(problem.params) / 2**20
    largest_mib = max(nbytes(leaf) for leaf in jax.tree.leaves(problem.params)) / 2**20
    rows = []
    for name, (fn, args, donate, (n, chunk)) in computations(
            problem, zo_grads, update_samples, grad=grad, forward_grads=forward_grads).items():
        peak, compile_s = planned_peak(fn, args, donate)
        rows.append({
            "model": problem.name, "computation": name, "num_samples": n, "chunk_size": chunk,
            "params_MiB": params_mib, "largest_leaf_MiB": largest_mib,
            "peak_MiB": None if peak is None else peak / 2**20, "compile_s": compile_s,
        })
    _add_ratios(rows, "inference loss(params)", "peak/inference")
    _add_ratios(rows, "jax.grad(loss)", "peak/jax.grad")
    return rows


def _add_ratios(rows, reference: str, column: str) -> None:
    """Adds `column`, each row's peak over that of the row `reference`, if there is one
    (None where a peak is unknown)."""
    bases = [row["peak_MiB"] for row in rows if row["computation"] == reference]
    if not bases:
        return
    for row in rows:
        row[column] = (None if row["peak_MiB"] is None or not bases[0] else
                       row["peak_MiB"] / bases[0])
