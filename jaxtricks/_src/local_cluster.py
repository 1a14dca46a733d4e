"""Runs a function on several local processes that join one JAX run (`jax.distributed`).

`launch(num_processes, devices_per_process, task, out)` starts `num_processes` processes
on this machine, each with `devices_per_process` host devices, that join one JAX run on
127.0.0.1 (CPU collectives through gloo). Each builds one mesh over all the run's
devices, axis `"samples"`, and calls `task(sample_sharding, out)` with the sharding that
splits axis 0 over it; the task writes its result to the path `out` (from process 0). With
one process no distributed runtime is started: it is the single-process baseline at that
device count. A launch fails fast: as soon as one process fails, the others are killed and
its output raised; past the time limit, every process is killed and the error shows
where each one waited (its Python stack).

The library does not use it: it is the one launcher of the multi-process tests
(`tests/test_distributed.py`) and of the `scaling` benchmark, which both import it from
the installed package.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    from jax.sharding import NamedSharding

# The signal on which a process prints its Python stack (POSIX only): sent to the
# processes still running when a launch times out, before they are killed.
STACK_SIGNAL = getattr(signal, "SIGUSR1", None)
POLL_S = 0.05

Task = Callable[["NamedSharding", str], object]


def launch(
    num_processes: int,
    devices_per_process: int,
    task: Task,
    out: str | os.PathLike[str],
    *,
    timeout_s: float = 60.0,
) -> None:
    """Runs `task` on `num_processes` local processes; raises with their logs on failure.

    Args:
        num_processes: how many processes join the run.
        devices_per_process: host devices of each process.
        task: a function defined at the top level of an importable module, called as
            `task(sample_sharding, out)` in every process; each process imports its
            module from where this one imported it.
        out: the path the task writes its result to.
        timeout_s: the time limit of the whole launch, in seconds.

    Raises:
        ValueError: when `task` is not a top-level function of an importable module.
        RuntimeError: as soon as one process fails (the others are killed then): its
            exit code and its output.
        TimeoutError: after `timeout_s` seconds: the output of each process still
            running, ending with its Python stack.
    """
    name = f"{task.__module__}:{task.__qualname__}"
    if task.__module__ == "__main__" or "<locals>" in task.__qualname__:
        raise ValueError(
            "task must be a function defined at the top level of an importable module, "
            f"got {name}."
        )
    port = _free_port()
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(filter(None, (
            _import_root(sys.modules.get(task.__module__)), _import_root(sys.modules[__name__]),
            os.environ.get("PYTHONPATH"),
        ))),
    }
    # The file itself, not `-m`: importing the package first (and JAX with it) would make
    # the process unable to show its stack for seconds; -P keeps this folder off sys.path.
    command = [sys.executable, "-P", os.path.abspath(__file__), name]
    layout = f"{task.__name__!r} on {num_processes} process(es) x {devices_per_process} device(s)"
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(num_processes)]
        workers: list[subprocess.Popen[bytes]] = []
        for i, log in enumerate(logs):
            workers.append(subprocess.Popen(
                [*command, str(port), str(i), str(num_processes), os.fspath(out)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            ))
            stack.callback(_stop, workers[-1])
        _wait_all(workers, logs, layout, timeout_s)


def _import_root(module: object) -> str | None:
    """The folder from which `module` was imported (above its top-level package)."""
    file = getattr(module, "__file__", None)
    if file is None:
        return None
    folder = os.path.dirname(os.path.abspath(file))
    for _ in range(getattr(module, "__name__", "").count(".")):
        folder = os.path.dirname(folder)
    if os.path.basename(file) == "__init__.py":
        folder = os.path.dirname(folder)
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(worker: subprocess.Popen[bytes]) -> None:
    """Kills a process unless it has ended, and reaps it."""
    worker.kill()
    worker.wait()


def _wait_all(
    workers: Sequence[subprocess.Popen[bytes]], logs: Sequence[IO[str]], layout: str,
    timeout_s: float,
) -> None:
    """Waits until every process of `workers` (writing to the files `logs`) succeeds."""
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


def _dump_stacks(workers: Sequence[subprocess.Popen[bytes]]) -> None:
    """Makes each running process print its Python stack to its log (POSIX only)."""
    if STACK_SIGNAL is None:
        return
    for worker in workers:
        worker.send_signal(STACK_SIGNAL)
    time.sleep(1.0)


def _tail(log: IO[str], chars: int = 3000) -> str:
    """The end of what a process wrote to the file `log`."""
    log.seek(0)
    return log.read()[-chars:]


def _resolve(name: str) -> Task:
    """The function that `module:qualname` names."""
    module, _, qualname = name.partition(":")
    return cast(Task, functools.reduce(getattr, qualname.split("."),
                                       importlib.import_module(module)))


def _worker(task: str, port: str, process_id: str, num_processes: str, out: str) -> None:
    """One process of the run: joins it, then calls the task (imported after joining)."""
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
    _resolve(task)(NamedSharding(mesh, PartitionSpec("samples")), out)
    if int(num_processes) > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    _worker(*sys.argv[1:])
