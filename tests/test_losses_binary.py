"""The binary (sigmoid) losses of `jaxtricks.losses` as a family.

Every binary loss (a row of `BINARY_LOSSES`) is checked in extremes, dtypes, empty
batches and every transformation; `check_transforms` is the shared checker.
"""

import jax
import jax.numpy as jnp
import numpy as np
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
    "hard_truncated": lambda z, y, **kw: losses.sigmoid_hard_truncated_cross_entropy(
        z, y, margin=0.6, **kw),
    "soft_truncated": lambda z, y, **kw: losses.sigmoid_soft_truncated_cross_entropy(
        z, y, steepness=3.0, **kw),
    "smoothed_accuracy": losses.sigmoid_smoothed_accuracy_loss,
    "f1_weighted": losses.sigmoid_f1_weighted_cross_entropy,
    "smoothed_f1": losses.sigmoid_smoothed_f1_loss,
}


def test_binary_smoothed_accuracy_is_minus_the_probability_of_the_label():
    logits, labels = _binary_problem(3)
    p = _np_sigmoid(logits)
    np.testing.assert_allclose(losses.sigmoid_smoothed_accuracy_loss(logits, labels),
                               -(labels * p + (1 - labels) * (1 - p)), rtol=1e-6)


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


def test_binary_bad_arguments_raise_value_errors():
    logits, labels = _binary_problem(11)
    for margin in (0.0, 1.0):
        with pytest.raises(ValueError, match="margin must lie in"):
            losses.sigmoid_hard_truncated_cross_entropy(logits, labels, margin=margin)
    with pytest.raises(ValueError, match="steepness must lie in"):
        losses.sigmoid_soft_truncated_cross_entropy(logits, labels, steepness=-2.0)
    with pytest.raises(ValueError, match=r"labels must have shape \(24,\)"):
        losses.sigmoid_smoothed_f1_loss(logits, labels[:3])
    with pytest.raises(ValueError, match="average must be one of"):
        losses.softmax_smoothed_f1_loss(logits.reshape(6, 4), np.zeros(6, int), average="weighted")


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


def test_elementwise_losses_and_weights_of_an_empty_batch_are_empty():
    empty = np.zeros((0,), np.float32)
    for name, loss in BINARY_LOSSES.items():
        if name != "smoothed_f1":
            out = loss(empty, empty)
            assert out.shape == (0,) and out.dtype == np.float32, name
    weights = losses.cross_entropy_weights(losses.softmax_smoothed_accuracy_loss,
                                           np.zeros((0, 4), np.float32), np.zeros(0, np.int8))
    assert weights.shape == (0,)
    weights = losses.cross_entropy_weights(losses.sigmoid_smoothed_f1_loss, empty, empty,
                                           kind="sigmoid", batch_level=True)
    assert weights.shape == (0,)


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


@pytest.mark.parametrize("name", list(BINARY_LOSSES))
@pytest.mark.slow
def test_every_binary_loss_takes_where_and_ignores_what_it_masks(name):
    loss = BINARY_LOSSES[name]
    logits, labels = _binary_problem(24, size=10)
    keep = np.arange(10) % 4 != 1
    dirty = np.where(keep, logits, np.nan).astype(np.float32)
    dirty_labels = np.where(keep, labels, np.nan)

    def masked(z):
        return loss(z, dirty_labels, where=keep)

    values, grads = masked(dirty), jax.grad(lambda z: jnp.sum(masked(z)))(dirty)
    expected = loss(logits[keep], labels[keep])
    expected_grads = jax.grad(lambda z: jnp.sum(loss(z, labels[keep])))(logits[keep])
    if values.ndim:  # elementwise: masked elements get 0
        np.testing.assert_allclose(values[keep], expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(values[~keep], 0.0)
    else:  # batch-level: masked elements are left out of the sums
        np.testing.assert_allclose(values, expected, rtol=1e-6)
    np.testing.assert_allclose(grads[keep], expected_grads, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(grads[~keep], 0.0)
    with pytest.raises(ValueError, match=r"where must have shape \(10,\)"):
        loss(logits, labels, where=keep[:4])


@pytest.mark.parametrize("name", BINARY_LOSSES)
@pytest.mark.parametrize("label", [-1.0, 2.0])
def test_labels_outside_zero_one_are_refused_unless_masked(name, label):
    # A padding marker (-1) was trained as a label: smoothed accuracy left [-1, 0].
    loss = BINARY_LOSSES[name]
    logits, labels = jnp.array([2.0, -1.0, 0.5]), jnp.array([label, 0.0, 1.0])
    with pytest.raises(ValueError, match="labels must lie in"):
        loss(logits, labels)
    where = jnp.array([False, True, True])
    np.testing.assert_allclose(loss(logits, labels, where=where),
                               loss(logits, labels.at[0].set(1.0), where=where))
