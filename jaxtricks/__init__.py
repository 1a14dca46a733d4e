"""jaxtricks: training techniques for JAX as pure functions and Optax transforms.

Sub-packages, one per technique:

- `jaxtricks.losses`: class-imbalance losses and metrics.
- `jaxtricks.regularizers`: L2, decoupled weight decay, WEISSI, flooding (also
  re-exported here).
- `jaxtricks.estimators`: zeroth-order and policy-gradient estimators.
- `jaxtricks.teaforn`: teacher forcing with N-grams.
- `jaxtricks.validation`: adversarial validation.
- `jaxtricks.rnn`: gradient flow through time in recurrent networks.
"""

from jaxtricks import estimators, losses, regularizers, rnn, teaforn, validation
from jaxtricks.regularizers import (
    CountState,
    decoupled_weight_decay,
    decoupled_weissi,
    flood,
    gradient_norm_penalty,
    iflood,
    l2_penalty,
    l2_regularization,
    weissi,
    weissi_penalty,
)

__version__ = "0.1.0"

__all__ = (
    "CountState",
    "decoupled_weight_decay",
    "decoupled_weissi",
    "estimators",
    "flood",
    "gradient_norm_penalty",
    "iflood",
    "l2_penalty",
    "l2_regularization",
    "losses",
    "regularizers",
    "rnn",
    "teaforn",
    "validation",
    "weissi",
    "weissi_penalty",
)
