"""Gradient flow through time in recurrent cells: Jacobian and gradient norms per step.

The gradient through time is a product of one-step Jacobians (spec section 8.1):

    d carry_t / d carry_0 = J_t J_{t-1} ... J_1,     J_k = d carry_k / d carry_{k-1},

and vanishing (exploding) gradients are this product shrinking (growing) geometrically
in t. The functions here measure it for any step function `(carry, x_t) -> (carry, y_t)`
(the `jax.lax.scan` convention, which flax's linen and nnx cells follow), in one pass
through time.

Reference: Su Jianlin, "也来谈谈RNN的梯度消失/爆炸问题" (2020),
https://kexue.fm/archives/7888.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxtricks._src import checks, keys
from jaxtricks.rnn import _spectral, _steps
from jaxtricks.rnn._steps import Carry, StepFn

_ORDS = ("spectral", "fro")
_METHODS = ("auto", "exact", "power")
# Largest Jacobian block (rows = columns) whose spectral norm "auto" takes by SVD.
_EXACT_MAX_SIZE = 64
# Seed of the power iteration's starting basis when no key is given.
_DEFAULT_SEED = 0


class GradientNorms(NamedTuple):
    """Gradient norms at every time step, from one backward pass.

    Attributes:
        inputs: `[T]`, `||dL / d x_t||` (all leaves of `x_t` together).
        carry: `[T]`, `||dL / d carry_t||` for the carry entering step t (the one
            combined with `x_t`); with `per_leaf=True`, a pytree shaped like the carry
            holding one `[T]` array per leaf.
    """

    inputs: jax.Array
    carry: Any


def jacobian_norms(
    step_fn: StepFn,
    carry: Carry,
    inputs: Any,
    *,
    ord: str = "spectral",
    per_leaf: bool = False,
    method: str = "auto",
    tol: float = 1e-4,
    max_iterations: int = 100,
    key: jax.Array | None = None,
    log_space: bool = False,
) -> Any:
    """Norms `||d carry_t / d carry_0||` for t = 1..T, in one forward pass through time.

    Forward mode over the whole carry: the tangent block `P_t = (d carry_t / d carry_0)^T`
    (`[D, D]`, D the number of carry entries) is carried through `jax.lax.scan`, each step
    applying the step's linearisation to its D rows (`jax.linearize` + `jax.vmap`), so the
    cost is D Jacobian-vector products per step and only one `[D, D]` block lives at a
    time (never the T Jacobians). The block is renormalised every step and its scale
    kept as a logarithm, so norms of 1e-300 or 1e300 neither underflow nor overflow
    inside (see `log_space`).

    The Frobenius norm is exact. The spectral norm is computed per step by

    - `method="exact"`: singular values of the block (SVD, O(D^3) per step);
    - `method="power"`: subspace (block power) iteration with 8 vectors on the block M,
      `V <- qr(M^T M V)`, with the Rayleigh-Ritz pair `sigma = sigma_max(M V)`,
      `v = V w` (`w` the top eigenvector of `(M V)^T M V`), `u = M v / sigma`, stopped
      when the residual `||M^T u - sigma v|| <= tol * sigma` (or after
      `max_iterations`). Then `sigma` is a lower bound of `||M||_2` with relative error
      about `tol^2 sigma / gap` (gap: `sigma_1 - sigma_2`) and its derivative, given by
      the implicit rule `d sigma = u^T (dM) v` (a `jax.custom_jvp`, linear in `dM`, so
      forward and reverse mode both work), has relative error about `tol`. The first
      step starts from a Gaussian basis drawn with `key`, every later step from the
      previous step's basis (the leading right singular vectors of
      `d carry_t / d carry_0` converge in t, so a few iterations suffice). O(D^2) per
      iteration;
    - `method="auto"`: "exact" when the block has at most 64 rows, else "power".

    Every method can be differentiated (`jax.grad`, `jax.jvp`, `jax.jacfwd`) with respect
    to the carry and to anything `step_fn` closes over, e.g. the cell's parameters.

    Args:
        step_fn: `(carry, x_t) -> (new_carry, y_t)`, with `new_carry` of the same
            structure, shapes and dtypes as `carry`; see `linen_step`, `nnx_step`.
        carry: the initial carry, a pytree of floating arrays (e.g. `(c, h)`).
        inputs: a pytree of arrays with a leading time axis `[T, ...]`, T >= 0; any
            dtype (integer tokens too).
        ord: "spectral" (largest singular value) or "fro" (Frobenius).
        per_leaf: False: the norm of the Jacobian of the whole carry, flattened.
            True: for each carry leaf a, the norm of its own block `d a_t / d a_0`
            (e.g. the `c` path and the `h` path of an LSTM), as a pytree like `carry`.
        method: "auto", "exact" or "power" (spectral norm only; see above).
        tol: relative residual at which the power iteration stops, > 0.
        max_iterations: most power iterations per time step.
        key: a `jax.random` key (typed or legacy `PRNGKey`) for the power iteration's
            starting basis; None uses the fixed `jax.random.key(0)`, so that results
            are reproducible by default. Different keys agree to `tol`.
        log_space: return the natural logarithms of the norms instead.

    Returns:
        `[T]` norms (or a pytree of them with `per_leaf=True`), in the carry's floating
        dtype promoted to at least float32 (float64 for a float64 carry). A NaN
        entering at step t (in the carry or in `x_t`) gives NaN from step t on.

    Raises:
        ValueError: unknown `ord` or `method`, `tol` not > 0, `max_iterations` < 1,
            `inputs` without a common time axis, a carry that is not floating point, a
            `key` that is not a key, or a `step_fn` whose carry changes structure,
            shape or dtype.

    References:
        https://kexue.fm/archives/7888 (the product of Jacobians);
        the derivative of a simple singular value: Magnus, "On differentiating
        eigenvalues and eigenvectors", Econometric Theory 1(2), 1985.
    """
    log_norms = _jacobian_scan(
        step_fn, carry, inputs, cumulative=True, ord=ord, per_leaf=per_leaf,
        method=method, tol=tol, max_iterations=max_iterations, key=key,
    )
    return log_norms if log_space else jax.tree.map(jnp.exp, log_norms)


def step_jacobian_norms(
    step_fn: StepFn,
    carry: Carry,
    inputs: Any,
    *,
    ord: str = "spectral",
    per_leaf: bool = False,
    method: str = "auto",
    tol: float = 1e-4,
    max_iterations: int = 100,
    key: jax.Array | None = None,
) -> Any:
    """Norms of the one-step Jacobians `||J_t|| = ||d carry_t / d carry_{t-1}||`, t = 1..T.

    Evaluated along the trajectory from `carry`; `prod_k ||J_k||` bounds
    `||d carry_t / d carry_0||` (for `ord="spectral"`). Same algorithm, arguments and
    transformations (differentiable with every method) as `jacobian_norms` (the tangent
    block is reset to the identity every step). For a tanh cell `J_t = D(1 - h_t^2) U`
    (column-vector convention; flax's kernels are its transpose), for an LSTM's `c`
    path `D(f_t)` plus damped terms.

    Args:
        step_fn, carry, inputs, ord, per_leaf, method, tol, max_iterations, key: as in
            `jacobian_norms`.

    Returns:
        `[T]` norms (or a pytree of them with `per_leaf=True`), dtype as in
        `jacobian_norms`.

    Raises:
        ValueError: as `jacobian_norms`.

    References:
        https://kexue.fm/archives/7888.
    """
    log_norms = _jacobian_scan(
        step_fn, carry, inputs, cumulative=False, ord=ord, per_leaf=per_leaf,
        method=method, tol=tol, max_iterations=max_iterations, key=key,
    )
    return jax.tree.map(jnp.exp, log_norms)


def gradient_norms_over_time(
    loss_fn: Callable[[Carry, Any], jax.Array],
    step_fn: StepFn,
    carry: Carry,
    inputs: Any,
    *,
    per_leaf: bool = False,
) -> GradientNorms:
    """`||dL / d x_t||` and `||dL / d carry_t||` for every t, in one backward pass.

    The sequence is scanned with a zero perturbation `delta_t` added to the carry entering
    each step, `carry_t + delta_t`, and `L = loss_fn(final_carry, outputs)` is
    differentiated once with respect to all `delta_t` and all floating `x_t`:
    `dL/d delta_t = dL/d carry_t = sum_{s >= t} (dl_s/d carry_s) J_s ... J_{t+1}`,
    the gradient that reaches step t from everything after it.

    Args:
        loss_fn: `(final_carry, outputs) -> scalar`, `outputs` the stacked `y_t` `[T, ...]`.
        step_fn: `(carry, x_t) -> (new_carry, y_t)` (see `jacobian_norms`).
        carry: the initial carry, a pytree of floating arrays.
        inputs: a pytree of arrays with a leading time axis `[T, ...]`, T >= 0. Leaves
            of integer or bool dtype (tokens fed to an embedding lookup, say) are passed
            through undifferentiated and do not count in `inputs` norms.
        per_leaf: also split `||dL/d carry_t||` per carry leaf (a pytree like `carry`).

    Returns:
        `GradientNorms(inputs=[T], carry=[T] or pytree of [T])`, index t being the step
        that reads `x_t` (so `carry[0]` is `||dL / d carry_0||`); `inputs` is all zeros
        when no leaf of `inputs` is floating. Norms are at least float32 (float64 for
        float64 leaves).

    Raises:
        ValueError: `inputs` without a common time axis, a carry that is not floating
            point, or a `step_fn` whose carry changes structure, shape or dtype.

    References:
        https://kexue.fm/archives/7888.
    """
    length = _steps.check_sequence(inputs)
    _steps.check_step(step_fn, carry, inputs)
    perturbations = jax.tree.map(lambda c: jnp.zeros((length, *jnp.shape(c)), c.dtype), carry)
    leaves, treedef = jax.tree.flatten(inputs)
    floating = [jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) for leaf in leaves]

    def perturbed_loss(perturbations, float_leaves):
        remaining = iter(float_leaves)
        xs = treedef.unflatten(
            [next(remaining) if is_float else leaf
             for leaf, is_float in zip(leaves, floating, strict=True)]
        )

        def body(state, slice_t):
            perturbation, x = slice_t
            return step_fn(jax.tree.map(jnp.add, state, perturbation), x)

        final_carry, outputs = jax.lax.scan(body, carry, (perturbations, xs))
        return loss_fn(final_carry, outputs)

    float_leaves = [leaf for leaf, is_float in zip(leaves, floating, strict=True) if is_float]
    carry_grads, input_grads = jax.grad(perturbed_loss, argnums=(0, 1))(
        perturbations, float_leaves
    )
    carry_norms = (
        jax.tree.map(lambda g: _norms_over_time(g, length), carry_grads) if per_leaf
        else _norms_over_time(carry_grads, length)
    )
    return GradientNorms(inputs=_norms_over_time(input_grads, length), carry=carry_norms)


def _norms_over_time(tree, length: int) -> jax.Array:
    """`[T]` Euclidean norms of a pytree of `[T, ...]` arrays, all leaves together."""
    leaves = jax.tree.leaves(tree)
    dtype = jnp.result_type(*leaves, jnp.float32)
    squares = [
        jnp.sum(jnp.square(leaf.astype(dtype)).reshape(length, math.prod(leaf.shape[1:])), 1)
        for leaf in leaves
    ]
    return jnp.sqrt(sum(squares, jnp.zeros(length, dtype)))


def _jacobian_scan(
    step_fn, carry, inputs, *, cumulative, ord, per_leaf, method, tol, max_iterations, key
):
    """Log norms of `d carry_t/d carry_0` (cumulative) or `d carry_t/d carry_{t-1}`."""
    checks.check_choice("ord", ord, _ORDS)
    checks.check_choice("method", method, _METHODS)
    checks.check_scalar("tol", tol, low=0.0, low_inclusive=False)
    checks.check_positive_int("max_iterations", max_iterations)
    key = jax.random.key(_DEFAULT_SEED) if key is None else keys.as_key(key, "key")
    _steps.check_sequence(inputs)
    _steps.check_step(step_fn, carry, inputs)
    flat_carry, unravel = ravel_pytree(carry)
    dtype = jnp.result_type(flat_carry, jnp.float32)
    blocks = _leaf_blocks(carry) if per_leaf else [slice(0, flat_carry.size)]
    sizes = [block.stop - block.start for block in blocks]
    use_power = ord == "spectral" and (
        method == "power" or (method == "auto" and max(sizes) > _EXACT_MAX_SIZE)
    )

    def flat_step(flat, x):
        return ravel_pytree(step_fn(unravel(flat), x)[0])[0]

    identity = jnp.eye(flat_carry.size, dtype=flat_carry.dtype)
    bases = (
        [_spectral.initial_basis(k, size, dtype)
         for k, size in zip(jax.random.split(key, len(sizes)), sizes, strict=True)]
        if use_power else [None] * len(sizes)
    )
    tol = jnp.asarray(tol, dtype)

    def body(state, x):
        flat, tangents, log_scale, bases = state
        flat, linear = jax.linearize(lambda f: flat_step(f, x), flat)
        tangents = jax.vmap(linear)(tangents if cumulative else identity)
        scale = jnp.linalg.norm(tangents.astype(dtype))
        tangents = tangents / jnp.where(scale == 0, 1.0, scale).astype(tangents.dtype)
        log_scale = (log_scale if cumulative else 0.0) + jnp.log(scale)
        # Row j of `tangents` is d carry_t / d carry_0[j]: the Jacobian's block is the
        # transpose of the tangents' block.
        matrices = [tangents[block, block].T.astype(dtype) for block in blocks]
        if use_power:
            results = [
                _spectral.top_singular_value(m, b, tol, max_iterations)
                for m, b in zip(matrices, bases, strict=True)
            ]
            norms, bases = [r[0] for r in results], [r[1] for r in results]
        else:
            norms = [jnp.linalg.norm(m, 2 if ord == "spectral" else "fro") for m in matrices]
        log_norms = [log_scale + jnp.log(norm) for norm in norms]
        return (flat, tangents, log_scale, bases), log_norms

    initial = (flat_carry, identity, jnp.zeros((), dtype), bases)
    _, log_norms = jax.lax.scan(body, initial, inputs)
    if not per_leaf:
        return log_norms[0]
    return jax.tree.unflatten(jax.tree.structure(carry), log_norms)


def _leaf_blocks(carry) -> list[slice]:
    """The slice of each carry leaf in the flattened carry (`ravel_pytree` order)."""
    sizes = [math.prod(jnp.shape(leaf)) for leaf in jax.tree.leaves(carry)]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [slice(start, start + size) for start, size in zip(starts, sizes, strict=True)]
