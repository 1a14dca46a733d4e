"""TeaForN: teacher forcing with N-grams for sequence decoders (spec section 6)."""

from jaxtricks.teaforn._teaforn import teaforn_loss

__all__ = ("teaforn_loss",)
