"""Runs the estimators over several processes on JAX's own runtime (`jax.distributed`).

`launch(num_processes, devices_per_process, task, out)` starts `num_processes` local
processes, each with `devices_per_process` host devices, that join one JAX run on
127.0.0.1 (CPU collectives through gloo) and build one mesh over all their devices.
Each process runs this module as a script; process 0 writes the task's result to
`out`. It fails fast: as soon as one process fails, the others are killed and its
output raised; past the time limit, every process is killed and the error shows where
each one waited (its Python stack). Used by `tests/test_distributed.py` (equality with
one process) and by the `scaling` benchmark (throughput against the number of devices).
With one process no distributed runtime is started: it is the single-process baseline
at that device count.

Tasks:
- "estimates": `zeroth_order_grad` and `policy_gradient` of a small non-smooth
  objective, samples sharded over the mesh (`.npz`);
- "throughput": estimates per second of `zeroth_order_grad` on a quadratic in
  `SCALING_DIM` parameters with `SCALING_SAMPLES` samples sharded over the mesh
  (`.json`).
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

SCALING_DIM = 100_000
SCALING_SAMPLES = 64
# The signal on which a process prints its Python stack (POSIX only): sent to the
# processes still running when a launch times out, before they are killed.
STACK_SIGNAL = getattr(signal, "SIGUSR1", None)
POLL_S = 0.05

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
    """Median estimates per second of antithetic `zeroth_order_grad` (compiled, warm).

    Every round makes the same number of calls on every process (`_calls_per_round`).
    """
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

    def call():
        jax.block_until_ready(compiled(point, key))

    call()  # warm-up
    calls = _calls_per_round(call, min_round_s=0.2)
    per_call = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        per_call.append((time.perf_counter() - start) / calls)
    return 1.0 / float(np.median(per_call))


def _calls_per_round(call, min_round_s: float) -> int:
    """Calls that fill `min_round_s` (at least 3) on process 0, sent to every process.

    Each call of a sharded computation is a collective that every process must join:
    were the count decided by each process's own clock, one process could make one call
    more than another and wait for its peers forever (the hang of the 2-process layout).
    """
    from jax.experimental import multihost_utils

    start = time.perf_counter()
    call()
    calls = max(3, math.ceil(min_round_s / (time.perf_counter() - start)))
    return int(multihost_utils.broadcast_one_to_all(np.int32(calls)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    num_processes: int, devices_per_process: int, task: str, out, *, timeout_s: float = 60.0
) -> None:
    """Runs `task` on `num_processes` local processes; raises with their logs on failure.

    Raises `RuntimeError` as soon as one process fails (the others are killed then), and
    `TimeoutError` after `timeout_s` seconds, with the stack of each process still running.
    """
    port = _free_port()
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
        "JAX_PLATFORMS": "cpu",
    }
    command = [sys.executable, "-m", "benchmarks._distributed"]
    layout = f"{task!r} on {num_processes} process(es) x {devices_per_process} device(s)"
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(num_processes)]
        workers = []
        for i, log in enumerate(logs):
            workers.append(subprocess.Popen(
                [*command, task, str(port), str(i), str(num_processes), str(out)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            ))
            stack.callback(_stop, workers[-1])
        _wait_all(workers, logs, layout, timeout_s)


def _stop(worker: subprocess.Popen) -> None:
    """Kills a process unless it has ended, and reaps it."""
    worker.kill()
    worker.wait()


def _wait_all(workers, logs, layout: str, timeout_s: float) -> None:
    """Waits until every process of `workers` (writing to the files `logs`) succeeds.

    Raises:
        RuntimeError: as soon as one exits with an error: its exit code and its log.
        TimeoutError: after `timeout_s` seconds: the log of each process still running,
            ending with its Python stack.
    """
    start = time.monotonic()
    while True:
        codes = [worker.poll() for worker in workers]
        for i, code in enumerate(codes):
            if code:
                raise RuntimeError(
                    f"{layout}: process {i} {_exit_reason(code)} after "
                    f"{time.monotonic() - start:.1f} s (the others were killed); its "
                    f"output:\n{_tail(logs[i])}"
                )
        if all(code == 0 for code in codes):
            return
        if time.monotonic() - start > timeout_s:
            running = [i for i, code in enumerate(codes) if code is None]
            _dump_stacks([workers[i] for i in running])
            raise TimeoutError(
                f"{layout}: timed out after {timeout_s:.0f} s, process(es) {running} still "
                "running (the stack at the end of each output shows where it waited):\n"
                + "\n".join(f"--- process {i}:\n{_tail(logs[i])}" for i in running)
            )
        time.sleep(POLL_S)


def _exit_reason(code: int) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it)."""
    if code < 0:
        return f"was killed by signal {-code} ({signal.strsignal(-code)})"
    return f"exited with code {code}"


def _dump_stacks(workers) -> None:
    """Makes each running process print its Python stack to its log (POSIX only)."""
    if STACK_SIGNAL is None:
        return
    for worker in workers:
        worker.send_signal(STACK_SIGNAL)
    time.sleep(1.0)


def _tail(log, chars: int = 3000) -> str:
    """The end of what a process wrote to the file `log`."""
    log.seek(0)
    return log.read()[-chars:]


def _worker(task: str, port: str, process_id: str, num_processes: str, out: str) -> None:
    if STACK_SIGNAL is not None:
        faulthandler.register(STACK_SIGNAL)
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if int(num_processes) > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=int(num_processes),
            process_id=int(process_id),
            initialization_timeout=30,
            coordinator_bind_address=f"127.0.0.1:{port}",  # where _free_port found it free
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
