"""Adversarial validation: a validation split that looks like the test set.

One module per job: `_adversarial` (the cross-fitted discriminator), `_auc` (ROC AUC
and its variance), `_splits` (validation splits and weights from the scores).

Reference: https://kexue.fm/archives/7805
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
