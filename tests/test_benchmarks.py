"""The benchmark runner's parts: backend detection, result labels, `compare`."""

import json

import jax
import pytest

from benchmarks import _backend, _compare, _harness

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
    report = _harness.Report("demo", quick=True, label="cpu-bf16", results_dir=tmp_path)
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


def test_compare_rejects_files_it_cannot_merge(tmp_path):
    cpu = _result_file(tmp_path, "cpu", "cpu", {16: 1.0}, 1.0)
    with pytest.raises(ValueError, match="at least two"):
        _compare.load([cpu])
    with pytest.raises(ValueError, match="distinct labels"):
        _compare.load([cpu, cpu])
