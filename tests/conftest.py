"""Test configuration: four host devices, so sharding tests run on any machine.

XLA reads `XLA_FLAGS` when the backend starts, so this must run before JAX is used.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=4"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
