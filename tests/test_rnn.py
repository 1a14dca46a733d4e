"""Tests of jaxtricks.rnn: Jacobian and gradient norms through time (spec section 8)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtricks import rnn

KEY = jax.random.key(0)


def _linear_step(matrix):
    return lambda h, x: (matrix @ h + x, h)


def _linen_cell(cell, input_size, key=KEY):
    """A linen cell's step function, initial carry (random, to leave the origin) and params."""
    carry = cell.initialize_carry(key, (input_size,))
    carry = jax.tree.map(lambda c: 0.5 * jax.random.normal(key, c.shape), carry)
    params = cell.init(key, carry, jnp.zeros(input_size))["params"]
    return carry, params


def _jacobians_by_jacfwd(step_fn, carry, inputs):
    """`[T, D, D]` Jacobians d carry_t / d carry_0 of the unrolled scan (independent path)."""

    def all_carries(flat0):
        _, unravel = jax.flatten_util.ravel_pytree(carry)

        def body(c, x):
            new, _ = step_fn(c, x)
            return new, jax.flatten_util.ravel_pytree(new)[0]

        return jax.lax.scan(body, unravel(flat0), inputs)[1]

    flat0 = jax.flatten_util.ravel_pytree(carry)[0]
    return np.asarray(jax.jacfwd(all_carries)(flat0), np.float64)


def test_linear_cell_norms_equal_norms_of_matrix_powers():
    size, length = 6, 25
    matrix = 1.2 * jax.random.normal(KEY, (size, size)) / np.sqrt(size)
    step = _linear_step(matrix)
    inputs, carry = jnp.zeros((length, size)), jnp.ones(size)
    powers = [np.linalg.matrix_power(np.asarray(matrix, np.float64), t) for t in range(1, 26)]
    for ord_, numpy_ord in (("spectral", 2), ("fro", "fro")):
        want = np.array([np.linalg.norm(p, numpy_ord) for p in powers])
        for method in ("exact", "power"):
            got = rnn.jacobian_norms(step, carry, inputs, ord=ord_, method=method)
            np.testing.assert_allclose(got, want, rtol=2e-5)


def test_log_space_keeps_vanishing_norms_beyond_float32_range():
    # ||(0.01 I)^t|| = 1e-2t underflows float32 after t = 23; its log does not.
    step = _linear_step(0.01 * jnp.eye(3))
    log_norms = rnn.jacobian_norms(step, jnp.ones(3), jnp.zeros((100, 3)), log_space=True)
    np.testing.assert_allclose(log_norms, np.arange(1, 101) * np.log(0.01), rtol=1e-5)


def _lstm_without_recurrence(size, input_size, forget_logit=None):
    """A linen LSTM with all recurrent kernels zero (gates depend on x only, spec 8.5)."""
    cell = nn.LSTMCell(size)
    carry, params = _linen_cell(cell, input_size)
    for gate in ("hi", "hf", "hg", "ho"):
        params[gate]["kernel"] = jnp.zeros_like(params[gate]["kernel"])
    if forget_logit is not None:
        params["if"]["kernel"] = jnp.zeros_like(params["if"]["kernel"])
        params["hf"]["bias"] = jnp.full(size, forget_logit)
    return rnn.linen_step(cell, params), carry, params


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


def test_whole_carry_and_per_leaf_norms_match_jacfwd_of_unrolled_scan():
    cell = nn.LSTMCell(4)
    carry, params = _linen_cell(cell, 2)
    step = rnn.linen_step(cell, params)
    inputs = jax.random.normal(KEY, (7, 2))
    jacobians = _jacobians_by_jacfwd(step, carry, inputs)
    c_block, h_block = jacobians[:, :4, :4], jacobians[:, 4:, 4:]
    for ord_, numpy_ord in (("spectral", 2), ("fro", "fro")):
        whole = rnn.jacobian_norms(step, carry, inputs, ord=ord_)
        c_norms, h_norms = rnn.jacobian_norms(step, carry, inputs, ord=ord_, per_leaf=True)
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


def test_power_iteration_agrees_with_svd_to_its_tolerance():
    cell = nn.LSTMCell(40)
    carry, params = _linen_cell(cell, 2)
    step = rnn.linen_step(cell, params)
    inputs = jax.random.normal(KEY, (60, 2))
    exact = rnn.jacobian_norms(step, carry, inputs, method="exact")
    tol = 1e-4
    power = rnn.jacobian_norms(step, carry, inputs, method="power", tol=tol)
    # Rayleigh-Ritz estimates are lower bounds; float32 SVD itself is good to ~1e-6.
    assert np.all(power <= exact * (1 + 1e-5))
    np.testing.assert_allclose(power, exact, rtol=tol)


def test_step_jacobian_norms_match_spec_formulas_for_flax_cells():
    size, input_size = 6, 3
    inputs = jax.random.normal(KEY, (5, input_size))
    # SimpleCell: dh'/dh = D(1 - h'^2) W_h^T (flax multiplies row vectors, spec 8.2).
    cell = nn.SimpleCell(size)
    carry, params = _linen_cell(cell, input_size)
    step = rnn.linen_step(cell, params)
    hidden = jax.lax.scan(step, carry, inputs)[1]
    recurrent = np.asarray(params["h"]["kernel"]).T
    want = [np.linalg.norm((1 - np.asarray(h) ** 2)[:, None] * recurrent, 2) for h in hidden]
    np.testing.assert_allclose(rnn.step_jacobian_norms(step, carry, inputs), want, rtol=1e-5)
    # GRUCell, flax convention (spec 8.4): z is the keep gate.
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
    # dc_t/dc_{t-1} = D(f_t) (spec 8.3), so its spectral norm is max_i f_t,i.
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

    got = rnn.gradient_norms_over_time(loss_fn, step, carry, inputs, per_leaf=True)
    input_grads = jax.grad(lambda xs: loss_from(0, carry, xs))(inputs)
    np.testing.assert_allclose(got.inputs, np.linalg.norm(input_grads, axis=1), rtol=1e-5)
    for t in (0, 5):
        carry_t = jax.lax.scan(step, carry, inputs[:t])[0]
        grad_c, grad_h = jax.grad(lambda c, t=t: loss_from(t, c, inputs[t:]))(carry_t)
        np.testing.assert_allclose(got.carry[0][t], np.linalg.norm(grad_c), rtol=1e-5)
        np.testing.assert_allclose(got.carry[1][t], np.linalg.norm(grad_h), rtol=1e-5)
    whole = rnn.gradient_norms_over_time(loss_fn, step, carry, inputs).carry
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
