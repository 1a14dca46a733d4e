"""Gradient flow through time in recurrent networks.

Measures vanishing and exploding gradients of any recurrent step function: flax linen
cells (`linen_step`), nnx cells (`nnx_step`) or plain `(carry, x) -> (carry, y)` functions.
The gradient through time is a product of one-step Jacobians,
`d carry_t / d carry_0 = J_t ... J_1` with `J_k = d carry_k / d carry_{k-1}`, and
vanishing (exploding) gradients are this product shrinking (growing) geometrically in t.

References:
    Su, `也来谈谈RNN的梯度消失/爆炸问题 (On the vanishing/exploding gradients of RNNs)
    <https://kexue.fm/archives/7888>`_, 2020
"""

from jaxtricks.rnn._gradient_flow import GradientNorms, gradient_norms_over_time
from jaxtricks.rnn._jacobians import jacobian_norms, step_jacobian_norms
from jaxtricks.rnn._steps import linen_step, nnx_step

__all__ = (
    "GradientNorms",
    "gradient_norms_over_time",
    "jacobian_norms",
    "linen_step",
    "nnx_step",
    "step_jacobian_norms",
)
