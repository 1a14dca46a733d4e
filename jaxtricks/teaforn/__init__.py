"""TeaForN: teacher forcing with N-grams for sequence decoders (spec section 6)."""

__all__ = ()
