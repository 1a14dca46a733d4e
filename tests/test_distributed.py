"""Across processes on JAX's own runtime: two processes, two host devices each.

`jax.distributed.initialize` joins two local processes (CPU collectives via gloo) into
one run of four devices; the estimators, with their samples sharded over that global
mesh, must give the numbers of one process. Bounded: the processes are killed after 60 s.
"""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

WORKER = pathlib.Path(__file__).resolve().parent / "multiprocess" / "estimator_worker.py"
sys.path.insert(0, str(WORKER.parent))
import estimator_worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_give_the_single_process_estimates(tmp_path):
    port, out = _free_port(), tmp_path / "estimates.npz"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(port), str(i), "2", str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [worker.communicate(timeout=60)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log[-3000:]
    result = np.load(out)
    assert int(result["devices"]) == 4 and int(result["processes"]) == 2
    zo, pg = estimator_worker.estimates(sample_sharding=None)
    for name, value in (("zo", zo), ("pg", pg)):
        for leaf in value:
            np.testing.assert_allclose(
                result[f"{name}_{leaf}"], value[leaf], rtol=1e-5, atol=1e-6
            )
    assert jax.process_count() == 1
