"""L2, decoupled weight decay and WEISSI as Optax transforms; flooding.

- `l2_regularization`, `decoupled_weight_decay`, `weissi`, `decoupled_weissi`: Optax
  transforms, coupled (before the optimiser) and decoupled (after it, AdamW-style),
  whose default mask selects the floating-point weight tensors (`ndim >= 2`).
- `l2_penalty`, `weissi_penalty`: the scalar penalties (their gradients are what the
  transforms add).
- `flood`, `iflood`, `gradient_norm_penalty`: objectives that keep the training loss
  off zero, and the penalty that flooding approximates.
- `CountState`: the state of every transform here (inside `optax.MaskedState`).
"""

from jaxtricks.regularizers._common import CountState
from jaxtricks.regularizers._flooding import flood, gradient_norm_penalty, iflood
from jaxtricks.regularizers._weight_decay import (
    decoupled_weight_decay,
    l2_penalty,
    l2_regularization,
)
from jaxtricks.regularizers._weissi import weissi_penalty
from jaxtricks.regularizers._weissi_transforms import decoupled_weissi, weissi

__all__ = (
    "CountState",
    "decoupled_weight_decay",
    "decoupled_weissi",
    "flood",
    "gradient_norm_penalty",
    "iflood",
    "l2_penalty",
    "l2_regularization",
    "weissi",
    "weissi_penalty",
)
