"""Runs the estimators over several processes on JAX's own runtime (`jax.distributed`).

`launch(num_processes, devices_per_process, task, out)` starts `num_processes` local
processes, each with `devices_per_process` host devices, that join one JAX run on
127.0.0.1 (CPU collectives through gloo) and build one mesh over all their devices.
Each process runs this module as a script; process 0 writes the task's result to
`out`. Used by `tests/test_distributed.py` (equality with one process) and by the
`scaling` benchmark (throughput against the number of devices). With one process no
distributed runtime is started: it is the single-process baseline at that device count.

Tasks:
- "estimates": `zeroth_order_grad` and `policy_gradient` of a small non-smooth
  objective, samples sharded over the mesh (`.npz`);
- "throughput": estimates per second of `zeroth_order_grad` on a quadratic in
  `SCALING_DIM` parameters with `SCALING_SAMPLES` samples sharded over the mesh
  (`.json`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

SCALING_DIM = 100_000
SCALING_SAMPLES = 64

# numpy, not jax: JAX must not start its backend before `jax.distributed.initialize`.
PARAMS = {
    "w": np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(2, 3),
    "b": np.array([0.1, -0.4], np.float32),
}


def objective(params):
    """A non-smooth objective of a small pytree."""
    import jax.numpy as jnp

    return jnp.sum(jnp.abs(params["w"] - 0.3)) + jnp.sum(jnp.floor(3.0 * params["b"]))


def estimates(sample_sharding=None):
    """Both estimators, 64 samples each from one fixed key; outputs replicated."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxtricks import estimators

    key = jax.random.key(31)
    sample_fn, log_prob_fn = estimators.gaussian_policy(0.3)

    def both(params):
        zo = estimators.zeroth_order_grad(
            objective, params, key, num_samples=64, sigma=0.3,
            sample_sharding=sample_sharding,
        )
        pg = estimators.policy_gradient(
            sample_fn, log_prob_fn, objective, params, key, num_samples=64,
            sample_sharding=sample_sharding,
        )
        return zo, pg

    if sample_sharding is None:
        return jax.jit(both)(PARAMS)
    replicated = NamedSharding(sample_sharding.mesh, PartitionSpec())
    return jax.jit(both, out_shardings=replicated)(PARAMS)


def throughput(sample_sharding, rounds: int = 5) -> float:
    """Median estimates per second of antithetic `zeroth_order_grad` (compiled, warm)."""
    import jax
    import jax.numpy as jnp

    from jaxtricks import estimators

    scale = jnp.linspace(0.5, 2.0, SCALING_DIM)

    def estimate(point, key):
        return estimators.zeroth_order_grad(
            lambda w: 0.5 * jnp.sum(scale * w * w) + jnp.sum(w), point, key,
            num_samples=SCALING_SAMPLES, sigma=0.5, sample_sharding=sample_sharding,
        )

    point, key = jnp.full((SCALING_DIM,), 0.1), jax.random.key(0)
    compiled = jax.jit(estimate).lower(point, key).compile()
    jax.block_until_ready(compiled(point, key))
    per_call = []
    for _ in range(rounds):
        count, start = 0, time.perf_counter()
        while count < 3 or time.perf_counter() - start < 0.2:
            jax.block_until_ready(compiled(point, key))
            count += 1
        per_call.append((time.perf_counter() - start) / count)
    return 1.0 / float(np.median(per_call))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    num_processes: int, devices_per_process: int, task: str, out, *, timeout_s: float = 60.0
) -> None:
    """Runs `task` on `num_processes` local processes; raises with their logs on failure.

    Every process is killed after `timeout_s` seconds, whatever happens.
    """
    port = _free_port()
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
        "JAX_PLATFORMS": "cpu",
    }
    command = [sys.executable, "-m", "benchmarks._distributed"]
    workers = [
        subprocess.Popen(
            [*command, task, str(port), str(i), str(num_processes), str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        for i in range(num_processes)
    ]
    deadline = time.monotonic() + timeout_s
    try:
        logs = [
            worker.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
            for worker in workers
        ]
    finally:
        for worker in workers:
            worker.kill()
    failed = [log for worker, log in zip(workers, logs, strict=True) if worker.returncode]
    if failed:
        raise RuntimeError(f"a {task!r} process failed:\n{failed[0][-3000:]}")


def _worker(task: str, port: str, process_id: str, num_processes: str, out: str) -> None:
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if int(num_processes) > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=int(num_processes),
            process_id=int(process_id),
            initialization_timeout=30,
        )
    mesh = Mesh(np.array(jax.devices()), ("samples",))
    sharding = NamedSharding(mesh, PartitionSpec("samples"))
    layout = {"devices": jax.device_count(), "processes": jax.process_count()}
    if task == "estimates":
        zo, pg = estimates(sharding)
        result = {  # replicated outputs: every process holds the whole value
            f"{name}_{leaf}": np.asarray(value[leaf].addressable_data(0))
            for name, value in (("zo", zo), ("pg", pg)) for leaf in value
        }
        if jax.process_index() == 0:
            np.savez(out, **layout, **result)
    elif task == "throughput":
        rate = throughput(sharding)
        if jax.process_index() == 0:
            with open(out, "w") as file:
                json.dump({**layout, "estimates_per_s": rate}, file)
    else:
        raise ValueError(f"task must be 'estimates' or 'throughput', got {task!r}.")
    if int(num_processes) > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    _worker(*sys.argv[1:])
