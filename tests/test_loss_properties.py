"""Property tests of the identities between the losses of `jaxtricks.losses`.

Each identity is checked on arrays drawn by hypothesis, against an independent
computation (optax's own loss, or numpy in float64), with and without `jax.jit`
(`chex.variants`). Shapes come from a short fixed list and every varying value
(hyper-parameters too) is an array argument, so the jitted function compiles once per
shape, not once per example. Examples are derandomised and no example database is
written, so CI sees the same examples on every run.

Tolerances (float32): logits are drawn in `[-30, 30]` and a shift adds up to 30 more,
so a logsumexp and the target subtraction each round at the scale of `|s| <= 60`, a few
ulps of 60 (60 * 2^-23 = 7e-6 each): `ATOL = 4e-5`; relative `RTOL = 1e-5` for the
larger losses. Identities that multiply a loss by a weight scale the tolerance with it.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxtricks import losses

RTOL, ATOL = 1e-5, 4e-5
# Derandomised, no `.hypothesis/` example database, no deadline (the first example of
# each shape compiles).
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
VARIANTS = chex.variants(with_jit=True, without_jit=True)


def identity(**strategies):
    """A property test, run with and without jit: `@identity(name=strategy, ...)`."""
    return lambda test: VARIANTS(PROPERTY(given(**strategies)(test)))

SHAPES = [(6, 2), (3, 5)]


def floats32(low, high):
    """Floats drawn in float32 between the float32 roundings of `low` and `high`."""
    return st.floats(float(np.float32(low)), float(np.float32(high)), width=32)


FLOATS = floats32(-30, 30)
TWO_CLASS_SHAPES = [(6, 2)]


@st.composite
def classification(draw, shapes=tuple(SHAPES)):
    """`(logits [n, K] float32, labels [n] int32)`, labels in `[0, K)`."""
    n, k = draw(st.sampled_from(shapes))
    logits = draw(hnp.arrays(np.float32, (n, k), elements=FLOATS))
    labels = draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, k - 1)))
    return logits, labels


def positive_vector(size, low=0.05, high=10.0):
    return hnp.arrays(np.float32, (size,), elements=floats32(low, high))


# The optax references, jitted: one compilation per shape rather than one per operation.
optax_ce = jax.jit(optax.softmax_cross_entropy_with_integer_labels)
optax_sigmoid_ce = jax.jit(optax.sigmoid_binary_cross_entropy)
optax_sigmoid_focal = jax.jit(lambda z, y, gamma: optax.sigmoid_focal_loss(z, y, gamma=gamma))


def ce64(logits, labels):
    """Softmax cross-entropy in numpy float64."""
    s = np.asarray(logits, np.float64)
    top = s.max(axis=-1)
    lse = top + np.log(np.exp(s - top[:, None]).sum(axis=-1))
    return lse - s[np.arange(len(s)), labels]


def close(got, want, scale=1.0):
    chex.assert_trees_all_close(got, want, rtol=RTOL, atol=ATOL * scale)


# Functions of arrays only, defined once: `jax.jit` of the same function compiles once
# per shape across examples.
def _focal(logits, labels, gamma, alpha):
    return losses.softmax_focal_loss(logits, labels, gamma=gamma, alpha=alpha)


def _focal_without_alpha(logits, labels, gamma):
    return losses.softmax_focal_loss(logits, labels, gamma=gamma)


def _weighted(logits, labels, class_weights):
    return losses.softmax_weighted_cross_entropy(logits, labels, class_weights=class_weights)


def _logit_adjusted(logits, labels, priors, tau):
    return losses.softmax_logit_adjusted_cross_entropy(logits, labels, class_priors=priors,
                                                       tau=tau)


def _logit_adjusted_via_adjust_logits(logits, labels, priors, tau):
    """Cross-entropy of `adjust_logits(s, tau=-tau) = s + tau log pi`."""
    return optax.softmax_cross_entropy_with_integer_labels(
        losses.adjust_logits(logits, class_priors=priors, tau=-tau), labels)


def _class_balanced_total(logits, labels):
    """`sum_i c_{y_i} CE_i` with `c = 1 / prior` of the batch's own labels."""
    priors = losses.class_priors(labels, logits.shape[-1])
    weights = jnp.where(priors > 0, 1.0 / jnp.where(priors > 0, priors, 1.0), 0.0)
    return jnp.sum(_weighted(logits, labels, weights))


def _softmax_losses(logits, labels, h, where=None):
    """Every per-example softmax loss with integer labels, hyper-parameters from `h`."""
    return {
        "focal": losses.softmax_focal_loss(logits, labels, gamma=h["gamma"],
                                           alpha=h["weights"], where=where),
        "weighted": losses.softmax_weighted_cross_entropy(
            logits, labels, class_weights=h["weights"], where=where),
        "smoothed_accuracy": losses.softmax_smoothed_accuracy_loss(logits, labels, where=where),
        "logit_adjusted": losses.softmax_logit_adjusted_cross_entropy(
            logits, labels, class_priors=h["weights"], tau=h["tau"], where=where),
        "soft_truncated": losses.softmax_soft_truncated_cross_entropy(
            logits, labels, steepness=h["steepness"], where=where),
    }


def _binary_losses(z, y, h, where=None):
    """Every elementwise binary loss."""
    return {
        "hard_truncated": losses.sigmoid_hard_truncated_cross_entropy(
            z, y, margin=h["margin"], where=where),
        "soft_truncated": losses.sigmoid_soft_truncated_cross_entropy(
            z, y, steepness=h["steepness"], where=where),
        "smoothed_accuracy": losses.sigmoid_smoothed_accuracy_loss(z, y, where=where),
    }


def _two_class_pairs(logits, labels, z, y, h):
    """`(softmax loss of [s0, s1], binary form of z = s1 - s0)` for each claimed pair."""
    return {
        "soft_truncated": (
            losses.softmax_soft_truncated_cross_entropy(logits, labels,
                                                        steepness=h["steepness"]),
            losses.sigmoid_soft_truncated_cross_entropy(z, y, steepness=h["steepness"])),
        "hard_truncated": (
            losses.softmax_hard_truncated_cross_entropy(logits, labels, margin=h["margin"]),
            losses.sigmoid_hard_truncated_cross_entropy(z, y, margin=h["margin"])),
        "smoothed_accuracy": (losses.softmax_smoothed_accuracy_loss(logits, labels),
                              losses.sigmoid_smoothed_accuracy_loss(z, y)),
        "focal": (losses.softmax_focal_loss(logits, labels, gamma=h["gamma"]),
                  optax.sigmoid_focal_loss(z, y, gamma=h["gamma"])),
    }


def _smoothed_accuracy(logits, labels):
    return losses.softmax_smoothed_accuracy_loss(logits, labels)


def _hard_truncated_softmax(logits, labels, margin):
    return losses.softmax_hard_truncated_cross_entropy(logits, labels, margin=margin)


def _soft_truncated_softmax(logits, labels, steepness):
    return losses.softmax_soft_truncated_cross_entropy(logits, labels, steepness=steepness)


def _soft_truncated_binary(z, y, steepness):
    return losses.sigmoid_soft_truncated_cross_entropy(z, y, steepness=steepness)


def _multilabel_one_class(z, y):
    return losses.softmax_multilabel_cross_entropy(z[..., None], y[..., None])


@st.composite
def hyper_parameters(draw, num_classes):
    """Arrays of hyper-parameters in the ranges the docstrings allow."""
    return {
        "gamma": np.float32(draw(floats32(0.0, 3.0))),
        "weights": draw(positive_vector(num_classes)),
        "tau": np.float32(draw(floats32(-2.0, 2.0))),
        "steepness": np.float32(draw(floats32(0.0, 2.0))),
        "margin": np.float32(draw(floats32(0.05, 0.95))),
    }


def _not_at_the_step(log_p, margin):
    """The step `theta(m - p_y)` is not decided by rounding (float32 `log p_y`)."""
    return bool(np.all(np.abs(log_p - np.log(np.float64(margin))) > 1e-3))


class TestLossIdentities(chex.TestCase):

    @identity(data=classification(), alpha=floats32(0.0, 5.0))
    def test_focal_with_gamma_0_is_optax_cross_entropy_times_alpha(self, data, alpha):
        logits, labels = data
        ce = optax_ce(logits, labels)
        close(self.variant(_focal_without_alpha)(logits, labels, np.float32(0.0)), ce)
        close(self.variant(_focal)(logits, labels, np.float32(0.0), np.float32(alpha)),
              alpha * ce, scale=max(alpha, 1.0))

    @identity(data=classification(), gamma=floats32(0.0, 3.0))
    def test_focal_is_cross_entropy_times_its_modulating_factor(self, data, gamma):
        logits, labels = data
        ce = ce64(logits, labels)
        want = (-np.expm1(-ce)) ** np.float64(gamma) * ce  # (1 - p_y)^gamma, p_y = e^-CE
        close(self.variant(_focal_without_alpha)(logits, labels, np.float32(gamma)),
              want.astype(np.float32))

    @identity(data=st.data())
    def test_focal_with_gamma_0_and_per_class_alpha_is_weighted_cross_entropy(self, data):
        logits, labels = data.draw(classification())
        alpha = data.draw(positive_vector(logits.shape[-1]))
        want = alpha[labels].astype(np.float64) * ce64(logits, labels)
        scale = float(alpha.max())
        close(self.variant(_focal)(logits, labels, np.float32(0.0), alpha),
              want.astype(np.float32), scale)
        close(self.variant(_weighted)(logits, labels, alpha), want.astype(np.float32), scale)

    @identity(data=classification(), weight=floats32(0.0, 10.0))
    def test_weighted_cross_entropy_with_equal_weights_is_scaled_cross_entropy(
            self, data, weight):
        logits, labels = data
        want = (np.float64(weight) * ce64(logits, labels)).astype(np.float32)
        scale = max(weight, 1.0)
        equal = np.full(logits.shape[-1], weight, np.float32)
        close(self.variant(_weighted)(logits, labels, equal), want, scale)
        close(self.variant(_weighted)(logits, labels, np.float32(weight)), want, scale)

    @identity(data=classification())
    def test_class_balanced_weights_sum_to_batch_size_times_sum_of_class_means(self, data):
        # sum_i CE_i / pi_{y_i}, pi_c = n_c / n, is n * sum over present classes of the
        # mean cross-entropy of that class: every class counts the same.
        logits, labels = data
        ce = ce64(logits, labels)
        n = len(labels)
        want = n * sum(ce[labels == c].mean() for c in np.unique(labels))
        close(self.variant(_class_balanced_total)(logits, labels), np.float32(want), scale=n * n)

    @identity(data=st.data())
    def test_logit_adjusted_loss_is_cross_entropy_of_logits_plus_tau_log_prior(self, data):
        logits, labels = data.draw(classification())
        counts = data.draw(positive_vector(logits.shape[-1]))
        tau = np.float32(data.draw(floats32(-2.0, 2.0)))
        log_prior = np.log(counts.astype(np.float64) / counts.sum(dtype=np.float64))
        want = ce64(logits + np.float64(tau) * log_prior, labels).astype(np.float32)
        # tau * log(prior) adds at most 2 * log(200) ~ 11 to |s|.
        close(self.variant(_logit_adjusted)(logits, labels, counts, tau), want, scale=2)
        close(self.variant(_logit_adjusted_via_adjust_logits)(logits, labels, counts, tau),
              want, scale=2)
        # Counts and their frequencies are the same priors.
        close(self.variant(_logit_adjusted)(logits, labels, counts / counts.sum(), tau), want,
              scale=2)

    @identity(data=st.data())
    def test_logit_adjusted_loss_with_tau_0_or_uniform_priors_is_cross_entropy(self, data):
        logits, labels = data.draw(classification())
        counts = data.draw(positive_vector(logits.shape[-1]))
        tau = np.float32(data.draw(floats32(-2.0, 2.0)))
        uniform = np.full(logits.shape[-1], data.draw(floats32(0.1, 100.0)),
                          np.float32)
        ce = optax_ce(logits, labels)
        close(self.variant(_logit_adjusted)(logits, labels, counts, np.float32(0.0)), ce)
        close(self.variant(_logit_adjusted)(logits, labels, uniform, tau), ce)

    @identity(data=st.data())
    def test_softmax_losses_are_invariant_to_a_per_row_shift_of_the_logits(self, data):
        logits, labels = data.draw(classification())
        h = data.draw(hyper_parameters(logits.shape[-1]))
        shift = data.draw(hnp.arrays(np.float32, (len(logits), 1), elements=FLOATS))
        fn = self.variant(_softmax_losses)
        # The weights reach 10 (focal, weighted); the soft truncation's weight is a
        # softmax of -K s, K <= 2, whose log rounds at the scale of K |s| <= 120.
        chex.assert_trees_all_close(fn(logits + shift, labels, h), fn(logits, labels, h),
                                    rtol=1e-4, atol=10 * ATOL)

    @identity(data=st.data())
    def test_softmax_hard_truncation_is_cross_entropy_below_the_margin(self, data):
        logits, labels = data.draw(classification())
        margin = np.float32(data.draw(floats32(0.05, 0.95)))
        ce = ce64(logits, labels)
        assume(_not_at_the_step(-ce, margin))
        want = np.where(np.exp(-ce) < margin, ce, 0.0).astype(np.float32)
        close(self.variant(_hard_truncated_softmax)(logits, labels, margin), want)

    @identity(data=classification())
    def test_soft_truncation_with_steepness_0_is_cross_entropy_over_num_classes(self, data):
        logits, labels = data
        num_classes = logits.shape[-1]
        ce = ce64(logits, labels)
        close(self.variant(_soft_truncated_softmax)(logits, labels, np.float32(0.0)),
              (ce / num_classes).astype(np.float32))
        # Binary: sigma(0) = 1/2 of the sigmoid cross-entropy, on the rows' first logits.
        z, y = logits[:, 0], (labels % 2).astype(np.float32)
        close(self.variant(_soft_truncated_binary)(z, y, np.float32(0.0)),
              optax_sigmoid_ce(z, y) / 2)

    @identity(z=hnp.arrays(np.float32, st.sampled_from(SHAPES), elements=FLOATS),
           data=st.data())
    def test_binary_soft_truncation_with_steepness_1_is_optax_focal_with_gamma_1(self, z, data):
        # Hard labels only: optax's focal factor (1 - p_t)^gamma, p_t = p y + (1-p)(1-y),
        # is not linear in a soft label, the soft truncation is (next test).
        y = data.draw(hnp.arrays(np.float32, z.shape, elements=st.sampled_from([0.0, 1.0])))
        close(self.variant(_soft_truncated_binary)(z, y, np.float32(1.0)),
              optax_sigmoid_focal(z, y, np.float32(1.0)))

    @identity(z=hnp.arrays(np.float32, st.sampled_from(SHAPES), elements=FLOATS),
           data=st.data())
    def test_binary_losses_of_soft_labels_interpolate_those_of_0_and_1(self, z, data):
        y = data.draw(hnp.arrays(np.float32, z.shape, elements=floats32(0, 1)))
        h = data.draw(hyper_parameters(2))
        fn = self.variant(_binary_losses)
        ones, zeros = fn(z, np.ones_like(z), h), fn(z, np.zeros_like(z), h)
        want = jax.tree.map(lambda a, b: y * np.asarray(a) + (1 - y) * np.asarray(b),
                            ones, zeros)
        got = fn(z, y, h)
        # The hard truncation's weight is 1 for a label other than 0 and 1 (its docstring).
        del got["hard_truncated"], want["hard_truncated"]
        chex.assert_trees_all_close(got, want, rtol=RTOL, atol=ATOL)

    @identity(data=st.data())
    def test_two_class_softmax_losses_are_their_binary_forms_of_the_logit_difference(
            self, data):
        logits, labels = data.draw(classification(TWO_CLASS_SHAPES))
        h = data.draw(hyper_parameters(2))
        z, y = logits[:, 1] - logits[:, 0], labels.astype(np.float32)
        # The float32 difference z is exact up to half an ulp of 60: the steps of both
        # hard truncations must not be decided by it.
        assume(_not_at_the_step(-ce64(logits, labels), h["margin"]))
        pairs = self.variant(_two_class_pairs)(logits, labels, z, y, h)
        close({name: pair[0] for name, pair in pairs.items()},
              {name: pair[1] for name, pair in pairs.items()})

    @identity(data=classification())
    def test_smoothed_accuracy_is_minus_the_target_probability(self, data):
        logits, labels = data
        want = -np.exp(-ce64(logits, labels))
        close(self.variant(_smoothed_accuracy)(logits, labels), want.astype(np.float32))

    @identity(z=hnp.arrays(np.float32, st.sampled_from(SHAPES), elements=FLOATS),
           data=st.data())
    def test_multilabel_loss_with_one_class_is_sigmoid_cross_entropy(self, z, data):
        y = data.draw(hnp.arrays(np.int32, z.shape, elements=st.integers(0, 1)))
        close(self.variant(_multilabel_one_class)(z, y),
              optax_sigmoid_ce(z, y.astype(np.float32)))

    @identity(data=st.data())
    def test_where_masked_rows_get_0_whatever_their_values_and_leave_the_others(self, data):
        logits, labels = data.draw(classification())
        h = data.draw(hyper_parameters(logits.shape[-1]))
        keep = data.draw(hnp.arrays(np.bool_, labels.shape))
        # Masked rows: any value, NaN and inf included, and the padding label -1.
        junk = data.draw(hnp.arrays(np.float32, logits.shape, elements=st.floats(width=32)))
        fn = self.variant(_softmax_losses)
        masked = fn(np.where(keep[:, None], logits, junk), np.where(keep, labels, -1), h,
                    keep)
        want = jax.tree.map(lambda x: np.where(keep, x, 0.0), fn(logits, labels, h))
        chex.assert_trees_all_close(masked, want, rtol=RTOL, atol=ATOL)
        # Binary losses, elementwise masks.
        z, y = logits, (logits > 0).astype(np.float32)
        keep_z = np.broadcast_to(keep[:, None], z.shape)
        binary = self.variant(_binary_losses)
        masked = binary(np.where(keep_z, z, junk), np.where(keep_z, y, np.nan), h, keep_z)
        want = jax.tree.map(lambda x: np.where(keep_z, x, 0.0), binary(z, y, h))
        chex.assert_trees_all_close(masked, want, rtol=RTOL, atol=ATOL)

    @identity(data=st.data())
    def test_permuting_the_batch_permutes_the_losses(self, data):
        logits, labels = data.draw(classification())
        h = data.draw(hyper_parameters(logits.shape[-1]))
        perm = np.asarray(data.draw(st.permutations(range(len(labels)))), np.int32)
        fn = self.variant(_softmax_losses)
        want = jax.tree.map(lambda x: np.asarray(x)[perm], fn(logits, labels, h))
        chex.assert_trees_all_close(fn(logits[perm], labels[perm], h), want,
                                    rtol=RTOL, atol=ATOL)
        z, y = logits, (labels[:, None] == np.arange(logits.shape[-1])).astype(np.float32)
        binary = self.variant(_binary_losses)
        want = jax.tree.map(lambda x: np.asarray(x)[perm], binary(z, y, h))
        chex.assert_trees_all_close(binary(z[perm], y[perm], h), want, rtol=RTOL, atol=ATOL)

    @identity(data=st.data())
    def test_class_priors_are_smoothed_frequencies_summing_to_1(self, data):
        _, labels = data.draw(classification())
        smoothing = np.float32(data.draw(floats32(0.0, 3.0)))
        num_classes = 5
        fn = self.variant(losses.class_priors, static_argnums=1)
        priors = fn(labels, num_classes, smoothing=smoothing)
        counts = np.bincount(labels, minlength=num_classes) + np.float64(smoothing)
        chex.assert_shape(priors, (num_classes,))
        close(priors, (counts / counts.sum()).astype(np.float32))
        close(jnp.sum(priors), np.float32(1.0))
