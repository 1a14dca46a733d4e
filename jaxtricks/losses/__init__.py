"""Class-imbalance losses and metrics.

Most losses here change cross-entropy by re-weighting its examples (Su,
https://kexue.fm/archives/7708): `cross_entropy_weights` measures the weights of any
loss. Softmax losses take integer labels and follow optax's
`(logits, labels, *, hyper-parameters, axis=-1, where=None)` with per-example outputs;
binary (sigmoid) forms are elementwise with `where` of the logits' shape; F1 losses are
batch-level scalars. Optax's `sigmoid_focal_loss` and `dice_loss` are not re-implemented.
"""

from jaxtricks.losses._binary import binary_smoothed_accuracy_loss
from jaxtricks.losses._classification import (
    smoothed_accuracy_loss,
    softmax_focal_loss,
    weighted_softmax_cross_entropy,
)
from jaxtricks.losses._f1 import (
    binary_f1_weighted_cross_entropy,
    binary_smoothed_f1_loss,
    smoothed_f1_loss,
)
from jaxtricks.losses._logit_adjustment import (
    adjust_logits,
    class_priors,
    logit_adjusted_softmax_cross_entropy,
)
from jaxtricks.losses._metrics import balanced_accuracy
from jaxtricks.losses._multilabel import multilabel_softmax_cross_entropy
from jaxtricks.losses._reweighting import cross_entropy_weights
from jaxtricks.losses._truncation import (
    hard_truncated_cross_entropy,
    soft_truncated_cross_entropy,
    softmax_hard_truncated_cross_entropy,
    softmax_soft_truncated_cross_entropy,
)

__all__ = (
    "adjust_logits",
    "balanced_accuracy",
    "binary_f1_weighted_cross_entropy",
    "binary_smoothed_accuracy_loss",
    "binary_smoothed_f1_loss",
    "class_priors",
    "cross_entropy_weights",
    "hard_truncated_cross_entropy",
    "logit_adjusted_softmax_cross_entropy",
    "multilabel_softmax_cross_entropy",
    "smoothed_accuracy_loss",
    "smoothed_f1_loss",
    "soft_truncated_cross_entropy",
    "softmax_focal_loss",
    "softmax_hard_truncated_cross_entropy",
    "softmax_soft_truncated_cross_entropy",
    "weighted_softmax_cross_entropy",
)
