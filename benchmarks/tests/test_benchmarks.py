"""The benchmark suite: every benchmark at its smoke size, the runner, and the shared parts
(backend detection, result labels, sizes, `compare`, data, training loop, statistics)."""

import importlib
import json
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from benchmarks import __main__ as runner
from benchmarks import (
    _backend,
    _compare,
    _data,
    _distributed,
    _harness,
    _models,
    _stats,
    _train,
    scaling,
)
from jaxtricks._src import local_cluster


@pytest.mark.parametrize("name", sorted(runner.available()))
def test_every_benchmark_runs_at_the_smoke_size_within_120_columns(name, tmp_path, capsys):
    status = runner.run_all([name], size="smoke", label="smoke", results_dir=tmp_path)
    output = capsys.readouterr().out
    assert status == 0, output
    payload = json.loads((tmp_path / f"{name}.smoke.json").read_text())
    assert payload["size"] == "smoke"
    assert payload["tables"] or payload["notes"]
    assert all((tmp_path / figure).exists() for figure in payload["figures"])
    markdown = (tmp_path / f"{name}.smoke.md").read_text()
    assert all(f"## {title}" in markdown for title in payload["tables"])
    assert [line for line in output.splitlines() if len(line) > 120] == []


def _benchmark(monkeypatch, name, run):
    """Registers `run` as the benchmark `name` (a module `benchmarks.<name>`)."""
    module = types.ModuleType(f"benchmarks.{name}")
    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)


def _one_table(report):
    report.table("t", [{"a": 1}])


def _fails(report):
    raise ValueError("planted failure")


def _fails_to_write(report):
    report.note("by layout", {(2, 2): 1.0})  # JSON keys must be strings: write() raises


def test_a_failing_benchmark_does_not_stop_the_next_one(monkeypatch, tmp_path, capsys):
    _benchmark(monkeypatch, "fails", _fails)
    _benchmark(monkeypatch, "works", _one_table)
    status = runner.run_all(["fails", "works"], size="smoke", label="t", results_dir=tmp_path)
    output = capsys.readouterr().out
    assert status == 1
    assert (tmp_path / "works.t.json").exists() and not (tmp_path / "fails.t.json").exists()
    assert "fails: FAILED" in output and 'raise ValueError("planted failure")' in output
    summary = output[output.index("1 of 2 benchmark(s) failed"):]
    assert summary.splitlines()[1:] == ["  fails: ValueError: planted failure"]
    assert runner.run_all(["works"], size="smoke", label="t", results_dir=tmp_path) == 0


def _wide_table_with_a_plot(report):
    from benchmarks import _plots

    rows = [{"k": 1, "name": name * 30, **{f"measurement_{i}": 0.1234 for i in range(8)}}
            for name in "xy"]
    report.table("wide", rows)
    report.table("picked", rows, screen=("name", "measurement_7", "k"))
    for _ in report.progress(range(3), "steps"):
        pass
    report.save_figure(_plots.subplots()[0], "plot")


def test_wide_tables_are_split_on_screen_and_the_summary_lists_the_files(
    monkeypatch, tmp_path, capsys
):
    _benchmark(monkeypatch, "wide", _wide_table_with_a_plot)
    _benchmark(monkeypatch, "fails", _fails)
    assert runner.run_all(["wide", "fails"], size="smoke", label="t", results_dir=tmp_path) == 1
    output = capsys.readouterr().out
    assert max(len(line) for line in output.splitlines()) <= 120
    # Too wide for one table: two, each led by the labels that tell the rows apart.
    wide = output[output.index("wide | wide"):output.index("wide | picked")]
    headers = [line.split("|")[1:-1] for line in wide.splitlines() if line.startswith("| k")]
    assert [[cell.strip() for cell in header[:2]] for header in headers] == [["k", "name"]] * 2
    assert [cell.strip() for header in headers for cell in header[2:]] == [
        f"measurement_{i}" for i in range(8)]
    picked = output[output.index("wide | picked"):]
    assert [cell.strip() for cell in picked.splitlines()[1].split("|")[1:-1]] == [
        "name", "measurement_7", "k"]
    assert "(not shown: measurement_0, measurement_1, measurement_2, " in picked
    markdown = (tmp_path / "wide.t.md").read_text()
    assert markdown.count("| k | name ") == 2 and markdown.count("| " + "y" * 30) == 2
    summary = output[output.index("2 benchmark(s) at the smoke size"):].splitlines()
    assert summary[1].strip().endswith("/:")  # the results folder, on a line of its own
    assert summary[2].split()[0] == "wide"
    assert summary[2].endswith("wide_plot.t.png, wide.t.json, wide.t.md")
    assert summary[3].split()[0] == "fails" and summary[3].endswith("s  FAILED; no files")
    assert all((tmp_path / name).exists() for name in ("wide_plot.t.png", "wide.t.md"))


def test_the_progress_of_a_section_goes_to_the_runner():
    seen = []
    report = _harness.Report("demo", size="smoke", on_progress=seen.append)
    assert list(report.progress(iter("ab"), "letters")) == ["a", "b"]
    assert list(report.progress({"x": 1}, "keys")) == ["x"]
    assert seen == ["letters 1/?", "letters 2/?", "keys 1/1"]


def test_every_failure_is_listed_at_the_end_and_ctrl_c_stops_the_run(
    monkeypatch, tmp_path, capsys
):
    _benchmark(monkeypatch, "unwritable", _fails_to_write)
    _benchmark(monkeypatch, "fails", _fails)
    _benchmark(monkeypatch, "works", _one_table)
    status = runner.run_all(
        ["unwritable", "works", "fails"], size="smoke", label="t", results_dir=tmp_path
    )
    output = capsys.readouterr().out
    assert status == 1 and (tmp_path / "works.t.json").exists()
    assert output[output.index("2 of 3 benchmark(s) failed"):].splitlines()[1:] == [
        "  unwritable: TypeError: keys must be str, int, float, bool or None, not tuple",
        "  fails: ValueError: planted failure",
    ]

    def interrupted(report):
        raise KeyboardInterrupt

    _benchmark(monkeypatch, "interrupted", interrupted)
    (tmp_path / "works.t.json").unlink()
    with pytest.raises(KeyboardInterrupt):
        runner.run_all(["interrupted", "works"], size="smoke", label="t", results_dir=tmp_path)
    assert not (tmp_path / "works.t.json").exists()


def test_scaling_bounds_each_layout_by_the_time_of_the_first(monkeypatch, tmp_path):
    limits = []

    def launch(processes, devices, task, out, *, timeout_s):
        limits.append(timeout_s)
        row = {"devices": processes * devices, "processes": processes, "estimates_per_s": 1.0}
        with open(out, "w") as file:
            json.dump(row, file)

    monkeypatch.setattr(local_cluster, "launch", launch)
    scaling.run(_harness.Report("scaling", label="t", results_dir=tmp_path))
    # The first layout took no time here: the later ones get the floor.
    assert limits == [scaling.FIRST_TIMEOUT_S] + [scaling.MIN_TIMEOUT_S] * 3


@pytest.mark.slow
def test_two_processes_time_the_same_calls_and_finish(tmp_path):
    # Each process used to stop a timing round by its own clock: one made a call more
    # than the other and waited for it forever (in about a third of the runs).
    out = tmp_path / "throughput.json"
    local_cluster.launch(2, 2, _distributed.throughput, out, timeout_s=60)
    result = json.loads(out.read_text())
    assert (result["devices"], result["processes"]) == (4, 2)
    assert result["estimates_per_s"] > 0


def test_every_benchmark_declares_its_three_sizes():
    for name in runner.available():
        sizes = importlib.import_module(f"benchmarks.{name}").SIZES
        assert set(sizes) == set(_harness.SIZES), name


def test_a_report_picks_its_size_and_rejects_unknown_ones():
    sizes = {"full": 3, "quick": 2, "smoke": 1}
    assert _harness.Report("demo", size="smoke").sized(sizes) == 1
    assert _harness.Report("demo", size="quick").quick
    assert not _harness.Report("demo").quick
    with pytest.raises(ValueError, match="size must be one of"):
        _harness.Report("demo", size="tiny")
    with pytest.raises(ValueError, match="exactly the keys"):
        _harness.Report("demo").sized({"full": 3, "quick": 2})

NVIDIA_SMI_HEADER = (
    "| NVIDIA-SMI 580.159.03   Driver Version: 580.159.03   CUDA Version: {cuda}     |\n"
    "|   0  NVIDIA H200   On |\n"
)


@pytest.mark.parametrize(("cuda", "build"), [("13.0", "cuda13"), ("12.4", "cuda12")])
def test_the_cuda_build_follows_the_driver(cuda, build):
    assert _backend.cuda_build(NVIDIA_SMI_HEADER.format(cuda=cuda)) == build


def test_a_google_pci_device_means_a_tpu(tmp_path):
    for name, vendor in (("0000:00:04.0", "0x1ae0"), ("0000:00:05.0", "0x8086")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vendor").write_text(vendor + "\n")
    assert _backend._has_tpu(tmp_path)
    (tmp_path / "0000:00:04.0" / "vendor").write_text("0x10de\n")
    assert not _backend._has_tpu(tmp_path)
    assert not _backend._has_tpu(tmp_path / "missing")


def test_result_files_are_labelled_with_the_backend_and_tag(tmp_path):
    assert _harness.run_label() == jax.default_backend()
    assert _harness.run_label("bf16") == f"{jax.default_backend()}-bf16"
    with pytest.raises(ValueError, match="tag"):
        _harness.run_label("a/b")
    report = _harness.Report("demo", size="quick", label="cpu-bf16", results_dir=tmp_path)
    report.table("t", [{"a": 1}])
    path = report.write()
    assert path.name == "demo.cpu-bf16.json"
    environment = json.loads(path.read_text())["environment"]
    for field in ("backend", "device_kind", "device_count", "jax", "jaxlib",
                  "default_matmul_precision", "x64"):
        assert field in environment


def _result_file(tmp_path, label, backend, variances, throughput):
    rows = [
        {"d": 10, "num_samples": n, "estimator": "ZO antithetic", "variance": v,
         "variance_se": 0.02 * v}
        for n, v in variances.items()
    ]
    payload = {
        "benchmark": "estimators",
        "label": label,
        "environment": {"backend": backend},
        "tables": {
            "quadratic: variance trace of one estimate (sigma = 0.5)": rows,
            "throughput (one estimate per call)": [
                {"problem": "quadratic", "d": 1000, "num_samples": 64, "name": "ZO",
                 "estimates_per_s": throughput}
            ],
            "memory: antithetic ZO": [
                {"d": 100, "num_samples": 64, "chunk_size": None, "peak_MiB": 1.5}
            ],
        },
    }
    path = tmp_path / f"estimators.{label}.json"
    path.write_text(json.dumps(payload))
    return path


def test_compare_merges_runs_and_flags_a_planted_disagreement(tmp_path):
    gpu = _result_file(tmp_path, "gpu", "gpu", {16: 1.01, 64: 0.40}, 3000.0)
    cpu = _result_file(tmp_path, "cpu", "cpu", {16: 1.00, 64: 0.25}, 1000.0)
    runs = _compare.load([gpu, cpu])
    assert _compare.reference_index(runs) == 1  # the CPU run, though given second
    variance = _compare.merge(runs, _compare.COMPARISONS[0])
    assert [row["num_samples"] for row in variance] == [16, 64]
    # n = 16: 0.01 apart, s.e. of the gap 0.028: agree. n = 64: 0.15 apart, s.e. 0.0094.
    assert [row["agree[gpu]"] for row in variance] == [True, False]
    assert variance[1]["ratio[gpu/cpu]"] == pytest.approx(1.6)
    (throughput,) = _compare.merge(runs, _compare.COMPARISONS[1])
    assert throughput["ratio[gpu/cpu]"] == pytest.approx(3.0)
    path = _compare.run([gpu, cpu], results_dir=tmp_path)
    merged = json.loads(path.read_text())
    assert merged["notes"]["variance: rows that disagree at alpha=0.01"] == "1/2"
    assert (tmp_path / "compare_variance.gpu_vs_cpu.png").exists()


def test_compare_merges_the_planned_memory_table_of_every_model(tmp_path):
    def result(label, scale):
        tables = {f"planned peak vs inference: {model}": [
            {"model": model, "computation": computation, "peak_MiB": scale * peak}
            for computation, peak in (("inference", 1.0), ("backprop + Adam", 4.0))]
            for model in ("MLP", "decoder")}
        path = tmp_path / f"estimators.{label}.json"
        path.write_text(json.dumps({"benchmark": "estimators", "label": label,
                                    "environment": {"backend": label}, "tables": tables}))
        return path

    runs = _compare.load([result("gpu", 2.0), result("cpu", 1.0)])
    (planned,) = [c for c in _compare.COMPARISONS
                  if c.title_prefix == "planned peak vs inference"]
    rows = _compare.merge(runs, planned)
    assert [(row["model"], row["computation"]) for row in rows] == [
        ("MLP", "inference"), ("MLP", "backprop + Adam"),
        ("decoder", "inference"), ("decoder", "backprop + Adam")]
    assert [row["ratio[gpu/cpu]"] for row in rows] == [2.0] * 4
    assert rows[1]["peak_MiB[gpu]"] == 8.0


@pytest.mark.optimized  # starts from XLA's default
def test_fast_compiles_switches_xla_optimisations_off_and_back():
    flag = "jax_disable_most_optimizations"
    before = jax.config.values[flag]
    f = jax.jit(lambda x: jnp.sin(x) * 2.0 + 1.0)
    x = jnp.linspace(0.0, 1.0, 5)
    with _harness.fast_compiles():
        assert jax.config.values[flag]
        np.testing.assert_allclose(f(x), np.sin(np.linspace(0.0, 1.0, 5)) * 2 + 1, rtol=1e-6)
        with _harness.fast_compiles(False):  # never switches them back on inside
            assert jax.config.values[flag]
    assert jax.config.values[flag] == before
    with _harness.fast_compiles(False):
        assert jax.config.values[flag] == before


def test_compare_rejects_files_it_cannot_merge(tmp_path):
    cpu = _result_file(tmp_path, "cpu", "cpu", {16: 1.0}, 1.0)
    with pytest.raises(ValueError, match="at least two"):
        _compare.load([cpu])
    with pytest.raises(ValueError, match="distinct labels"):
        _compare.load([cpu, cpu])


def test_summary_uses_the_sample_standard_deviation():
    values = np.array([1.0, 2.0, 4.0, 7.0])
    summary = _stats.summary(values)
    assert summary.mean == pytest.approx(3.5)
    assert summary.std == pytest.approx(np.sqrt(np.sum((values - 3.5) ** 2) / 3))
    assert summary.se == pytest.approx(summary.std / 2)
    assert _stats.mean_std(values, scale=100, digits=1) == f"350.0 ± {100 * summary.std:.1f}"
    assert _stats.mean_se(values) == f"3.50 ± {summary.se:.2f}"
    single = _stats.summary([5.0])  # one run has no spread: NaN, not 0
    assert single.mean == 5.0 and np.isnan(single.std) and np.isnan(single.se)


def test_paired_tests_match_scipy_and_are_nan_where_undefined():
    a = np.array([0.91, 0.85, 0.88, 0.95, 0.90, 0.87])
    b = np.array([0.89, 0.86, 0.84, 0.90, 0.88, 0.85])
    test = _stats.paired(a, b)
    assert test.mean_difference == pytest.approx(np.mean(a - b))
    assert test.se == pytest.approx(np.std(a - b, ddof=1) / np.sqrt(6))
    assert test.t_pvalue == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert test.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(a - b).pvalue)
    assert (test.wins, test.n) == (5, 6)
    same = _stats.paired(a, a)
    assert np.isnan(same.t_pvalue) and np.isnan(same.wilcoxon_pvalue)
    exact = np.arange(6) / 8  # constant differences (exactly): no t, a rank test
    shifted = _stats.paired(exact + 1.0, exact)
    assert np.isnan(shifted.t_pvalue) and shifted.wilcoxon_pvalue < 0.05
    columns = _stats.paired_columns(a, b, "b", scale=100)
    assert columns["wins_vs_b"] == "5/6"
    assert columns["p_t_vs_b"] == pytest.approx(test.t_pvalue)
    with pytest.raises(ValueError, match="pair up"):
        _stats.paired(a, b[:3])


def test_digits_preprocessings_and_splits():
    from sklearn.datasets import load_digits

    raw = load_digits().data
    for name, expected in (("raw", raw), ("unit", raw / 16), ("centered", (raw - 8) / 8)):
        x, y = _data.digits(name)
        assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape == (1797, 64)
        np.testing.assert_allclose(x, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="preprocessing"):
        _data.digits("whitened")
    x, y = _data.digits("raw")
    split = _data.standardized(_data.split(x, y, train=1000, test=500, seed=0))
    assert [len(part) for part in split[1::2]] == [1000, 297, 500]
    np.testing.assert_allclose(split.x_train.mean(0), 0.0, atol=1e-5)
    counts = [50, 20, 5, 1, 1, 1, 1, 1, 1, 1]
    tail = _data.long_tailed(x, y, counts, test_per_class=70, seed=3)
    np.testing.assert_array_equal(np.bincount(tail.y_train, minlength=10), counts)
    np.testing.assert_array_equal(np.bincount(tail.y_test), [70] * 10)
    noisy = _data.with_symmetric_label_noise(y, 0.2, seed=1)
    assert abs(np.mean(noisy != y) - 0.2) < 0.03


def test_train_matches_a_plain_optax_loop():
    model = _models.MLP((8,), 3)
    x = jax.random.normal(jax.random.key(0), (32, 5))
    y = jax.random.randint(jax.random.key(1), (32,), 0, 3)
    params = model.init(jax.random.key(2), x)
    optimizer = optax.adam(0.05)
    keys = _train.step_keys(jax.random.key(3), 6, segments=2)

    def loss_fn(params, key):
        index = _train.minibatch(key, 32, 8)
        logits = model.apply(params, x[index])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[index]).mean()

    trained = _train.train(loss_fn, params, optimizer, keys, grad_norms=True, segments=2,
                           eval_fn=lambda p: _train.accuracy(model.apply(p, x), y))

    @jax.jit
    def reference_step(params, state, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, optax.tree.norm(grads)

    expected, state, losses, norms = params, optimizer.init(params), [], []
    for key in keys:
        expected, state, loss, norm = reference_step(expected, state, key)
        losses.append(loss)
        norms.append(norm)
    for got, want in zip(jax.tree.leaves(trained.params), jax.tree.leaves(expected),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trained.losses, losses, rtol=1e-5)
    np.testing.assert_allclose(trained.grad_norms, norms, rtol=1e-5)
    assert trained.evals.shape == (2,) and trained.aux is None
    with pytest.raises(ValueError, match="divisible"):
        _train.train(loss_fn, params, optimizer, keys, segments=4)
    full_batch = _train.train(lambda p, _: jnp.sum(p**2), jnp.ones(3), optax.sgd(0.25),
                              steps=2)
    np.testing.assert_allclose(full_batch.params, 0.25)  # x <- x - 0.25 * 2x, twice
