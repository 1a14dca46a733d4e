"""The jaxtricks benchmark suite: `python -m benchmarks [NAME ...] [--quick | --size SIZE]`.

Every module in this package whose name does not start with an underscore is a
benchmark: it defines `SIZES = {"full": ..., "quick": ..., "smoke": ...}` and
`run(report: benchmarks._harness.Report) -> None`, which reads its size with
`report.sized(SIZES)`; its docstring's first line describes it. Modules whose names
start with an underscore are shared parts: data (`_data`), models (`_models`), training
loops (`_train`), statistics (`_stats`), plots (`_plots`) and the harness (`_harness`).
"""
