"""Gradient flow through time in recurrent networks.

Measures vanishing and exploding gradients of any recurrent step function: flax linen
cells (`linen_step`), nnx cells (`nnx_step`) or plain `(carry, x) -> (carry, y)` functions.
"""

from jaxtricks.rnn._gradient_flow import (
    GradientNorms,
    gradient_norms_over_time,
    jacobian_norms,
    step_jacobian_norms,
)
from jaxtricks.rnn._steps import linen_step, nnx_step

__all__ = (
    "GradientNorms",
    "gradient_norms_over_time",
    "jacobian_norms",
    "linen_step",
    "nnx_step",
    "step_jacobian_norms",
)
