"""TeaForN: teacher forcing with N-grams for sequence decoders (arXiv:2010.03494).

`teaforn_loss` runs the N passes; what a pass feeds the next is an object carrying its
own options: `HiddenFeed()` (the default), `SoftFeed(embedding)`,
`TopKFeed(embedding, k)` or `ArgmaxFeed(embedding)`.
"""

from jaxtricks.teaforn._feeds import ArgmaxFeed, HiddenFeed, SoftFeed, TopKFeed
from jaxtricks.teaforn._teaforn import teaforn_loss

__all__ = ("ArgmaxFeed", "HiddenFeed", "SoftFeed", "TopKFeed", "teaforn_loss")
