"""Default `zeroth_order_grad` when each coefficient needs its own direction only.

Antithetic, or forward with a baseline that pools no other sample (None,
"unperturbed", a scalar), the coefficient `c_i` is known once direction `i` is
evaluated. One `lax.scan` over blocks of directions then draws a block once, evaluates
its perturbed points and adds `sum_{i in block} c_i w_i` to the estimate: no direction
is drawn twice, and no array outgrows a block.

The block is the largest divisor of the number of directions whose arrays hold at
most `block_elements()` numbers (the whole estimate in one step for small params), a
multiple of the kind's group (orthogonal directions), and at least 2 directions where
their number is even: one direction per step compiled (XLA CPU) to a program that
hashes each direction twice, 2.1-3.4x slower than two. Where two directions outgrow the
bound, `_strategy` chooses the seed trick (`_two_phase`) instead, whose peak is at most
`jax.grad`'s. On
CPU the bound is 2^20 numbers, 4 MiB of float32, measured on a 2-core AMD EPYC (2 MiB
of L2 per core, 32 MiB of L3): at `d = 10^5` every direction at once (16 or 128) ran
3.5-3.9x slower than blocks of 8, at `d = 10^6` 32 at once 2.3x slower than blocks of
2. On accelerators, where it was not measured, the bound is 2^27 numbers: every
direction at once up to 512 MiB per array, as before blocks existed.
"""

from __future__ import annotations

import jax
import optax

from jaxtricks._src.typing import PyTree
from jaxtricks.estimators import _plan, _sampling

CPU_BLOCK_ELEMENTS = 2**20
ACCELERATOR_BLOCK_ELEMENTS = 2**27


def block_elements() -> int:
    """The most numbers per array of a block, on the default backend."""
    if jax.default_backend() == "cpu":
        return CPU_BLOCK_ELEMENTS
    return ACCELERATOR_BLOCK_ELEMENTS


def directions_per_block(num_directions: int, num_params: int, group: int = 1) -> int:
    """The largest divisor of `num_directions`, a multiple of `group` (the directions a
    kind draws together), of at most `max(group, 2, block_elements() // num_params)`."""
    limit = min(num_directions, max(group, 2, block_elements() // max(num_params, 1)))
    return next(b for b in range(limit, 0, -1) if num_directions % b == 0 and b % group == 0)


def estimate(plan: _plan.Plan, sample_keys: jax.Array) -> PyTree:
    """`(1/n) sum_i c_i w_i` of `plan`, from the `[n]` keys of its directions, one block
    of directions per step."""
    num_params = optax.tree.size(plan.params)
    group = plan.kind.group_size(plan.num_directions, num_params)
    block = directions_per_block(plan.num_directions, num_params, group)

    def add_block(total: PyTree, block_keys: jax.Array) -> tuple[PyTree, None]:
        coefficients, weights = plan.stored(block_keys)
        return optax.tree.add(total, _sampling.weighted_sum(coefficients, weights)), None

    total, _ = jax.lax.scan(add_block, plan.zeros(), sample_keys.reshape(-1, block))
    return plan.mean(total)
