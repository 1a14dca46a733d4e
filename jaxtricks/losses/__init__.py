"""Class-imbalance losses and metrics.

Most losses here change cross-entropy by re-weighting its examples (Su,
https://kexue.fm/archives/7708): `cross_entropy_weights` measures the weights of any
loss. The names follow optax's prefixes: `softmax_*` losses take `[..., K]` scores and
integer labels (multi-hot for `softmax_multilabel_cross_entropy`) and follow optax's
`(logits, labels, *, hyper-parameters, axis=-1, where=None)` with per-example outputs;
`sigmoid_*` losses take binary logits through a sigmoid and are elementwise with `where`
of the logits' shape; the F1 losses are batch-level scalars. Optax's
`sigmoid_focal_loss` and `dice_loss` are not re-implemented.

The former names (`hard_truncated_cross_entropy`, `binary_smoothed_f1_loss`, ...) remain
importable until 0.3.0, as deprecated aliases that warn on their first call; they are
not in `__all__`.
"""

from jaxtricks._src.deprecation import deprecated_alias
from jaxtricks.losses._binary import sigmoid_smoothed_accuracy_loss
from jaxtricks.losses._classification import (
    softmax_focal_loss,
    softmax_smoothed_accuracy_loss,
    softmax_weighted_cross_entropy,
)
from jaxtricks.losses._f1 import (
    sigmoid_f1_weighted_cross_entropy,
    sigmoid_smoothed_f1_loss,
    softmax_smoothed_f1_loss,
)
from jaxtricks.losses._logit_adjustment import (
    adjust_logits,
    class_priors,
    softmax_logit_adjusted_cross_entropy,
)
from jaxtricks.losses._metrics import balanced_accuracy, balanced_accuracy_from_logits
from jaxtricks.losses._multilabel import softmax_multilabel_cross_entropy
from jaxtricks.losses._reweighting import cross_entropy_weights
from jaxtricks.losses._truncation import (
    sigmoid_hard_truncated_cross_entropy,
    sigmoid_soft_truncated_cross_entropy,
    softmax_hard_truncated_cross_entropy,
    softmax_soft_truncated_cross_entropy,
)

__all__ = (
    "adjust_logits",
    "balanced_accuracy",
    "balanced_accuracy_from_logits",
    "class_priors",
    "cross_entropy_weights",
    "sigmoid_f1_weighted_cross_entropy",
    "sigmoid_hard_truncated_cross_entropy",
    "sigmoid_smoothed_accuracy_loss",
    "sigmoid_smoothed_f1_loss",
    "sigmoid_soft_truncated_cross_entropy",
    "softmax_focal_loss",
    "softmax_hard_truncated_cross_entropy",
    "softmax_logit_adjusted_cross_entropy",
    "softmax_multilabel_cross_entropy",
    "softmax_smoothed_accuracy_loss",
    "softmax_smoothed_f1_loss",
    "softmax_soft_truncated_cross_entropy",
    "softmax_weighted_cross_entropy",
)

# Deprecated names (removed in 0.3.0), not in __all__: old name -> its new name.
binary_f1_weighted_cross_entropy = deprecated_alias(
    "binary_f1_weighted_cross_entropy", sigmoid_f1_weighted_cross_entropy)
binary_smoothed_accuracy_loss = deprecated_alias(
    "binary_smoothed_accuracy_loss", sigmoid_smoothed_accuracy_loss)
binary_smoothed_f1_loss = deprecated_alias("binary_smoothed_f1_loss", sigmoid_smoothed_f1_loss)
hard_truncated_cross_entropy = deprecated_alias(
    "hard_truncated_cross_entropy", sigmoid_hard_truncated_cross_entropy)
logit_adjusted_softmax_cross_entropy = deprecated_alias(
    "logit_adjusted_softmax_cross_entropy", softmax_logit_adjusted_cross_entropy)
multilabel_softmax_cross_entropy = deprecated_alias(
    "multilabel_softmax_cross_entropy", softmax_multilabel_cross_entropy)
smoothed_accuracy_loss = deprecated_alias("smoothed_accuracy_loss", softmax_smoothed_accuracy_loss)
smoothed_f1_loss = deprecated_alias("smoothed_f1_loss", softmax_smoothed_f1_loss)
soft_truncated_cross_entropy = deprecated_alias(
    "soft_truncated_cross_entropy", sigmoid_soft_truncated_cross_entropy)
weighted_softmax_cross_entropy = deprecated_alias(
    "weighted_softmax_cross_entropy", softmax_weighted_cross_entropy)
