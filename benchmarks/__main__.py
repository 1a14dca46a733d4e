"""Runs the benchmark suite: `python -m benchmarks [NAME ...] [--quick | --size SIZE]
[--tag T] [--list]`.

`make bench` runs every benchmark at the quick size (the main job, about 8 minutes on 2
CPU cores), `make bench-full` at the full size (the README's figures, about 1.5 hours on
2 CPU cores).
One progress bar follows the run (on a terminal); each table is printed to fit 120
columns and written in full to `benchmarks/results/`; the run ends with each benchmark's
duration and the files it wrote.

A benchmark that fails does not stop the others: its traceback is printed, the others
run and write their results, and the run ends with the list of failures and exit
status 1 (Ctrl-C still stops it at once).

`python -m benchmarks compare FILE...` merges result files of several runs instead
(see `benchmarks/_compare.py`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import pathlib
import pkgutil
import sys
import time
import traceback
from typing import NamedTuple

import benchmarks
from benchmarks import _harness

# glibc serves blocks above its mmap threshold with fresh mmaps, which the kernel
# zero-fills page by page on first touch: a jitted call returning a 32 MB array then
# spends ~5 ms in page faults, or not, depending on the allocator's history (measured
# here: the same gradient took 4 ms or 9.5 ms from run to run). Raising the threshold to
# its maximum (32 MiB) and never trimming the heap keeps freed blocks for reuse, so a
# timed call measures the computation. The runner re-executes itself with these set.
STEADY_ALLOCATOR = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(2**40),
}


def _reexec_with_steady_allocator(argv: list[str]) -> None:
    if not sys.platform.startswith("linux"):
        return
    if all(os.environ.get(name) == value for name, value in STEADY_ALLOCATOR.items()):
        return
    command = [sys.executable, "-m", "benchmarks", *argv]
    os.execve(sys.executable, command, {**os.environ, **STEADY_ALLOCATOR})


def available() -> dict[str, str]:
    """Benchmark name -> the first line of its module docstring."""
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(benchmarks.__path__)
        if not info.name.startswith("_")
    )
    return {name: _summary(name) for name in names}


def _summary(name: str) -> str:
    spec = importlib.util.find_spec(f"benchmarks.{name}")
    source = spec.loader.get_source(spec.name) if spec and spec.loader else ""
    for line in (source or "").splitlines():
        stripped = line.strip().strip('"').strip()
        if stripped:
            return stripped
    return ""


def compare_main(argv: list[str]) -> int:
    from benchmarks import _compare

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks compare", description=_compare.__doc__.split("\n")[0]
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="result JSON files")
    parser.add_argument("--alpha", type=float, default=0.01,
                        help="two-sided level of the agreement test (default 0.01)")
    args = parser.parse_args(argv)
    path = _compare.run(args.files, alpha=args.alpha)
    _harness.echo(f"compare: -> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    _reexec_with_steady_allocator(argv)
    catalogue = available()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): "
        f"{', '.join(catalogue)}"
    )
    parser.add_argument("--size", choices=_harness.SIZES, default="full",
                        help="full (the README's figures, `make bench-full`; the default), "
                        "quick (the main job, `make bench`: about 8 min in all on 2 CPU "
                        "cores) or smoke (tiny, checks the code runs)")
    parser.add_argument("--quick", action="store_const", const="quick", dest="size",
                        help="the same as --size quick")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--tag", default=None, help="appended to the backend in the result files' names, "
        "e.g. --tag bf16 writes NAME.cpu-bf16.json"
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, summary in catalogue.items():
            print(f"{name:24s} {summary}")
        return 0
    unknown = [name for name in args.names if name not in catalogue]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(catalogue)}")
    selected = args.names or list(catalogue)

    env = _harness.environment()
    label = _harness.run_label(args.tag)
    print(_harness.wrap(
        f"jaxtricks benchmarks on backend={env['backend']} "
        f"devices={env['device_count']} ({env['device_kind']}), jax {env['jax']}, "
        f"matmul precision {env['default_matmul_precision']}, x64={env['x64']}, "
        f"{env['machine']}, {env['cpu_count']} CPUs; size {args.size}; results "
        f"*.{label}.json"
    ))
    return run_all(selected, size=args.size, label=label)


class Outcome(NamedTuple):
    """What one benchmark did: its wall time, the files it wrote, its error in one line
    (None when it succeeded)."""

    seconds: float
    files: list[pathlib.Path]
    error: str | None


def run_all(
    names: list[str], *, size: str, label: str,
    results_dir: pathlib.Path = _harness.RESULTS_DIR,
) -> int:
    """Runs the benchmarks `names` in turn, whatever the ones before did.

    Returns the exit status: 0, or 1 when a benchmark failed (each failure's traceback
    is printed when it happens; the closing summary gives each benchmark's duration and
    files, then the failures).
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    # One bar, on a terminal only (disable=None): the section under way as its postfix.
    bar = None if tqdm is None else tqdm(
        total=len(names), desc="benchmarks", disable=None,
        bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed}{postfix}")
    outcomes, start = {}, time.perf_counter()
    try:
        for name in names:
            def status(text, name=name):
                if bar is not None:
                    bar.set_postfix_str(f"{name}: {text}")
            status("starting")
            outcomes[name] = _run_one(name, size=size, label=label,
                                      results_dir=results_dir, on_progress=status)
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    _harness.echo(_closing_summary(outcomes, size, time.perf_counter() - start, results_dir))
    failures = {name: outcome.error for name, outcome in outcomes.items() if outcome.error}
    if not failures:
        return 0
    _harness.echo(
        f"\n{len(failures)} of {len(names)} benchmark(s) failed (tracebacks above):\n"
        + "\n".join(f"  {name}: {error}" for name, error in failures.items())
    )
    return 1


def _run_one(
    name: str, *, size: str, label: str, results_dir: pathlib.Path, on_progress=None
) -> Outcome:
    """Runs one benchmark and writes its results.

    An `Exception` is caught and its traceback printed; a `KeyboardInterrupt` stops the
    whole run.
    """
    report = _harness.Report(name, size=size, label=label, results_dir=results_dir,
                             on_progress=on_progress)
    start = time.perf_counter()
    try:
        with _harness.fast_compiles(size == "smoke"):
            importlib.import_module(f"benchmarks.{name}").run(report)
        report.write()
    except Exception as error:
        seconds = time.perf_counter() - start
        _harness.echo(f"{name}: FAILED after {_duration(seconds)}\n{traceback.format_exc()}")
        return Outcome(seconds, report.files,
                       traceback.format_exception_only(error)[0].splitlines()[0])
    seconds = time.perf_counter() - start
    _harness.echo(f"{name}: done in {_duration(seconds)}")
    return Outcome(seconds, report.files, None)


def _closing_summary(
    outcomes: dict[str, Outcome], size: str, seconds: float, results_dir: pathlib.Path
) -> str:
    """Each benchmark's duration and the files it wrote (under `results_dir`)."""
    try:
        where = results_dir.resolve().relative_to(pathlib.Path.cwd())
    except ValueError:
        where = results_dir
    width = max((len(name) for name in outcomes), default=0)
    lines = [f"\n{len(outcomes)} benchmark(s) at the {size} size in {_duration(seconds)}; "
             "files in", f"  {where}/:"]
    for name, outcome in outcomes.items():
        files = ", ".join(path.name for path in outcome.files) or "no files"
        lines.append(_harness.wrap(
            f"  {name:{width}}  {_duration(outcome.seconds):>10}  "
            f"{'FAILED; ' if outcome.error else ''}{files}"))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """`41.6 s` or `3 min 05 s`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


if __name__ == "__main__":
    sys.exit(main())
