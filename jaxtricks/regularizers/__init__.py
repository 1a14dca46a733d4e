"""L2, decoupled weight decay and WEISSI as Optax transforms; flooding (spec 3, 4)."""

__all__ = ()
