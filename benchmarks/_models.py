"""Models of the benchmarks: one ReLU MLP (flax linen).

`MLP((), k)` is a linear (softmax-regression) model; `MLP((h,), k)` one hidden layer.
The library's own discriminator (`jaxtricks.validation`) is the same network with one
output; it stays private to the library, so the benchmarks define theirs here.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import linen as nn

# He et al. (2015) initialisation N(0, 2 / fan_in) for ReLU layers.
HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class MLP(nn.Module):
    """Dense layers of widths `hidden_sizes` with ReLU, then a linear layer of
    `num_outputs` logits (positively homogeneous in its kernels with zero biases).

    Attributes:
        hidden_sizes: widths of the hidden layers (empty: a linear model).
        num_outputs: number of logits.
        kernel_init: initialiser of every kernel (flax's default: LeCun normal).
    """

    hidden_sizes: tuple[int, ...]
    num_outputs: int = 10
    kernel_init: Callable = nn.linear.default_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden_sizes:
            x = nn.relu(nn.Dense(width, kernel_init=self.kernel_init)(x))
        return nn.Dense(self.num_outputs, kernel_init=self.kernel_init)(x)
