"""One process of the two-process test (tests/test_distributed.py); not a test itself.

`python estimator_worker.py PORT PROCESS_ID NUM_PROCESSES OUT` joins a JAX distributed
run on 127.0.0.1:PORT (CPU collectives through gloo), builds a mesh over every process's
devices, computes `zeroth_order_grad` and `policy_gradient` with the samples sharded over
that global mesh, and process 0 writes both estimates to OUT (.npz).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtricks import estimators


def objective(params):
    """A non-smooth objective of a small pytree (the same in the single-process run)."""
    return jnp.sum(jnp.abs(params["w"] - 0.3)) + jnp.sum(jnp.floor(3.0 * params["b"]))


# numpy, not jax: JAX must not start its backend before `jax.distributed.initialize`.
PARAMS = {
    "w": np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(2, 3),
    "b": np.array([0.1, -0.4], np.float32),
}


def estimates(sample_sharding):
    """Both estimators, 64 samples each, from one fixed key."""
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


def main(port: str, process_id: str, num_processes: str, out: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=int(num_processes),
        process_id=int(process_id),
        initialization_timeout=30,
    )
    mesh = Mesh(np.array(jax.devices()), ("samples",))
    zo, pg = estimates(NamedSharding(mesh, PartitionSpec("samples")))
    flat = {  # replicated outputs: every process holds the whole value
        f"{name}_{leaf}": np.asarray(value[leaf].addressable_data(0))
        for name, value in (("zo", zo), ("pg", pg)) for leaf in value
    }
    if jax.process_index() == 0:
        np.savez(out, devices=jax.device_count(), processes=jax.process_count(), **flat)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
