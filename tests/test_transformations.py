"""Every public function of jaxtricks under every JAX transformation, from one table.

A row of `ROWS` names a public function and builds, for a dtype, a call of it on a tiny
valid input: `fn(*args)` (`fn(key, *args)` for a row that takes a key), `args` a tuple of
float arrays or pytrees of them. Functions that take a callable get a tiny one; an Optax
transform is `init` + one `update` + `optax.apply_updates`. Each test below runs every row
under one transformation and compares it with an independent computation: the eager call,
a Python loop, central finite differences in float64, reverse mode. A transformation that
does not apply to a row is excluded by a flag of the row, with the reason next to it.

`make test` (the fast tier) runs every row under `jit`, `grad`, `vmap` and the dtype
check in float32 and bfloat16; the other columns (forward mode, Hessians, `checkpoint`,
`scan`, key kinds and implementations, float64 outputs) compile a second program per
row and run in `make test-slow`, as do the rows that compile training loops.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64
from flax import nnx
from jax.flatten_util import ravel_pytree
from scipy import stats

import jaxtricks
from jaxtricks import estimators, losses, regularizers, rnn, teaforn, validation

SUBPACKAGES = (losses, regularizers, estimators, teaforn, validation, rnn)
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float64": jnp.float64}


@dataclasses.dataclass(frozen=True)
class Row:
    """One public function on a tiny input.

    name: "subpackage.function" (a suffix "[variant]" for a second call of the same one).
    build: `build(dtype) -> (fn, args)`.
    grad: the output has an informative derivative in `args` (grad, jvp, hessian tests).
    fd: the scalarised output is smooth at `args` (checked by finite differences; else
        only against forward mode).
    key: `fn(key, *args)` takes a `jax.random` key first.
    out_dtype: documented dtype of the float outputs: "same" (the input's), "atleast32"
        (the input's promoted to float32), "float32", or None (not documented).
    scalar: the output is a scalar (hessian test).
    rtol: tolerance of the comparisons that reorder floating-point operations.
    """

    name: str
    build: Callable
    grad: bool = True
    fd: bool = True
    key: bool = False
    out_dtype: str | None = None
    scalar: bool = False
    rtol: float = 2e-5


# ------------------------------------------------------------------ tiny inputs
_RNG = np.random.default_rng(0)
_LOGITS = _RNG.normal(size=(4, 3))
_LABELS = np.array([0, 2, 1, 2], np.int32)
_BINARY_LOGITS = np.array([1.3, -0.7, 0.2, -1.9, 2.4, -0.1])  # away from log(1.5), 0
_BINARY_LABELS = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
_MULTI_HOT = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]], np.float32)
_PRIORS = np.array([0.5, 0.3, 0.2])


def _arr(value, dtype):
    return jnp.asarray(value, dtype)


def _params(dtype):
    """A weight matrix (selected by the default masks) and a bias (not selected)."""
    return {
        "w": _arr(_RNG_PARAMS["w"], dtype),
        "b": _arr(_RNG_PARAMS["b"], dtype),
    }


_RNG_PARAMS = {"w": _RNG.normal(size=(2, 3)), "b": _RNG.normal(size=(3,))}
_GRADS = {"w": _RNG.normal(size=(2, 3)), "b": _RNG.normal(size=(3,))}


def _loss_row(name, fn, *, logits=_LOGITS, labels=_LABELS, **flags):
    def build(dtype):
        return (lambda s: fn(s, labels)), (_arr(logits, dtype),)

    return Row(name, build, **flags)


def _optax_row(name, make, **flags):
    def build(dtype):
        tx = make()

        def fn(params, grads):
            updates, _ = tx.update(grads, tx.init(params), params)
            return optax.apply_updates(params, updates)

        grads = jax.tree.map(lambda g: _arr(g, dtype), _GRADS)
        return fn, (_params(dtype), grads)

    return Row(name, build, out_dtype="same", **flags)


def _params_objective(params):
    return sum(jnp.sum(jnp.sin(leaf) + 0.5 * leaf**2) for leaf in jax.tree.leaves(params))


def _estimate_row(name, make, objectives=("value_fn",), **flags):
    """An estimator as an Optax transform: init + one update, the objective passed as each
    of the extra arguments `objectives`."""
    def build(dtype):
        def fn(key, params):
            tx = make(key)
            extra = dict.fromkeys(objectives, _params_objective)
            updates, _ = tx.update(None, tx.init(params), params, **extra)
            return optax.apply_updates(params, updates)

        return fn, (_params(dtype),)

    return Row(name, build, key=True, out_dtype="same", **flags)


def _tanh_step(matrix):
    return lambda h, x: (jnp.tanh(matrix @ h + x), h)


def _rnn_args(dtype):
    matrix = 0.8 * _RNG_RNN[0]
    return _arr(matrix, dtype), _arr(_RNG_RNN[1], dtype), _arr(_RNG_RNN[2], dtype)


_RNG_RNN = (_RNG.normal(size=(2, 2)) / np.sqrt(2), _RNG.normal(size=2), _RNG.normal(size=(2, 2)))


def _rnn_norms_row(name, norms_fn, **flags):
    def build(dtype):
        return (lambda m, h, xs: norms_fn(_tanh_step(m), h, xs)), _rnn_args(dtype)

    return Row(name, build, **flags)


def _build_gradient_norms_over_time(dtype):
    def fn(matrix, carry, inputs):
        return rnn.gradient_norms_over_time(
            lambda final, ys: jnp.sum(jnp.sin(ys)) + jnp.sum(final**2),
            _tanh_step(matrix), carry, inputs,
        )

    return fn, _rnn_args(dtype)


_LINEN_CELL = nn.SimpleCell(3)
_LINEN_PARAMS = _LINEN_CELL.init(jax.random.key(0), jnp.zeros(3), jnp.zeros(2))["params"]


def _build_linen_step(dtype):
    params = jax.tree.map(lambda p: _arr(p, dtype), _LINEN_PARAMS)
    fn = lambda params, carry, x: rnn.linen_step(_LINEN_CELL, params)(carry, x)  # noqa: E731
    return fn, (params, _arr([*_RNG_RNN[1], 0.5], dtype), _arr(_RNG_RNN[2][0], dtype))


def _build_nnx_step(dtype):
    # Initialised in float32 (the orthogonal initialiser has no bfloat16 QR), then cast.
    cell = nnx.SimpleCell(2, 3, rngs=nnx.Rngs(0), dtype=dtype)
    graph, state = nnx.split(cell)
    cell = nnx.merge(graph, jax.tree.map(lambda p: _arr(p, dtype), state))
    fn = lambda carry, x: rnn.nnx_step(cell)(carry, x)  # noqa: E731
    return fn, (_arr([*_RNG_RNN[1], 0.5], dtype), _arr(_RNG_RNN[2][0], dtype))


def _smooth_objective(x):
    return jnp.sum(jnp.sin(x) + 0.5 * x**2)


def _build_zeroth_order_grad(dtype, **options):
    fn = lambda key, x: estimators.zeroth_order_grad(  # noqa: E731
        _smooth_objective, x, key, num_samples=4, sigma=0.1, **options
    )
    return fn, (_arr([0.3, -0.2, 0.5], dtype),)


def _build_forward_gradient(dtype, **options):
    fn = lambda key, x: estimators.forward_gradient(  # noqa: E731
        _smooth_objective, x, key, num_samples=4, **options
    )
    return fn, (_arr([[0.3, -0.2, 0.5], [0.1, 0.4, -0.6]], dtype),)


def _build_zeroth_order_update(dtype):
    fn = lambda key, x: estimators.zeroth_order_update(  # noqa: E731
        _smooth_objective, x, key, learning_rate=0.1, num_samples=4, sigma=0.1
    )
    return fn, (_arr([0.3, -0.2, 0.5], dtype),)


def _build_policy_gradient(dtype):
    def fn(key, x):
        return estimators.policy_gradient(
            *estimators.gaussian_policy(0.3), _smooth_objective, x, key, num_samples=4
        )

    return fn, (_arr([0.3, -0.2, 0.5], dtype),)


def _build_gaussian_policy(dtype):
    def fn(key, x):
        sample_fn, log_prob_fn = estimators.gaussian_policy(0.3)
        sample = sample_fn(x, key)
        return sample, log_prob_fn(x, sample)

    return fn, (_arr([0.3, -0.2, 0.5], dtype),)


def _build_categorical_policy(dtype):
    def fn(key, logits):
        sample_fn, log_prob_fn = estimators.categorical_policy(lambda p: p)
        sample = sample_fn(logits, key)
        return sample, log_prob_fn(logits, sample)

    return fn, (_arr(_LOGITS, dtype),)


def _build_gradient_norm_penalty(dtype):
    wrapped = regularizers.gradient_norm_penalty(_smooth_objective, coefficient=0.1)
    return wrapped, (_arr([0.3, -0.2, 0.5], dtype),)


_TEAFORN = {
    "mix": _RNG.normal(size=(2, 2)) / np.sqrt(2),
    "out": _RNG.normal(size=(2, 3)),
    "inputs": _RNG.normal(size=(2, 3, 2)),
    "targets": np.array([[0, 2, 1], [1, 1, 0]], np.int32),
}


def _build_teaforn(dtype, tied_feed=None, **kwargs):
    """`tied_feed(table)`: a feed of the output layer's weights, `[V, D]`."""
    def fn(params, inputs):
        feed = {} if tied_feed is None else {"feed": tied_feed(params["out"].T)}
        return teaforn.teaforn_loss(
            lambda v: jnp.tanh(jnp.cumsum(v @ params["mix"], axis=-2)),
            lambda h: h @ params["out"], inputs, _TEAFORN["targets"], n=2, **feed, **kwargs,
        )

    params = {k: _arr(_TEAFORN[k], dtype) for k in ("mix", "out")}
    return fn, (params, _arr(_TEAFORN["inputs"], dtype))


_TRAIN_X, _TEST_X = _RNG.normal(size=(4, 1)), _RNG.normal(size=(4, 1)) + 0.5


def _build_adversarial_validation(dtype):
    fn = functools.partial(validation.adversarial_validation, num_folds=2, steps=2)
    return (lambda key, train, test: fn(train, test, key)), (
        _arr(_TRAIN_X, dtype), _arr(_TEST_X, dtype),
    )


_SCORES = np.array([0.3, -1.2, 0.8, 0.1, -0.4, 1.5])
_SCORE_LABELS = np.array([1, 0, 1, 0, 0, 1], np.int32)

ROWS = (
    # ---------------------------------------------------------------- losses
    _loss_row(
        "losses.adjust_logits",
        lambda s, _: losses.adjust_logits(s, class_priors=_PRIORS), out_dtype="same",
    ),
    # Piecewise constant in the logits (an argmax): the derivative is 0 almost everywhere.
    _loss_row(
        "losses.balanced_accuracy",
        lambda s, y: losses.balanced_accuracy(jnp.argmax(s, -1), y, 3), grad=False,
        out_dtype="float32",
    ),
    _loss_row(
        "losses.balanced_accuracy_from_logits", losses.balanced_accuracy_from_logits,
        grad=False, out_dtype="float32",
    ),
    # Its F1 factor is under stop-gradient: by design the gradient is not the derivative
    # of the value, so it is compared with forward mode, not with finite differences.
    _loss_row(
        "losses.sigmoid_f1_weighted_cross_entropy", losses.sigmoid_f1_weighted_cross_entropy,
        logits=_BINARY_LOGITS, labels=_BINARY_LABELS, out_dtype="same", fd=False,
    ),
    _loss_row(
        "losses.sigmoid_smoothed_accuracy_loss", losses.sigmoid_smoothed_accuracy_loss,
        logits=_BINARY_LOGITS, labels=_BINARY_LABELS, out_dtype="same",
    ),
    _loss_row(
        "losses.sigmoid_smoothed_f1_loss", losses.sigmoid_smoothed_f1_loss,
        logits=_BINARY_LOGITS, labels=_BINARY_LABELS, scalar=True,
    ),
    Row(
        "losses.class_priors",
        lambda dtype: (
            (lambda smoothing: losses.class_priors(_LABELS, 3, smoothing=smoothing)),
            (_arr(0.5, dtype),),
        ),
        out_dtype="float32",
    ),
    _loss_row(
        "losses.cross_entropy_weights",
        lambda s, y: losses.cross_entropy_weights(
            lambda z, t: -jnp.take_along_axis(jax.nn.softmax(z), t[:, None], -1)[:, 0] ** 0.5,
            s, y,
        ),
    ),
    _loss_row(
        "losses.sigmoid_hard_truncated_cross_entropy", losses.sigmoid_hard_truncated_cross_entropy,
        logits=_BINARY_LOGITS, labels=_BINARY_LABELS, out_dtype="same",
    ),
    _loss_row(
        "losses.softmax_logit_adjusted_cross_entropy",
        lambda s, y: losses.softmax_logit_adjusted_cross_entropy(s, y, class_priors=_PRIORS),
    ),
    _loss_row(
        "losses.softmax_multilabel_cross_entropy", losses.softmax_multilabel_cross_entropy,
        labels=_MULTI_HOT,
    ),
    _loss_row("losses.softmax_smoothed_accuracy_loss", losses.softmax_smoothed_accuracy_loss),
    _loss_row("losses.softmax_smoothed_f1_loss", losses.softmax_smoothed_f1_loss, scalar=True),
    _loss_row(
        "losses.sigmoid_soft_truncated_cross_entropy",
        lambda s, y: losses.sigmoid_soft_truncated_cross_entropy(s, y, steepness=2.0),
        logits=_BINARY_LOGITS, labels=_BINARY_LABELS, out_dtype="same",
    ),
    _loss_row("losses.softmax_focal_loss", losses.softmax_focal_loss, out_dtype="same"),
    _loss_row(
        "losses.softmax_focal_loss[alpha]",
        lambda s, y: losses.softmax_focal_loss(s, y, gamma=1.5, alpha=_PRIORS),
        out_dtype="same",
    ),
    _loss_row(
        "losses.softmax_hard_truncated_cross_entropy",
        lambda s, y: losses.softmax_hard_truncated_cross_entropy(s, y, margin=0.9),
    ),
    _loss_row(
        "losses.softmax_soft_truncated_cross_entropy",
        losses.softmax_soft_truncated_cross_entropy,
    ),
    _loss_row(
        "losses.softmax_weighted_cross_entropy",
        lambda s, y: losses.softmax_weighted_cross_entropy(s, y, class_weights=1 / _PRIORS),
    ),
    # ---------------------------------------------------------------- regularizers
    _optax_row(
        "regularizers.decoupled_weight_decay",
        lambda: regularizers.decoupled_weight_decay(0.1, learning_rate=0.5),
    ),
    Row(  # a loss above the level (a flood level below it would flip the sign)
        "regularizers.flood",
        lambda dtype: ((lambda loss: regularizers.flood(loss, level=0.2)), (_arr(0.7, dtype),)),
        scalar=True,
    ),
    Row("regularizers.gradient_norm_penalty", _build_gradient_norm_penalty, scalar=True),
    Row(
        "regularizers.iflood",
        lambda dtype: (
            (lambda loss: regularizers.iflood(loss, level=0.2)),
            (_arr([0.7, 0.05, 1.3], dtype),),
        ),
    ),
    Row(
        "regularizers.l2_penalty",
        lambda dtype: (regularizers.l2_penalty, (_params(dtype),)),
        out_dtype="atleast32", scalar=True,
    ),
    _optax_row("regularizers.l2_regularization", lambda: regularizers.l2_regularization(0.1)),
    _optax_row("regularizers.weissi", lambda: regularizers.weissi(0.1, direction_weight=0.05)),
    _optax_row(
        "regularizers.decoupled_weissi",
        lambda: regularizers.decoupled_weissi(0.1, learning_rate=0.5, form="product"),
    ),
    Row(
        "regularizers.weissi_penalty",
        lambda dtype: (
            functools.partial(regularizers.weissi_penalty, direction_weight=0.5),
            (_params(dtype),),
        ),
        out_dtype="atleast32", scalar=True,
    ),
    # ---------------------------------------------------------------- estimators
    Row("estimators.categorical_policy", _build_categorical_policy, key=True),
    Row("estimators.gaussian_policy", _build_gaussian_policy, key=True),
    Row("estimators.policy_gradient", _build_policy_gradient, key=True),
    Row("estimators.zeroth_order_grad", _build_zeroth_order_grad, key=True),
    Row("estimators.zeroth_order_grad[orthogonal]",
        functools.partial(_build_zeroth_order_grad, directions="orthogonal"), key=True),
    Row("estimators.forward_gradient", _build_forward_gradient, key=True),
    _estimate_row("estimators.zeroth_order_estimate", lambda key: estimators.zeroth_order_estimate(
        key, num_samples=4, sigma=0.1)),
    _estimate_row("estimators.forward_gradient_estimate",
                  lambda key: estimators.forward_gradient_estimate(key, num_samples=2)),
    _estimate_row("estimators.hizoo_estimate", lambda key: estimators.hizoo_estimate(
        key, num_samples=4, smoothing=0.1, sigma=0.1)),
    _estimate_row("estimators.svrg_estimate", lambda key: estimators.svrg_estimate(
        key, num_samples=4, update_interval=2, sigma=0.1),
        objectives=("value_fn", "full_value_fn")),
    Row(
        "estimators.keep_best_step",
        lambda dtype: (
            (lambda params, grads: optax.apply_updates(params, estimators.keep_best_step().update(
                grads, optax.EmptyState(), params, value_fn=_params_objective)[0])),
            (_params(dtype), jax.tree.map(lambda g: _arr(g, dtype), _GRADS)),
        ),
        fd=False, out_dtype="same",  # a choice among three steps: piecewise in params
    ),
    Row("estimators.forward_gradient[low_rank]",
        functools.partial(_build_forward_gradient, directions=estimators.LowRank(1)), key=True),
    Row("estimators.zeroth_order_update", _build_zeroth_order_update, key=True),
    Row(
        "estimators.rounding_floor_sigma",
        lambda dtype: (
            (lambda value, grad_norm: estimators.rounding_floor_sigma(
                value, grad_norm, jnp.bfloat16, num_params=10, param_scale=0.3)),
            (_arr(2.3, dtype), _arr(1.7, dtype)),
        ),
        scalar=True,
    ),
    Row(
        "estimators.rounding_variance",
        lambda dtype: (
            (lambda sigma, value, grad_norm: estimators.rounding_variance(
                sigma, value, grad_norm, jnp.bfloat16, num_params=10, param_scale=0.3)),
            (_arr(0.1, dtype), _arr(2.3, dtype), _arr(1.7, dtype)),
        ),
        scalar=True,
    ),
    # ---------------------------------------------------------------- teaforn
    Row("teaforn.teaforn_loss", _build_teaforn, out_dtype="float32"),
    Row(
        "teaforn.teaforn_loss[per_token]",
        functools.partial(_build_teaforn, reduction="none", mask_repeated=True,
                          where=np.array([[True, True, True], [True, True, False]])),
        out_dtype="float32",
    ),
    Row(
        "teaforn.teaforn_loss[soft]",
        functools.partial(_build_teaforn, tied_feed=teaforn.SoftFeed),
        out_dtype="float32",
    ),
    # ---------------------------------------------------------------- validation
    # A derivative through the discriminator's training loop is defined (and runs) but
    # is not a quantity anyone uses (the docstring says so): no derivative tests.
    Row(
        "validation.adversarial_validation", _build_adversarial_validation, key=True,
        grad=False, rtol=1e-4,
    ),
    Row(
        "validation.importance_weights",
        lambda dtype: (
            (lambda s: validation.importance_weights(s, clip=3.0)), (_arr(_SCORES, dtype),),
        ),
    ),
    # Integer outputs (row indices and a mask): nothing to differentiate.
    Row(
        "validation.resample_validation",
        lambda dtype: (
            (lambda key, w: validation.resample_validation(key, w, 4)),
            (_arr(np.abs(_SCORES), dtype),),
        ),
        key=True, grad=False,
    ),
    # A rank statistic: piecewise constant in the scores, derivative 0 almost everywhere.
    Row(
        "validation.roc_auc",
        lambda dtype: (
            (lambda s: validation.roc_auc(s, _SCORE_LABELS)), (_arr(_SCORES, dtype),),
        ),
        grad=False,
    ),
    # Integer outputs (row indices): nothing to differentiate.
    Row(
        "validation.select_validation",
        lambda dtype: (
            (lambda s: validation.select_validation(s, 2)), (_arr(_SCORES, dtype),),
        ),
        grad=False,
    ),
    # ---------------------------------------------------------------- rnn
    Row("rnn.gradient_norms_over_time", _build_gradient_norms_over_time),
    _rnn_norms_row("rnn.jacobian_norms", rnn.jacobian_norms, out_dtype="atleast32"),
    Row("rnn.linen_step", _build_linen_step),
    Row("rnn.nnx_step", _build_nnx_step),
    _rnn_norms_row("rnn.step_jacobian_norms", rnn.step_jacobian_norms, out_dtype="atleast32"),
)

IDS = [row.name for row in ROWS]
GRAD_ROWS = [row for row in ROWS if row.grad]
KEY_ROWS = [row for row in ROWS if row.key]
# The rows that compile whole training loops or scans: CI's slow tier (`make test-slow`).
SLOW_FUNCTIONS = {"validation.adversarial_validation", "estimators.policy_gradient",
                  "estimators.categorical_policy", "teaforn.teaforn_loss",
                  "losses.cross_entropy_weights", "rnn.jacobian_norms",
                  "rnn.gradient_norms_over_time", "estimators.zeroth_order_estimate",
                  "estimators.forward_gradient_estimate", "estimators.hizoo_estimate",
                  "estimators.svrg_estimate"}


def _cases(rows):
    return [pytest.param(row, id=row.name, marks=pytest.mark.slow
                         if row.name.split("[")[0] in SLOW_FUNCTIONS else ()) for row in rows]


# ------------------------------------------------------------------ helpers
@functools.cache
def _built(name, dtype_name):
    """`(fn, args)` of a row, the key bound (a typed key) for rows that take one."""
    row = ROWS[IDS.index(name)]
    fn, args = row.build(DTYPES[dtype_name])
    if row.key:
        return functools.partial(fn, jax.random.key(0)), args
    return fn, args


@functools.cache
def _jitted(name):
    """The float32 row under `jax.jit`, compiled once per input shape."""
    return jax.jit(_built(name, "float32")[0])


@functools.cache
def _eager(name):
    fn, args = _built(name, "float32")
    return fn(*args)


def _is_float(leaf):
    return jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


def _float64(leaf):
    return np.asarray(leaf).astype(np.float64)


def assert_trees_close(got, want, rtol, atol):
    got_leaves, got_tree = jax.tree.flatten(got)
    want_leaves, want_tree = jax.tree.flatten(want)
    assert got_tree == want_tree
    for g, w in zip(got_leaves, want_leaves, strict=True):
        assert jnp.shape(g) == jnp.shape(w)
        assert jnp.result_type(g) == jnp.result_type(w)
        if _is_float(w):
            np.testing.assert_allclose(_float64(g), _float64(w), rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _scalarize(out):
    """A fixed generic linear functional of all float outputs: `sum_leaf <c_leaf, leaf>`."""
    total = 0.0
    for index, leaf in enumerate(jax.tree.leaves(out)):
        if _is_float(leaf):
            weights = jnp.sin(1.0 + index + jnp.arange(jnp.size(leaf), dtype=leaf.dtype))
            total = total + jnp.sum(leaf * weights.reshape(jnp.shape(leaf)))
    return total


def _flat(name, dtype_name="float32"):
    """`(g, x)`: the scalarised row as a function of all float inputs raveled into `x`."""
    fn, args = _built(name, dtype_name)
    x, unravel = ravel_pytree(args)
    return (lambda x: _scalarize(fn(*unravel(x)))), x


def _flat_out(name):
    """`(f, x)`: the row's float outputs raveled into one vector, as a function of `x`."""
    fn, args = _built(name, "float32")
    x, unravel = ravel_pytree(args)

    def f(x):
        leaves = jax.tree.leaves(fn(*unravel(x)))
        return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves if _is_float(leaf)])

    return f, x


@functools.cache
def _reverse_jacobian(name):
    f, x = _flat_out(name)
    return jax.jit(jax.jacrev(f))(x)


def _scaled(args, factor):
    """A second valid input: every float input times `factor` (signs and order kept)."""
    return jax.tree.map(lambda a: a * jnp.asarray(factor, a.dtype), args)


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("row", _cases(ROWS))
def test_jit_matches_eager(row):
    _, args = _built(row.name, "float32")
    assert_trees_close(_jitted(row.name)(*args), _eager(row.name), row.rtol, row.rtol / 10)


@pytest.mark.parametrize("row", _cases(GRAD_ROWS))
def test_grad_matches_finite_differences_in_float64(row):
    with enable_x64():
        g, x = _flat(row.name, "float64")
        directions = np.random.default_rng(1).normal(size=(2, x.size))
        # Outputs documented as float32 stay float32 in x64: a larger step, extrapolated.
        exact = jax.eval_shape(g, x).dtype == np.float64
        eps, rtol = (1e-6, 1e-6) if exact else (2e-2, 1e-3)

        def central(v, h):
            return (g(x + h * v) - g(x - h * v)) / (2 * h)

        @jax.jit
        def grad_and_references(x):
            # Richardson: (4 D(h/2) - D(h)) / 3 cancels the h^2 error term.
            differences = [(4 * central(v, eps / 2) - central(v, eps)) / 3 for v in directions]
            forward = None if row.fd else jax.jacfwd(g)(x)
            return jax.grad(g)(x), jnp.stack(differences), forward

        grad, differences, forward = grad_and_references(x)
        assert grad.dtype == np.float64 and np.all(np.isfinite(grad))
        if row.fd:
            np.testing.assert_allclose(directions @ grad, differences, rtol=rtol, atol=rtol / 10)
        else:
            np.testing.assert_allclose(grad, forward, rtol=rtol, atol=rtol / 100)


@pytest.mark.parametrize("row", _cases(ROWS))
def test_vmap_matches_a_loop(row):
    fn, args = _built(row.name, "float32")
    batch = [args, _scaled(args, 0.9), _scaled(args, 1.1)]
    got = jax.jit(jax.vmap(fn))(*_stack(batch))
    loop = _stack([_jitted(row.name)(*a) for a in batch])
    assert_trees_close(got, loop, row.rtol, row.rtol / 10)


@pytest.mark.slow
@pytest.mark.parametrize("row", _cases(GRAD_ROWS))
def test_jvp_jacfwd_linearize_match_reverse_mode(row):
    f, x = _flat_out(row.name)
    tangent = jnp.cos(jnp.arange(x.size, dtype=x.dtype))

    @jax.jit
    def forward_mode(x, tangent):
        _, jvp = jax.jvp(f, (x,), (tangent,))
        linear = jax.linearize(f, x)[1](tangent)
        return jax.jacfwd(f)(x), jvp, linear

    jacfwd, jvp, linear = forward_mode(x, tangent)
    jacrev = _reverse_jacobian(row.name)
    np.testing.assert_allclose(jacfwd, jacrev, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jvp, jacrev @ tangent, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(linear, jvp, rtol=1e-5, atol=1e-6)


SCALAR_ROWS = [row for row in GRAD_ROWS if row.scalar]


@pytest.mark.slow
@pytest.mark.parametrize("row", _cases(SCALAR_ROWS))
def test_hessian_matches_reverse_over_reverse(row):
    fn, args = _built(row.name, "float32")
    assert jax.eval_shape(fn, *args).shape == ()
    g, x = _flat(row.name)
    hessian, reverse = jax.jit(lambda x: (jax.hessian(g)(x), jax.jacrev(jax.jacrev(g))(x)))(x)
    np.testing.assert_allclose(hessian, reverse, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("row", _cases(ROWS))
def test_checkpoint_matches_the_plain_call(row):
    fn, args = _built(row.name, "float32")
    f, x = _flat_out(row.name)

    @jax.jit  # one compile for the value and, where defined, the Jacobian
    def remat_value_and_jacobian(args, x):
        return jax.checkpoint(fn)(*args), jax.jacrev(jax.checkpoint(f))(x) if row.grad else None

    remat, jacobian = remat_value_and_jacobian(args, x)
    assert_trees_close(remat, _eager(row.name), row.rtol, row.rtol / 10)
    if row.grad:
        np.testing.assert_allclose(jacobian, _reverse_jacobian(row.name), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("row", _cases(ROWS))
def test_inside_scan_matches_two_calls(row):
    fn, args = _built(row.name, "float32")
    steps = [args, _scaled(args, 0.9)]

    def body(count, step_args):
        return count + 1, fn(*step_args)

    count, got = jax.jit(lambda xs: jax.lax.scan(body, 0, xs))(_stack(steps))
    assert count == 2
    two_calls = _stack([_jitted(row.name)(*a) for a in steps])
    assert_trees_close(got, two_calls, row.rtol, row.rtol / 10)


@pytest.mark.slow
@pytest.mark.parametrize("row", _cases(KEY_ROWS))
def test_typed_and_legacy_keys_give_identical_outputs(row):
    fn, args = row.build(jnp.float32)
    # `_eager` is the row's eager call with the typed key(0).
    assert_trees_close(fn(jax.random.PRNGKey(0), *args), _eager(row.name), 0, 0)
    typed_batch = jax.random.split(jax.random.key(3), 2)
    legacy_batch = jax.random.split(jax.random.PRNGKey(3), 2)
    batched = jax.jit(jax.vmap(lambda key: fn(key, *args)))
    got = batched(typed_batch)
    assert_trees_close(batched(legacy_batch), got, 0, 0)
    call = jax.jit(fn)
    loop = _stack([call(key, *args) for key in typed_batch])
    assert_trees_close(got, loop, row.rtol, row.rtol / 10)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
@pytest.mark.parametrize("row", _cases(KEY_ROWS))
def test_every_key_implementation_gives_the_same_distribution(row, impl):
    # The mean output over 256 keys, rbg against threefry: a two-sample z-test per
    # coordinate, Bonferroni over the coordinates. (The estimators draw their directions
    # from threefry keys whatever the implementation: identical numbers, z = 0.)
    fn, args = row.build(jnp.float32)
    draws = jax.jit(lambda keys: jax.lax.map(
        lambda key: ravel_pytree(jax.tree.map(
            lambda leaf: leaf.astype(jnp.float32), fn(key, *args)))[0], keys))
    threefry, other = (
        _float64(draws(jax.random.split(jax.random.key(5, impl=name), 256)))
        for name in ("threefry2x32", impl)
    )
    error = np.sqrt((threefry.var(0) + other.var(0)) / len(threefry))
    difference = np.abs(threefry.mean(0) - other.mean(0))
    critical = stats.norm.ppf(1 - 0.001 / (2 * threefry.shape[1]))
    assert np.all((difference <= critical * error) | (difference == 0))


def _expected_dtype(row, dtype):
    if row.out_dtype == "same":
        return dtype
    if row.out_dtype == "atleast32":
        return dtype if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)
    if row.out_dtype == "float32":
        return jnp.dtype(jnp.float32)
    return None


def _check_dtype(row, dtype_name):
    fn, args = _built(row.name, dtype_name)
    out = _jitted(row.name)(*args) if dtype_name == "float32" else jax.jit(fn)(*args)
    expected = _expected_dtype(row, jnp.dtype(DTYPES[dtype_name]))
    for leaf in jax.tree.leaves(out):
        if _is_float(leaf):
            assert np.all(np.isfinite(_float64(leaf))), f"non-finite output {leaf}"
            if expected is not None:
                assert leaf.dtype == expected, f"output {leaf.dtype}, documented {expected}"


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
@pytest.mark.parametrize("row", _cases(ROWS))
def test_output_is_finite_with_the_documented_dtype(row, dtype_name):
    _check_dtype(row, dtype_name)


@pytest.mark.slow
@pytest.mark.parametrize("row", _cases(ROWS))
def test_output_is_finite_with_the_documented_dtype_in_float64(row):
    with enable_x64():
        _check_dtype(row, "float64")


def test_every_public_function_has_a_row():
    public = {}
    for package in SUBPACKAGES:
        short = package.__name__.removeprefix("jaxtricks.")
        for name in package.__all__:
            if inspect.isfunction(getattr(package, name)):
                public[f"{short}.{name}"] = getattr(package, name)
    for name in jaxtricks.__all__:
        obj = getattr(jaxtricks, name)
        if inspect.isfunction(obj) and all(obj is not f for f in public.values()):
            public[name] = obj
    rows = {name.split("[")[0] for name in IDS}
    missing, unknown = sorted(public.keys() - rows), sorted(rows - public.keys())
    assert not missing, f"public functions without a row: {missing}"
    assert not unknown, f"rows naming no public function: {unknown}"
    assert len(IDS) == len(set(IDS)), "duplicate row names"
