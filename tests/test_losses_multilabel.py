"""Su's multi-label softmax cross-entropy (`jaxtricks.losses._multilabel`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64
from jax.test_util import check_grads

from jaxtricks import losses


def test_multilabel_loss_matches_formula_and_its_special_cases():
    rng = np.random.default_rng(16)
    logits = 3 * rng.standard_normal((8, 6))
    labels = rng.random((8, 6)) < 0.3
    labels[0] = False  # no positive: only the negative term
    labels[1] = True  # no negative
    neg = np.log1p(np.where(labels, 0.0, np.exp(logits)).sum(-1))
    pos = np.log1p(np.where(labels, np.exp(-logits), 0.0).sum(-1))
    got = losses.softmax_multilabel_cross_entropy(logits.astype(np.float32), labels)
    np.testing.assert_allclose(got, neg + pos, rtol=1e-5)
    # One class: sigmoid binary cross-entropy.
    one_class = logits[:, :1].astype(np.float32)
    np.testing.assert_allclose(
        losses.softmax_multilabel_cross_entropy(one_class, labels[:, :1]),
        optax.sigmoid_binary_cross_entropy(one_class[:, 0], labels[:, 0].astype(np.float32)),
        rtol=1e-5)
    # bert4keras' -1e12 masking overflows in bfloat16; ours stays finite.
    extreme = jnp.asarray(np.where(labels, -1e4, 1e4), jnp.bfloat16)
    assert np.all(np.isfinite(np.asarray(
        losses.softmax_multilabel_cross_entropy(extreme, labels), np.float32)))


@pytest.mark.slow
def test_multilabel_gradient_is_the_closed_form_for_multi_hot_labels_and_masks():
    # d/ds_i = e^{s_i} / (1 + sum_neg e^s) for a negative i and
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
        return losses.softmax_multilabel_cross_entropy(s, labels, where=mask)

    np.testing.assert_allclose(loss(logits.astype(np.float32)), expected_loss, rtol=1e-5)
    np.testing.assert_allclose(jax.grad(lambda s: loss(s).sum())(logits.astype(np.float32)),
                               expected_grad, atol=1e-6)
    with enable_x64():
        check_grads(jax.jit(loss), (jnp.asarray(logits, jnp.float64),), order=2,
                    modes=["fwd", "rev"])
