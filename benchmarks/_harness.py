"""Shared machinery of the benchmark suite: timing, memory, tables, plots, results.

Timing follows one protocol everywhere: compile apart (reported as `compile_s`), one
warm-up call, then repeated calls each closed by `jax.block_until_ready`; candidates
compared with each other are timed in interleaved rounds in the same process, so that
background load hits them alike, and reported as ratios to a named reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import platform
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from typing import Any

import jax
import numpy as np

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
# The sizes a benchmark runs at: the figures of the README (`make bench-full`), the main
# job's size (`--quick`, `make bench`: each table at a size that shows its point, every
# benchmark in about 13 minutes on 2 CPU cores), and a tiny run that only checks the code
# works (`--size smoke`, what the test suite runs).
SIZES = ("full", "quick", "smoke")
# The width of the terminal the runner prints for: a wider table is printed as several
# (`screen_groups`), and every table is written whole to `<name>.<label>.md`.
SCREEN_WIDTH = 120


@dataclasses.dataclass(frozen=True)
class Timing:
    """Timing of one compiled function.

    Attributes:
        compile_s: seconds to lower and compile (first call cost, apart).
        median_s: median seconds per call after warm-up.
        min_s: fastest call.
        runs: number of timed calls.
        peak_bytes: XLA's estimate of the peak memory of one call (arguments,
            outputs and temporaries, from `compiled.memory_analysis()`), or None.
        round_s: the seconds per call of each round, in order (rounds of candidates
            compared together pair up: the same load hit them).
    """

    compile_s: float
    median_s: float
    min_s: float
    runs: int
    peak_bytes: int | None
    round_s: tuple[float, ...] = ()


def environment() -> dict[str, Any]:
    """The backend, devices, versions, precision settings and machine of the figures."""
    import jaxlib

    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_count": len(devices),
        "device_kind": devices[0].device_kind,
        "process_count": jax.process_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "x64": bool(jax.config.jax_enable_x64),
        "cpu_count": os.cpu_count(),
        "machine": f"{platform.system()} {platform.machine()} {_cpu_model()}",
        "python": platform.python_version(),
    }


def run_label(tag: str | None = None) -> str:
    """The label of this run's result files: the backend, then `tag` if given.

    Result files are `<benchmark>.<label>.json` and `<benchmark>_<plot>.<label>.png`, so
    runs on several backends (or with several settings, e.g. `cpu-bf16`) sit side by side.
    """
    label = jax.default_backend()
    if tag:
        if not all(c.isalnum() or c in "-_" for c in tag):
            raise ValueError(f"tag must use letters, digits, '-' and '_' only, got {tag!r}.")
        label = f"{label}-{tag}"
    return label


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def peak_bytes(compiled) -> int | None:
    """Peak memory of one call of a compiled function, as XLA plans it."""
    try:
        analysis = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError, AttributeError):
        return None
    if analysis is None:
        return None
    return int(
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def compile_timed(fn: Callable, *args, **jit_kwargs):
    """Jits, lowers and compiles `fn` for `args`; returns (compiled, seconds)."""
    start = time.perf_counter()
    compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
    return compiled, time.perf_counter() - start


def compare(
    candidates: Mapping[str, Callable],
    *args,
    rounds: int = 7,
    min_round_s: float = 0.05,
) -> dict[str, Timing]:
    """Times several functions of the same arguments in interleaved rounds.

    Each candidate is compiled (timed apart) and called once to warm up. Then, in every
    round, each candidate in turn is called repeatedly for at least `min_round_s`;
    the per-call time of a round is its mean, and a candidate's figure is the
    median over rounds.

    Args:
        candidates: name -> function of `*args`; each is jitted here.
        *args: the arguments, shared by every candidate.
        rounds: number of interleaved rounds.
        min_round_s: minimal wall time of one candidate's round.

    Returns:
        name -> `Timing`.
    """
    compiled, compile_s = {}, {}
    for name, fn in candidates.items():
        compiled[name], compile_s[name] = compile_timed(fn, *args)
        jax.block_until_ready(compiled[name](*args))
    per_call: dict[str, list[float]] = {name: [] for name in candidates}
    calls: dict[str, int] = dict.fromkeys(candidates, 0)
    for _ in range(rounds):
        for name, fn in compiled.items():
            count, start = 0, time.perf_counter()
            while True:
                jax.block_until_ready(fn(*args))
                count += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_round_s:
                    break
            per_call[name].append(elapsed / count)
            calls[name] += count
    return {
        name: Timing(
            compile_s=compile_s[name],
            median_s=float(np.median(per_call[name])),
            min_s=float(np.min(per_call[name])),
            runs=calls[name],
            peak_bytes=peak_bytes(compiled[name]),
            round_s=tuple(per_call[name]),
        )
        for name in candidates
    }


@contextlib.contextmanager
def fast_compiles(enabled: bool = True):
    """While active (and `enabled`), XLA compiles with most optimisations off
    (`jax_disable_most_optimizations`): about half the compile time on a CPU, and a
    smoke run is almost all compile time; its numbers are not figures to keep."""
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", enabled or previous)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


def time_one(fn: Callable, *args, rounds: int = 5, min_round_s: float = 0.05) -> Timing:
    """Times a single function (see `compare`)."""
    return compare({"fn": fn}, *args, rounds=rounds, min_round_s=min_round_s)["fn"]


def timing_rows(
    timings: Mapping[str, Timing], reference: str, **fields
) -> list[dict[str, Any]]:
    """Table rows of `compare`'s output, with each time as a ratio to `reference`."""
    base = timings[reference].median_s
    return [
        {
            **fields,
            "name": name,
            "median_ms": 1e3 * timing.median_s,
            "ratio": timing.median_s / base,
            "compile_s": timing.compile_s,
            "peak_MiB": None if timing.peak_bytes is None else timing.peak_bytes / 2**20,
        }
        for name, timing in timings.items()
    ]


class Report:
    """What one benchmark prints and writes.

    Attributes:
        name: the benchmark's name (its module's).
        size: one of `SIZES`: "full", "quick" or "smoke".
        quick: whether `size` is a reduced one ("quick" or "smoke").
        label: the run's label in file names (`run_label`: the backend and a tag).
        results_dir: where `<name>.<label>.json`, `<name>.<label>.md` (every table in
            full) and the PNG plots go.
        files: the paths written so far (plots, then the JSON and Markdown files).
    """

    def __init__(
        self,
        name: str,
        *,
        size: str = "full",
        label: str | None = None,
        results_dir: pathlib.Path = RESULTS_DIR,
        on_progress: Callable[[str], None] | None = None,
    ):
        """`on_progress` receives a short status line whenever a section advances
        (`progress`); the runner shows it on its progress bar."""
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}.")
        self.name = name
        self.size = size
        self.quick = size != "full"
        self.label = run_label() if label is None else label
        self.results_dir = results_dir
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.notes: dict[str, Any] = {}
        self.figures: list[str] = []
        self.files: list[pathlib.Path] = []
        self._on_progress = on_progress
        self._start = time.perf_counter()

    def sized(self, sizes: Mapping[str, Any]) -> Any:
        """The entry of `sizes` (a mapping with one entry per name in `SIZES`) to run."""
        if set(sizes) != set(SIZES):
            raise ValueError(f"sizes must have exactly the keys {SIZES}, got {tuple(sizes)}.")
        return sizes[self.size]

    def progress(self, iterable: Iterable, desc: str, total: int | None = None):
        """Yields `iterable`, telling `on_progress` "desc i/total" at each item (the
        runner's one progress bar shows it; no bar of its own)."""
        if total is None and isinstance(iterable, Sized):
            total = len(iterable)
        for index, item in enumerate(iterable):
            if self._on_progress is not None:
                self._on_progress(f"{desc} {index + 1}/{'?' if total is None else total}")
            yield item

    def table(
        self, title: str, rows: Sequence[Mapping[str, Any]],
        screen: Sequence[str] | None = None,
    ) -> None:
        """Records `rows` (dicts sharing keys) and prints them as aligned tables.

        The screen gets the columns `screen` (default: all) in tables that fit
        `SCREEN_WIDTH` (`screen_groups`), and the names of the columns left out; `write`
        puts every column in one table in `<name>.<label>.md`, and in the JSON file.
        """
        rows = [dict(row) for row in rows]
        self.tables[title] = rows
        columns = _columns(rows)
        shown = [column for column in (columns if screen is None else screen)
                 if column in columns]
        text = "\n\n".join(format_table(rows, group) for group in screen_groups(rows, shown))
        hidden = [column for column in columns if column not in shown]
        if hidden:
            text += "\n" + wrap(f"(not shown: {', '.join(hidden)}; every column in "
                                f"{self.name}.{self.label}.md)")
        echo(f"\n{wrap(f'{self.name} | {title}')}\n{text}")

    def note(self, key: str, value: Any) -> None:
        """Records a named figure or remark in the JSON results, and prints it."""
        self.notes[key] = value
        echo(wrap(f"{self.name} | {key}: {value}"))

    def save_figure(self, figure, stem: str) -> pathlib.Path:
        """Saves a matplotlib figure as `<results_dir>/<name>_<stem>.<label>.png`, closes it."""
        from benchmarks import _plots

        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"{self.name}_{stem}.{self.label}.png"
        figure.savefig(path, dpi=120, bbox_inches="tight")
        _plots.close(figure)
        self.figures.append(path.name)
        self.files.append(path)
        return path

    def write(self) -> pathlib.Path:
        """Writes `<results_dir>/<name>.<label>.json` (the environment, every table and
        note) and `<name>.<label>.md` (the tables in full, as Markdown); returns the
        JSON file's path."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"{self.name}.{self.label}.json"
        payload = {
            "benchmark": self.name,
            "label": self.label,
            "size": self.size,
            "quick": self.quick,
            "environment": environment(),
            "wall_s": time.perf_counter() - self._start,
            "tables": self.tables,
            "notes": self.notes,
            "figures": self.figures,
        }
        path.write_text(json.dumps(payload, indent=2, default=_to_json))
        markdown = path.with_suffix(".md")
        markdown.write_text("\n\n".join([
            f"# {self.name} ({self.size} size, {self.label})",
            *(f"## {title}\n\n{format_table(rows)}" for title, rows in self.tables.items()),
            *(f"- {key}: {value}" for key, value in self.notes.items()),
        ]) + "\n")
        self.files += [path, markdown]
        return path


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def screen_groups(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], width: int = SCREEN_WIDTH
) -> list[list[str]]:
    """`columns` split into tables (`format_table`) of at most `width` characters, each
    after the first led again by the key columns: the fewest leading columns of labels
    (`_label`: names, counts, settings such as sigma = 0.01) that tell the rows apart, or
    as many as fit half the width (one at least)."""
    widths = {c: max(len(c), *(len(_cell(row.get(c))) for row in rows)) for c in columns}

    def table_width(group):
        return 1 + sum(widths[column] + 3 for column in group)

    keys: list[str] = []
    for column in columns:
        labels = all(_label(row.get(column)) for row in rows)
        if keys and (not labels or table_width([*keys, column]) > width // 2):
            break
        keys.append(column)
        if len({tuple(_cell(row.get(key)) for key in keys) for row in rows}) == len(rows):
            break

    def split(limit):
        groups, group = [], list(keys)
        for column in columns[len(keys):]:
            if len(group) > len(keys) and table_width([*group, column]) > limit:
                groups.append(group)
                group = list(keys)
            group.append(column)
        return [*groups, group]

    # As many tables as `width` needs, their widths evened out (no table of one column).
    count = len(split(width))
    return next(split(limit) for limit in range(width + 1) if len(split(limit)) == count)


def _label(value: Any) -> bool:
    """Whether `value` reads as a label rather than a measurement: a string, an integer,
    None, or a number of at most three significant digits (a setting: 1.25, 1e-4)."""
    if value is None or isinstance(value, str | bool | int | np.integer):
        return True
    if isinstance(value, float | np.floating) and np.isfinite(value):
        return float(f"{float(value):.3g}") == float(value)
    return False


def format_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> str:
    """Formats rows as a Markdown table (so it pastes into the README as it is), of
    `columns` (default: every key, in order of appearance)."""
    if not rows:
        return "(no rows)"
    columns = _columns(rows) if columns is None else list(columns)
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in cells))
        for i, column in enumerate(columns)
    ]
    def line(values):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), rule, *(line(c) for c in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | np.floating):
        magnitude = abs(float(value))
        if magnitude != 0 and (magnitude >= 1e5 or magnitude < 1e-3):
            return f"{float(value):.3e}"
        return f"{float(value):.4g}"
    return str(value)


def _to_json(value: Any):
    if isinstance(value, np.generic | jax.Array | np.ndarray):
        return np.asarray(value).tolist()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


def wrap(text: str, width: int = SCREEN_WIDTH) -> str:
    """`text` wrapped at `width` characters, its continuation lines indented."""
    return "\n".join(
        textwrap.fill(paragraph, width, subsequent_indent="    ", break_on_hyphens=False)
        for paragraph in text.splitlines() or [""]
    )


def echo(text: str) -> None:
    """Prints a line without breaking the progress bars."""
    try:
        from tqdm.auto import tqdm

        tqdm.write(text)
    except ImportError:
        print(text)
