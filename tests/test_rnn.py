"""Tests of jaxtricks.rnn: Jacobian and gradient norms through time (kexue.fm/archives/7888)."""

import functools
import inspect

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compat import enable_x64
from flax import nnx
from jax.test_util import check_grads

from jaxtricks import rnn

KEY = jax.random.key(0)


def _linear_step(matrix):
    return lambda h, x: (matrix @ h + x, h)


def _linen_cell(cell, input_size, key=KEY):
    """A linen cell's step function, initial carry (random, to leave the origin) and params."""
    carry = cell.initialize_carry(key, (input_size,))
    carry = jax.tree.map(lambda c: 0.5 * jax.random.normal(key, c.shape), carry)
    params = jax.jit(cell.init)(key, carry, jnp.zeros(input_size))["params"]
    return carry, params


def _jit(norms_fn, step_fn, **options):
    """`norms_fn(step_fn, carry, inputs, **options)` as one compiled call (not op by op)."""
    return jax.jit(lambda carry, inputs: norms_fn(step_fn, carry, inputs, **options))


def _jacobians_by_jacfwd(step_fn, carry, inputs):
    """`[T, D, D]` Jacobians d carry_t / d carry_0 of the unrolled scan (independent path)."""

    def all_carries(flat0):
        _, unravel = jax.flatten_util.ravel_pytree(carry)

        def body(c, x):
            new, _ = step_fn(c, x)
            return new, jax.flatten_util.ravel_pytree(new)[0]

        return jax.lax.scan(body, unravel(flat0), inputs)[1]

    flat0 = jax.flatten_util.ravel_pytree(carry)[0]
    return np.asarray(jax.jit(jax.jacfwd(all_carries))(flat0), np.float64)


def test_linear_cell_norms_equal_norms_of_matrix_powers():
    size, length = 6, 25
    matrix = 1.2 * jax.random.normal(KEY, (size, size)) / np.sqrt(size)
    step = _linear_step(matrix)
    inputs, carry = jnp.zeros((length, size)), jnp.ones(size)
    powers = [np.linalg.matrix_power(np.asarray(matrix, np.float64), t) for t in range(1, 26)]
    for ord_, numpy_ord in (("spectral", 2), ("fro", "fro")):
        want = np.array([np.linalg.norm(p, numpy_ord) for p in powers])
        for method in ("exact", "power"):
            got = _jit(rnn.jacobian_norms, step, ord=ord_, method=method, key=KEY)(carry, inputs)
            np.testing.assert_allclose(got, want, rtol=2e-5)


def test_log_space_keeps_vanishing_norms_beyond_float32_range():
    # ||(0.01 I)^t|| = 1e-2t underflows float32 after t = 23; its log does not.
    step = _linear_step(0.01 * jnp.eye(3))
    log_norms = rnn.jacobian_norms(step, jnp.ones(3), jnp.zeros((100, 3)), log_space=True)
    np.testing.assert_allclose(log_norms, np.arange(1, 101) * np.log(0.01), rtol=1e-5)


def _lstm_without_recurrence(size, input_size, forget_logit=None):
    """A linen LSTM with all recurrent kernels zero (gates depend on x only)."""
    cell = nn.LSTMCell(size)
    carry, params = _linen_cell(cell, input_size)
    for gate in ("hi", "hf", "hg", "ho"):
        params[gate]["kernel"] = jnp.zeros_like(params[gate]["kernel"])
    if forget_logit is not None:
        params["if"]["kernel"] = jnp.zeros_like(params["if"]["kernel"])
        params["hf"]["bias"] = jnp.full(size, forget_logit)
    return rnn.linen_step(cell, params), carry, params


@pytest.mark.slow
def test_lstm_c_path_equals_power_of_constant_forget_gate():
    forget = 0.9
    step, carry, _ = _lstm_without_recurrence(5, 3, forget_logit=np.log(forget / (1 - forget)))
    inputs = jax.random.normal(KEY, (40, 3))
    c_norms, _ = rnn.jacobian_norms(step, carry, inputs, per_leaf=True)
    np.testing.assert_allclose(c_norms, forget ** np.arange(1, 41), rtol=1e-5)


def test_lstm_c_path_equals_product_of_input_driven_forget_gates():
    step, carry, params = _lstm_without_recurrence(5, 3)
    inputs = jax.random.normal(KEY, (30, 3))
    logits = np.asarray(inputs, np.float64) @ np.asarray(params["if"]["kernel"], np.float64)
    products = np.cumprod(1 / (1 + np.exp(-logits)), axis=0)  # prod_k D(f_k), diagonal
    spectral_c, _ = rnn.jacobian_norms(step, carry, inputs, per_leaf=True)
    fro_c, _ = rnn.jacobian_norms(step, carry, inputs, per_leaf=True, ord="fro")
    np.testing.assert_allclose(spectral_c, products.max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(fro_c, np.linalg.norm(products, axis=1), rtol=1e-5)


@pytest.mark.slow
def test_whole_carry_and_per_leaf_norms_match_jacfwd_of_unrolled_scan():
    cell = nn.LSTMCell(4)
    carry, params = _linen_cell(cell, 2)
    step = rnn.linen_step(cell, params)
    inputs = jax.random.normal(KEY, (7, 2))
    jacobians = _jacobians_by_jacfwd(step, carry, inputs)
    c_block, h_block = jacobians[:, :4, :4], jacobians[:, 4:, 4:]
    for ord_, numpy_ord in (("spectral", 2), ("fro", "fro")):
        whole = _jit(rnn.jacobian_norms, step, ord=ord_)(carry, inputs)
        c_norms, h_norms = _jit(rnn.jacobian_norms, step, ord=ord_, per_leaf=True)(carry, inputs)
        np.testing.assert_allclose(whole, np.linalg.norm(jacobians, numpy_ord, (1, 2)), rtol=1e-5)
        np.testing.assert_allclose(c_norms, np.linalg.norm(c_block, numpy_ord, (1, 2)), rtol=1e-5)
        np.testing.assert_allclose(h_norms, np.linalg.norm(h_block, numpy_ord, (1, 2)), rtol=1e-5)


def test_nnx_gru_norms_match_jacfwd_and_work_under_jit_and_vmap():
    cell = nnx.GRUCell(3, 5, rngs=nnx.Rngs(1))
    step = rnn.nnx_step(cell)
    carries = 0.5 * jax.random.normal(KEY, (2, 5))
    inputs = jax.random.normal(jax.random.key(2), (9, 3))
    batched = jax.jit(jax.vmap(lambda c: rnn.jacobian_norms(step, c, inputs)))(carries)
    for carry, got in zip(carries, batched, strict=True):
        want = np.linalg.norm(_jacobians_by_jacfwd(step, carry, inputs), 2, (1, 2))
        np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.slow
def test_power_iteration_agrees_with_svd_to_its_tolerance():
    cell = nn.LSTMCell(40)
    carry, params = _linen_cell(cell, 2)
    step = rnn.linen_step(cell, params)
    inputs = jax.random.normal(KEY, (60, 2))
    exact = _jit(rnn.jacobian_norms, step, method="exact")(carry, inputs)
    tol = 1e-4
    power = _jit(rnn.jacobian_norms, step, method="power", tol=tol, key=KEY)(carry, inputs)
    # Rayleigh-Ritz estimates are lower bounds; float32 SVD itself is good to ~1e-6.
    assert np.all(power <= exact * (1 + 1e-5))
    np.testing.assert_allclose(power, exact, rtol=tol)


@pytest.mark.slow
def test_step_jacobian_norms_match_the_closed_form_jacobians_of_flax_cells():
    size, input_size = 6, 3
    inputs = jax.random.normal(KEY, (5, input_size))
    # SimpleCell: dh'/dh = D(1 - h'^2) W_h^T (flax multiplies row vectors).
    cell = nn.SimpleCell(size)
    carry, params = _linen_cell(cell, input_size)
    step = rnn.linen_step(cell, params)
    hidden = jax.lax.scan(step, carry, inputs)[1]
    recurrent = np.asarray(params["h"]["kernel"]).T
    want = [np.linalg.norm((1 - np.asarray(h) ** 2)[:, None] * recurrent, 2) for h in hidden]
    np.testing.assert_allclose(rnn.step_jacobian_norms(step, carry, inputs), want, rtol=1e-5)
    # GRUCell, flax convention: z is the keep gate.
    cell = nn.GRUCell(size)
    carry, params = _linen_cell(cell, input_size)
    step = rnn.linen_step(cell, params)
    want, h = [], np.asarray(carry, np.float64)
    for x in np.asarray(inputs, np.float64):
        p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        sigmoid = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
        r = sigmoid(x @ p["ir"]["kernel"] + p["ir"]["bias"] + h @ p["hr"]["kernel"])
        z = sigmoid(x @ p["iz"]["kernel"] + p["iz"]["bias"] + h @ p["hz"]["kernel"])
        hidden_n = h @ p["hn"]["kernel"] + p["hn"]["bias"]
        n = np.tanh(x @ p["in"]["kernel"] + p["in"]["bias"] + r * hidden_n)
        jacobian = (
            np.diag(z)
            + ((h - n) * z * (1 - z))[:, None] * p["hz"]["kernel"].T
            + ((1 - z) * (1 - n**2))[:, None]
            * (r[:, None] * p["hn"]["kernel"].T
               + (hidden_n * r * (1 - r))[:, None] * p["hr"]["kernel"].T)
        )
        want.append(np.linalg.norm(jacobian, 2))
        h = (1 - z) * n + z * h
    np.testing.assert_allclose(rnn.step_jacobian_norms(step, carry, inputs), want, rtol=1e-5)


def test_lstm_step_c_block_is_the_forget_gate():
    # The per-leaf c block holds h_{t-1} fixed: dc_t/dc_{t-1} = D(f_t) by construction,
    # so its spectral norm is max_i f_t,i (a check of the block, not of the post's claim).
    cell = nn.LSTMCell(5)
    carry, params = _linen_cell(cell, 2)
    step = rnn.linen_step(cell, params)
    inputs = jax.random.normal(KEY, (6, 2))

    def forget_gate(c_h, x):
        logits = x @ params["if"]["kernel"] + c_h[1] @ params["hf"]["kernel"]
        return step(c_h, x)[0], jax.nn.sigmoid(logits + params["hf"]["bias"])

    forget = jax.lax.scan(forget_gate, carry, inputs)[1]
    c_norms, _ = rnn.step_jacobian_norms(step, carry, inputs, per_leaf=True)
    np.testing.assert_allclose(c_norms, forget.max(axis=1), rtol=1e-5)


@pytest.mark.slow
def test_lstm_full_one_step_norm_exceeds_one_while_its_c_block_is_exactly_the_forget_gate():
    # Strong recurrent kernels: every f_t < 1 and the c block is D(f_t) exactly, but the
    # full one-step Jacobian of (c, h), with the paths through h, has norm above 1.
    cell = nn.LSTMCell(4)
    carry, params = _linen_cell(cell, 2)
    for gate in ("hi", "hf", "hg", "ho"):
        params[gate]["kernel"] = 4.0 * params[gate]["kernel"]
    step = rnn.linen_step(cell, params)
    inputs = jax.random.normal(jax.random.key(3), (12, 2))
    carries = jax.lax.scan(lambda c, x: (step(c, x)[0],) * 2, carry, inputs)[1]
    previous = jax.tree.map(lambda first, rest: jnp.concatenate([first[None], rest[:-1]]),
                            carry, carries)

    def one_step(c_h, x):  # the full Jacobian of one step, by jacfwd on the flat carry
        flat, unravel = jax.flatten_util.ravel_pytree(c_h)
        return jax.jacfwd(lambda f: jax.flatten_util.ravel_pytree(step(unravel(f), x)[0])[0])(
            flat)

    jacobians = np.asarray(jax.jit(jax.vmap(one_step))(previous, inputs), np.float64)
    forget = jax.nn.sigmoid(inputs @ params["if"]["kernel"] + previous[1] @ params["hf"]["kernel"]
                            + params["hf"]["bias"])
    whole = _jit(rnn.step_jacobian_norms, step)(carry, inputs)
    c_norms, _ = _jit(rnn.step_jacobian_norms, step, per_leaf=True)(carry, inputs)
    np.testing.assert_allclose(whole, np.linalg.norm(jacobians, 2, (1, 2)), rtol=1e-5)
    np.testing.assert_allclose(jacobians[:, :4, :4], np.asarray(jax.vmap(jnp.diag)(forget)),
                               atol=1e-7)
    np.testing.assert_allclose(c_norms, forget.max(axis=1), rtol=1e-6)
    assert np.all(forget < 1)
    assert np.max(whole) > 1.0


@pytest.mark.slow
def test_gradient_norms_over_time_match_explicit_gradients():
    cell = nn.LSTMCell(4)
    carry, params = _linen_cell(cell, 3)
    step = rnn.linen_step(cell, params)
    inputs = jax.random.normal(KEY, (8, 3))

    def loss_fn(final_carry, outputs):
        return jnp.sum(jnp.sin(outputs)) + jnp.sum(final_carry[0] ** 2)

    def loss_from(t, carry_t, inputs_from_t):
        final_carry, outputs = jax.lax.scan(step, carry_t, inputs_from_t)
        earlier = jax.lax.scan(step, carry, inputs[:t])[1]
        return loss_fn(final_carry, jnp.concatenate([earlier, outputs]))

    got = jax.jit(lambda c, x: rnn.gradient_norms_over_time(loss_fn, step, c, x,
                                                            per_leaf=True))(carry, inputs)
    input_grads = jax.jit(jax.grad(lambda xs: loss_from(0, carry, xs)))(inputs)
    np.testing.assert_allclose(got.inputs, np.linalg.norm(input_grads, axis=1), rtol=1e-5)

    @functools.partial(jax.jit, static_argnums=0)
    def carry_grads(t):
        carry_t = jax.lax.scan(step, carry, inputs[:t])[0]
        return jax.grad(lambda c: loss_from(t, c, inputs[t:]))(carry_t)

    for t in (0, 5):
        grad_c, grad_h = carry_grads(t)
        np.testing.assert_allclose(got.carry[0][t], np.linalg.norm(grad_c), rtol=1e-5)
        np.testing.assert_allclose(got.carry[1][t], np.linalg.norm(grad_h), rtol=1e-5)
    whole = jax.jit(lambda c, x: rnn.gradient_norms_over_time(loss_fn, step, c, x))(
        carry, inputs).carry
    np.testing.assert_allclose(whole, np.hypot(got.carry[0], got.carry[1]), rtol=1e-5)


def test_bad_arguments_raise_value_errors_naming_them():
    step = _linear_step(jnp.eye(3))
    carry, inputs = jnp.ones(3), jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="ord"):
        rnn.jacobian_norms(step, carry, inputs, ord="nuclear")
    with pytest.raises(ValueError, match="method"):
        rnn.jacobian_norms(step, carry, inputs, method="lanczos")
    with pytest.raises(ValueError, match="inputs"):
        rnn.jacobian_norms(step, carry, jnp.zeros(()))
    with pytest.raises(ValueError, match="step_fn"):
        rnn.jacobian_norms(lambda h, x: (jnp.concatenate([h, x]), h), carry, inputs)
    with pytest.raises(ValueError, match="step_fn"):
        rnn.step_jacobian_norms(lambda h, x: ((h, h), h), carry, inputs)
    with pytest.raises(ValueError, match="carry"):
        rnn.gradient_norms_over_time(lambda c, y: 0.0, step, jnp.ones(3, int), inputs)


class _DropoutCell(nnx.Module):
    """A SimpleCell reading its inputs through dropout."""

    def __init__(self, rngs, rate=0.5):
        self.cell = nnx.SimpleCell(2, 3, rngs=rngs)
        self.dropout = nnx.Dropout(rate, rngs=rngs)

    def __call__(self, carry, x):
        return self.cell(carry, self.dropout(x))


def test_nnx_step_refuses_a_cell_that_draws_dropout_masks_naming_the_cell():
    # It failed with flax's TraceContextError in jacobian_norms (and reused one mask per
    # step when called eagerly).
    with pytest.raises(ValueError, match=r"cell must not write its state.*\('dropout',\)"
                                         r".*rate=0.5.*RNG stream.*cell\.eval\(\)"):
        rnn.nnx_step(_DropoutCell(nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"cell must not write its state.*path \(\)"):
        rnn.nnx_step(nnx.Dropout(0.1, rngs=nnx.Rngs(0)))


def test_nnx_step_accepts_dropout_that_draws_no_mask_and_equals_the_cell_without_it():
    carry, x = jnp.full(3, 0.3), jax.random.normal(KEY, (2,))
    expected = nnx.SimpleCell(2, 3, rngs=nnx.Rngs(0))(carry, x)
    evaluated = _DropoutCell(nnx.Rngs(0))
    evaluated.eval()
    for cell in (evaluated, _DropoutCell(nnx.Rngs(0), rate=0.0)):
        jax.tree.map(np.testing.assert_array_equal, rnn.nnx_step(cell)(carry, x), expected)


class _BatchNormCell(nnx.Module):
    """A SimpleCell reading its inputs through batch normalisation (over a batch axis)."""

    def __init__(self, rngs):
        self.cell = nnx.SimpleCell(2, 3, rngs=rngs)
        self.norm = nnx.BatchNorm(2, rngs=rngs)

    def __call__(self, carry, x):
        return self.cell(carry, self.norm(x))


class _NoisyCell(nnx.Module):
    """A SimpleCell adding noise drawn from its own Rngs: a state write outside nnx's
    train-mode attributes (deterministic, use_running_average)."""

    def __init__(self, rngs):
        self.cell = nnx.SimpleCell(2, 3, rngs=rngs)
        self.rngs = rngs

    def __call__(self, carry, x):
        return self.cell(carry, x + jax.random.normal(self.rngs.noise(), x.shape))


def test_nnx_step_refuses_a_cell_whose_batch_norm_updates_its_statistics():
    # It was accepted, and jacobian_norms then failed inside flax with a TraceContextError
    # ("Cannot mutate BatchStat from a different trace level"); called eagerly it updated
    # the cell's running statistics at every step.
    carry, inputs = jnp.full((4, 3), 0.3), jax.random.normal(KEY, (5, 4, 2))
    with pytest.raises(ValueError, match=r"cell must not write its state.*BatchNorm at path "
                                         r"\('norm',\) with use_running_average=False"
                                         r".*cell\.eval\(\)"):
        rnn.nnx_step(_BatchNormCell(nnx.Rngs(0)))
    # In eval mode the stored statistics are used: the norms are those of the cell
    # unrolled by hand, and the cell's statistics stay as they were.
    cell = _BatchNormCell(nnx.Rngs(0))
    cell.eval()
    got = rnn.jacobian_norms(rnn.nnx_step(cell), carry, inputs)
    want = np.linalg.norm(_jacobians_by_jacfwd(lambda c, x: cell(c, x), carry, inputs),
                          2, (1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    mean, var = jax.tree.leaves(nnx.state(cell, nnx.BatchStat))
    np.testing.assert_array_equal(mean, np.zeros(2))
    np.testing.assert_array_equal(var, np.ones(2))
    cell.train()  # and back in train mode it is refused again
    with pytest.raises(ValueError, match=r"use_running_average=False"):
        rnn.nnx_step(cell)


def test_nnx_step_refuses_a_state_write_under_a_trace_that_the_attributes_miss():
    # A cell drawing from its own Rngs (no deterministic flag): flax's TraceContextError
    # inside jacobian_norms before; now a ValueError pointing to cell.eval().
    # (flax 0.11, the declared minimum, raises no TraceContextError for it: nothing to
    # translate there.)
    if tuple(int(part) for part in flax.__version__.split(".")[:2]) >= (0, 12):
        step = rnn.nnx_step(_NoisyCell(nnx.Rngs(0)))
        with pytest.raises(ValueError, match=r"cell must not write its state.*"
                                             r"TraceContextError.*cell\.eval\(\)") as error:
            rnn.jacobian_norms(step, jnp.zeros(3), jnp.zeros((2, 2)))
        assert isinstance(error.value.__cause__, flax.errors.TraceContextError)
    # Attention with a dropout rate of 0 draws nothing and is accepted in train mode.
    rnn.nnx_step(nnx.MultiHeadAttention(2, 4, dropout_rate=0.0, deterministic=False,
                                        rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"deterministic=False and dropout_rate=0.1"):
        rnn.nnx_step(nnx.MultiHeadAttention(2, 4, dropout_rate=0.1, deterministic=False,
                                            rngs=nnx.Rngs(0)))


def test_cells_of_the_other_flax_api_and_non_callable_steps_are_refused_naming_them():
    # nnx_step accepted a linen cell, which then failed with flax's
    # CallCompactUnboundModuleError; a non-callable step_fn failed inside jax.
    with pytest.raises(ValueError, match=r"cell must be a flax\.nnx Module, got "
                                         r"flax\.linen\.SimpleCell; use linen_step"):
        rnn.nnx_step(nn.SimpleCell(3))
    with pytest.raises(ValueError, match=r"cell must be a flax\.nnx Module, got function"):
        rnn.nnx_step(lambda c, x: (c, x))
    with pytest.raises(ValueError, match=r"cell must be a flax\.linen Module, got "
                                         r"flax\.nnx\.SimpleCell; use nnx_step"):
        rnn.linen_step(nnx.SimpleCell(2, 3, rngs=nnx.Rngs(0)), {})
    carry, inputs = jnp.zeros(3), jnp.zeros((2, 3))
    for norms_fn in (rnn.jacobian_norms, rnn.step_jacobian_norms,
                     functools.partial(rnn.gradient_norms_over_time, lambda c, y: y.sum())):
        for step_fn, shown in ((3, "int 3"), (None, "NoneType None")):
            with pytest.raises(ValueError, match=rf"step_fn must be a callable .*got {shown}"):
                norms_fn(step_fn, carry, inputs)


def test_a_cell_carry_of_the_wrong_width_is_refused_naming_both_shapes():
    # It failed inside flax ("dot_general requires contracting dimensions to have the same
    # shape"), naming neither carry nor the width the cell expects.
    step = rnn.nnx_step(nnx.SimpleCell(2, 3, rngs=nnx.Rngs(0)))
    inputs = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match=r"carry must have the shapes of the cell's carry "
                                         r".*expected \(3,\), got \(4,\)") as error:
        rnn.jacobian_norms(step, jnp.zeros(4), inputs)
    assert isinstance(error.value.__cause__, TypeError)
    with pytest.raises(ValueError, match=r"expected \(5, 3\), got \(5, 4\)"):  # a batch
        rnn.jacobian_norms(step, jnp.zeros((5, 4)), jnp.zeros((4, 5, 2)))


def test_a_linen_lstm_carry_of_the_wrong_width_is_refused_by_every_function():
    cell = nn.LSTMCell(3)
    carry, params = _linen_cell(cell, 2)
    step, inputs = rnn.linen_step(cell, params), jnp.zeros((4, 2))
    wide = (carry[0], jnp.zeros(4))
    message = r"carry must have .*expected \(\(3,\), \(3,\)\), got \(\(3,\), \(4,\)\)"
    for norms_fn in (rnn.jacobian_norms, rnn.step_jacobian_norms,
                     functools.partial(rnn.gradient_norms_over_time, lambda c, y: y.sum())):
        with pytest.raises(ValueError, match=message):
            norms_fn(step, wide, inputs)
    # A failure that is not the carry's (inputs of the wrong width) stays flax's own.
    with pytest.raises(flax.errors.ScopeParamShapeError):
        rnn.jacobian_norms(step, carry, jnp.zeros((4, 5)))


def _tanh_step(matrix):
    """`h' = tanh(A h + x)`, a cell whose Jacobian depends on the trajectory."""
    return lambda h, x: (jnp.tanh(matrix @ h + x), h)


@pytest.mark.slow
def test_power_method_norms_are_differentiable_in_both_modes_like_svd():
    # Reverse mode used to fail on the power iteration's while_loop; the implicit rule
    # d sigma = u^T dM v must agree with differentiating the SVD, in both modes, and with
    # central finite differences (check_grads, float64).
    matrix = 0.5 * jax.random.normal(KEY, (4, 4))
    inputs = jax.random.normal(jax.random.key(1), (3, 4))

    def norms(matrix, norms_fn, method, tol=1e-4):
        return norms_fn(_tanh_step(matrix), jnp.ones(4), inputs, method=method, tol=tol, key=KEY)

    @functools.partial(jax.jit, static_argnums=1)
    def derivatives(matrix, norms_fn):  # one compile per function, not one per mode
        power = functools.partial(norms, norms_fn=norms_fn, method="power", tol=1e-5)
        return (jax.jacrev(norms)(matrix, norms_fn, "exact"), jax.jacrev(power)(matrix),
                jax.jacfwd(power)(matrix))

    for norms_fn in (rnn.jacobian_norms, rnn.step_jacobian_norms):
        exact, reverse, forward = derivatives(matrix, norms_fn)
        np.testing.assert_allclose(reverse, exact, atol=2e-5)
        np.testing.assert_allclose(forward, exact, atol=2e-5)
    with enable_x64():
        matrix64 = matrix.astype(jnp.float64)
        inputs = inputs.astype(jnp.float64)
        check_grads(
            jax.jit(lambda m: norms(m, rnn.jacobian_norms, "power", 1e-9)), (matrix64,),
            order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6,
        )


def test_auto_method_above_64_carry_entries_has_the_exact_gradient_of_matrix_powers():
    # h' = A h: d carry_2/d carry_0 = A^2, d sigma(A^2) = u^T (dA A + A dA) v, so the
    # gradient is u (A v)^T + (A^T u) v^T (numpy SVD, float64).
    size = 65
    matrix = jax.random.normal(KEY, (size, size)) / np.sqrt(size)
    inputs = jnp.zeros((2, size))
    grad = jax.jit(jax.grad(
        lambda m: rnn.jacobian_norms(_linear_step(m), jnp.ones(size), inputs, key=KEY)[1]
    ))(matrix)
    a = np.asarray(matrix, np.float64)
    left, _, right = np.linalg.svd(a @ a)
    u, v = left[:, 0], right[0]
    np.testing.assert_allclose(grad, np.outer(u, a @ v) + np.outer(a.T @ u, v), atol=2e-4)


@pytest.mark.slow
def test_integer_tokens_are_accepted_and_give_the_gradients_of_one_hot_inputs():
    embedding = jax.random.normal(KEY, (11, 4))
    step = lambda h, token: (jnp.tanh(embedding[token] + 0.9 * h), h)  # noqa: E731
    one_hot_step = lambda h, x: (jnp.tanh(x @ embedding + 0.9 * h), h)  # noqa: E731
    loss_fn = lambda c, outputs: jnp.sum(c**2) + jnp.sum(jnp.sin(outputs))  # noqa: E731
    tokens = jax.random.randint(jax.random.key(1), (6,), 0, 11)
    carry = jnp.ones(4)
    gradient_norms = jax.jit(rnn.gradient_norms_over_time, static_argnums=(0, 1))
    one_hot = jax.nn.one_hot(tokens, 11)
    want = gradient_norms(loss_fn, one_hot_step, carry, one_hot)
    want_norms = _jit(rnn.jacobian_norms, one_hot_step)(carry, one_hot)
    norms = _jit(rnn.jacobian_norms, step)
    for dtype in (jnp.int32, jnp.uint8, jnp.int16):
        got = gradient_norms(loss_fn, step, carry, tokens.astype(dtype))
        np.testing.assert_allclose(got.carry, want.carry, rtol=1e-5)
        np.testing.assert_array_equal(got.inputs, np.zeros(6))  # no float leaf
        np.testing.assert_allclose(norms(carry, tokens.astype(dtype)), want_norms, rtol=1e-5)
    # Mixed inputs: only the floating leaf counts in `inputs`.
    mixed_step = lambda h, x: step(h + x["noise"], x["token"])  # noqa: E731
    noise = jax.random.normal(jax.random.key(2), (6, 4))
    got = gradient_norms(loss_fn, mixed_step, carry, {"token": tokens, "noise": noise})
    noise_grads = jax.jit(jax.grad(
        lambda n: loss_fn(*jax.lax.scan(mixed_step, carry, {"token": tokens, "noise": n}))
    ))(noise)
    np.testing.assert_allclose(got.inputs, np.linalg.norm(noise_grads, axis=1), rtol=1e-5)


@pytest.mark.slow
def test_power_iteration_key_accepts_typed_and_legacy_keys_alike():
    step = _tanh_step(0.5 * jax.random.normal(KEY, (4, 4)))
    carry, inputs = jnp.ones(4), jax.random.normal(KEY, (3, 4))
    run = lambda **kw: rnn.jacobian_norms(step, carry, inputs, method="power", **kw)  # noqa: E731
    typed = run(key=jax.random.key(3))
    np.testing.assert_array_equal(run(key=jax.random.PRNGKey(3)), typed)
    np.testing.assert_allclose(typed, run(key=jax.random.key(4)), rtol=1e-4)
    step_norms = rnn.step_jacobian_norms(step, carry, inputs, method="power",
                                         key=jax.random.PRNGKey(5))
    np.testing.assert_array_equal(
        step_norms,
        rnn.step_jacobian_norms(step, carry, inputs, method="power", key=jax.random.key(5)),
    )
    with pytest.raises(ValueError, match="key"):
        run(key=3)


@pytest.mark.slow
def test_the_power_iteration_needs_an_explicit_key_and_the_exact_methods_do_not():
    step = _tanh_step(0.5 * jax.random.normal(KEY, (4, 4)))
    carry, inputs = jnp.ones(4), jax.random.normal(KEY, (3, 4))
    for norms_fn in (rnn.jacobian_norms, rnn.step_jacobian_norms):
        with pytest.raises(ValueError, match="key is required"):
            norms_fn(step, carry, inputs, method="power")
        exact = norms_fn(step, carry, inputs, method="exact")  # no key needed
        np.testing.assert_allclose(norms_fn(step, carry, inputs), exact)  # auto, 4 rows
        np.testing.assert_allclose(norms_fn(step, carry, inputs, method="power", key=KEY),
                                   exact, rtol=1e-4)
        norms_fn(step, carry, inputs, method="power", ord="fro")  # Frobenius: no iteration
    # "auto" above 64 rows runs the power iteration, so it needs the key too.
    big = _linear_step(jnp.eye(65))
    with pytest.raises(ValueError, match=r"key is required.*65 rows"):
        rnn.step_jacobian_norms(big, jnp.ones(65), jnp.zeros((2, 65)))
    np.testing.assert_allclose(
        rnn.step_jacobian_norms(big, jnp.ones(65), jnp.zeros((2, 65)), key=KEY), [1, 1],
        rtol=1e-5)


@pytest.mark.slow
def test_both_norm_functions_take_the_same_options_including_log_space():
    assert (inspect.signature(rnn.jacobian_norms).parameters
            == inspect.signature(rnn.step_jacobian_norms).parameters)
    step = _tanh_step(0.5 * jax.random.normal(KEY, (4, 4)))
    carry, inputs = jnp.ones(4), jax.random.normal(KEY, (5, 4))
    for norms_fn in (rnn.jacobian_norms, rnn.step_jacobian_norms):
        for ord_ in ("spectral", "fro"):
            plain = norms_fn(step, carry, inputs, ord=ord_, per_leaf=True)
            logs = norms_fn(step, carry, inputs, ord=ord_, per_leaf=True, log_space=True)
            np.testing.assert_allclose(logs, np.log(plain), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_empty_sequences_give_empty_norms():
    cell = nn.LSTMCell(3)
    carry, params = _linen_cell(cell, 2)
    step = rnn.linen_step(cell, params)
    inputs = jnp.zeros((0, 2))
    assert rnn.jacobian_norms(step, carry, inputs).shape == (0,)
    assert rnn.step_jacobian_norms(step, carry, inputs, method="power", key=KEY).shape == (0,)
    c_norms, h_norms = rnn.jacobian_norms(step, carry, inputs, per_leaf=True, ord="fro")
    assert c_norms.shape == h_norms.shape == (0,)
    got = rnn.gradient_norms_over_time(lambda c, y: jnp.sum(c[1]), step, carry, inputs,
                                       per_leaf=True)
    assert got.inputs.shape == got.carry[0].shape == got.carry[1].shape == (0,)


@pytest.mark.slow
def test_float64_carries_give_float64_norms_and_bfloat16_carries_work():
    cell = nn.GRUCell(4)
    carry, params = _linen_cell(cell, 2)
    inputs = jax.random.normal(KEY, (5, 2))
    with enable_x64():
        params64, carry64, inputs64 = jax.tree.map(
            lambda a: a.astype(jnp.float64), (params, carry, inputs)
        )
        step64 = rnn.linen_step(cell.copy(param_dtype=jnp.float64), params64)
        want = np.linalg.norm(_jacobians_by_jacfwd(step64, carry64, inputs64), 2, (1, 2))
        for method in ("exact", "power"):
            got = _jit(rnn.jacobian_norms, step64, method=method, tol=1e-7, key=KEY)(
                carry64, inputs64)
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, want, rtol=1e-11)
        grads = jax.jit(lambda c, x: rnn.gradient_norms_over_time(
            lambda c, y: jnp.sum(y**2), step64, c, x))(carry64, inputs64)
        assert grads.inputs.dtype == grads.carry.dtype == jnp.float64
    # bfloat16: float32 norms within bfloat16 rounding of the float32 cell's.
    params16, carry16, inputs16 = jax.tree.map(
        lambda a: a.astype(jnp.bfloat16), (params, carry, inputs)
    )
    step16 = rnn.linen_step(cell.copy(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16), params16)
    as32 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.float32), tree)  # noqa: E731
    want = _jit(rnn.jacobian_norms, rnn.linen_step(cell, as32(params16)))(as32(carry16),
                                                                         as32(inputs16))
    for method in ("exact", "power"):
        got = _jit(rnn.jacobian_norms, step16, method=method, key=KEY)(carry16, inputs16)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=0.1)


@pytest.mark.slow
def test_norms_of_huge_tiny_and_zero_jacobians_and_gradients_are_computed_scaled():
    # The probe's cases, by the default method (the slow tests below take every method):
    # 1e20 gave NaN (its squares overflow), log(1e-21) gave -inf (its squares flush to
    # zero), an exactly-zero Jacobian (saturated tanh) gave a NaN derivative.
    carry, inputs = jnp.ones(3), jnp.zeros((2, 3))
    np.testing.assert_allclose(
        rnn.step_jacobian_norms(_linear_step(1e20 * jnp.eye(3)), carry, inputs), [1e20] * 2,
        rtol=1e-5)
    np.testing.assert_allclose(
        rnn.step_jacobian_norms(_linear_step(1e-21 * jnp.eye(3)), carry, inputs,
                                log_space=True), [np.log(1e-21)] * 2, rtol=1e-6)
    grad = jax.grad(lambda a: rnn.jacobian_norms(_saturated_tanh_step(a), carry,
                                                 jnp.zeros((3, 3))).sum())(1.0)
    assert grad == 0.0
    got = rnn.gradient_norms_over_time(lambda c, y: 1e20 * jnp.sum(c), _linear_step(jnp.eye(3)),
                                       carry, inputs)
    np.testing.assert_allclose(got.carry, [np.sqrt(3) * 1e20] * 2, rtol=1e-6)


def test_a_bfloat16_carry_keeps_its_log_scales_in_float32():
    # The block is rescaled by its largest entry, a bfloat16 number; its logarithm must
    # still be taken in float32 (a bfloat16 log is good to 3 digits only). 37.25 is a
    # bfloat16 number, so XLA's excess precision cannot change the product.
    step = lambda h, x: (jnp.asarray(37.25, h.dtype) * h, h)  # noqa: E731
    got = rnn.jacobian_norms(step, jnp.ones(3, jnp.bfloat16), jnp.zeros((3, 3), jnp.bfloat16),
                             log_space=True)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np.arange(1, 4) * np.log(37.25),
                               rtol=1e-6)


@pytest.mark.slow
def test_huge_and_tiny_jacobians_neither_overflow_nor_underflow_inside():
    # ||1e20 I_3|| = 1e20 and 1.7e20 are finite in float32, but the squares of the
    # Frobenius scale overflowed: NaN. The squares of 1e-21 flushed to zero: -inf.
    huge, tiny = _linear_step(1e20 * jnp.eye(3)), _linear_step(1e-21 * jnp.eye(3))
    carry, inputs = jnp.ones(3), jnp.zeros((2, 3))
    for method, ord_, want in (("exact", "spectral", 1.0), ("power", "spectral", 1.0),
                               ("exact", "fro", np.sqrt(3))):
        options = {"method": method, "ord": ord_, "key": KEY}
        np.testing.assert_allclose(rnn.step_jacobian_norms(huge, carry, inputs, **options),
                                   [1e20 * want] * 2, rtol=1e-5)
        np.testing.assert_allclose(
            rnn.step_jacobian_norms(tiny, carry, inputs, log_space=True, **options),
            [np.log(1e-21 * want)] * 2, rtol=1e-6)
        # Cumulative: ||(1e20 I)^t|| in log space, beyond float32 from t = 2 on.
        np.testing.assert_allclose(
            rnn.jacobian_norms(huge, carry, jnp.zeros((4, 3)), log_space=True, **options),
            np.arange(1, 5) * np.log(1e20) + np.log(want), rtol=1e-6)


def test_a_tiny_per_leaf_block_beside_an_ordinary_one_keeps_its_norm():
    # The c block 1e-25 I beside an h block 0.5 I: the whole block's scale left the c
    # block's squares (1e-50) below float32, so its Frobenius and power norms were 0.
    step = lambda c_h, x: ((1e-25 * c_h[0], 0.5 * c_h[1]), x)  # noqa: E731
    carry, inputs = (jnp.ones(4), jnp.ones(4)), jnp.zeros((3, 4))
    for method, ord_, want in (("power", "spectral", 1.0), ("exact", "fro", 2.0),
                               ("exact", "spectral", 1.0)):
        c_norms, h_norms = rnn.step_jacobian_norms(step, carry, inputs, per_leaf=True,
                                                   method=method, ord=ord_, key=KEY)
        np.testing.assert_allclose(c_norms, [1e-25 * want] * 3, rtol=1e-5)
        np.testing.assert_allclose(h_norms, [0.5 * want] * 3, rtol=1e-5)


def _saturated_tanh_step(a):
    """tanh(20 a h + 20) at h = 1: tanh(40) = 1 in float32, an exactly-zero Jacobian."""
    return lambda h, x: (jnp.tanh(a * 20 * h + 20 + x), h)


def _inactive_relu_step(a):
    """(relu(a c - 5), a h): the c block is exactly zero at c = 1, the h block a I."""
    return lambda c_h, x: ((jax.nn.relu(a * c_h[0] - 5 + x), a * c_h[1]), x)


@pytest.mark.slow
def test_an_exactly_zero_jacobian_has_norm_zero_and_gradient_zero_not_nan():
    # The norm is constant 0 in `a` near a = 1, so its derivative is 0; sqrt and log at
    # the zero scale gave NaN.
    carry, inputs = jnp.ones(3), jnp.zeros((3, 3))
    for norms_fn, method, ord_, log_space in (
        (rnn.jacobian_norms, "exact", "spectral", False),
        (rnn.jacobian_norms, "power", "spectral", True),
        (rnn.step_jacobian_norms, "exact", "fro", True),
        (rnn.step_jacobian_norms, "power", "spectral", False),
    ):
        def total(a, norms_fn=norms_fn, method=method, ord_=ord_, log_space=log_space):
            norms = norms_fn(_saturated_tanh_step(a), carry, inputs, method=method, ord=ord_,
                             log_space=log_space, key=KEY)
            return jnp.sum(jnp.where(jnp.isinf(norms), 0.0, norms)), norms

        (_, norms), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(1.0)
        np.testing.assert_array_equal(norms, [-np.inf if log_space else 0.0] * 3)
        assert grad == 0.0
    # NaN in still gives NaN out, from the step it enters.
    nan_inputs = inputs.at[1, 0].set(jnp.nan)
    norms = rnn.step_jacobian_norms(_saturated_tanh_step(1.0), carry, nan_inputs)
    assert norms[0] == 0.0 and np.all(np.isnan(norms[1:]))


@pytest.mark.slow
def test_a_zero_per_leaf_block_has_gradient_zero_and_the_other_its_closed_form():
    # An inactive ReLU's c block is 0 and the h block a I: ||d carry_t / d carry_0|| = a^t
    # for h and for the whole carry, whose derivative at a = 1 is sum_t t = 6.
    carry, inputs = (jnp.ones(3), jnp.ones(3)), jnp.zeros((3, 3))

    @functools.partial(jax.jit, static_argnums=0)
    def norms_and_derivatives(method):  # one compile per method
        def sums(a):
            c_norms, h_norms = rnn.jacobian_norms(_inactive_relu_step(a), carry, inputs,
                                                  per_leaf=True, method=method, key=KEY)
            whole = rnn.jacobian_norms(_inactive_relu_step(a), carry, inputs, method=method,
                                       key=KEY)
            return jnp.stack([jnp.sum(c_norms), jnp.sum(h_norms), jnp.sum(whole)]), c_norms

        return jax.jacrev(sums, has_aux=True)(1.0)

    for method in ("exact", "power"):
        grads, c_norms = norms_and_derivatives(method)
        np.testing.assert_array_equal(c_norms, np.zeros(3))
        np.testing.assert_allclose(grads, [0.0, 6.0, 6.0], rtol=1e-5)


@pytest.mark.slow
def test_gradient_norms_neither_overflow_nor_underflow_and_zero_has_gradient_zero():
    # ||dL/d h_t|| = 1.7e20 (1.7e-21) for L = 1e20 sum(h_T) (1e-21 sum(h_T)): the sum of
    # squares gave inf (0); and a saturated tanh, whose gradient is exactly zero, gave a
    # NaN derivative of the norms.
    step = lambda h, x: (h + x, h)  # noqa: E731
    carry, inputs = jnp.ones(3), jnp.zeros((2, 3))
    for weight in (1e20, 1e-21):
        got = rnn.gradient_norms_over_time(lambda c, y, w=weight: w * jnp.sum(c), step,
                                           carry, inputs)
        np.testing.assert_allclose(got.carry, [weight * np.sqrt(3)] * 2, rtol=1e-6)
        np.testing.assert_allclose(got.inputs, [weight * np.sqrt(3)] * 2, rtol=1e-6)

    def total(a):
        norms = rnn.gradient_norms_over_time(
            lambda c, y: jnp.sum(c), lambda h, x: _saturated_tanh_step(a)(h, x), carry,
            inputs)
        return jnp.sum(norms.carry[:1]) + jnp.sum(norms.inputs), norms

    (_, norms), grad = jax.value_and_grad(total, has_aux=True)(1.0)
    np.testing.assert_array_equal(norms.carry[0], 0.0)
    assert grad == 0.0
    # A NaN gradient (NaN in) is NaN out; an infinite one is inf.
    nan_norms = rnn.gradient_norms_over_time(lambda c, y: jnp.sum(c**2), step,
                                             carry.at[0].set(jnp.nan), inputs)
    assert np.all(np.isnan(nan_norms.inputs)) and np.all(np.isnan(nan_norms.carry))
    inf_norms = rnn.gradient_norms_over_time(lambda c, y: jnp.inf * jnp.sum(c), step, carry,
                                             inputs)
    np.testing.assert_array_equal(inf_norms.carry, [np.inf] * 2)


@pytest.mark.slow
def test_nan_at_one_step_gives_nan_norms_from_that_step_on():
    step = _tanh_step(0.5 * jax.random.normal(KEY, (4, 4)))
    inputs = jax.random.normal(jax.random.key(1), (6, 4)).at[3, 1].set(jnp.nan)
    for method in ("exact", "power"):
        cumulative = np.asarray(rnn.jacobian_norms(step, jnp.ones(4), inputs, method=method,
                                                   key=KEY))
        per_step = np.asarray(rnn.step_jacobian_norms(step, jnp.ones(4), inputs,
                                                      method=method, key=KEY))
        assert np.all(np.isfinite(cumulative[:3])) and np.all(np.isnan(cumulative[3:]))
        assert np.all(np.isfinite(per_step[:3])) and np.all(np.isnan(per_step[3:]))
    fro = rnn.jacobian_norms(step, jnp.full(4, jnp.nan), inputs[:3], ord="fro")
    assert np.all(np.isnan(fro))
    grads = rnn.gradient_norms_over_time(lambda c, y: jnp.sum(c), step, jnp.ones(4), inputs)
    assert np.all(np.isnan(grads.inputs[:4])) and np.all(np.isnan(grads.carry[:4]))


@pytest.mark.slow
def test_norms_work_under_jit_vmap_checkpoint_scan_and_forward_mode_of_parameters():
    cell = nn.SimpleCell(3)
    carry, params = _linen_cell(cell, 2)
    inputs = jax.random.normal(KEY, (4, 2))
    loss_fn = lambda c, y: jnp.sum(jnp.sin(y)) + jnp.sum(c**2)  # noqa: E731

    def measures(params):
        step = rnn.linen_step(cell, params)
        grads = rnn.gradient_norms_over_time(loss_fn, step, carry, inputs)
        return (rnn.jacobian_norms(step, carry, inputs, method="power", key=KEY),
                rnn.step_jacobian_norms(step, carry, inputs, ord="fro"),
                grads.inputs, grads.carry)

    stacked = jax.tree.map(lambda p: jnp.stack([p, 1.5 * p]), params)
    one_by_one = [
        jax.jit(measures)(jax.tree.map(lambda p, i=i: p[i], stacked)) for i in range(2)
    ]
    batched = jax.jit(jax.vmap(measures))(stacked)
    scanned = jax.lax.scan(lambda c, p: (c, jax.checkpoint(measures)(p)), 0, stacked)[1]
    for got in (batched, scanned):
        for i in range(2):
            for g, w in zip(got, one_by_one[i], strict=True):
                np.testing.assert_allclose(g[i], w, rtol=1e-5)
    # Forward over reverse and reverse mode through checkpoint, against finite
    # differences along one direction.
    def total(p):
        return sum(jnp.sum(m) for m in measures(p))

    direction = jax.tree.map(jnp.ones_like, params)
    tangent, reverse = jax.jit(lambda p: (jax.jvp(total, (p,), (direction,))[1],
                                          jax.grad(jax.checkpoint(total))(p)))(params)
    total = jax.jit(total)
    eps = 1e-3
    shifted = lambda s: total(jax.tree.map(lambda p, d: p + s * d, params, direction))  # noqa: E731
    finite = (shifted(eps) - shifted(-eps)) / (2 * eps)
    np.testing.assert_allclose(tangent, finite, rtol=2e-2)
    np.testing.assert_allclose(
        sum(jnp.sum(r) for r in jax.tree.leaves(reverse)), tangent, rtol=1e-4
    )


@pytest.mark.slow
def test_nnx_step_is_differentiable_in_the_cells_state_like_linen_step():
    cell = nnx.SimpleCell(2, 3, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(cell)
    carry, inputs = jnp.full(3, 0.3), jax.random.normal(KEY, (4, 2))

    def norms(state):
        step = rnn.nnx_step(nnx.merge(graphdef, state))
        return jnp.sum(rnn.jacobian_norms(step, carry, inputs, method="power", key=KEY))

    direction = jax.tree.map(jnp.ones_like, state)
    reverse, forward = jax.jit(lambda s: (jax.grad(norms)(s),
                                          jax.jvp(norms, (s,), (direction,))[1]))(state)
    dot = sum(jnp.sum(r) for r in jax.tree.leaves(reverse))
    np.testing.assert_allclose(dot, forward, rtol=1e-4)
    jitted = jax.jit(jax.vmap(norms))(jax.tree.map(lambda s: jnp.stack([s, s]), state))
    np.testing.assert_allclose(jitted, [jax.jit(norms)(state)] * 2, rtol=1e-5)
