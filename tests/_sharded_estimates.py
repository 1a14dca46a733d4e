"""Both estimators on a small non-smooth objective, their samples sharded over a mesh.

`tests/test_estimators.py` compares the sharded and the unsharded numbers in one process;
`tests/test_distributed.py` runs `save_estimates` as the task of
`jaxtricks._src.local_cluster.launch`, over two processes.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxtricks import estimators

PARAMS = {
    "w": np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(2, 3),
    "b": np.array([0.1, -0.4], np.float32),
}


def objective(params):
    """A non-smooth objective of a small pytree."""
    return jnp.sum(jnp.abs(params["w"] - 0.3)) + jnp.sum(jnp.floor(3.0 * params["b"]))


def estimates(sample_sharding=None):
    """Both estimators, 64 samples each from one fixed key; outputs replicated."""
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


def save_estimates(sample_sharding, out):
    """The launched task: process 0 saves `estimates` and the run's layout to `out` (.npz)."""
    zo, pg = estimates(sample_sharding)
    result = {  # replicated outputs: every process holds the whole value
        f"{name}_{leaf}": np.asarray(value[leaf].addressable_data(0))
        for name, value in (("zo", zo), ("pg", pg)) for leaf in value
    }
    if jax.process_index() == 0:
        np.savez(out, devices=jax.device_count(), processes=jax.process_count(), **result)
