"""Adversarial validation: a validation split that looks like the test set (spec 7).

Reference: https://kexue.fm/archives/7805
"""

from jaxtricks.validation._adversarial import (
    AdversarialValidation,
    ImportanceWeights,
    adversarial_validation,
    importance_weights,
    resample_validation,
    roc_auc,
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
