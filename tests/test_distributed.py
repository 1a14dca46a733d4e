"""Across processes on JAX's own runtime: two processes, two host devices each.

`jax.distributed.initialize` joins two local processes (CPU collectives via gloo) into
one run of four devices (`benchmarks/_distributed.py`); the estimators, with their
samples sharded over that global mesh, must give the numbers of one process. Bounded:
the processes are killed after 60 s.
"""

import numpy as np
import pytest

from benchmarks import _distributed


@pytest.mark.slow
def test_two_processes_give_the_single_process_estimates(tmp_path):
    out = tmp_path / "estimates.npz"
    _distributed.launch(2, 2, "estimates", out, timeout_s=60)
    result = np.load(out)
    assert int(result["devices"]) == 4 and int(result["processes"]) == 2
    zo, pg = _distributed.estimates()
    for name, value in (("zo", zo), ("pg", pg)):
        for leaf in value:
            np.testing.assert_allclose(
                result[f"{name}_{leaf}"], value[leaf], rtol=1e-5, atol=1e-6
            )
