"""Across processes on JAX's own runtime: two processes, two host devices each.

`jax.distributed.initialize` joins two local processes (CPU collectives via gloo) into
one run of four devices (`jaxtricks/_src/local_cluster.py`); the estimators, with their
samples sharded over that global mesh, must give the numbers of one process. A launch
fails fast: a process that dies stops it at once, and one past its time limit raises
with the stack of every process still running.
"""

import subprocess
import sys
import time

import numpy as np
import pytest
from _sharded_estimates import estimates, save_estimates

from jaxtricks._src import local_cluster


@pytest.mark.slow
def test_two_processes_give_the_single_process_estimates(tmp_path):
    out = tmp_path / "estimates.npz"
    local_cluster.launch(2, 2, save_estimates, out, timeout_s=60)
    result = np.load(out)
    assert int(result["devices"]) == 4 and int(result["processes"]) == 2
    zo, pg = estimates()
    for name, value in (("zo", zo), ("pg", pg)):
        for leaf in value:
            np.testing.assert_allclose(
                result[f"{name}_{leaf}"], value[leaf], rtol=1e-5, atol=1e-6
            )


def _replace_process_1(monkeypatch, code):
    """Makes `launch` start `python -c code` as process 1; returns the processes started."""
    popen, started = subprocess.Popen, []

    def start(command, **kwargs):
        if command[-3] == "1":  # the process id, before the process count and `out`
            command = [sys.executable, "-c", code]
        started.append(popen(command, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", start)
    return started


def test_a_process_that_dies_fails_the_launch_at_once(monkeypatch, tmp_path):
    started = _replace_process_1(monkeypatch, "print('planted death'); exit(3)")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"'save_estimates' on 2 process\(es\) x 1 device\(s\): "
                       r"process 1 exited with code 3 after") as error:
        local_cluster.launch(2, 1, save_estimates, tmp_path / "out.npz", timeout_s=60)
    # Process 0 would have waited 30 s for it in jax.distributed.initialize.
    assert time.monotonic() - start < 10
    assert "planted death" in str(error.value)
    assert all(process.poll() is not None for process in started)


@pytest.mark.slow
def test_a_launch_past_its_time_limit_shows_where_each_process_waited(monkeypatch, tmp_path):
    started = _replace_process_1(monkeypatch, "import time; time.sleep(60)")
    with pytest.raises(TimeoutError, match=r"timed out after 2 s, process\(es\) \[0, 1\]"
                       ) as error:
        local_cluster.launch(2, 1, save_estimates, tmp_path / "out.npz", timeout_s=2)
    assert 'local_cluster.py", line' in str(error.value)  # process 0's stack
    assert all(process.poll() is not None for process in started)


def test_a_task_that_processes_cannot_import_is_refused(tmp_path):
    def local(sample_sharding, out):
        del sample_sharding, out

    with pytest.raises(ValueError, match=r"task must be a function defined at the top level "
                       r"of an importable module, got test_distributed:test_a_task_that_"):
        local_cluster.launch(1, 1, local, tmp_path / "out.npz")
