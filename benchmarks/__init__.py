"""The jaxtricks benchmark suite: `python -m benchmarks [NAME ...] [--quick]`.

Every module in this package whose name does not start with an underscore is a
benchmark: it defines `run(report: benchmarks._harness.Report) -> None`, and its
docstring's first line describes it.
"""
