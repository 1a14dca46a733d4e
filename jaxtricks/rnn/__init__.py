"""Gradient flow through time in recurrent networks (spec section 8)."""

__all__ = ()
