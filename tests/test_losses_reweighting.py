"""Binary losses, smoothed F1 and `cross_entropy_weights` of `jaxtricks.losses` (spec 1.1-1.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64
from jax.test_util import check_grads

from jaxtricks import losses


def _binary_problem(seed=0, size=24):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal(size)).astype(np.float32)
    labels = (rng.random(size) < 0.3).astype(np.float32)
    return logits, labels


def _np_sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


BINARY_LOSSES = {
    "hard_truncated": lambda z, y: losses.hard_truncated_cross_entropy(z, y, margin=0.6),
    "soft_truncated": lambda z, y: losses.soft_truncated_cross_entropy(z, y, steepness=3.0),
    "smoothed_accuracy": losses.binary_smoothed_accuracy_loss,
    "f1_weighted": losses.binary_f1_weighted_cross_entropy,
    "smoothed_f1": losses.binary_smoothed_f1_loss,
}


def test_soft_truncation_at_steepness_one_is_optax_focal_with_gamma_one():
    logits, labels = _binary_problem(1)

    def both(z):
        return (losses.soft_truncated_cross_entropy(z, labels, steepness=1.0),
                optax.sigmoid_focal_loss(z, labels, gamma=1.0))

    ours, theirs = jax.jit(both)(logits)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    grads = jax.jit(jax.jacrev(lambda z: [x.sum() for x in both(z)]))(logits)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_hard_truncation_matches_the_step_function_definition():
    logits, labels = _binary_problem(2, size=200)
    p, m = _np_sigmoid(logits), 0.6
    done = ((labels == 1) & (p > m)) | ((labels == 0) & (p < 1 - m))
    ce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    got = losses.hard_truncated_cross_entropy(logits, labels, margin=m)
    np.testing.assert_allclose(got, np.where(done, 0.0, ce), rtol=2e-5, atol=1e-6)
    grads = jax.grad(lambda z: losses.hard_truncated_cross_entropy(z, labels, margin=m).sum())(
        logits)
    np.testing.assert_array_equal(np.asarray(grads)[done], 0.0)
    np.testing.assert_allclose(np.asarray(grads)[~done], (p - labels)[~done], rtol=2e-5,
                               atol=1e-6)


def test_binary_smoothed_accuracy_is_minus_the_probability_of_the_label():
    logits, labels = _binary_problem(3)
    p = _np_sigmoid(logits)
    np.testing.assert_allclose(losses.binary_smoothed_accuracy_loss(logits, labels),
                               -(labels * p + (1 - labels) * (1 - p)), rtol=1e-6)


def test_binary_smoothed_f1_is_optax_binary_dice_over_the_batch_with_no_smoothing():
    logits, labels = _binary_problem(4)
    p = _np_sigmoid(logits)
    expected = 1 - 2 * np.sum(p * labels) / np.sum(p + labels)
    np.testing.assert_allclose(losses.binary_smoothed_f1_loss(logits, labels), expected, rtol=1e-5)
    dice = optax.losses.binary_dice_loss(logits[None], labels[None], smooth=0.0)
    np.testing.assert_allclose(losses.binary_smoothed_f1_loss(logits, labels), dice[0], rtol=1e-5)


def test_smoothed_f1_gradient_is_the_spec_reweighted_cross_entropy():
    # Spec 1.4: w_i = (2/T)(1 - F1/2) p_i (positives), (2/T)(F1/2)(1 - p_i) (negatives).
    logits, labels = _binary_problem(5)
    p = _np_sigmoid(logits)
    total = np.sum(p + labels)
    f1 = 2 * np.sum(p * labels) / total
    expected = np.where(labels == 1, (2 / total) * (1 - f1 / 2) * p,
                        (2 / total) * (f1 / 2) * (1 - p))
    got = losses.cross_entropy_weights(losses.binary_smoothed_f1_loss, logits, labels,
                                       kind="sigmoid")
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_f1_weighted_cross_entropy_weighs_positives_by_two_minus_f1_over_f1():
    logits, labels = _binary_problem(6)
    p = _np_sigmoid(logits)
    half_f1 = np.sum(p * labels) / np.sum(p + labels)
    expected = -(1 - half_f1) * labels * np.log(p) - half_f1 * (1 - labels) * np.log(1 - p)
    got = losses.binary_f1_weighted_cross_entropy(logits, labels)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7)
    weights = losses.cross_entropy_weights(losses.binary_f1_weighted_cross_entropy, logits,
                                           labels, kind="sigmoid")  # F1 under stop-gradient
    np.testing.assert_allclose(weights, np.where(labels == 1, 1 - half_f1, half_f1), rtol=1e-4)


def _softmax_problem(seed, batch=30, num_classes=4):
    rng = np.random.default_rng(seed)
    labels = np.arange(batch) % num_classes
    logits = (2 * rng.standard_normal((batch, num_classes))).astype(np.float32)
    return logits, labels


def test_macro_smoothed_f1_is_optax_dice_over_the_batch_and_micro_is_smoothed_accuracy():
    logits, labels = _softmax_problem(7)
    one_hot = np.eye(4)[labels]
    dice = optax.losses.dice_loss(logits[None], one_hot[None], smooth=0.0)
    np.testing.assert_allclose(losses.smoothed_f1_loss(logits, labels), dice[0], rtol=1e-5)
    micro = losses.smoothed_f1_loss(logits, labels, average="micro")
    np.testing.assert_allclose(micro, 1 + np.mean(losses.smoothed_accuracy_loss(logits, labels)),
                               rtol=1e-5)


def test_smoothed_f1_skips_classes_with_zero_support_and_is_safe_at_zero_over_zero():
    logits, labels = _softmax_problem(8)
    labels = np.where(labels == 3, 0, labels)
    mask = np.ones_like(logits, bool)
    mask[:, 3] = False  # class 3: no label, no probability -> T_3 = 0, skipped
    p = np.exp(logits[:, :3]) / np.exp(logits[:, :3]).sum(-1, keepdims=True)
    one_hot = np.eye(3)[labels]
    f1 = 2 * (p * one_hot).sum(0) / (p + one_hot).sum(0)
    fn = lambda s: losses.smoothed_f1_loss(s, labels, where=mask)  # noqa: E731
    np.testing.assert_allclose(fn(logits), 1 - f1.mean(), rtol=1e-5)
    assert np.all(np.isfinite(jax.grad(fn)(logits)))
    empty = losses.binary_smoothed_f1_loss(np.full(4, -1e4, np.float32), np.zeros(4))
    assert empty == 0.0
    assert np.all(np.isfinite(jax.grad(losses.binary_smoothed_f1_loss)(
        np.full(4, -1e4, np.float32), np.zeros(4))))


@pytest.mark.parametrize("name", list(BINARY_LOSSES))
def test_binary_losses_are_finite_in_extremes_and_pass_check_grads(name):
    loss = BINARY_LOSSES[name]
    logits, labels = _binary_problem(9, size=8)
    extreme = np.where(np.arange(8) % 2 == 0, 1e4, -1e4).astype(np.float32)

    @jax.jit
    def values_and_grads(z):
        return loss(z, labels), jax.grad(lambda t: loss(t, labels).sum())(z)

    for dtype in (jnp.float32, jnp.bfloat16):
        values, grads = values_and_grads(jnp.asarray(extreme, dtype))
        assert values.dtype == dtype
        assert np.all(np.isfinite(np.asarray(values, np.float32)))
        assert np.all(np.isfinite(np.asarray(grads, np.float32)))
    batched = jax.vmap(lambda z: loss(z, labels))(np.stack([logits, -logits]))
    np.testing.assert_allclose(batched[1], loss(-logits, labels), rtol=1e-5, atol=1e-7)
    # Finite differences cannot check the piecewise hard truncation, nor the F1-weighted
    # loss, whose F1 is under stop-gradient (its weights are checked above).
    if name not in ("hard_truncated", "f1_weighted"):
        with enable_x64():
            check_grads(jax.jit(lambda z: loss(z, labels)), (jnp.asarray(logits, jnp.float64),),
                        order=1, modes=["rev"])


def test_cross_entropy_weights_recover_the_closed_forms_of_spec_1_1():
    p = np.linspace(0.01, 0.99, 40)
    logits = np.stack([np.log(p), np.log1p(-p)], -1)
    labels = np.zeros(40, np.int32)
    with enable_x64():
        def weights(fn):
            return losses.cross_entropy_weights(fn, jnp.asarray(logits), labels)

        gamma = 0.5
        got = jax.jit(lambda: (
            weights(lambda s, y: losses.softmax_focal_loss(s, y, gamma=gamma)),
            weights(optax.softmax_cross_entropy_with_integer_labels),
            weights(losses.smoothed_accuracy_loss),
            weights(lambda s, y: losses.softmax_hard_truncated_cross_entropy(s, y, margin=0.6)),
        ))()
    focal = (1 - p) ** gamma - gamma * p * (1 - p) ** (gamma - 1) * np.log(p)
    np.testing.assert_allclose(got[0], focal, rtol=1e-9)
    np.testing.assert_allclose(got[1], 1.0, rtol=1e-9)
    np.testing.assert_allclose(got[2], p, rtol=1e-9)
    np.testing.assert_allclose(got[3], (p <= 0.6).astype(float), atol=1e-12)


def test_cross_entropy_weights_project_other_losses_and_flag_vanishing_gradients():
    rng = np.random.default_rng(10)
    logits = rng.standard_normal((5, 4))
    labels = np.array([0, 1, 2, 3, 0])
    logits[4] = [1e4, 0, 0, 0]  # p_y = 1: the cross-entropy gradient is 0
    priors = np.array([0.6, 0.2, 0.15, 0.05])

    def la(s, y):
        return losses.logit_adjusted_softmax_cross_entropy(s, y, class_priors=priors)

    with enable_x64():
        got = losses.cross_entropy_weights(la, jnp.asarray(logits), labels)
        grads = np.asarray(jax.grad(lambda s: la(s, labels).sum())(jnp.asarray(logits)))
    shifted = logits - logits.max(-1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    c = p - np.eye(4)[labels]
    expected = (grads * c).sum(-1)[:4] / (c * c).sum(-1)[:4]
    np.testing.assert_allclose(got[:4], expected, rtol=1e-9)
    assert np.isnan(got[4])
    with pytest.raises(ValueError, match="kind must be one of"):
        losses.cross_entropy_weights(la, logits, labels, kind="tanh")


def test_binary_bad_arguments_raise_value_errors():
    logits, labels = _binary_problem(11)
    for margin in (0.0, 1.0):
        with pytest.raises(ValueError, match="margin must lie in"):
            losses.hard_truncated_cross_entropy(logits, labels, margin=margin)
    with pytest.raises(ValueError, match="steepness must lie in"):
        losses.soft_truncated_cross_entropy(logits, labels, steepness=-2.0)
    with pytest.raises(ValueError, match=r"labels must have shape \(24,\)"):
        losses.binary_smoothed_f1_loss(logits, labels[:3])
    with pytest.raises(ValueError, match="average must be one of"):
        losses.smoothed_f1_loss(logits.reshape(6, 4), np.zeros(6, int), average="weighted")


def check_transforms(fn, x, *, finite_differences=True, rtol=1e-9):
    """Checks `fn` (one float array -> array, called under enable_x64) in every mode.

    jvp, jacfwd and linearize agree with jacrev, grad of jax.checkpoint with grad, vmap
    and jvp inside lax.scan with direct calls; jax.hessian agrees with central
    differences of the gradient (`finite_differences`, which also checks the jvp) or else
    with reverse-over-reverse. All in one jit, so that the test compiles once.
    """
    x = jnp.asarray(x)
    tangent = jnp.cos(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape)

    def scalar(t):
        return jnp.sum(fn(t) ** 2)

    @jax.jit
    def results(x):
        value, derivative = jax.jvp(fn, (x,), (tangent,))
        step = 1e-5 * tangent
        _, scanned = jax.lax.scan(lambda c, t: (c, jax.jvp(fn, (t,), (tangent,))[1]), 0,
                                  jnp.stack([x, x]))
        return {
            "value": value, "direct": fn(x), "derivative": derivative,
            "linearized": jax.linearize(fn, x)[1](tangent), "scanned": scanned[1],
            "jacfwd": jax.jacfwd(fn)(x), "jacrev": jax.jacrev(fn)(x),
            "hessian": jax.hessian(scalar)(x),
            "grad": jax.grad(scalar)(x), "checkpointed": jax.grad(jax.checkpoint(scalar))(x),
            "vmapped": jax.vmap(fn)(jnp.stack([x, 0.5 * x]))[1], "halved": fn(0.5 * x),
        } | ({
            "difference": (fn(x + step) - fn(x - step)) / 2e-5,
            "grad_difference": (jax.grad(scalar)(x + step) - jax.grad(scalar)(x - step)) / 2e-5,
        } if finite_differences else {"rev_rev": jax.jacrev(jax.jacrev(scalar))(x)})

    got = results(x)
    close = {"rtol": rtol, "atol": rtol}
    for a, b in (("value", "direct"), ("jacfwd", "jacrev"), ("linearized", "derivative"),
                 ("scanned", "derivative"), ("checkpointed", "grad"), ("vmapped", "halved")):
        np.testing.assert_allclose(got[a], got[b], err_msg=f"{a} != {b}", **close)
    np.testing.assert_allclose(got["derivative"],
                               jnp.tensordot(got["jacrev"], tangent, x.ndim), **close)
    if finite_differences:
        np.testing.assert_allclose(got["difference"], got["derivative"], rtol=1e-6, atol=1e-8)
        hessian_tangent = jnp.tensordot(got["hessian"], tangent, x.ndim)
        np.testing.assert_allclose(got["grad_difference"], hessian_tangent, rtol=1e-6,
                                   atol=1e-8)
    else:
        np.testing.assert_allclose(got["hessian"], got["rev_rev"], **close)


SMOOTHED_F1 = {
    "macro": lambda s, y, **kw: losses.smoothed_f1_loss(s, y, **kw),
    "micro": lambda s, y, **kw: losses.smoothed_f1_loss(s, y, average="micro", **kw),
}


def _np_softmax(logits):
    logits = np.asarray(logits, np.float64)
    exps = np.exp(logits - logits.max(-1, keepdims=True))
    return exps / exps.sum(-1, keepdims=True)


def _np_macro_f1_loss(logits, labels, num_classes):
    p, one_hot = _np_softmax(logits), np.eye(num_classes)[labels]
    totals = (p + one_hot).sum(0)
    return 1 - np.mean(2 * (p * one_hot).sum(0) / totals)


@pytest.mark.parametrize(("average", "bad"), [("macro", np.nan), ("micro", np.inf)])
def test_smoothed_f1_is_nan_for_a_nan_or_inf_score_with_or_without_where(average, bad):
    loss = SMOOTHED_F1[average]
    logits, labels = _softmax_problem(12, batch=6)
    logits[2, 1] = bad
    for where in (None, np.ones(6, bool), np.ones((6, 4), bool)):
        value, grads = jax.jit(jax.value_and_grad(lambda s, w=where: loss(s, labels, where=w)))(
            logits)
        assert np.isnan(value)
        assert np.all(np.isnan(grads))
    # A NaN in an example that `where` leaves out changes nothing.
    keep = np.arange(6) != 2
    np.testing.assert_allclose(loss(logits, labels, where=keep),
                               loss(logits[keep], labels[keep]), rtol=1e-6)


def test_binary_f1_losses_are_nan_for_a_nan_logit_or_label_but_skip_masked_ones():
    logits, labels = _binary_problem(13, size=8)
    for z, y in ((np.where(np.arange(8) == 3, np.nan, logits), labels),
                 (logits, np.where(np.arange(8) == 5, np.nan, labels))):
        z = z.astype(np.float32)
        value, grads = jax.value_and_grad(losses.binary_smoothed_f1_loss)(z, y)
        assert np.isnan(value)
        assert np.all(np.isnan(grads))
        assert np.all(np.isnan(losses.binary_f1_weighted_cross_entropy(z, y)))
    bad = np.where(np.arange(8) == 3, np.nan, logits).astype(np.float32)
    keep = np.arange(8) != 3
    p = _np_sigmoid(logits[keep])
    expected = 1 - 2 * np.sum(p * labels[keep]) / np.sum(p + labels[keep])
    np.testing.assert_allclose(losses.binary_smoothed_f1_loss(bad, labels, where=keep),
                               expected, rtol=1e-5)
    weighted = losses.binary_f1_weighted_cross_entropy(bad, labels, where=keep)
    np.testing.assert_allclose(weighted[keep], losses.binary_f1_weighted_cross_entropy(
        logits[keep], labels[keep]), rtol=1e-6)
    assert weighted[3] == 0.0


@pytest.mark.parametrize("average", list(SMOOTHED_F1))
def test_f1_losses_of_an_empty_or_fully_masked_batch_are_zero_with_a_zero_gradient(average):
    loss = SMOOTHED_F1[average]
    assert loss(np.zeros((0, 4), np.float32), np.zeros(0, np.uint8)) == 0.0
    assert losses.binary_smoothed_f1_loss(np.zeros((0, 3), np.float32), np.zeros((0, 3))) == 0.0
    logits, labels = _softmax_problem(14, batch=6)
    for where in (np.zeros(6, bool), np.zeros((6, 4), bool)):
        value, grads = jax.value_and_grad(lambda s, w=where: loss(s, labels, where=w))(logits)
        assert value == 0.0
        np.testing.assert_array_equal(grads, 0.0)
    z, y = _binary_problem(15, size=8)
    value, grads = jax.value_and_grad(losses.binary_smoothed_f1_loss)(
        z, y, where=np.zeros(8, bool))
    assert value == 0.0
    np.testing.assert_array_equal(grads, 0.0)


def test_elementwise_losses_and_weights_of_an_empty_batch_are_empty():
    empty = np.zeros((0,), np.float32)
    for name, loss in BINARY_LOSSES.items():
        if name != "smoothed_f1":
            out = loss(empty, empty)
            assert out.shape == (0,) and out.dtype == np.float32, name
    weights = losses.cross_entropy_weights(losses.smoothed_accuracy_loss,
                                           np.zeros((0, 4), np.float32), np.zeros(0, np.int8))
    assert weights.shape == (0,)
    weights = losses.cross_entropy_weights(losses.binary_smoothed_f1_loss, empty, empty,
                                           kind="sigmoid")
    assert weights.shape == (0,)


def test_smoothed_f1_and_weights_reject_labels_out_of_range_and_give_nan_when_traced():
    logits, labels = _softmax_problem(16, batch=6)
    for bad in (4, -1, 200):
        wrong = labels.copy()
        wrong[3] = bad
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, 4\).*got {bad} at"):
            losses.smoothed_f1_loss(logits, wrong)
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, 4\).*got {bad} at"):
            losses.cross_entropy_weights(lambda s, y: jnp.sum(s), logits, wrong)
        value, grads = jax.jit(jax.value_and_grad(losses.smoothed_f1_loss), static_argnames=())(
            logits, wrong)
        assert np.isnan(value) and np.all(np.isnan(grads))
        weights = jax.jit(lambda s, y: losses.cross_entropy_weights(
            losses.smoothed_accuracy_loss, s, y))(logits, wrong)
        keep = np.arange(6) != 3
        assert np.isnan(weights[3])
        np.testing.assert_allclose(weights[keep], _np_softmax(logits)[keep, labels[keep]],
                                   rtol=1e-5)
    # Padding: a bad label in an example that `where` leaves out is not an error.
    wrong = labels.copy()
    wrong[3] = -1
    keep = np.arange(6) != 3
    expected = _np_macro_f1_loss(logits[keep], labels[keep], 4)
    np.testing.assert_allclose(losses.smoothed_f1_loss(logits, wrong, where=keep), expected,
                               rtol=1e-5)
    np.testing.assert_allclose(jax.jit(losses.smoothed_f1_loss)(logits, wrong, where=keep),
                               expected, rtol=1e-5)


@pytest.mark.parametrize(("dtype", "num_classes"), [(np.uint8, 300), (np.int8, 200)])
def test_smoothed_f1_and_weights_accept_labels_of_any_integer_dtype(dtype, num_classes):
    rng = np.random.default_rng(17)
    labels = np.array([0, 5, np.iinfo(dtype).max, 3, 5, 1], dtype)
    logits = rng.standard_normal((6, num_classes)).astype(np.float32)
    logits[:, (5 + 256) % num_classes] += 6.0  # where a wrapped uint8 one-hot would land

    @jax.jit
    def both(s, y):
        return (losses.smoothed_f1_loss(s, y),
                losses.cross_entropy_weights(losses.smoothed_accuracy_loss, s, y))

    loss, weights = both(logits, labels)
    expected = _np_macro_f1_loss(logits, labels.astype(np.int64), num_classes)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(weights, _np_softmax(logits)[np.arange(6), labels], rtol=1e-4)


def _np_binary_loss(name, z, y):
    z = np.asarray(z, np.float64)
    p = _np_sigmoid(z)
    ce_pos, ce_neg = -np.log(p), -np.log1p(-p)
    if name == "hard_truncated":
        done = ((y == 1) & (p > 0.6)) | ((y == 0) & (p < 0.4))
        return np.where(done, 0.0, y * ce_pos + (1 - y) * ce_neg)
    if name == "soft_truncated":
        return y * _np_sigmoid(-3 * z) * ce_pos + (1 - y) * _np_sigmoid(3 * z) * ce_neg
    if name == "smoothed_accuracy":
        return -(y * p + (1 - y) * (1 - p))
    half_f1 = np.sum(p * y) / np.sum(p + y)
    if name == "f1_weighted":
        return (1 - half_f1) * y * ce_pos + half_f1 * (1 - y) * ce_neg
    return 1 - 2 * half_f1


@pytest.mark.parametrize("name", list(BINARY_LOSSES))
def test_binary_losses_in_bfloat16_and_float64_match_float64_numpy(name):
    loss = BINARY_LOSSES[name]
    logits, labels = _binary_problem(18, size=8)
    rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float64)
    got = loss(jnp.asarray(logits, jnp.bfloat16), labels)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float64),
                               _np_binary_loss(name, rounded, labels), rtol=1e-2, atol=1e-2)
    with enable_x64():
        got = loss(jnp.asarray(logits, jnp.float64), labels)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, _np_binary_loss(name, logits, labels), rtol=1e-12)


def test_smoothed_f1_and_weights_in_bfloat16_and_float64():
    logits, labels = _softmax_problem(19, batch=6)
    one_hot = np.eye(4)[labels]

    @jax.jit
    def all_three(s, y):
        return (losses.smoothed_f1_loss(s, y), losses.smoothed_f1_loss(s, y, average="micro"),
                losses.cross_entropy_weights(losses.smoothed_accuracy_loss, s, y))

    def reference(s):
        p = _np_softmax(s)
        return (_np_macro_f1_loss(s, labels, 4), 1 - np.mean(np.sum(p * one_hot, -1)),
                p[np.arange(6), labels])

    half = jnp.asarray(logits, jnp.bfloat16)
    got = all_three(half, labels)
    assert [x.dtype for x in got] == [jnp.bfloat16, jnp.bfloat16, jnp.float32]
    for x, y in zip(got, reference(np.asarray(half, np.float64)), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), y, rtol=2e-2)
    with enable_x64():
        got = all_three(jnp.asarray(logits, jnp.float64), labels.astype(np.int64))
        assert all(x.dtype == jnp.float64 for x in got)
        for x, y in zip(got, reference(logits), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-10)


def test_binary_and_f1_losses_work_in_forward_mode_and_under_every_transformation():
    z, y = _binary_problem(20, size=8)
    logits, labels = _softmax_problem(21, batch=6)
    where = np.ones((6, 4), bool)
    where[1, 2] = False

    def stacked(names):  # one compilation for several losses
        return lambda t: jnp.concatenate([BINARY_LOSSES[n](t, y).ravel() for n in names])

    with enable_x64():
        # Finite differences cannot check the F1-weighted loss (F1 under stop-gradient).
        check_transforms(stacked(["hard_truncated", "soft_truncated", "smoothed_accuracy",
                                  "smoothed_f1"]), jnp.asarray(z, jnp.float64))
        check_transforms(stacked(["f1_weighted"]), jnp.asarray(z, jnp.float64),
                         finite_differences=False)
        check_transforms(lambda s: jnp.stack([
            losses.smoothed_f1_loss(s, labels, where=where),
            losses.smoothed_f1_loss(s, labels, average="micro")]),
            jnp.asarray(logits, jnp.float64))


def test_cross_entropy_weights_work_in_forward_mode_and_under_every_transformation():
    logits, labels = _softmax_problem(22, batch=6)
    z, y = _binary_problem(23, size=8)

    with enable_x64():  # forward over reverse mode: derivatives of gradients
        check_transforms(
            lambda s: losses.cross_entropy_weights(
                lambda t, u: losses.softmax_focal_loss(t, u, gamma=2.0), s, labels),
            jnp.asarray(logits, jnp.float64))

        def sigmoid_weights(t):
            return losses.cross_entropy_weights(losses.binary_smoothed_f1_loss, t, y,
                                                kind="sigmoid")

        z = jnp.asarray(z, jnp.float64)
        np.testing.assert_allclose(jax.jit(jax.jacfwd(sigmoid_weights))(z),
                                   jax.jit(jax.jacrev(sigmoid_weights))(z), rtol=1e-9,
                                   atol=1e-12)


def test_cross_entropy_weights_accept_tuple_axes_like_the_losses():
    logits, labels = _softmax_problem(24, batch=6)
    expected = losses.cross_entropy_weights(losses.smoothed_accuracy_loss, logits, labels)
    for axis in ((-1,), (1,)):
        got = losses.cross_entropy_weights(losses.smoothed_accuracy_loss, logits, labels,
                                           axis=axis)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    transposed = losses.cross_entropy_weights(
        lambda s, y: losses.smoothed_accuracy_loss(s, y, axis=0), logits.T, labels, axis=0)
    np.testing.assert_allclose(transposed, expected, rtol=1e-6)
    split = logits.reshape(6, 2, 2)  # classes over two axes, flattened in order

    def loss(s, y):
        return losses.smoothed_accuracy_loss(s, y, axis=(1, 2))

    got = losses.cross_entropy_weights(loss, split, labels, axis=(1, 2))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
