"""Adversarial validation: a validation split that looks like the test set.

One module per job: `_adversarial` (the cross-fit and its result), `_discriminator`
(the model, its objective and the training loop), `_auc` (ROC AUC and its variance),
`_splits` (validation splits and weights from the scores).

References:
    Su, `如何划分一个跟测试集更接近的验证集？ (How to split off a validation set closer to
    the test set) <https://kexue.fm/archives/7805>`_, 2020
"""

from jaxtricks.validation._adversarial import AdversarialValidation, adversarial_validation
from jaxtricks.validation._auc import roc_auc
from jaxtricks.validation._splits import (
    ImportanceWeights,
    importance_weights,
    resample_validation,
    select_validation,
)

__all__ = (
    "AdversarialValidation",
    "ImportanceWeights",
    "adversarial_validation",
    "importance_weights",
    "resample_validation",
    "roc_auc",
    "select_validation",
)
