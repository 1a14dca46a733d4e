"""Zeroth-order and policy-gradient estimators (spec section 5)."""

__all__ = ()
