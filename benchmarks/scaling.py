"""Estimator throughput against the number of devices: 1, 2, 4 host devices; 2 processes.

Each configuration runs in fresh processes (`jaxtricks._src.local_cluster`), since the
host device count is fixed when JAX starts: antithetic `zeroth_order_grad` with its
samples sharded over every device of the run (`sample_sharding`), two processes joined
by `jax.distributed` (CPU collectives via gloo). Host devices share this machine's
cores, so on a CPU the figures show the sharding overhead rather than a speed-up; on a
multi-GPU or multi-host run they show the scaling.
"""

from __future__ import annotations

import json
import tempfile
import time

from benchmarks import _distributed, _harness
from jaxtricks._src import local_cluster

LAYOUTS = ((1, 1), (1, 2), (1, 4), (2, 2))  # (processes, devices per process)
SIZES = {"full": LAYOUTS, "quick": LAYOUTS[:2], "smoke": LAYOUTS[:1]}
# Time limits of a layout: the first (one process, one device) gets FIRST_TIMEOUT_S; each
# later one TIMEOUT_FACTOR times what the first took, at least MIN_TIMEOUT_S. Measured on
# 2 cores with one busy: 6-8 s for one process, 14-30 s for 2 processes x 2 devices.
FIRST_TIMEOUT_S, TIMEOUT_FACTOR, MIN_TIMEOUT_S = 300.0, 10.0, 60.0


def run(report: _harness.Report) -> None:
    layouts = report.sized(SIZES)
    rows, timeout_s = [], FIRST_TIMEOUT_S
    with tempfile.TemporaryDirectory() as folder:
        for processes, devices in report.progress(layouts, "layouts"):
            out = f"{folder}/{processes}x{devices}.json"
            start = time.perf_counter()
            local_cluster.launch(processes, devices, _distributed.throughput, out,
                                 timeout_s=timeout_s)
            if not rows:
                timeout_s = max(MIN_TIMEOUT_S, TIMEOUT_FACTOR * (time.perf_counter() - start))
            with open(out) as file:
                rows.append(json.load(file))
    base = rows[0]["estimates_per_s"]
    for row in rows:
        row["d"], row["num_samples"] = _distributed.SCALING_DIM, _distributed.SCALING_SAMPLES
        row["ratio_to_1_device"] = row["estimates_per_s"] / base
    report.table("throughput of antithetic zeroth_order_grad vs devices", rows)
