"""Estimator throughput against the number of devices: 1, 2, 4 host devices; 2 processes.

Each configuration runs in fresh processes (`benchmarks/_distributed.py`), since the
host device count is fixed when JAX starts: antithetic `zeroth_order_grad` with its
samples sharded over every device of the run (`sample_sharding`), two processes joined
by `jax.distributed` (CPU collectives via gloo). Host devices share this machine's
cores, so on a CPU the figures show the sharding overhead rather than a speed-up; on a
multi-GPU or multi-host run they show the scaling.
"""

from __future__ import annotations

import json
import tempfile

from benchmarks import _distributed, _harness

LAYOUTS = ((1, 1), (1, 2), (1, 4), (2, 2))  # (processes, devices per process)
SIZES = {"full": LAYOUTS, "quick": LAYOUTS[:2], "smoke": LAYOUTS[:1]}


def run(report: _harness.Report) -> None:
    layouts = report.sized(SIZES)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for processes, devices in report.progress(layouts, "layouts"):
            out = f"{folder}/{processes}x{devices}.json"
            _distributed.launch(processes, devices, "throughput", out, timeout_s=300)
            with open(out) as file:
                rows.append(json.load(file))
    base = rows[0]["estimates_per_s"]
    for row in rows:
        row["d"], row["num_samples"] = _distributed.SCALING_DIM, _distributed.SCALING_SAMPLES
        row["ratio_to_1_device"] = row["estimates_per_s"] / base
    report.table("throughput of antithetic zeroth_order_grad vs devices", rows)
