"""Private helpers shared by every jaxtricks module; `local_cluster` launches the
multi-process runs of the tests and benchmarks."""
