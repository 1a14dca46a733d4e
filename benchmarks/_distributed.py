"""The `scaling` benchmark's task, run by `jaxtricks._src.local_cluster.launch`.

`throughput(sample_sharding, out)` measures the estimates per second of
`zeroth_order_grad` on a quadratic in `SCALING_DIM` parameters with `SCALING_SAMPLES`
samples sharded over the mesh of the launched run, and writes them with the run's layout
to `out` (`.json`, from process 0).
"""

from __future__ import annotations

import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxtricks import estimators

SCALING_DIM = 100_000
SCALING_SAMPLES = 64


def throughput(sample_sharding, out, rounds: int = 5) -> None:
    """Median estimates per second of antithetic `zeroth_order_grad` (compiled, warm).

    Every round makes the same number of calls on every process (`_calls_per_round`).
    """
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
    if jax.process_index() == 0:
        with open(out, "w") as file:
            json.dump({"devices": jax.device_count(), "processes": jax.process_count(),
                       "estimates_per_s": 1.0 / float(np.median(per_call))}, file)


def _calls_per_round(call, min_round_s: float) -> int:
    """Calls that fill `min_round_s` (at least 3) on process 0, sent to every process.

    Each call of a sharded computation is a collective that every process must join:
    were the count decided by each process's own clock, one process could make one call
    more than another and wait for its peers forever (the hang of the 2-process layout).
    """
    start = time.perf_counter()
    call()
    calls = max(3, math.ceil(min_round_s / (time.perf_counter() - start)))
    return int(multihost_utils.broadcast_one_to_all(np.int32(calls)))
