"""TeaForN: teacher forcing with N-grams for sequence decoders (arXiv:2010.03494)."""

from jaxtricks.teaforn._teaforn import teaforn_loss

__all__ = ("teaforn_loss",)
