"""Softmax losses, logit adjustment and metrics of `jaxtricks.losses` (spec 1, 2).

Every formula is checked against a direct float64 numpy computation, optax's own
function, or an identity of the spec (gamma = 0, tau = 0, uniform priors, ...).
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
    "weighted": lambda s, y, **kw: losses.weighted_softmax_cross_entropy(
        s, y, class_weights=ALPHA, **kw),
    "logit_adjusted": lambda s, y, **kw: losses.logit_adjusted_softmax_cross_entropy(
        s, y, class_priors=PRIORS, tau=1.5, **kw),
    "smoothed_accuracy": losses.smoothed_accuracy_loss,
    "hard_truncated": lambda s, y, **kw: losses.softmax_hard_truncated_cross_entropy(
        s, y, margin=0.6, **kw),
    "soft_truncated": lambda s, y, **kw: losses.softmax_soft_truncated_cross_entropy(
        s, y, steepness=2.0, **kw),
    "multilabel": lambda s, y, **kw: losses.multilabel_softmax_cross_entropy(
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
    # Spec 1.1: grad = w (p - e_y), w = (1-p)^g - g p (1-p)^(g-1) log p.
    logits, labels = _problem(2)
    log_probs = _np_log_softmax(logits)
    p = np.exp(log_probs)
    p_y = _np_target(p, labels)
    w = (1 - p_y) ** gamma - gamma * p_y * (1 - p_y) ** (gamma - 1) * np.log(p_y)
    expected = w[:, None] * (p - np.eye(NUM_CLASSES)[labels])
    got = jax.grad(lambda s: losses.softmax_focal_loss(s, labels, gamma=gamma).sum())(logits)
    np.testing.assert_allclose(got, expected, atol=2e-6)


@pytest.mark.parametrize("name", list(SOFTMAX_LOSSES))
def test_gradients_pass_check_grads_in_float64(name):
    loss = SOFTMAX_LOSSES[name]
    logits, labels = _problem(3)
    with enable_x64():
        check_grads(jax.jit(lambda s: loss(s, labels)), (jnp.asarray(logits, jnp.float64),),
                    order=1, modes=["rev"])


def test_focal_supports_reverse_over_reverse_differentiation():
    logits, labels = _problem(3, batch=1, num_classes=3)
    with enable_x64():
        check_grads(jax.jit(lambda s: losses.softmax_focal_loss(s, labels, gamma=1.5)),
                    (jnp.asarray(logits, jnp.float64),), order=2, modes=["rev"])


def test_grad_of_focal_gamma_matches_finite_differences():
    logits, labels = _problem(4)
    with enable_x64():
        check_grads(lambda g: losses.softmax_focal_loss(jnp.asarray(logits, jnp.float64),
                                                       labels, gamma=g), (1.5,), order=1,
                    modes=["rev"])


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
    got = losses.weighted_softmax_cross_entropy(logits, labels, class_weights=ALPHA)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_logit_adjusted_loss_matches_both_forms_of_eq_10():
    logits, labels = _problem(9)
    tau = 1.5
    adjusted = logits + tau * np.log(PRIORS)
    first = -_np_target(_np_log_softmax(adjusted), labels)
    ratio = (PRIORS[None, :] / PRIORS[labels][:, None]) ** tau
    diff = np.exp(logits - _np_target(logits.astype(np.float64), labels)[:, None])
    others = np.eye(NUM_CLASSES)[labels] == 0
    second = np.log1p((ratio * diff * others).sum(-1))
    np.testing.assert_allclose(first, second, rtol=1e-10)
    got = losses.logit_adjusted_softmax_cross_entropy(logits, labels, class_priors=PRIORS,
                                                      tau=tau)
    np.testing.assert_allclose(got, first, rtol=2e-6)


def test_logit_adjusted_loss_reduces_to_cross_entropy_and_accepts_counts():
    logits, labels = _problem(10)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    la = losses.logit_adjusted_softmax_cross_entropy
    np.testing.assert_allclose(la(logits, labels, class_priors=PRIORS, tau=0.0), ce, atol=1e-6)
    np.testing.assert_allclose(la(logits, labels, class_priors=np.full(5, 7.0)), ce, atol=1e-6)
    np.testing.assert_allclose(la(logits, labels, class_priors=PRIORS * 1234.0),
                               la(logits, labels, class_priors=PRIORS), atol=1e-6)


def test_post_hoc_adjustment_recovers_the_unadjusted_argmax():
    logits, _ = _problem(11, batch=50)
    tau = 0.7
    trained = logits + tau * np.log(PRIORS)  # what an LA-trained model g = f + tau log pi gives
    adjusted = losses.adjust_logits(trained, class_priors=PRIORS * 10, tau=tau)
    np.testing.assert_allclose(adjusted, logits, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(adjusted, -1), np.argmax(logits, -1))
    transposed = losses.adjust_logits(trained.T, class_priors=PRIORS, tau=tau, axis=0)
    np.testing.assert_allclose(transposed, logits.T, atol=1e-5)


def test_class_priors_are_smoothed_frequencies():
    labels = np.array([[0, 0, 1], [3, 0, 1]])
    expected = (np.bincount(labels.ravel(), minlength=5) + 0.5) / (6 + 5 * 0.5)
    np.testing.assert_allclose(losses.class_priors(labels, 5, smoothing=0.5), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(jax.jit(losses.class_priors, static_argnums=1)(labels, 5),
                               np.bincount(labels.ravel(), minlength=5) / 6, rtol=1e-6)


def _np_balanced_accuracy(predictions, labels):
    recalls = [np.mean(predictions[labels == c] == c) for c in np.unique(labels)]
    return np.mean(recalls)


def test_balanced_accuracy_is_the_mean_recall_over_present_classes():
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 4, 40)  # class 4 of 5 is absent: skipped
    logits = rng.standard_normal((40, 5)) + 2 * np.eye(5)[labels]
    expected = _np_balanced_accuracy(logits.argmax(-1), labels)
    np.testing.assert_allclose(losses.balanced_accuracy(logits, labels, 5), expected, rtol=1e-6)
    np.testing.assert_allclose(
        jax.jit(losses.balanced_accuracy, static_argnums=2)(logits.argmax(-1), labels, 5),
        expected, rtol=1e-6)
    # Invariant to class sizes: repeating class 0's examples changes nothing.
    extra = labels == 0
    bigger = losses.balanced_accuracy(np.concatenate([logits, logits[extra]]),
                                      np.concatenate([labels, labels[extra]]), 5)
    np.testing.assert_allclose(bigger, expected, rtol=1e-6)
    keep = np.arange(40) % 3 != 0
    np.testing.assert_allclose(
        losses.balanced_accuracy(logits, labels, 5, where=keep),
        _np_balanced_accuracy(logits.argmax(-1)[keep], labels[keep]), rtol=1e-6)


def test_smoothed_accuracy_loss_is_minus_the_target_probability():
    logits, labels = _problem(13)
    expected = -np.exp(_np_target(_np_log_softmax(logits), labels))
    np.testing.assert_allclose(losses.smoothed_accuracy_loss(logits, labels), expected,
                               rtol=1e-6)


def test_truncated_losses_match_their_definitions():
    logits, labels = _problem(14, batch=20)
    log_p = _np_target(_np_log_softmax(logits), labels)
    hard = losses.softmax_hard_truncated_cross_entropy(logits, labels, margin=0.6)
    np.testing.assert_allclose(hard, np.where(np.exp(log_p) <= 0.6, -log_p, 0.0), rtol=1e-6)
    rivals = np.where(np.eye(NUM_CLASSES)[labels] == 1, -np.inf, logits).max(-1)
    lead = _np_target(logits, labels) - rivals
    soft = losses.softmax_soft_truncated_cross_entropy(logits, labels, steepness=3.0)
    np.testing.assert_allclose(soft, -log_p / (1 + np.exp(3.0 * lead)), rtol=2e-6)


def test_two_class_truncations_equal_the_binary_ones():
    rng = np.random.default_rng(15)
    logits = rng.standard_normal((30, 2)).astype(np.float32) * 3
    labels = rng.integers(0, 2, 30)
    z = logits[:, 1] - logits[:, 0]
    np.testing.assert_allclose(
        losses.softmax_hard_truncated_cross_entropy(logits, labels, margin=0.7),
        losses.hard_truncated_cross_entropy(z, labels, margin=0.7), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        losses.softmax_soft_truncated_cross_entropy(logits, labels, steepness=2.5),
        losses.soft_truncated_cross_entropy(z, labels, steepness=2.5), rtol=1e-5, atol=1e-6)


def test_multilabel_loss_matches_formula_and_its_special_cases():
    rng = np.random.default_rng(16)
    logits = 3 * rng.standard_normal((8, 6))
    labels = rng.random((8, 6)) < 0.3
    labels[0] = False  # no positive: only the negative term
    labels[1] = True  # no negative
    neg = np.log1p(np.where(labels, 0.0, np.exp(logits)).sum(-1))
    pos = np.log1p(np.where(labels, np.exp(-logits), 0.0).sum(-1))
    got = losses.multilabel_softmax_cross_entropy(logits.astype(np.float32), labels)
    np.testing.assert_allclose(got, neg + pos, rtol=1e-5)
    # One class: sigmoid binary cross-entropy.
    np.testing.assert_allclose(
        losses.multilabel_softmax_cross_entropy(logits[:, :1], labels[:, :1]),
        optax.sigmoid_binary_cross_entropy(logits[:, 0], labels[:, 0].astype(np.float32)),
        rtol=1e-5)
    # bert4keras' -1e12 masking overflows in bfloat16; ours stays finite.
    extreme = jnp.asarray(np.where(labels, -1e4, 1e4), jnp.bfloat16)
    assert np.all(np.isfinite(np.asarray(
        losses.multilabel_softmax_cross_entropy(extreme, labels), np.float32)))


def test_multilabel_gradient_is_the_closed_form_for_multi_hot_labels_and_masks():
    # Spec 2.5: d/ds_i = e^{s_i} / (1 + sum_neg e^s) for a negative i and
    # -e^{-s_j} / (1 + sum_pos e^{-s}) for a positive j; masked classes get 0.
    rng = np.random.default_rng(17)
    logits = 3 * rng.standard_normal((8, 6))
    labels = np.where(rng.random((8, 6)) < 0.4, rng.choice([1.0, 2.0, -0.5], (8, 6)), 0.0)
    mask = rng.random((8, 6)) < 0.8
    positive, negative = (labels != 0) & mask, (labels == 0) & mask
    exp_neg = np.where(negative, np.exp(logits), 0.0)
    exp_pos = np.where(positive, np.exp(-logits), 0.0)
    expected_loss = np.log1p(exp_neg.sum(-1)) + np.log1p(exp_pos.sum(-1))
    expected_grad = (exp_neg / (1 + exp_neg.sum(-1, keepdims=True))
                     - exp_pos / (1 + exp_pos.sum(-1, keepdims=True)))

    def loss(s):
        return losses.multilabel_softmax_cross_entropy(s, labels, where=mask)

    np.testing.assert_allclose(loss(logits.astype(np.float32)), expected_loss, rtol=1e-5)
    np.testing.assert_allclose(jax.grad(lambda s: loss(s).sum())(logits.astype(np.float32)),
                               expected_grad, atol=1e-6)
    with enable_x64():
        check_grads(jax.jit(loss), (jnp.asarray(logits, jnp.float64),), order=2,
                    modes=["rev"])


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
    la = losses.logit_adjusted_softmax_cross_entropy
    _raises(r"labels must have shape \(6,\)", focal, logits, labels[:4])
    _raises("labels must be integers", focal, logits, labels.astype(np.float32))
    _raises("gamma must lie in", focal, logits, labels, gamma=-0.5)
    _raises(r"alpha must be a scalar or have shape \(5,\)", focal, logits, labels, alpha=[1., 2.])
    _raises("where must have shape", focal, logits, labels, where=np.ones(3, bool))
    _raises("logits must have a floating dtype", focal, labels[:, None], labels)
    _raises("class_weights must lie in", losses.weighted_softmax_cross_entropy, logits, labels,
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
    _raises("logits_or_predictions must have shape", losses.balanced_accuracy, logits, labels, 4)
    _raises(r"labels must have shape \(6, 5\)", losses.multilabel_softmax_cross_entropy,
            logits, labels)
    _raises("axis must", focal, logits, labels, axis=2)


def test_traced_hyper_parameters_skip_value_checks_and_still_work():
    logits, labels = _problem(19)
    gammas = jnp.array([0.0, 1.0, 2.0])
    per_gamma = jax.vmap(lambda g: losses.softmax_focal_loss(logits, labels, gamma=g))(gammas)
    for g, row in zip(gammas, per_gamma, strict=True):
        np.testing.assert_allclose(row, _np_focal(logits, labels, float(g)), rtol=2e-5)
