"""Adversarial validation: a validation split that looks like the test set (spec 7)."""

__all__ = ()
