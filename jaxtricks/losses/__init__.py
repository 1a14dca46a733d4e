"""Class-imbalance losses and metrics (spec sections 1 and 2).

Every loss here is a cross-entropy whose examples are re-weighted:
`cross_entropy_weights` measures the weights.
"""

__all__ = ()
