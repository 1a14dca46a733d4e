"""The softmax losses of `jaxtricks.losses` as a family, and the classification losses.

Every softmax loss (a row of `SOFTMAX_LOSSES`, with its plain-autodiff twin in
`PLAIN_LOSSES`) is checked for derivatives in both modes, masks, labels, NaN/inf,
empty batches and dtypes; the focal, class-weighted and smoothed-accuracy formulas
against float64 numpy or optax. Each other module has its own test file.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64
from jax.test_util import check_grads

from jaxtricks import losses

NUM_CLASSES = 5


def _problem(seed=0, batch=6, num_classes=NUM_CLASSES, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal((batch, num_classes))
    labels = rng.integers(0, num_classes, batch)
    return logits.astype(np.float32), labels.astype(np.int32)


def _np_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _np_target(values, labels):
    return np.take_along_axis(values, labels[..., None], -1)[..., 0]


def _np_focal(logits, labels, gamma, alpha=1.0):
    log_p = _np_target(_np_log_softmax(logits), labels)
    return -np.asarray(alpha) * (1 - np.exp(log_p)) ** gamma * log_p


PRIORS = np.array([0.5, 0.25, 0.15, 0.07, 0.03])


ALPHA = np.array([0.1, 0.2, 0.3, 0.4, 1.0])


SOFTMAX_LOSSES = {
    "focal": lambda s, y, **kw: losses.softmax_focal_loss(s, y, gamma=2.0, alpha=ALPHA, **kw),
    "focal_small_gamma": lambda s, y, **kw: losses.softmax_focal_loss(s, y, gamma=0.3, **kw),
    "weighted": lambda s, y, **kw: losses.softmax_weighted_cross_entropy(
        s, y, class_weights=ALPHA, **kw),
    "logit_adjusted": lambda s, y, **kw: losses.softmax_logit_adjusted_cross_entropy(
        s, y, class_priors=PRIORS, tau=1.5, **kw),
    "smoothed_accuracy": losses.softmax_smoothed_accuracy_loss,
    "hard_truncated": lambda s, y, **kw: losses.softmax_hard_truncated_cross_entropy(
        s, y, margin=0.6, **kw),
    "soft_truncated": lambda s, y, **kw: losses.softmax_soft_truncated_cross_entropy(
        s, y, steepness=2.0, **kw),
    "multilabel": lambda s, y, **kw: losses.softmax_multilabel_cross_entropy(
        s, jax.nn.one_hot(y, s.shape[-1]), **kw),
}


def test_focal_with_gamma_zero_and_no_alpha_is_optax_cross_entropy():
    logits, labels = _problem()

    def both(s):
        ours = losses.softmax_focal_loss(s, labels, gamma=0.0)
        theirs = optax.softmax_cross_entropy_with_integer_labels(s, labels)
        return ours, theirs

    (ours, theirs), (grad_ours, grad_theirs) = jax.jit(
        lambda s: (both(s), jax.jacrev(lambda t: [x.sum() for x in both(t)])(s)))(logits)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad_ours, grad_theirs, atol=1e-6)


@pytest.mark.parametrize("alpha", [None, 0.25, ALPHA])
def test_focal_matches_the_direct_formula(alpha):
    logits, labels = _problem(1)
    expected = _np_focal(logits, labels, 2.0,
                         1.0 if alpha is None else np.broadcast_to(alpha, (NUM_CLASSES,))[labels])
    got = losses.softmax_focal_loss(logits, labels, gamma=2.0, alpha=alpha)
    np.testing.assert_allclose(got, expected, rtol=2e-5)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_gradient_is_the_reweighted_cross_entropy_gradient(gamma):
    # grad = w (p - e_y), w = (1-p)^g - g p (1-p)^(g-1) log p.
    logits, labels = _problem(2)
    log_probs = _np_log_softmax(logits)
    p = np.exp(log_probs)
    p_y = _np_target(p, labels)
    w = (1 - p_y) ** gamma - gamma * p_y * (1 - p_y) ** (gamma - 1) * np.log(p_y)
    expected = w[:, None] * (p - np.eye(NUM_CLASSES)[labels])
    got = jax.grad(lambda s: losses.softmax_focal_loss(s, labels, gamma=gamma).sum())(logits)
    np.testing.assert_allclose(got, expected, atol=2e-6)


@pytest.mark.parametrize("name", list(SOFTMAX_LOSSES))
@pytest.mark.slow
def test_first_and_second_derivatives_in_both_modes_pass_check_grads_in_float64(name):
    loss = SOFTMAX_LOSSES[name]
    logits, labels = _problem(3)
    with enable_x64():
        check_grads(jax.jit(lambda s: loss(s, labels)), (jnp.asarray(logits, jnp.float64),),
                    order=2, modes=["fwd", "rev"])


@pytest.mark.slow
def test_derivatives_in_focal_gamma_match_finite_differences():
    logits, labels = _problem(4)
    with enable_x64():
        check_grads(lambda g: losses.softmax_focal_loss(jnp.asarray(logits, jnp.float64),
                                                       labels, gamma=g), (1.5,), order=1,
                    modes=["fwd", "rev"])


def _plain_log_p(s, y, mask):
    """`s_y - logsumexp(s)` by plain autodiff (no custom derivative), mask as optax's."""
    scores = s if mask is None else jnp.where(mask, s, -jnp.inf)
    return jnp.take_along_axis(s, y[:, None], -1)[:, 0] - jax.nn.logsumexp(scores, -1)


def _plain_multilabel(s, y, mask):
    positive = jax.nn.one_hot(y, s.shape[-1], dtype=bool)
    present = jnp.ones_like(positive) if mask is None else mask

    def term(exponents, members):
        exponents = jnp.where(members & present, exponents, -jnp.inf)
        return jax.nn.logsumexp(jnp.concatenate([jnp.zeros_like(exponents[:, :1]),
                                                 exponents], -1), -1)

    return term(s, ~positive) + term(-s, positive)


def _plain_soft_truncated(s, y, mask):
    """Su's `-softmax(-K s)_y log softmax(s)_y` at K = 2, by plain autodiff."""
    return -jnp.exp(_plain_log_p(-2.0 * s, y, mask)) * _plain_log_p(s, y, mask)


def _plain_focal(gamma, alpha):
    def loss(s, y, mask):
        log_p = _plain_log_p(s, y, mask)
        return -jnp.asarray(alpha)[y] * (1.0 - jnp.exp(log_p)) ** gamma * log_p
    return loss


# The same losses written directly, differentiated by plain autodiff.
PLAIN_LOSSES = {
    "focal": _plain_focal(2.0, ALPHA),
    "focal_small_gamma": _plain_focal(0.3, np.ones(NUM_CLASSES)),
    "weighted": lambda s, y, m: -jnp.asarray(ALPHA)[y] * _plain_log_p(s, y, m),
    "logit_adjusted": lambda s, y, m: -_plain_log_p(
        s + 1.5 * jnp.log(PRIORS / PRIORS.sum()), y, m),
    "smoothed_accuracy": lambda s, y, m: -jnp.exp(_plain_log_p(s, y, m)),
    "hard_truncated": lambda s, y, m: jnp.where(
        jnp.exp(_plain_log_p(s, y, m)) <= 0.6, -_plain_log_p(s, y, m), 0.0),
    "soft_truncated": _plain_soft_truncated,
    "multilabel": _plain_multilabel,
}


@pytest.mark.parametrize(("name", "masked"), [
    *[(name, False) for name in SOFTMAX_LOSSES],
    *[(name, True) for name in ("focal", "logit_adjusted", "soft_truncated", "multilabel")]])
def test_forward_mode_derivatives_match_plain_autodiff(name, masked):
    # jvp, jacfwd, linearize, hessian (forward over reverse) and the jvp of the gradient
    # (a Hessian-vector product), each against the same transform of a plain version.
    logits, labels = _problem(20, batch=4)
    rng = np.random.default_rng(21)
    mask = None
    if masked:
        mask = rng.random(logits.shape) < 0.7
        mask[np.arange(4), labels] = True
        mask[np.arange(4), (labels + 1) % NUM_CLASSES] = True
    ours, plain = SOFTMAX_LOSSES[name], PLAIN_LOSSES[name]
    with enable_x64():
        s = jnp.asarray(logits, jnp.float64)
        tangent = jnp.asarray(rng.standard_normal(logits.shape))
        kwargs = {} if mask is None else {"where": mask}

        @jax.jit
        def transforms(s, tangent, f):
            def squares(t):
                return jnp.sum(f(t) ** 2)

            return {
                "jvp": jax.jvp(f, (s,), (tangent,)),
                "jacfwd": jax.jacfwd(f)(s),
                "linearize": jax.linearize(f, s)[1](tangent),
                "hessian": jax.hessian(squares)(s),
                "jvp_of_grad": jax.jvp(jax.grad(squares), (s,), (tangent,)),
            }

        got = transforms(s, tangent, jax.tree_util.Partial(
            lambda t: ours(t, labels, **kwargs)))
        expected = transforms(s, tangent, jax.tree_util.Partial(
            lambda t: plain(t, labels, mask)))
        for transform_name in got:
            for g, e in zip(jax.tree.leaves(got[transform_name]),
                            jax.tree.leaves(expected[transform_name]), strict=True):
                np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12,
                                           err_msg=f"{name} {transform_name}")


@pytest.mark.parametrize("name", list(SOFTMAX_LOSSES))
def test_jit_vmap_and_extreme_logits_in_float32_and_bfloat16(name):
    loss = SOFTMAX_LOSSES[name]
    logits, labels = _problem(5)
    extreme = np.where(logits > 0, 1e4, -1e4).astype(np.float32)
    extreme[0] = 1e4  # a row of ties

    @jax.jit
    def values_and_grads(s):
        per_problem = jax.vmap(lambda t: loss(t, labels))(s)
        grads = jax.vmap(jax.grad(lambda t: loss(t, labels).sum()))(s)
        return per_problem, grads

    stacked = np.stack([logits, extreme, 2 * logits])
    for dtype in (jnp.float32, jnp.bfloat16):
        values, grads = values_and_grads(jnp.asarray(stacked, dtype))
        assert values.dtype == dtype and grads.dtype == dtype
        assert np.all(np.isfinite(np.asarray(values, np.float32))), name
        assert np.all(np.isfinite(np.asarray(grads, np.float32))), name
    values, _ = values_and_grads(jnp.asarray(stacked))
    for i, s in enumerate(stacked):  # vmap and jit agree with the eager call
        np.testing.assert_allclose(values[i], loss(s, labels), rtol=1e-5, atol=1e-6)


def test_axis_and_where_follow_optax():
    logits, labels = _problem(6)
    mask = np.ones_like(logits, bool)
    mask[:, 1] = False
    mask[2] = False
    rows = np.array([True, False, True, True, False, True])
    optax_ce = optax.softmax_cross_entropy_with_integer_labels
    focal = jax.jit(lambda s, y, **kw: losses.softmax_focal_loss(s, y, gamma=0.0, **kw),
                    static_argnames="axis")
    np.testing.assert_allclose(focal(logits.T, labels, axis=0), optax_ce(logits, labels),
                               rtol=1e-6)
    np.testing.assert_allclose(focal(logits, labels, where=mask),
                               optax_ce(logits, labels, where=mask), rtol=1e-6)
    np.testing.assert_allclose(focal(logits, labels, where=rows),
                               optax_ce(logits, labels, where=rows), rtol=1e-6)
    grid = logits.reshape(6, 1, NUM_CLASSES).repeat(2, 1).reshape(6, 2, NUM_CLASSES)
    flat_labels = labels * 2 + 1  # flat index in the (2, K) slice, transposed below
    swapped = grid.transpose(0, 2, 1)  # classes (K, 2): flat index label * 2 + 1
    np.testing.assert_allclose(focal(swapped, flat_labels, axis=(1, 2)),
                               optax_ce(swapped, flat_labels, axis=(1, 2)), rtol=1e-6)


@pytest.mark.slow
def test_masked_scores_get_no_gradient_and_empty_rows_give_zero():
    logits, labels = _problem(7)
    mask = np.ones_like(logits, bool)
    mask[:, 3] = False
    mask[0] = False
    for name, loss in SOFTMAX_LOSSES.items():
        values = loss(logits, labels, where=mask)
        grads = jax.grad(lambda s, loss=loss: loss(s, labels, where=mask).sum())(logits)
        assert values[0] == 0, name
        np.testing.assert_array_equal(np.asarray(grads)[~mask], 0.0, err_msg=name)


def test_weighted_cross_entropy_is_class_weight_times_optax_cross_entropy():
    logits, labels = _problem(8)
    expected = ALPHA[labels] * optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    got = losses.softmax_weighted_cross_entropy(logits, labels, class_weights=ALPHA)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_smoothed_accuracy_loss_is_minus_the_target_probability():
    logits, labels = _problem(13)
    expected = -np.exp(_np_target(_np_log_softmax(logits), labels))
    np.testing.assert_allclose(losses.softmax_smoothed_accuracy_loss(logits, labels), expected,
                               rtol=1e-6)


def test_sharded_batch_gives_the_unsharded_result():
    devices = np.array(jax.devices()[:4])
    mesh = jax.sharding.Mesh(devices, ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    logits, labels = _problem(17, batch=8)
    step = jax.jit(jax.value_and_grad(
        lambda s, y: losses.softmax_focal_loss(s, y, alpha=ALPHA).mean()))
    value, grad = step(jax.device_put(logits, sharding), jax.device_put(labels, sharding))
    ref_value, ref_grad = step(logits, labels)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-7)


def _raises(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def test_bad_arguments_raise_value_errors_naming_them():
    logits, labels = _problem(18)
    focal = losses.softmax_focal_loss
    la = losses.softmax_logit_adjusted_cross_entropy
    _raises(r"labels must have shape \(6,\)", focal, logits, labels[:4])
    _raises("labels must be integers", focal, logits, labels.astype(np.float32))
    _raises("gamma must lie in", focal, logits, labels, gamma=-0.5)
    _raises(r"alpha must be a scalar or have shape \(5,\)", focal, logits, labels, alpha=[1., 2.])
    _raises("alpha must lie in", focal, logits, labels, alpha=-0.25)
    _raises("alpha must lie in", focal, logits, labels, alpha=-ALPHA)
    _raises("alpha must be finite", focal, logits, labels, alpha=np.full(5, np.nan))
    _raises("where must have shape", focal, logits, labels, where=np.ones(3, bool))
    _raises("logits must have a floating dtype", focal, labels[:, None], labels)
    _raises("class_weights must lie in", losses.softmax_weighted_cross_entropy, logits, labels,
            class_weights=-ALPHA)
    _raises("tau must be finite", la, logits, labels, class_priors=PRIORS, tau=np.inf)
    _raises("tau must be finite", losses.adjust_logits, logits, class_priors=PRIORS, tau=np.nan)
    _raises(r"class_priors must have shape \(5,\)", la, logits, labels, class_priors=PRIORS[:3])
    _raises("class_priors must lie in", la, logits, labels, class_priors=-PRIORS)
    _raises("class_priors must have a positive sum", losses.adjust_logits, logits,
            class_priors=np.zeros(5))
    for margin in (0.0, 1.0, 1.5):
        _raises("margin must lie in", losses.softmax_hard_truncated_cross_entropy, logits,
                labels, margin=margin)
    _raises("steepness must lie in", losses.softmax_soft_truncated_cross_entropy, logits,
            labels, steepness=-1.0)
    _raises("num_classes must be an integer", losses.class_priors, labels, 0)
    _raises("smoothing", losses.class_priors, labels, 5, smoothing=-1.0)
    _raises(r"predictions must be integers of shape \(6,\), or \(deprecated\) logits of "
            r"shape \(6, 4\)", losses.balanced_accuracy, logits, labels, 4)
    _raises(r"logits must have shape \(6,\) \+ the class shape",
            losses.balanced_accuracy_from_logits, logits[0], labels)
    _raises("logits must have at least one class", losses.balanced_accuracy_from_logits,
            logits[:, :0], labels)
    _raises(r"labels must have shape \(6, 5\)", losses.softmax_multilabel_cross_entropy,
            logits, labels)
    _raises("axis must", focal, logits, labels, axis=2)


def test_traced_hyper_parameters_skip_value_checks_and_still_work():
    logits, labels = _problem(19)
    gammas = jnp.array([0.0, 1.0, 2.0])
    per_gamma = jax.vmap(lambda g: losses.softmax_focal_loss(logits, labels, gamma=g))(gammas)
    for g, row in zip(gammas, per_gamma, strict=True):
        np.testing.assert_allclose(row, _np_focal(logits, labels, float(g)), rtol=2e-5)


# Softmax losses with integer labels that follow optax's indexing of labels (the
# logit-adjusted loss raises a ValueError for a concrete label outside [0, K)).
INTEGER_LABEL_LOSSES = [name for name in SOFTMAX_LOSSES
                        if name not in ("multilabel", "logit_adjusted")]


def _value_and_grad(loss, logits, labels, **kwargs):
    values = loss(logits, labels, **kwargs)
    grads = jax.grad(lambda s: loss(s, labels, **kwargs).sum())(logits)
    return np.asarray(values, np.float64), np.asarray(grads, np.float64)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16])
@pytest.mark.slow
def test_narrow_integer_labels_give_the_int32_result_for_any_num_classes(dtype):
    # K = 300 > 256: an iota in the labels' dtype would wrap around (a spurious one-hot
    # at y + 256) and indexing a [K] weight vector with int8 labels would overflow.
    num_classes = 300
    logits, _ = _problem(22, batch=8, num_classes=num_classes)
    info = np.iinfo(dtype)
    top = min(info.max, num_classes - 1)
    labels = np.array([0, 1, 17, 100, top, top - 1, 5, 127], np.int64)
    labels = np.minimum(labels, top).astype(dtype)
    weights = np.linspace(0.5, 2.0, num_classes)
    by_name = {
        "focal_alpha": lambda s, y: losses.softmax_focal_loss(s, y, alpha=weights),
        "weighted": lambda s, y: losses.softmax_weighted_cross_entropy(
            s, y, class_weights=weights),
        "soft_truncated": losses.softmax_soft_truncated_cross_entropy,
    }
    for name, loss in by_name.items():
        got = _value_and_grad(loss, logits, labels)
        expected = _value_and_grad(loss, logits, labels.astype(np.int32))
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7, err_msg=f"{name} {dtype}")


def test_wide_integer_labels_do_not_wrap_into_range_when_cast():
    # Traced (the check of concrete labels would refuse them before any cast).
    logits, _ = _problem(23, batch=3)
    with enable_x64():
        labels = np.array([2, 2**32 + 1, -(2**40)], np.int64)  # int32 would wrap both
        values = jax.jit(lambda s, y: losses.softmax_weighted_cross_entropy(
            s, y, class_weights=ALPHA))(logits, labels)
        assert np.isfinite(values[0]) and np.all(np.isnan(values[1:]))
    big = np.array([1, 2**32 - 1, 2**31 + 3], np.uint32)  # -1 and -2**31 + 3 as int32
    values = jax.jit(losses.softmax_focal_loss)(logits, big)
    assert np.isfinite(values[0]) and np.all(np.isnan(values[1:]))
    with pytest.raises(ValueError, match="got 4294967295 at index"):
        losses.softmax_focal_loss(logits, big)


@pytest.mark.parametrize("name", INTEGER_LABEL_LOSSES)
def test_concrete_labels_outside_zero_to_k_are_refused_naming_the_label(name):
    # Negative ones too: optax would read -1 as class K - 1, a silent wrong answer when
    # -1 marks padding.
    loss = SOFTMAX_LOSSES[name]
    logits, labels = _problem(24)
    for bad_label in (-1, -NUM_CLASSES, NUM_CLASSES):
        bad = labels.copy()
        bad[2] = bad_label
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, {NUM_CLASSES}\).*"
                                             rf"got {bad_label} at index \(2,\)"):
            loss(logits, bad)
    # Padding excluded by `where` is not checked.
    bad = labels.copy()
    bad[2] = -1
    keep = np.arange(len(labels)) != 2
    np.testing.assert_allclose(loss(logits, bad, where=keep)[keep],
                               loss(logits, labels)[keep], rtol=1e-6)


@pytest.mark.parametrize("name", INTEGER_LABEL_LOSSES)
def test_traced_labels_outside_zero_to_k_give_nan_value_and_gradient(name):
    # Optax gives NaN for a label >= K but a finite gradient (p, without e_y), and reads
    # a negative label as y + K; here value and gradient are NaN, for that example only.
    loss = SOFTMAX_LOSSES[name]
    logits, labels = _problem(25)
    bad = labels.copy()
    bad[[1, 3, 4]] = [NUM_CLASSES, -1, -NUM_CLASSES - 1]
    rows = np.isin(np.arange(6), [1, 3, 4])
    for kwargs in ({}, {"where": np.ones(logits.shape, bool)}):
        @jax.jit
        def traced(s, y, kwargs=kwargs):
            value = loss(s, y, **kwargs)
            return value, jax.grad(lambda t: loss(t, y, **kwargs).sum())(s)

        values, grads = map(np.asarray, traced(logits, bad))
        good_values, good_grads = map(np.asarray, traced(logits, labels))
        assert np.all(np.isnan(values[rows])), name
        assert np.all(np.isnan(grads[rows])), name
        np.testing.assert_allclose(values[~rows], good_values[~rows], rtol=1e-6)
        np.testing.assert_allclose(grads[~rows], good_grads[~rows], atol=1e-7)
        jvp = jax.jit(lambda s, y, kwargs=kwargs: jax.jvp(
            lambda t: loss(t, y, **kwargs), (s,), (jnp.ones_like(s),))[1])(logits, bad)
        assert np.all(np.isnan(np.asarray(jvp)[rows])), name


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", list(SOFTMAX_LOSSES))
@pytest.mark.slow
def test_nan_and_inf_logits_give_non_finite_losses_for_their_example(name, masked):
    loss = SOFTMAX_LOSSES[name]
    logits, labels = _problem(26)
    other = (labels + 1) % NUM_CLASSES  # not the target: a negative of the multi-label loss
    dirty = logits.copy()
    dirty[0, other[0]] = np.nan
    dirty[1, labels[1]] = np.nan
    dirty[2, other[2]] = np.inf
    dirty[3, labels[3]] = np.inf
    kwargs = {"where": np.ones(logits.shape, bool)} if masked else {}
    values, grads = _value_and_grad(loss, dirty, labels, **kwargs)
    clean_values, clean_grads = _value_and_grad(loss, logits, labels, **kwargs)
    assert not np.any(np.isfinite(values[:4])), (name, values)
    assert not np.any(np.all(np.isfinite(grads[:4]), axis=-1)), name
    np.testing.assert_allclose(values[4:], clean_values[4:], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(grads[4:], clean_grads[4:], atol=1e-7, err_msg=name)
    # A -inf score is a class of probability 0, as if masked, except in the multi-label
    # loss and in Su's soft truncation, whose weight softmax(-K s) gives that class all
    # its mass (inf - inf in its logsumexp: NaN, where the limit would be 0).
    if name not in ("multilabel", "soft_truncated"):
        minus_inf = logits.copy()
        minus_inf[:, 0] = -np.inf
        keep = np.ones(logits.shape, bool)
        keep[:, 0] = False
        rows = labels != 0
        got = _value_and_grad(loss, minus_inf, labels, **kwargs)
        expected = _value_and_grad(loss, logits, labels, where=keep)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g[rows], e[rows], rtol=1e-6, atol=1e-7, err_msg=name)


def test_nan_logits_under_the_mask_are_left_out():
    logits, labels = _problem(27)
    mask = np.ones(logits.shape, bool)
    mask[0, (labels[0] + 1) % NUM_CLASSES] = False
    dirty = logits.copy()
    dirty[~mask] = np.nan
    for name, loss in SOFTMAX_LOSSES.items():
        got = _value_and_grad(loss, dirty, labels, where=mask)
        expected = _value_and_grad(loss, logits, labels, where=mask)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("name", list(SOFTMAX_LOSSES))
def test_empty_batch_gives_empty_losses(name):
    loss = SOFTMAX_LOSSES[name]
    logits, labels = np.zeros((0, NUM_CLASSES), np.float32), np.zeros((0,), np.int32)
    for kwargs in ({}, {"where": np.ones(0, bool)}, {"where": np.ones((0, NUM_CLASSES), bool)}):
        values, grads = jax.jit(lambda s, kwargs=kwargs: (
            loss(s, labels, **kwargs),
            jax.grad(lambda t: loss(t, labels, **kwargs).sum())(s)))(logits)
        assert values.shape == (0,) and values.dtype == jnp.float32, name
        assert grads.shape == (0, NUM_CLASSES), name
    grid = np.zeros((3, 0, NUM_CLASSES), np.float32)  # an empty inner batch axis
    assert loss(grid, np.zeros((3, 0), np.int32)).shape == (3, 0)
    empty = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    assert empty.shape == (0,)


@pytest.mark.parametrize("name", list(SOFTMAX_LOSSES))
def test_float64_under_x64_and_bfloat16_inputs_keep_their_dtype(name):
    loss = SOFTMAX_LOSSES[name]
    logits, labels = _problem(28)
    plain = PLAIN_LOSSES[name]
    with enable_x64():
        s = jnp.asarray(logits, jnp.float64)
        values, grads = jax.jit(lambda t: (loss(t, labels), jax.grad(
            lambda u: loss(u, labels).sum())(t)))(s)
        assert values.dtype == grads.dtype == jnp.float64
        expected = _value_and_grad(lambda t, y: plain(t, y, None), s, labels)
        np.testing.assert_allclose(values, expected[0], rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(grads, expected[1], rtol=1e-10, atol=1e-14, err_msg=name)
    half = jnp.asarray(logits, jnp.bfloat16)
    values = loss(half, labels)
    assert values.dtype == jnp.bfloat16
    # Computed in float32 from the rounded logits, then rounded once.
    rounded = np.asarray(half, np.float32)
    np.testing.assert_allclose(np.asarray(values, np.float32), loss(rounded, labels),
                               rtol=8e-3, atol=1e-6, err_msg=name)
