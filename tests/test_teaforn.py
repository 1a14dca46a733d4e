"""TeaForN loss: checked against teacher forcing (optax) and a hand-built numpy version."""

import functools

import flax
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64
from flax import nnx
from jax.test_util import check_grads
from test_losses_deprecated import call_twice_warning_once

from jaxtricks import teaforn
from jaxtricks.teaforn import ArgmaxFeed, HiddenFeed, SoftFeed, TopKFeed, teaforn_loss

B, T, D, V = 3, 6, 4, 7


def _problem(seed=0):
    """Params of a tiny causal body, inputs, targets and an embedding table."""
    keys = jax.random.split(jax.random.key(seed), 6)
    params = {
        "mix": jax.random.normal(keys[0], (D, D)) / np.sqrt(D),
        "bias": 0.1 * jax.random.normal(keys[1], (D,)),
        "out": jax.random.normal(keys[2], (D, V)),
    }
    inputs = jax.random.normal(keys[3], (B, T, D))
    targets = jax.random.randint(keys[4], (B, T), 0, V)
    embedding = jax.random.normal(keys[5], (V, D))
    return params, inputs, targets, embedding


def _body(params, vectors):
    """Causal: position t sees inputs 0..t only, through a prefix sum."""
    return jnp.tanh(jnp.cumsum(vectors @ params["mix"], axis=-2) + params["bias"])


def _output(params, hidden):
    return hidden @ params["out"]


def _loss(params, inputs, targets, **kwargs):
    return teaforn_loss(
        functools.partial(_body, params), functools.partial(_output, params),
        inputs, targets, **kwargs,
    )


def _feed(name, embedding=None, top_k=None):
    """The feed object of a feed's name (the numpy reference below takes the name)."""
    if name == "hidden":
        return HiddenFeed()
    if name == "topk":
        return TopKFeed(embedding, top_k)
    return {"soft": SoftFeed, "argmax": ArgmaxFeed}[name](embedding)


# ---------------------------------------------------------------- hand-built reference
def _np_feed(feed, hidden, logits, embedding, top_k):
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if feed == "hidden":
        return hidden
    if feed == "soft":
        return probs @ embedding
    if feed == "argmax":
        return embedding[np.argmax(logits, -1)]
    feeds = np.zeros((*hidden.shape[:-1], embedding.shape[1]))
    for index in np.ndindex(*logits.shape[:-1]):
        top = np.argsort(-logits[index])[:top_k]
        feeds[index] = probs[index][top] @ embedding[top] / probs[index][top].sum()
    return feeds


def _np_per_position_ce(params, inputs, targets, n, feed="hidden", embedding=None, top_k=None):
    """CE of every position of every pass, [B, T, n], by explicit loops over t in float64."""
    mix, bias, out = (np.asarray(params[k], np.float64) for k in ("mix", "bias", "out"))
    inputs = np.asarray(inputs, np.float64)
    embedding = None if embedding is None else np.asarray(embedding, np.float64)
    batch, length, _ = inputs.shape
    ce = np.zeros((batch, length, n))
    pass_inputs = inputs.copy()
    for p in range(n):
        hidden = np.zeros((batch, length, mix.shape[1]))
        for t in range(length):
            hidden[:, t] = np.tanh(pass_inputs[:, : t + 1].sum(1) @ mix + bias)
        logits = hidden @ out
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ce[:, :, p] = -np.take_along_axis(log_probs, np.asarray(targets)[..., None], -1)[..., 0]
        feeds = _np_feed(feed, hidden, logits, embedding, top_k)
        next_inputs = inputs.copy()
        next_inputs[:, 1:] = feeds[:, :-1]
        pass_inputs = next_inputs
    return ce


# ------------------------------------------------------------------------------ tests
@pytest.mark.slow
def test_one_pass_equals_teacher_forcing_cross_entropy():
    params, inputs, targets, _ = _problem()
    where = jnp.arange(T) < jnp.array([[T], [4], [2]])
    loss, per_pass = jax.jit(lambda p, x, y, w: _loss(p, x, y, n=1, where=w))(
        params, inputs, targets, where
    )
    logits = _output(params, _body(params, inputs))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    expected = jnp.sum(ce * where.astype(ce.dtype)) / jnp.sum(where, dtype=ce.dtype)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(per_pass, [expected], rtol=1e-6)


@pytest.mark.parametrize(
    ("n", "feed", "top_k"),
    [(2, "hidden", None), (3, "hidden", None), (3, "soft", None), (3, "topk", 2),
     (3, "argmax", None)],
)
def test_per_pass_losses_match_a_hand_built_computation(n, feed, top_k):
    params, inputs, targets, embedding = _problem(seed=n)
    weights = jnp.arange(1.0, n + 1.0)
    kwargs = {"n": n, "feed": _feed(feed, embedding, top_k), "weights": weights}
    loss, per_pass = _loss(params, inputs, targets, **kwargs)
    expected = _np_per_position_ce(params, inputs, targets, n, feed, embedding, top_k)
    expected_per_pass = expected.mean(axis=(0, 1))
    np.testing.assert_allclose(per_pass, expected_per_pass, rtol=2e-5)
    np.testing.assert_allclose(loss, np.dot(np.asarray(weights), expected_per_pass), rtol=2e-5)


def test_zero_first_weight_still_sends_gradients_through_pass_one_outputs():
    # Pass 2 reads e_1..e_{T-2} only through h^(1) (h_T^(1) is dropped, so e_{T-1} not at
    # all): with weights (0, 1) their gradient exists only along the path through pass 1's
    # outputs. The directional derivative is compared with central differences of the
    # float64 reference (step 1e-4: truncation ~1e-8, far below the float32 tolerance).
    params, inputs, targets, _ = _problem()

    def pass_two_loss(params, inputs):
        return _loss(params, inputs, targets, n=2, weights=(0.0, 1.0))[0]

    grad_params, grad_inputs = jax.jit(jax.grad(pass_two_loss, argnums=(0, 1)))(params, inputs)
    assert float(jnp.abs(grad_inputs[:, 1:-1]).min()) > 0.0
    assert float(jnp.abs(grad_inputs[:, -1]).max()) == 0.0

    def reference_loss(step):
        shifted = jax.tree.map(lambda x, u: np.asarray(x, np.float64) + step * np.asarray(u),
                               (params, inputs), direction)
        return _np_per_position_ce(*shifted, targets, 2)[..., 1].mean()

    leaves, treedef = jax.tree.flatten((params, inputs))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    direction = treedef.unflatten(
        [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)])
    for only_inputs in (False, True):
        if only_inputs:  # the path through h^(1) alone
            direction = (jax.tree.map(jnp.zeros_like, params), direction[1])
        analytic = sum(jnp.vdot(g, u) for g, u in zip(
            jax.tree.leaves((grad_params, grad_inputs)), jax.tree.leaves(direction), strict=True))
        numeric = (reference_loss(1e-4) - reference_loss(-1e-4)) / 2e-4
        np.testing.assert_allclose(analytic, numeric, rtol=1e-4)


def _per_position_ce(params, inputs, targets, n, **kwargs):
    """The library's CE at every (position, pass), [T, n], via right-padding masks.

    With `where` valid for the first m positions, m * per_pass_losses is the sum of the
    first m CEs (right padding does not change a causal body's earlier positions), so
    consecutive differences give each position's CE. Uses one row.
    """
    def prefix_sums(length):
        where = (jnp.arange(T) < length)[None]
        per_pass = _loss(params, inputs[:1], targets[:1], n=n, where=where, **kwargs)[1]
        return length.astype(per_pass.dtype) * per_pass

    sums = jax.jit(jax.vmap(prefix_sums))(jnp.arange(T + 1))
    return jnp.diff(sums, axis=0)


def test_positions_before_pass_index_repeat_the_previous_pass():
    params, inputs, targets, _ = _problem()
    n = 4
    ce = _per_position_ce(params, inputs, targets, n)
    for p in range(1, n):  # 0-based pass p is pass i = p + 1; 0-based t < p is t + 1 < i
        np.testing.assert_allclose(ce[:p, p], ce[:p, p - 1], rtol=1e-5)
        assert np.all(np.abs(ce[p:, p] - ce[p:, p - 1]) > 1e-4)
    np.testing.assert_allclose(ce, _np_per_position_ce(params, inputs[:1], targets[:1], n)[0],
                               rtol=1e-4)
    _, masked = jax.jit(functools.partial(_loss, n=n, mask_repeated=True))(
        params, inputs[:1], targets[:1])
    np.testing.assert_allclose(masked, [ce[p:, p].mean() for p in range(n)], rtol=1e-5)


def test_right_padding_changes_nothing_and_padded_inputs_do_not_leak():
    params, inputs, targets, embedding = _problem()
    lengths = np.array([T, 4, 2])
    where = jnp.arange(T) < lengths[:, None]
    garbage = jax.random.normal(jax.random.key(9), inputs.shape) * 100.0
    noisy_inputs = jnp.where(where[..., None], inputs, garbage)
    noisy_targets = jnp.where(where, targets, -1)  # invalid labels at padding

    def loss(inputs, targets):
        return _loss(params, inputs, targets, n=3, feed=SoftFeed(embedding), where=where)

    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, per_pass_clean), grad_clean = value_and_grad(inputs, targets)
    (_, per_pass_noisy), grad_noisy = value_and_grad(noisy_inputs, noisy_targets)
    np.testing.assert_allclose(per_pass_noisy, per_pass_clean, rtol=1e-6)
    np.testing.assert_allclose(grad_noisy, grad_clean, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(jnp.where(where[..., None], 0.0, grad_noisy)).max()) == 0.0
    # Against the reference on each row truncated to its length: mean over all valid CEs.
    rows = [_np_per_position_ce(params, inputs[b:b + 1, :m], targets[b:b + 1, :m], 3,
                                "soft", embedding)[0] for b, m in enumerate(lengths)]
    np.testing.assert_allclose(per_pass_noisy, np.concatenate(rows).mean(0), rtol=2e-5)


@pytest.mark.slow
def test_left_padding_keeps_the_start_token_and_matches_the_unpadded_loss():
    # A body that ignores padded inputs (as an attention mask would): left padding by k
    # must give the loss of the unpadded sequence, so the pass-2 input at the start
    # position must stay e_0 and never become the output of a padded position.
    params, inputs, targets, _ = _problem()
    pad = 2
    padded_inputs = jnp.concatenate([jnp.full((B, pad, D), 50.0), inputs], axis=1)
    padded_targets = jnp.concatenate([jnp.zeros((B, pad), targets.dtype), targets], axis=1)
    where = jnp.broadcast_to(jnp.arange(T + pad) >= pad, (B, T + pad))

    def masked_body(vectors):
        return _body(params, vectors * where[..., None].astype(vectors.dtype))

    _, per_pass_padded = teaforn_loss(masked_body, functools.partial(_output, params),
                                      padded_inputs, padded_targets, n=3, where=where)
    _, per_pass = _loss(params, inputs, targets, n=3)
    np.testing.assert_allclose(per_pass_padded, per_pass, rtol=1e-5)


@pytest.mark.slow
def test_scan_unroll_and_remat_give_the_same_loss_and_gradients():
    params, inputs, targets, embedding = _problem()

    @jax.jit
    def all_variants(params):
        results = []
        for unroll in (True, False):
            for remat in (False, True):
                def loss(params, unroll=unroll, remat=remat):
                    return _loss(params, inputs, targets, n=3, feed=TopKFeed(embedding, 3),
                                 unroll=unroll, remat=remat, mask_repeated=True)[0]
                results.append(jax.value_and_grad(loss)(params))
        return results

    (reference_loss, reference_grad), *others = all_variants(params)
    for loss, grad in others:
        np.testing.assert_allclose(loss, reference_loss, rtol=1e-6)
        jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
                     grad, reference_grad)


def test_argmax_feed_is_straight_through():
    # Forward: the embedding of the argmax token (checked in the hand-built test);
    # backward: the gradient of the soft feed p^T E, so e_1.. get a gradient in pass 2.
    params, inputs, targets, embedding = _problem()

    def pass_two_loss(inputs):
        return _loss(params, inputs, targets, n=2, weights=(0.0, 1.0),
                     feed=ArgmaxFeed(embedding))[0]

    assert float(jnp.abs(jax.jit(jax.grad(pass_two_loss))(inputs)[:, 1:-1]).min()) > 0.0


def test_bfloat16_and_huge_logits_stay_finite():
    params, inputs, targets, embedding = _problem()
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    params["out"] = params["out"] * 1e4

    def loss(params):
        return _loss(params, inputs.astype(jnp.bfloat16), targets, n=3,
                     feed=SoftFeed(embedding.astype(jnp.bfloat16)))[0]

    value, grad = jax.jit(jax.value_and_grad(loss))(params)
    assert value.dtype == jnp.float32 and np.isfinite(float(value))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))


def test_runs_unchanged_on_a_sharded_batch():
    params, inputs, targets, _ = _problem()
    inputs, targets = jnp.tile(inputs, (4, 1, 1)), jnp.tile(targets, (4, 1))
    mesh = jax.make_mesh((4,), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    loss = jax.jit(lambda x, y: _loss(params, x, y, n=2)[0])
    sharded = loss(jax.device_put(inputs, sharding), jax.device_put(targets, sharding))
    np.testing.assert_allclose(sharded, loss(inputs, targets), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be"),
        ({"n": 2, "weights": (1.0,)}, "weights must have shape"),
        ({"n": 2, "weights": (1.0, -0.5)}, "weights must lie"),
        ({"n": 2, "feed": np.ones((V, D))}, "feed must be a HiddenFeed, SoftFeed, TopKFeed"),
        ({"n": 2, "feed": SoftFeed(np.ones((V, D + 1)))}, r"embedding must have shape \(7, 4\)"),
        ({"n": 2, "feed": ArgmaxFeed(np.ones((V + 1, D)))}, "embedding must have shape"),
        ({"n": 2, "feed": TopKFeed(np.ones((V, D)), V + 1)}, r"k must lie in \[1, 7\]"),
        ({"n": 2, "feed": TopKFeed(np.ones((V, D)), 0)}, "k must be an integer >= 1"),
        ({"n": 2, "feed": TopKFeed(np.ones((V, D)), 2.0)}, "k must be an integer"),
        # The deprecated keywords with a feed object (the default HiddenFeed() too).
        ({"n": 2, "top_k": 2}, "top_k belong to the feed object"),
        ({"n": 2, "feed": SoftFeed(np.ones((V, D))), "embedding": np.ones((V, D))},
         "embedding and top_k belong to the feed object"),
        # The deprecated string form keeps its checks, made before its warning.
        ({"n": 2, "feed": "gumbel"}, "feed must be one of"),
        ({"n": 2, "feed": "soft"}, "needs embedding"),
        ({"n": 2, "feed": "topk", "embedding": np.ones((V, D))}, "needs top_k"),
        ({"n": 2, "feed": "soft", "embedding": np.ones((V, D)), "top_k": 2},
         "top_k is only used"),
        ({"n": 2, "feed": "hidden", "embedding": np.ones((V, D))}, "embedding is only used"),
        ({"n": 2, "where": np.ones((B, T + 1), bool)}, "where must have shape"),
        ({"n": 2, "reduction": "sum"}, "reduction must be one of"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, message):
    params, inputs, targets, _ = _problem()
    with pytest.raises(ValueError, match=message):
        _loss(params, inputs, targets, **kwargs)


def test_disagreeing_shapes_raise_value_errors():
    params, inputs, targets, _ = _problem()
    with pytest.raises(ValueError, match="targets must have shape"):
        _loss(params, inputs, targets[:, :-1], n=2)
    with pytest.raises(ValueError, match="body_fn's output"):
        teaforn_loss(lambda x: x[..., :2], lambda h: h, inputs, targets, n=2)
    with pytest.raises(ValueError, match="body_fn's output"):  # before output_fn runs
        teaforn_loss(lambda x: x[..., :2], lambda h: h @ jnp.ones((D, V)), inputs, targets,
                     n=2)
    with pytest.raises(ValueError, match="output_fn's output"):
        teaforn_loss(lambda x: x, lambda h: h[:, :-1], inputs, targets, n=2)



@pytest.mark.parametrize("bad", [-1, V, -100])
def test_targets_outside_the_vocabulary_are_refused_naming_them(bad):
    # -1 was trained as token V - 1; V and -100 (padding passed without `where`) gave NaN.
    params, inputs, targets, _ = _problem()
    bad_targets = np.asarray(targets).copy()
    bad_targets[1, 2] = bad
    for unroll in (True, False):
        with pytest.raises(ValueError, match=rf"targets must lie in \[0, {V}\).*got {bad} "
                                             r"at index \(1, 2\).*where"):
            _loss(params, inputs, bad_targets, n=2, unroll=unroll)


def test_out_of_range_targets_masked_by_where_are_accepted_as_any_token():
    params, inputs, targets, _ = _problem()
    where = np.ones((B, T), bool)
    where[1, 2] = where[2, 4:] = False
    padded = np.where(where, targets, -100)  # concrete (closed over): checked at trace time
    loss_fn = jax.jit(lambda x, y: _loss(params, x, y, n=2, where=where, reduction="none"))
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6),
                 jax.jit(lambda x: loss_fn(x, padded))(inputs), loss_fn(inputs, targets))


def test_traced_out_of_range_targets_give_nan_value_and_gradient_at_their_position():
    # As in jaxtricks.losses: a traced target cannot be checked, so it gives NaN.
    params, inputs, targets, _ = _problem()

    @jax.jit
    def per_token_and_grads(targets):
        def total(params):
            _, per_token = _loss(params, inputs, targets, n=2, reduction="none")
            return per_token.sum(), per_token
        return jax.grad(total, has_aux=True)(params)

    _, good = per_token_and_grads(targets)
    for bad in (-1, V, -100):
        grads, per_token = per_token_and_grads(targets.at[1, 2].set(bad))
        per_token = np.array(per_token)
        assert np.isnan(per_token[:, 1, 2]).all()
        assert all(np.isnan(g).all() for g in jax.tree.leaves(grads))
        per_token[:, 1, 2] = good[:, 1, 2]
        np.testing.assert_allclose(per_token, good, rtol=1e-6)


# ---------------------------------------------------------------- reductions
def _plain_loop_token_ce(params, inputs, targets, n, where, feed="hidden", embedding=None):
    """CE of every (pass, row, position), [n, B, T], by a plain loop over passes.

    Each pass is scored with optax's integer-label cross-entropy; the next pass's input
    at position t is the previous pass's vector at t-1 when target t-1 is valid, else
    the original e_t (built position by position).
    """
    where = np.asarray(where)
    ces, pass_inputs = [], inputs
    for _ in range(n):
        hidden = _body(params, pass_inputs)
        logits = _output(params, hidden)
        ces.append(optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.where(where, targets, 0).astype(jnp.int32)))
        vectors = hidden if feed == "hidden" else jax.nn.softmax(logits) @ embedding
        columns = [inputs[:, 0]]
        for t in range(1, inputs.shape[1]):
            columns.append(jnp.where(where[:, t - 1, None], vectors[:, t - 1], inputs[:, t]))
        pass_inputs = jnp.stack(columns, axis=1)
    return jnp.stack(ces)


def _scored(where, n, mask_repeated):
    """[n, B, T]: where pass i scores position t."""
    scored = np.broadcast_to(np.asarray(where), (n, *np.shape(where))).copy()
    if mask_repeated:
        scored &= np.arange(scored.shape[-1]) >= np.arange(n)[:, None, None]
    return scored


@pytest.mark.parametrize(
    ("feed", "mask_repeated", "padding"),
    [("hidden", False, "right"), ("hidden", True, "right"), ("soft", False, "left"),
     ("soft", True, "none")],
)
def test_every_reduction_matches_a_plain_loop_over_passes(feed, mask_repeated, padding):
    params, inputs, targets, embedding = _problem(seed=4)
    n, weights = 3, np.array([0.5, 1.0, 2.0])
    lengths = np.array([T, 4, 0])  # the last row has no valid position at all
    if padding == "right":
        where = np.arange(T) < lengths[:, None]
    elif padding == "left":
        where = np.arange(T) >= T - lengths[:, None]
    else:
        where = np.ones((B, T), bool)
    kwargs = {"n": n, "weights": weights, "feed": _feed(feed, embedding), "where": where,
              "mask_repeated": mask_repeated}
    ce = np.asarray(jax.jit(lambda p, x, y: _plain_loop_token_ce(p, x, y, n, where, feed,
                                                                 embedding))(
        params, inputs, targets), np.float64)
    scored = _scored(where, n, mask_repeated)
    token_ce = np.where(scored, ce, 0.0)
    expected = {
        "none": token_ce,
        "per_example": token_ce.sum(-1) / np.maximum(scored.sum(-1), 1),
        "mean": token_ce.sum((1, 2)) / np.maximum(scored.sum((1, 2)), 1),
    }
    for reduction, want in expected.items():
        loss, per_pass = jax.jit(functools.partial(_loss, reduction=reduction, **kwargs))(
            params, inputs, targets)
        assert per_pass.shape == want.shape and per_pass.dtype == jnp.float32
        np.testing.assert_allclose(per_pass, want, rtol=2e-5, atol=1e-7, err_msg=reduction)
        np.testing.assert_allclose(loss, np.tensordot(weights, want, axes=1), rtol=2e-5,
                                   atol=1e-7, err_msg=reduction)
        if reduction != "mean":  # unscored positions / the empty row are exact zeros
            assert np.all(np.asarray(per_pass)[~scored.any(-1) if reduction ==
                                               "per_example" else ~scored] == 0.0)


def test_default_reduction_is_the_token_pooled_mean_of_the_per_token_losses():
    params, inputs, targets, _ = _problem()
    where = np.arange(T) < np.array([[T], [3], [5]])
    loss, per_pass = _loss(params, inputs, targets, n=2, where=where)
    token_loss, per_token = _loss(params, inputs, targets, n=2, where=where,
                                  reduction="none")
    count = float(where.sum())
    np.testing.assert_allclose(per_pass, per_token.sum((1, 2)) / count, rtol=1e-6)
    np.testing.assert_allclose(loss, token_loss.sum() / count, rtol=1e-6)


@pytest.mark.slow
def test_small_integer_targets_and_leading_batch_dimensions():
    params, inputs, targets, _ = _problem(seed=2)
    stacked_inputs = jnp.stack([inputs, inputs[::-1]])            # [2, B, T, D]
    for reduction, shape in (("per_example", (2, 2, B)), ("none", (2, 2, B, T))):
        loss_fn = jax.jit(functools.partial(_loss, n=2, reduction=reduction))
        flat = loss_fn(params, inputs, targets)[1]
        for dtype in (np.int8, np.uint8, np.int16):
            stacked_targets = jnp.stack([targets, targets[::-1]]).astype(dtype)
            loss, per_pass = loss_fn(params, stacked_inputs, stacked_targets)
            assert per_pass.shape == shape and loss.shape == shape[1:]
            np.testing.assert_allclose(per_pass[:, 0], flat, rtol=1e-6, err_msg=str(dtype))
            np.testing.assert_allclose(per_pass[:, 1], flat[:, ::-1], rtol=1e-6)


def test_nan_input_reaches_only_its_own_example_and_empty_batches_stay_empty():
    params, inputs, targets, _ = _problem()
    nan_inputs = inputs.at[1, 2, 0].set(jnp.nan)
    loss_fn = {reduction: jax.jit(functools.partial(_loss, n=2, reduction=reduction))
               for reduction in ("per_example", "none")}
    _, per_example = loss_fn["per_example"](params, nan_inputs, targets)
    assert np.isnan(per_example[:, 1]).all() and np.isfinite(per_example[:, [0, 2]]).all()
    _, per_token = loss_fn["none"](params, nan_inputs, targets)
    # Pass 1 reads e_2 from position 2 on; pass 2 replaces e_2 by h_1^(1) and reads the
    # NaN only through h_2^(1), fed at position 3.
    for p, first_nan in enumerate((2, 3)):
        assert np.isnan(per_token[p, 1, first_nan:]).all()
        assert np.isfinite(per_token[p, 1, :first_nan]).all()
    assert np.isfinite(per_token[:, [0, 2]]).all()
    for reduction, shape in (("per_example", (2, 0)), ("none", (2, 0, T))):
        loss, per_pass = loss_fn[reduction](params, inputs[:0], targets[:0])
        assert per_pass.shape == shape and loss.shape == shape[1:]


# ---------------------------------------------------------------- nnx and linen decoders
class _DropoutBody(nnx.Module):
    """Causal: dense, dropout, prefix sum, tanh."""

    def __init__(self, rngs, deterministic=False):
        self.dense = nnx.Linear(D, D, rngs=rngs)
        self.dropout = nnx.Dropout(0.3, rngs=rngs, deterministic=deterministic)

    def __call__(self, vectors):
        return jnp.tanh(jnp.cumsum(self.dropout(self.dense(vectors)), axis=-2))


def _eager_teaforn(body, output, inputs, targets, n):
    """Hidden-feed TeaForN written out, calling the (stateful) modules eagerly."""
    losses, pass_inputs = [], inputs
    for _ in range(n):
        hidden = body(pass_inputs)
        ce = optax.softmax_cross_entropy_with_integer_labels(output(hidden), targets)
        losses.append(ce.mean())
        pass_inputs = jnp.concatenate([inputs[:, :1], hidden[:, :-1]], axis=1)
    return jnp.stack(losses)


def _dropout_decoder(deterministic=False):
    rngs = nnx.Rngs(0, dropout=1)
    return _DropoutBody(rngs, deterministic), nnx.Linear(D, V, rngs=rngs)


@pytest.mark.slow
def test_nnx_dropout_body_runs_unrolled_scanned_and_rematerialised():
    _, inputs, targets, _ = _problem()
    expected = _eager_teaforn(*_dropout_decoder(), inputs, targets, n=3)
    for unroll, remat in ((True, False), (False, False), (False, True)):
        body, output = _dropout_decoder()
        _, per_pass = teaforn_loss(body, output, inputs, targets, n=3, unroll=unroll,
                                   remat=remat)
        np.testing.assert_allclose(per_pass, expected, rtol=1e-5, err_msg=str((unroll, remat)))
        # Each pass drew its own mask and the stream moved on by one draw per pass.
        np.testing.assert_allclose(body.dropout(jnp.ones((B, T, D))),
                                   _dropout_after(3), rtol=0)


def _dropout_after(draws):
    body, _ = _dropout_decoder()
    for _ in range(draws):
        body.dropout(jnp.ones((B, T, D)))
    return body.dropout(jnp.ones((B, T, D)))


@pytest.mark.slow
def test_nnx_dropout_body_under_nnx_jit_and_grad_matches_the_eager_gradient():
    _, inputs, targets, _ = _problem()

    def loss(modules, unroll):
        return teaforn_loss(*modules, inputs, targets, n=2, unroll=unroll)[0]

    def eager_loss(modules):
        return jnp.sum(_eager_teaforn(*modules, inputs, targets, n=2))

    expected, expected_grads = nnx.value_and_grad(eager_loss)(_dropout_decoder())
    for unroll in (True, False):
        step = nnx.jit(nnx.value_and_grad(loss), static_argnums=1)
        value, grads = step(_dropout_decoder(), unroll)
        np.testing.assert_allclose(value, expected, rtol=1e-5)
        jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
                     nnx.state(grads, nnx.Param), nnx.state(expected_grads, nnx.Param))


def test_deterministic_nnx_dropout_equals_no_dropout_and_runs_as_a_jit_closure():
    _, inputs, targets, _ = _problem()
    body, output = _dropout_decoder(deterministic=True)
    count_before = jax.tree.leaves(nnx.state(body, nnx.RngCount))
    expected = _eager_teaforn(lambda x: jnp.tanh(jnp.cumsum(body.dense(x), axis=-2)),
                              output, inputs, targets, n=3)
    per_pass = jax.jit(lambda x: teaforn_loss(body, output, x, targets, n=3, unroll=False,
                                              remat=True)[1])(inputs)
    np.testing.assert_allclose(per_pass, expected, rtol=1e-5)
    assert jax.tree.leaves(nnx.state(body, nnx.RngCount)) == count_before



@pytest.mark.parametrize(
    ("argument", "wrap"),
    [("body_fn", lambda module: module.__call__),
     ("body_fn", lambda module: lambda *args: module(*args)),
     ("output_fn", lambda module: lambda hidden: module(hidden))],
    ids=["bound_method", "lambda", "output_lambda"],
)
def test_stateful_nnx_module_behind_a_method_or_closure_is_refused_naming_the_fix(argument,
                                                                                 wrap):
    # flax's TraceContextError ("Cannot mutate RngCount from a different trace level")
    # named neither teaforn_loss nor what to pass instead.
    _, inputs, targets, _ = _problem()
    body, output = _dropout_decoder()
    dropout_output = nnx.Sequential(nnx.Dropout(0.3, rngs=nnx.Rngs(2)), output)
    decoder = (wrap(body), output) if argument == "body_fn" else (body, wrap(dropout_output))
    with pytest.raises(ValueError, match=rf"teaforn_loss's {argument} must be the nnx module "
                                         rf"itself.*Pass the module as {argument}") as error:
        teaforn_loss(*decoder, inputs, targets, n=2)
    assert isinstance(error.value.__cause__, flax.errors.TraceContextError)


@pytest.mark.slow
def test_a_module_whose_call_calls_the_stateful_module_is_the_fix_the_message_names():
    _, inputs, targets, _ = _problem()
    expected = teaforn_loss(*_dropout_decoder(), inputs, targets, n=2)[1]
    body, output = _dropout_decoder()
    np.testing.assert_array_equal(
        teaforn_loss(nnx.Sequential(body), output, inputs, targets, n=2)[1], expected)


def test_nnx_rnn_body_with_an_nnx_output_layer():
    _, inputs, targets, _ = _problem()

    def decoder():
        rngs = nnx.Rngs(3)
        return nnx.RNN(nnx.SimpleCell(D, D, rngs=rngs)), nnx.Linear(D, V, rngs=rngs)

    expected = _eager_teaforn(*decoder(), inputs, targets, n=3)
    for unroll, remat in ((True, False), (False, True)):
        _, per_pass = teaforn_loss(*decoder(), inputs, targets, n=3, unroll=unroll,
                                   remat=remat)
        np.testing.assert_allclose(per_pass, expected, rtol=1e-5)


@pytest.mark.slow
def test_linen_body_with_dropout_rngs():
    _, inputs, targets, _ = _problem()

    class Body(linen.Module):
        @linen.compact
        def __call__(self, vectors):
            hidden = linen.Dropout(0.3, deterministic=False)(linen.Dense(D)(vectors))
            return jnp.tanh(jnp.cumsum(hidden, axis=-2))

    module = Body()
    variables = module.init(jax.random.key(0), inputs)
    table = jax.random.normal(jax.random.key(1), (D, V))

    def body(vectors):
        return module.apply(variables, vectors, rngs={"dropout": jax.random.key(5)})

    expected = jax.jit(lambda x: _eager_teaforn(body, lambda h: h @ table, x, targets, n=3))(
        inputs)
    for unroll in (True, False):
        _, per_pass = jax.jit(lambda x, unroll=unroll: teaforn_loss(
            body, lambda h: h @ table, x, targets, n=3, unroll=unroll, remat=True))(inputs)
        np.testing.assert_allclose(per_pass, expected, rtol=1e-5)


# ---------------------------------------------------------------- transformations, NaN
@pytest.mark.slow
def test_forward_mode_derivatives_match_finite_differences():
    params, inputs, targets, embedding = _problem()
    with enable_x64():
        params, inputs, embedding = jax.tree.map(
            lambda x: jnp.asarray(x, jnp.float64), (params, inputs, embedding))
        def loss(params, inputs):
            return _loss(params, inputs, targets, n=2, feed=SoftFeed(embedding),
                         unroll=False)[0]

        check_grads(jax.jit(loss), (params, inputs), order=1, modes=("fwd", "rev"))
        hessian = jax.jit(jax.hessian(lambda bias: _loss({**params, "bias": bias}, inputs,
                                                         targets, n=2)[0]))(params["bias"])
        reverse = jax.jit(jax.jacrev(jax.jacrev(lambda bias: _loss(
            {**params, "bias": bias}, inputs, targets, n=2)[0])))(params["bias"])
        np.testing.assert_allclose(hessian, reverse, rtol=1e-9, atol=1e-12)


def test_vmap_over_problems_and_lax_scan_over_steps_match_a_loop():
    problems = [_problem(seed) for seed in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[p[:3] for p in problems])

    def loss(params, inputs, targets):
        return _loss(params, inputs, targets, n=2, remat=True)[0]

    expected = jnp.stack([jax.jit(loss)(*p[:3]) for p in problems])
    np.testing.assert_allclose(jax.jit(jax.vmap(loss))(*stacked), expected, rtol=1e-5)
    _, scanned = jax.jit(lambda stacked: jax.lax.scan(
        lambda c, problem: (c, loss(*problem)), None, stacked))(stacked)
    np.testing.assert_allclose(scanned, expected, rtol=1e-5)


def test_nan_parameters_give_nan_losses_and_bfloat16_gradients_keep_their_dtype():
    params, inputs, targets, embedding = _problem()
    nan_params = {**params, "mix": params["mix"].at[0, 0].set(jnp.nan)}
    loss, per_pass = jax.jit(functools.partial(_loss, n=2))(  # the feed as a pytree argument
        nan_params, inputs, targets, feed=SoftFeed(embedding))
    assert np.isnan(loss) and np.isnan(per_pass).all()
    bf16_params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    grads = jax.jit(jax.grad(lambda p: _loss(p, inputs.astype(jnp.bfloat16), targets, n=2)[0]))(
        bf16_params)
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------- feed objects
def test_feed_objects_are_pytrees_with_k_static():
    _, _, _, embedding = _problem()
    for feed in (HiddenFeed(), SoftFeed(embedding), TopKFeed(embedding, 3),
                 ArgmaxFeed(embedding)):
        leaves, treedef = jax.tree.flatten(feed)
        assert len(leaves) == (0 if isinstance(feed, HiddenFeed) else 1)
        assert jax.tree.unflatten(treedef, leaves) == feed or leaves  # round trip
        assert type(jax.jit(lambda f: f)(feed)) is type(feed)
    assert jax.jit(lambda f: f)(TopKFeed(embedding, 3)).k == 3  # static: not traced
    assert set(teaforn.__all__) == {"ArgmaxFeed", "HiddenFeed", "SoftFeed", "TopKFeed",
                                    "teaforn_loss"}


def test_the_gradient_reaches_a_feed_s_embedding_table():
    params, inputs, targets, embedding = _problem()
    for feed in (SoftFeed, ArgmaxFeed, functools.partial(TopKFeed, k=3)):
        grad = jax.jit(jax.grad(lambda e, feed=feed: _loss(
            params, inputs, targets, n=2, feed=feed(e))[0]))(embedding)
        assert float(jnp.abs(grad).max()) > 0.0


@pytest.mark.parametrize(
    ("feed", "top_k"), [("hidden", None), ("soft", None), ("topk", 3), ("argmax", None)])
def test_the_former_string_feeds_give_identical_outputs_and_warn_once(feed, top_k):
    params, inputs, targets, embedding = _problem(seed=5)
    body, output = functools.partial(_body, params), functools.partial(_output, params)
    common = {"n": 3, "weights": (1.0, 0.5, 0.25), "mask_repeated": True,
              "reduction": "per_example"}
    expected = teaforn_loss(body, output, inputs, targets,
                            feed=_feed(feed, embedding, top_k), **common)
    former = {"feed": feed}
    if feed != "hidden":
        former["embedding"] = embedding
    if top_k is not None:
        former["top_k"] = top_k
    first, second, message = call_twice_warning_once(
        teaforn_loss, body, output, inputs, targets, **former, **common)
    for got in (first, second):
        jax.tree.map(np.testing.assert_array_equal, got, expected)
    replacement = {"hidden": "HiddenFeed()", "soft": "SoftFeed(embedding)",
                   "topk": "TopKFeed(embedding, k=top_k)", "argmax": "ArgmaxFeed(embedding)"}
    assert f"feed=jaxtricks.teaforn.{replacement[feed]}" in message
    assert "teaforn_loss's string feed" in message


def test_integer_input_embeddings_or_table_are_refused_not_truncated():
    # Each pass cast its fed vectors to the inputs' dtype: int truncated them silently.
    table = jnp.linspace(-1, 1, 20).reshape(5, 4)
    tokens = jnp.array([[0, 3, 1, 4, 2], [0, 2, 2, 1, 3]])
    inputs, targets = table[tokens[:, :-1]], tokens[:, 1:]

    def body(e):
        return jnp.tanh(jnp.cumsum(e / 10.0, -2))

    def output(h):
        return h @ table.T

    with pytest.raises(ValueError, match="input_embeddings must have a floating dtype"):
        teaforn.teaforn_loss(body, output, (inputs * 10).astype(jnp.int32), targets, n=2)
    with pytest.raises(ValueError, match="embedding must have a floating dtype"):
        teaforn.teaforn_loss(body, output, inputs, targets, n=2,
                             feed=teaforn.SoftFeed(table.astype(jnp.int32)))
