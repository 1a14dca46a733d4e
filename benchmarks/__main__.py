"""Runs the benchmark suite: `python -m benchmarks [NAME ...] [--quick | --size SIZE]
[--tag T] [--list]`.

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
                        help="full (the README's figures), quick (reduced) or smoke (tiny, "
                        "checks the code runs)")
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
    print(
        f"jaxtricks benchmarks on backend={env['backend']} "
        f"devices={env['device_count']} ({env['device_kind']}), jax {env['jax']}, "
        f"matmul precision {env['default_matmul_precision']}, x64={env['x64']}, "
        f"{env['machine']}, {env['cpu_count']} CPUs; results *.{label}.json"
        + ("" if args.size == "full" else f" [{args.size}]")
    )
    return run_all(selected, size=args.size, label=label)


def run_all(
    names: list[str], *, size: str, label: str,
    results_dir: pathlib.Path = _harness.RESULTS_DIR,
) -> int:
    """Runs the benchmarks `names` in turn, whatever the ones before did.

    Returns the exit status: 0, or 1 when a benchmark failed (each failure's traceback
    is printed when it happens, and all of them are listed at the end).
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:
        def tqdm(iterable, **_):
            return iterable
    failures = {}
    for name in tqdm(names, desc="benchmarks", unit="benchmark"):
        error = _run_one(name, size=size, label=label, results_dir=results_dir)
        if error:
            failures[name] = error
    if not failures:
        return 0
    _harness.echo(
        f"\n{len(failures)} of {len(names)} benchmark(s) failed (tracebacks above):\n"
        + "\n".join(f"  {name}: {error}" for name, error in failures.items())
    )
    return 1


def _run_one(name: str, *, size: str, label: str, results_dir: pathlib.Path) -> str | None:
    """Runs one benchmark and writes its results; returns its error in one line, if any.

    An `Exception` is caught and its traceback printed; a `KeyboardInterrupt` stops the
    whole run.
    """
    report = _harness.Report(name, size=size, label=label, results_dir=results_dir)
    start = time.perf_counter()
    try:
        with _harness.fast_compiles(size == "smoke"):
            importlib.import_module(f"benchmarks.{name}").run(report)
        path = report.write()
    except Exception as error:
        _harness.echo(
            f"{name}: FAILED after {time.perf_counter() - start:.1f} s\n"
            f"{traceback.format_exc()}"
        )
        return traceback.format_exception_only(error)[0].splitlines()[0]
    _harness.echo(f"{name}: done in {time.perf_counter() - start:.1f} s -> {path}")
    return None


if __name__ == "__main__":
    sys.exit(main())
