"""The zeroth-order optimisers that a chain of optax transforms cannot express: ZO-Bench's
ZO-SGD-Sign (`sign_coefficients`), HiZOO, MeZO-SVRG, the perturbation mask (SparseMeZO),
and ZO-Bench's conservative step, each against a direct float64 NumPy implementation of
its update, step by step, with the directions drawn from the library's key path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64, standard_promotion

from jaxtricks import estimators

CURVATURES = np.array([1.0, 4.0, 25.0, 0.5])
TARGET = np.array([0.5, -1.0, 0.25, 2.0])


def loss_np(x):
    return float(np.sum(CURVATURES * (x - TARGET) ** 2) + np.sum(np.cos(x)))


def loss_jnp(x):
    return jnp.sum(jnp.asarray(CURVATURES) * (x - jnp.asarray(TARGET)) ** 2) + jnp.sum(jnp.cos(x))


def directions(key, t, num_directions, x):
    """The library's directions of step `t`: `split(fold_in(key, t), n)[i]`, drawn by
    the "gaussian" kind."""
    step_keys = jax.random.split(jax.random.fold_in(key, t), num_directions)
    return [np.asarray(estimators.Gaussian().draw(k, jnp.asarray(x))[0], np.float64)
            for k in step_keys]


def central(f, x, sigma, zs):
    """`(1/n) sum_i (f(x + sigma z_i) - f(x - sigma z_i)) / (2 sigma) z_i`."""
    return np.mean([(f(x + sigma * z) - f(x - sigma * z)) / (2 * sigma) * z for z in zs], 0)


def run(tx, x, steps, **extra):
    """`steps` jitted updates of `tx` from `x`, the params after each."""
    @jax.jit
    def step(x, state):
        updates, state = tx.update(x, state, x, **extra)
        return optax.apply_updates(x, updates), state

    state, path = tx.init(x), []
    for _ in range(steps):
        x, state = step(x, state)
        path.append(jax.tree.map(np.asarray, x))
    return path, state


# ---- HiZOO -------------------------------------------------------------------------


@pytest.mark.parametrize("num_samples", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_hizoo_follows_the_official_update_in_float64(num_samples):
    key, sigma, alpha, lr = jax.random.key(3), 0.05, 0.3, 0.02
    with enable_x64():
        x0 = jnp.zeros(4, jnp.float64)
        tx = optax.chain(estimators.hizoo_estimate(key, num_samples=num_samples,
                                                   smoothing=alpha, sigma=sigma),
                         optax.sgd(lr))
        path, state = run(tx, x0, 4, value_fn=loss_jnp)
        x, hessian = np.zeros(4), np.ones(4)
        for t in range(4):
            zs = directions(key, t, num_samples // 2, x)
            slopes, curvatures, f0 = 0.0, 0.0, loss_np(x)
            for z in zs:
                plus = loss_np(x + sigma * z / np.sqrt(hessian))
                minus = loss_np(x - sigma * z / np.sqrt(hessian))
                slopes = slopes + (plus - minus) / (2 * sigma) * z
                curvatures = curvatures + abs(plus + minus - 2 * f0) / (2 * sigma**2) * z * z
            hessian = (1 - alpha) * hessian + alpha * hessian * curvatures / len(zs)
            x = x - lr * slopes / len(zs) / np.sqrt(hessian)
            np.testing.assert_allclose(path[t], x, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(state[0].hessian, hessian, rtol=1e-10)
        assert not np.allclose(hessian, 1.0)


def test_hizoo_without_smoothing_is_the_central_estimate_in_a_jitted_chain():
    # alpha = 0 (a schedule here) keeps Sigma = 1: the step is MeZO's central estimate.
    key = jax.random.key(0)
    x = {"w": jnp.ones((2, 2)), "b": jnp.zeros(3)}

    def objective(p):
        return jnp.sum(p["w"] ** 2) + jnp.sum(jnp.sin(p["b"]))

    tx = optax.chain(optax.clip_by_global_norm(1e6), estimators.hizoo_estimate(
        key, num_samples=4, smoothing=optax.constant_schedule(0.0), sigma=0.01))

    @jax.jit
    def both(state):
        return tx.update(x, state, x, value_fn=objective), estimators.zeroth_order_grad(
            objective, x, jax.random.fold_in(key, 0), num_samples=4, sigma=0.01)

    (updates, state), expected = both(tx.init(x))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 updates, expected)
    jax.tree.map(lambda h: np.testing.assert_array_equal(h, 1.0), state[1].hessian)
    assert int(state[1].count) == 1


# ---- MeZO-SVRG ---------------------------------------------------------------------


def test_svrg_follows_its_update_in_float64_with_the_same_directions_at_the_anchor():
    key, sigma, lr, interval = jax.random.key(4), 1e-3, 0.05, 3
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 3)), rng.normal(size=12)
    batches = [np.arange(4) + 4 * (t % 3) for t in range(5)]

    def objective_np(x, rows):
        return float(np.mean((a[rows] @ x - b[rows]) ** 2))

    with enable_x64():
        aj, bj = jnp.asarray(a), jnp.asarray(b)
        tx = optax.chain(estimators.svrg_estimate(key, num_samples=4, sigma=sigma,
                                                  update_interval=interval), optax.sgd(lr))

        @jax.jit
        def step(x, state, rows):
            updates, state = tx.update(
                x, state, x, value_fn=lambda p: jnp.mean((aj[rows] @ p - bj[rows]) ** 2),
                full_value_fn=lambda p: jnp.mean((aj @ p - bj) ** 2))
            return optax.apply_updates(x, updates), state

        xj, state = jnp.zeros(3, jnp.float64), tx.init(jnp.zeros(3, jnp.float64))
        x = np.zeros(3)
        for t, rows in enumerate(batches):
            zs = directions(key, t, 2, x)
            if t % interval == 0:
                estimate = central(lambda p: objective_np(p, np.arange(12)), x, sigma, zs)
                anchor, anchor_estimate = x, estimate
            else:
                def batch(p, rows=rows):
                    return objective_np(p, rows)

                estimate = (central(batch, x, sigma, zs) - central(batch, anchor, sigma, zs)
                            + anchor_estimate)
            x = x - lr * estimate
            xj, state = step(xj, state, jnp.asarray(rows))
            np.testing.assert_allclose(xj, x, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(state[0].anchor, anchor, rtol=1e-12)
        np.testing.assert_allclose(state[0].anchor_estimate, anchor_estimate, rtol=1e-9)


def test_svrg_refuses_an_update_without_full_value_fn():
    tx = estimators.svrg_estimate(jax.random.key(0), num_samples=2, update_interval=2)
    with pytest.raises(ValueError, match="full_value_fn must be passed"):
        tx.update(None, tx.init(jnp.zeros(2)), jnp.zeros(2), value_fn=jnp.sum)


# ---- ZO-SGD-Sign and ZO-SGD-Cons (ZO-Bench) ----------------------------------------


@pytest.mark.parametrize("num_samples", [2, 4])
def test_sign_coefficients_is_zo_benchs_sign_of_the_scalar_times_the_direction(num_samples):
    # ZO-Bench zo-bench/trainer.py zo_step: graddiff_times_z = np.sign(projected_grad) * z.
    key, sigma, lr = jax.random.key(5), 1e-3, 0.1
    with enable_x64():
        tx = optax.chain(estimators.zeroth_order_estimate(
            key, num_samples=num_samples, sigma=sigma, sign_coefficients=True), optax.sgd(lr))
        path, _ = run(tx, jnp.zeros(4, jnp.float64), 3, value_fn=loss_jnp)
        x = np.zeros(4)
        for t in range(3):
            zs = directions(key, t, num_samples // 2, x)
            x = x - lr * np.mean([np.sign(loss_np(x + sigma * z) - loss_np(x - sigma * z)) * z
                                  for z in zs], 0)
            np.testing.assert_allclose(path[t], x, rtol=1e-12)


def test_elementwise_sign_is_the_chain_with_sign_sgd():
    key = jax.random.key(6)
    with enable_x64():
        x = jnp.zeros(4, jnp.float64)
        tx = optax.chain(estimators.zeroth_order_estimate(key, num_samples=2, sigma=1e-3),
                         optax.sign_sgd(0.1))
        updates, _ = tx.update(x, tx.init(x), x, value_fn=loss_jnp)
        z = directions(key, 0, 1, np.zeros(4))[0]
        coefficient = loss_np(1e-3 * z) - loss_np(-1e-3 * z)
        np.testing.assert_array_equal(updates, -0.1 * np.sign(coefficient * z))


def test_keep_best_step_follows_zo_benchs_conservative_step_in_float64():
    # ZO-Bench zo-bench/trainer.py zo_conserv_step: try x - lr g, then x + lr g, keep
    # whichever of those and x has the least loss (its if/else, transcribed).
    key, sigma, lr = jax.random.key(7), 1e-3, 0.08
    with enable_x64():
        tx = optax.chain(estimators.zeroth_order_estimate(key, num_samples=2, sigma=sigma),
                         optax.sgd(lr), estimators.keep_best_step())
        path, _ = run(tx, jnp.zeros(4, jnp.float64), 5, value_fn=loss_jnp)
        x = np.zeros(4)
        for t in range(5):
            step = lr * central(loss_np, x, sigma, directions(key, t, 1, x))
            loss0, loss1, loss2 = loss_np(x), loss_np(x - step), loss_np(x + step)
            if loss1 > loss0:
                x = x if loss0 < loss2 else x + step
            else:
                x = x - step if loss1 < loss2 else x + step
            np.testing.assert_allclose(path[t], x, rtol=1e-12, atol=1e-15)
    assert loss_np(x) < loss_np(np.zeros(4))


# ---- the perturbation mask (SparseMeZO) ----------------------------------------------


def test_a_masked_estimate_perturbs_and_moves_only_the_masked_entries():
    key, sigma, lr = jax.random.key(8), 1e-3, 0.05
    mask = np.array([True, False, True, False])
    with enable_x64():
        tx = optax.chain(estimators.zeroth_order_estimate(
            key, num_samples=2, sigma=sigma, mask=jnp.asarray(mask)), optax.sgd(lr))
        x0 = jnp.asarray(TARGET + 1.0)
        path, _ = run(tx, x0, 3, value_fn=loss_jnp)
        x = np.asarray(x0)
        for t in range(3):
            (z,) = directions(key, t, 1, x)
            x = x - lr * np.where(mask, central(loss_np, x, sigma, [np.where(mask, z, 0)]), 0)
            np.testing.assert_allclose(path[t], x, rtol=1e-12)
            np.testing.assert_array_equal(path[t][~mask], np.asarray(x0)[~mask])


def test_a_callable_mask_selects_small_weights_as_sparse_mezo_does():
    params = {"w": jnp.array([[0.01, 3.0], [-0.02, -4.0]]), "b": jnp.array([0.5, 0.0])}

    def small(p):  # SparseMeZO: |w| at most the layer's median magnitude
        return jax.tree.map(lambda w: jnp.abs(w) <= jnp.median(jnp.abs(w)), p)

    tx = optax.chain(estimators.zeroth_order_estimate(jax.random.key(9), num_samples=4,
                                                      mask=small), optax.sgd(0.1))
    state = tx.init(params)
    updates, _ = jax.jit(lambda s: tx.update(params, s, params, value_fn=lambda p: sum(
        jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(p))))(state)
    assert jnp.all(updates["w"][:, 1] == 0) and jnp.all(updates["w"][:, 0] != 0)
    assert updates["b"][0] == 0 and updates["b"][1] != 0


def test_a_masked_forward_gradient_uses_masked_tangents():
    key = jax.random.key(10)
    mask = {"w": jnp.array([True, False, True]), "b": False}
    params = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array(0.5)}

    def objective(p):
        return jnp.sum(p["w"] ** 2) * p["b"] + p["b"] ** 3

    tx = estimators.forward_gradient_estimate(key, num_samples=1, mask=mask)
    estimate, _ = jax.jit(lambda s: tx.update(None, s, params, value_fn=objective))(
        tx.init(params))
    z = estimators.Gaussian().draw(jax.random.split(jax.random.fold_in(key, 0), 1)[0], params)[0]
    tangent = jax.tree.map(lambda m, u: jnp.where(m, u, 0.0), mask, z)
    derivative = jax.jvp(objective, (params,), (tangent,))[1]
    np.testing.assert_allclose(estimate["w"], derivative * tangent["w"], rtol=1e-5)
    assert estimate["b"] == 0


@pytest.mark.parametrize(
    ("mask", "match"),
    [({"w": jnp.ones(3, bool)}, "mask and params must have the same tree structure"),
     ({"w": jnp.ones(3), "b": True}, "mask must hold booleans.*float32"),
     ({"w": jnp.ones(2, bool), "b": True}, r"mask must hold booleans.*shape \(2,\).*\['w'\]")],
    ids=["structure", "dtype", "shape"])
def test_a_bad_mask_is_refused_naming_it(mask, match):
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    tx = estimators.zeroth_order_estimate(jax.random.key(0), num_samples=2, mask=mask)
    with pytest.raises(ValueError, match=match):
        tx.update(None, tx.init(params), params, value_fn=lambda p: jnp.sum(p["w"]))


# ---- FZOO's normalised estimate is a baseline ----------------------------------------


def test_fzoo_is_the_forward_estimate_with_the_batch_std_baseline():
    # FZOO (DKmiyan/FZOO trainer.py zo_step): g = sum_i (L_i - L_0) / (N std(L)) z_i,
    # Rademacher z_i, torch.std(unbiased=False); here divided by sigma as well.
    key, sigma, n = jax.random.key(11), 1e-2, 8
    with enable_x64():
        x = jnp.asarray(TARGET + 0.5)
        g = jax.jit(lambda x: estimators.zeroth_order_grad(
            loss_jnp, x, key, num_samples=n, sigma=sigma, antithetic=False,
            directions="rademacher", baseline=estimators.GroupBaseline(
                center="unperturbed", scale="batch", ddof=0, eps=0.0)))(x)
        zs = [np.asarray(estimators.Rademacher().draw(k, x)[0])
              for k in jax.random.split(key, n)]
        losses = np.array([loss_np(np.asarray(x) + sigma * z) for z in zs])
        fzoo = np.sum([(value - loss_np(np.asarray(x))) / (n * losses.std()) * z
                       for value, z in zip(losses, zs, strict=True)], 0)
        np.testing.assert_allclose(np.asarray(g) * sigma, fzoo, rtol=1e-9)


# ---- what each optimiser stores, in units of the params' size ------------------------


@pytest.mark.parametrize(("make", "stored"), [
    (lambda k: optax.chain(estimators.zeroth_order_estimate(k, num_samples=2),
                           optax.sgd(0.1)), 0),
    (lambda k: optax.chain(estimators.zeroth_order_estimate(k, num_samples=2),
                           optax.sgd(0.1, momentum=0.9)), 1),
    (lambda k: optax.chain(estimators.zeroth_order_estimate(k, num_samples=2,
                                                            sign_coefficients=True),
                           optax.sgd(0.1)), 0),
    (lambda k: optax.chain(estimators.zeroth_order_estimate(k, num_samples=2),
                           standard_promotion(optax.adam(0.1))), 2),
    (lambda k: optax.chain(estimators.zeroth_order_estimate(k, num_samples=2),
                           optax.sgd(0.1), estimators.keep_best_step()), 0),
    (lambda k: optax.chain(estimators.hizoo_estimate(k, num_samples=2, smoothing=1e-6),
                           optax.sgd(0.1)), 1),
    (lambda k: optax.chain(estimators.svrg_estimate(k, num_samples=2, update_interval=5),
                           optax.sgd(0.1)), 2),
    (lambda k: optax.chain(estimators.forward_gradient_estimate(k, num_samples=1),
                           optax.sgd(0.1)), 0),
], ids=["zo-sgd", "momentum", "sign", "adam", "conservative", "hizoo", "svrg",
        "forward-gradient"])
def test_the_state_holds_the_params_sized_buffers_of_the_memory_table(make, stored):
    params = {"w": jnp.zeros((5, 7)), "b": jnp.zeros(7)}
    state = make(jax.random.key(0)).init(params)
    size = sum(leaf.size for leaf in jax.tree.leaves(state)
               if leaf.ndim and leaf.dtype != jnp.uint32)  # not the counts and the key
    assert size == stored * optax.tree.size(params)


# ---- arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(("make", "match"), [
    (lambda: estimators.hizoo_estimate(jax.random.key(0), num_samples=3, smoothing=0.1),
     "num_samples must be even"),
    (lambda: estimators.hizoo_estimate(jax.random.key(0), num_samples=0, smoothing=0.1),
     "num_samples must be an integer >= 2"),
    (lambda: estimators.hizoo_estimate(jax.random.key(0), num_samples=2, smoothing=1.0),
     r"smoothing must lie in \[0, 1\)"),
    (lambda: estimators.hizoo_estimate(jax.random.key(0), num_samples=2, smoothing=-0.1),
     r"smoothing must lie in \[0, 1\)"),
    (lambda: estimators.hizoo_estimate(jax.random.key(0), num_samples=2, smoothing=0.1,
                                       sigma=0.0), "sigma must lie in"),
    (lambda: estimators.hizoo_estimate("key", num_samples=2, smoothing=0.1), "key"),
    (lambda: estimators.svrg_estimate(jax.random.key(0), num_samples=2, update_interval=0),
     "update_interval must be an integer >= 1"),
    (lambda: estimators.svrg_estimate(jax.random.key(0), num_samples=2, update_interval=2.0),
     "update_interval must be an integer"),
], ids=["odd", "zero", "smoothing 1", "smoothing < 0", "sigma", "key", "interval 0",
        "interval float"])
def test_bad_arguments_are_refused_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_hizoo_refuses_an_update_without_value_fn():
    tx = estimators.hizoo_estimate(jax.random.key(0), num_samples=2, smoothing=0.1)
    with pytest.raises(ValueError, match="value_fn must be passed"):
        tx.update(None, tx.init(jnp.zeros(2)), jnp.zeros(2))
