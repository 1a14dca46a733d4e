"""`python -m benchmarks compare FILE...`: result files of several runs, side by side.

Each run of `make bench` writes `<benchmark>.<label>.json` (the label is the backend,
plus `--tag`). `compare` reads two or more such files of the estimators benchmark, made
on different backends or with different settings, and merges four of their tables:

- the variance trace of each estimator and size, with its standard error, and whether
  each run agrees with the reference run: `|v_a - v_ref| <= z sqrt(se_a^2 + se_ref^2)`
  with `z` the two-sided normal quantile at `alpha`. The bound treats the two estimates
  as independent; runs with the same keys draw the same directions, which correlates
  them positively, so the test is conservative and a flagged disagreement is real (for
  example the extra rounding variance below a precision floor);
- throughput (estimates per second) per run and its ratio to the reference;
- XLA's planned peak memory per run: of the chunked estimator, and of MeZO's table
  (inference, backprop + Adam, zeroth-order gradient and update) per model.

The reference is the first CPU run given, or the first file. The merged tables are
printed, written as `compare.<label>_vs_<label>....json` and plotted.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks import _harness


@dataclasses.dataclass(frozen=True)
class Comparison:
    """How to merge one table: rows matched on `keys`, `value` compared across runs."""

    title_prefix: str
    keys: tuple[str, ...]
    value: str
    standard_error: str | None = None


COMPARISONS = (
    Comparison("quadratic: variance trace", ("d", "num_samples", "estimator"), "variance",
               "variance_se"),
    Comparison("throughput", ("problem", "d", "num_samples", "name"), "estimates_per_s"),
    Comparison("memory", ("d", "num_samples", "chunk_size"), "peak_MiB"),
    Comparison("planned peak vs inference", ("model", "computation"), "peak_MiB"),
)


def load(paths: Sequence[str | pathlib.Path]) -> list[dict[str, Any]]:
    """Reads result files; checks they are of one benchmark and have distinct labels."""
    runs = [json.loads(pathlib.Path(path).read_text()) for path in paths]
    if len(runs) < 2:
        raise ValueError(f"compare needs at least two result files, got {len(runs)}.")
    benchmarks = {run["benchmark"] for run in runs}
    if len(benchmarks) != 1:
        raise ValueError(f"the files must come from one benchmark, got {sorted(benchmarks)}.")
    labels = [label(run) for run in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"the files must have distinct labels, got {labels}.")
    return runs


def label(run: dict[str, Any]) -> str:
    """A run's label (older files without one: their backend)."""
    return run.get("label") or run["environment"]["backend"]


def reference_index(runs: Sequence[dict[str, Any]]) -> int:
    """The first CPU run, else the first run."""
    backends = [run["environment"]["backend"] for run in runs]
    return backends.index("cpu") if "cpu" in backends else 0


def _table(run: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """The rows of every table whose title starts with `prefix` (one per model, say)."""
    return [row for title, rows in run["tables"].items() if title.startswith(prefix)
            for row in rows]


def merge(
    runs: Sequence[dict[str, Any]], comparison: Comparison, *, alpha: float = 0.01
) -> list[dict[str, Any]]:
    """One row per key present in every run: each run's value, ratio to the reference,
    and, with a standard error, whether each run agrees with the reference."""
    ref = reference_index(runs)
    labels = [label(run) for run in runs]
    z = statistics.NormalDist().inv_cdf(1 - alpha / 2)
    indexed = []
    for run in runs:
        rows = {}
        for row in _table(run, comparison.title_prefix):
            if row.get(comparison.value) is not None:
                rows[tuple(row.get(key) for key in comparison.keys)] = row
        indexed.append(rows)
    merged = []
    for key in [k for k in indexed[ref] if all(k in rows for rows in indexed)]:
        out = dict(zip(comparison.keys, key, strict=True))
        base = indexed[ref][key]
        for name, rows in zip(labels, indexed, strict=True):
            row = rows[key]
            out[f"{comparison.value}[{name}]"] = row[comparison.value]
            if comparison.standard_error:
                out[f"se[{name}]"] = row.get(comparison.standard_error)
        for i, (name, rows) in enumerate(zip(labels, indexed, strict=True)):
            if i == ref:
                continue
            value, base_value = rows[key][comparison.value], base[comparison.value]
            out[f"ratio[{name}/{labels[ref]}]"] = value / base_value if base_value else None
            if comparison.standard_error:
                out[f"agree[{name}]"] = _agree(rows[key], base, comparison, z)
        merged.append(out)
    return merged


def _agree(row, base, comparison: Comparison, z: float) -> bool | None:
    se, base_se = row.get(comparison.standard_error), base.get(comparison.standard_error)
    if se is None or base_se is None:
        return None
    gap = abs(row[comparison.value] - base[comparison.value])
    return bool(gap <= z * (se**2 + base_se**2) ** 0.5)


def run(paths: Sequence[str | pathlib.Path], *, alpha: float = 0.01,
        results_dir: pathlib.Path = _harness.RESULTS_DIR) -> pathlib.Path:
    """Prints the merged tables, writes them as JSON with a variance plot; returns the
    JSON's path."""
    runs = load(paths)
    labels = [label(r) for r in runs]
    report = _harness.Report("compare", label="_vs_".join(labels),
                             results_dir=results_dir)
    report.note("runs", {name: r["environment"] for name, r in zip(labels, runs, strict=True)})
    report.note("reference", labels[reference_index(runs)])
    for comparison in COMPARISONS:
        rows = merge(runs, comparison, alpha=alpha)
        report.table(f"{comparison.title_prefix} ({comparison.value})", rows)
        if comparison.standard_error and rows:
            disagree = [r for r in rows if any(v is False for k, v in r.items()
                                               if k.startswith("agree["))]
            report.note(f"{comparison.value}: rows that disagree at alpha={alpha}",
                        f"{len(disagree)}/{len(rows)}")
            _plot(report, rows, comparison, labels)
    return report.write()


def _plot(report, rows, comparison: Comparison, labels: Sequence[str]) -> None:
    from benchmarks import _plots

    figure, axis = _plots.subplots(figsize=(8, 4))
    positions = range(len(rows))
    width = 0.8 / len(labels)
    for i, name in enumerate(labels):
        values = [r[f"{comparison.value}[{name}]"] for r in rows]
        errors = [r.get(f"se[{name}]") or 0.0 for r in rows]
        axis.bar([p + i * width for p in positions], values, width, yerr=errors, label=name)
    axis.set_xticks([p + 0.4 - width / 2 for p in positions])
    axis.set_xticklabels([" ".join(str(r[k]) for k in comparison.keys) for r in rows],
                         rotation=90, fontsize=6)
    axis.set_yscale("log")
    axis.set_ylabel(comparison.value)
    axis.legend()
    report.save_figure(figure, comparison.value)
