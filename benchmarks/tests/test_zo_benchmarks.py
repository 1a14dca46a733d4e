"""The zeroth-order benchmarks' parts: planned-memory rows, the fine-tuning readout, and
the estimators benchmark's direction kinds, forward-gradient speed and memory rows."""

import math

import jax
import numpy as np
import pytest

from benchmarks import _harness, _zo_memory, estimators, zo_finetune


def _row(rows, computation):
    (row,) = [r for r in rows if r["computation"] == computation]
    return row


@pytest.mark.optimized  # planned memory of the optimised programs
def test_memory_rows_are_planned_peaks_of_compiled_programs():
    problem = _zo_memory.mlp((8, 64, 64, 4), 4)
    rows = _zo_memory.table(problem, ((8, None),), 2, grad=False)
    params_bytes = 4 * (8 * 64 + 64 + 64 * 64 + 64 + 64 * 4 + 4)
    assert {r["params_MiB"] for r in rows} == {params_bytes / 2**20}
    inference = _row(rows, "inference loss(params)")
    compiled = jax.jit(problem.loss).lower(problem.params, problem.batch).compile()
    assert inference["peak_MiB"] == _harness.peak_bytes(compiled) / 2**20
    # The donated update never holds all directions: below the default estimator,
    # which stores num_samples / 2 = 4 perturbation pytrees (one block at this size).
    update = _row(rows, "zeroth_order_update n=2 (donated)")["peak_MiB"]
    stored = _row(rows, "zeroth_order_grad n=8 chunk=None")["peak_MiB"]
    assert update < stored
    assert stored > inference["peak_MiB"] + 4 * params_bytes / 2**20
    assert all(r["peak/inference"] == r["peak_MiB"] / inference["peak_MiB"] for r in rows)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_the_opt_decoder_has_opt_1_3b_parameter_count_without_allocating(scan_layers):
    problem = _zo_memory.decoder(layers=24, d_model=2048, heads=32, ffn=8192, vocab=50272,
                                 seq=400, batch_size=1, positions=2050,
                                 scan_layers=scan_layers)
    leaves = jax.tree.leaves(problem.params)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
    # OPT-1.3B (facebook/opt-1.3b): tied embeddings, 2048 + 2 learned positions.
    assert sum(math.prod(leaf.shape) for leaf in leaves) == 1_315_758_080
    assert _zo_memory.nbytes(problem.params) == 4 * 1_315_758_080


def test_the_decoder_loss_is_next_token_cross_entropy():
    problem = _zo_memory.decoder(layers=1, d_model=8, heads=2, ffn=16, vocab=11, seq=5,
                                 batch_size=3)
    params = jax.tree.map(lambda s: 0.1 * jax.random.normal(jax.random.key(1), s.shape),
                          problem.params)
    tokens = jax.random.randint(jax.random.key(2), (3, 5), 0, 11)
    loss_fn = jax.jit(problem.loss)  # one compile for both calls
    loss = loss_fn(params, tokens)
    # Uniform logits give log(vocab): zero the embedding and check the baseline.
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    zeroed = jax.tree_util.tree_unflatten(
        jax.tree.structure(params),
        [v * 0 if "embedding" in jax.tree_util.keystr(p) and "Embed_0" in
         jax.tree_util.keystr(p) else v for p, v in flat])
    assert float(loss_fn(zeroed, tokens)) == pytest.approx(math.log(11), rel=1e-6)
    assert np.isfinite(float(loss)) and float(loss) != pytest.approx(math.log(11))


def test_fine_tuning_runs_follow_their_learning_rates():
    size = zo_finetune.SIZES["smoke"]
    model = zo_finetune._models.MLP(size.hidden, num_outputs=5)
    params, data = zo_finetune._pretrained(model, size, seed=0)
    args = (data.x_train, data.y_train, data.x_test, data.y_test)
    sgd = zo_finetune._runs(model, size)["backprop SGD"]
    curve = jax.jit(sgd)(params, jax.random.key(0), *args)
    assert curve.shape == (size.segments,)
    # Backprop SGD's curve is an optax.sgd run: its last point matches a plain loop.
    loss = zo_finetune._loss(model, data.x_train, data.y_train)
    grad = jax.jit(jax.grad(loss))  # one compile, reused by every step of the loop
    p = params
    for _ in range(size.steps):
        p = jax.tree.map(lambda w, g: w - zo_finetune.METHODS["backprop SGD"] * g, p, grad(p))
    expected = float(np.mean(np.argmax(model.apply(p, data.x_test), -1) == data.y_test))
    assert float(curve[-1]) == pytest.approx(expected)


def _table(report, prefix):
    (rows,) = [rows for title, rows in report.tables.items() if title.startswith(prefix)]
    return rows


def test_direction_kinds_forward_gradient_speed_and_memory_rows_at_the_smoke_size(tmp_path):
    report = _harness.Report("estimators", size="smoke", label="smoke", results_dir=tmp_path)
    size, key = report.sized(estimators.SIZES), jax.random.key(0)
    with _harness.fast_compiles():
        estimators._direction_kinds(report, size, key)
        estimators._forward_speed(report, size, key)
        estimators._memory_table(report, size)
    kinds = _table(report, "direction kinds")
    assert {(r["estimator"], r["num_directions"]) for r in kinds} == {
        (name, n) for name in (*estimators.KINDS, "forward_gradient", "evosax Open_ES")
        for n in size.kinds_directions}
    for row in kinds:  # 256 keys: a ratio's s.e. is 3-13 %
        assert np.isfinite(row["ratio"]) and row["ratio_se"] > 0
        assert abs(row["ratio"] - 1) < 5 * row["ratio_se"], row
    assert all((tmp_path / figure).exists() for figure in report.figures)
    speed = _table(report, "speed: forward_gradient")
    assert [r["num_directions"] for r in speed] == list(size.speed_directions)
    for column in ("forward/jax.grad", "zo/jax.grad", "forward/zo"):
        assert all(np.isfinite(r[column]) and r[column] > 0 for r in speed)
    memory = {r["computation"]: r for r in _table(report, "planned peak vs inference")}
    assert memory["jax.grad(loss)"]["peak/jax.grad"] == 1
    for name in ("zeroth_order_grad n=4 chunk=None", "forward_gradient n=2"):
        assert np.isfinite(memory[name]["peak/jax.grad"]) and memory[name]["peak_MiB"] > 0
