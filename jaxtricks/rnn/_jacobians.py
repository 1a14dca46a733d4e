"""Norms of the Jacobians of a recurrent step through time, in one forward pass.

`jacobian_norms` measures `d carry_t / d carry_0 = J_t ... J_1`, `step_jacobian_norms`
each `J_t = d carry_t / d carry_{t-1}`: one scan carrying a tangent block, the spectral
norm by SVD or by warm-started subspace iteration (`_spectral`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxtricks._src import checks, dtypes, keys
from jaxtricks.rnn import _spectral, _steps
from jaxtricks.rnn._steps import Carry, StepFn

_ORDS = ("spectral", "fro")
_METHODS = ("auto", "exact", "power")
# Largest Jacobian block (rows = columns) whose spectral norm "auto" takes by SVD.
_EXACT_MAX_SIZE = 64


def jacobian_norms(
    step_fn: StepFn,
    carry: Carry,
    inputs: Any,
    *,
    key: jax.Array | None = None,
    ord: str = "spectral",
    per_leaf: bool = False,
    method: str = "auto",
    tol: float = 1e-4,
    max_iterations: int = 100,
    log_space: bool = False,
) -> Any:
    r"""Norms `||d carry_t / d carry_0||` for t = 1..T, in one forward pass through time.

    .. math::

        \frac{\partial\, \mathrm{carry}_t}{\partial\, \mathrm{carry}_0} = J_t J_{t-1} \cdots J_1,
        \qquad J_k = \frac{\partial\, \mathrm{carry}_k}{\partial\, \mathrm{carry}_{k-1}}.

    A `[D, D]` tangent block (D carry entries, D Jacobian-vector products a step) goes
    through `jax.lax.scan`, its log-scale kept (no underflow at 1e-300). Frobenius norms are
    exact, spectral ones exact (SVD) or a lower bound (:ref:`rnn-spectral`); all differentiable.

    Args:
        step_fn: `(carry, x_t) -> (new_carry, y_t)` (see `linen_step`, `nnx_step`), keeping
            the carry's structure, shapes and dtypes.
        carry: the initial carry, a pytree of floating arrays (e.g. `(c, h)`).
        inputs: a pytree of arrays with a leading time axis `[T, ...]`, T >= 0, any dtype.
        key: a `jax.random` key starting the power iteration, required where it runs.
        ord: "spectral" (largest singular value) or "fro" (Frobenius).
        per_leaf: False: the norm of the whole carry's Jacobian; True: for each leaf `a`,
            that of its own block `d a_t / d a_0`, as a pytree like `carry`.
        method: "exact" (SVD), "power" (subspace iteration) or "auto" (exact up to 64
            rows, power above); spectral norms only.
        tol: relative residual `||M^T u - sigma v|| / sigma` ending the iteration, > 0.
        max_iterations: most power iterations per time step, >= 1.
        log_space: return the natural logarithms of the norms instead.

    Returns:
        `[T]` norms (a pytree of them with `per_leaf=True`) in the carry's floating dtype,
        at least float32. A NaN entering at step t gives NaN from step t on.

    Raises:
        ValueError: for an unknown `ord` or `method`, `tol <= 0`, `max_iterations < 1`,
            `inputs` without a common time axis, a carry that is not floating, that the cell
            rejects or that `step_fn` changes, or a missing or bad `key` where needed.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import rnn
        >>> step = lambda h, x: (0.5 * h + x, h)  # d h_t / d h_0 = 0.5^t
        >>> norms = rnn.jacobian_norms(step, jnp.ones(3), jnp.zeros((4, 3)))
        >>> [round(float(n), 4) for n in norms]
        [0.5, 0.25, 0.125, 0.0625]

    References:
        Su, `也来谈谈RNN的梯度消失/爆炸问题 <https://kexue.fm/archives/7888>`_, 2020 (the
        gradient as a product of one-step Jacobians)

        Magnus, `On differentiating eigenvalues and eigenvectors
        <https://doi.org/10.1017/S0266466600011129>`_, 1985 (`d sigma = u^T (dM) v`)
    """
    return _jacobian_scan(
        step_fn, carry, inputs, cumulative=True, key=key, ord=ord, per_leaf=per_leaf,
        method=method, tol=tol, max_iterations=max_iterations, log_space=log_space,
    )


def step_jacobian_norms(
    step_fn: StepFn,
    carry: Carry,
    inputs: Any,
    *,
    key: jax.Array | None = None,
    ord: str = "spectral",
    per_leaf: bool = False,
    method: str = "auto",
    tol: float = 1e-4,
    max_iterations: int = 100,
    log_space: bool = False,
) -> Any:
    """Norms of the one-step Jacobians `||J_t|| = ||d carry_t / d carry_{t-1}||`, t = 1..T.

    Evaluated along the trajectory from `carry`; `prod_k ||J_k||` bounds
    `||d carry_t / d carry_0||` (for `ord="spectral"`). The same keyword arguments,
    algorithm and transformations (differentiable with every method) as
    `jacobian_norms`, with the tangent block reset to the identity every step. For a
    tanh cell `J_t = D(1 - h_t^2) U` (column-vector convention; flax's kernels are its
    transpose).

    For an LSTM with carry `(c, h)`, `per_leaf=True` gives the blocks
    `d c_t / d c_{t-1}` and `d h_t / d h_{t-1}`, each with the other leaf held fixed.
    The `c` block is exactly `D(f_t)` (the gates read `h_{t-1}` and `x_t`, not
    `c_{t-1}`), so its norm is `max_i f_t,i` by construction and says nothing about
    whether the forget gate dominates the gradient. That question needs the full
    one-step Jacobian (`per_leaf=False`), which adds the paths through `h`
    (`d c_t / d h_{t-1}`, `d h_t / d c_{t-1}`, ...); its norm can exceed 1 even when
    every `f_t < 1`.

    Args:
        step_fn, carry, inputs, key, ord: as in `jacobian_norms`.
        per_leaf, method, tol, max_iterations, log_space: as in `jacobian_norms`.

    Returns:
        `[T]` norms (or a pytree of them with `per_leaf=True`), dtype as in
        `jacobian_norms`.

    Raises:
        ValueError: as `jacobian_norms`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import rnn
        >>> step = lambda h, x: (jnp.tanh(2.0 * h + x), h)  # J_t = D(1 - h_t^2) * 2
        >>> norms = rnn.step_jacobian_norms(step, jnp.zeros(2), jnp.zeros((3, 2)))
        >>> [round(float(n), 4) for n in norms]
        [2.0, 2.0, 2.0]

    References:
        Su, `也来谈谈RNN的梯度消失/爆炸问题 <https://kexue.fm/archives/7888>`_, 2020
    """
    return _jacobian_scan(
        step_fn, carry, inputs, cumulative=False, key=key, ord=ord, per_leaf=per_leaf,
        method=method, tol=tol, max_iterations=max_iterations, log_space=log_space,
    )


def _jacobian_scan(
    step_fn: StepFn,
    carry: Carry,
    inputs: Any,
    *,
    cumulative: bool,
    key: jax.Array | None,
    ord: str,
    per_leaf: bool,
    method: str,
    tol: jax.typing.ArrayLike,
    max_iterations: int,
    log_space: bool,
) -> Any:
    """Norms (or log norms) of `d carry_t/d carry_0` (cumulative) or of each `J_t`."""
    checks.check_choice("ord", ord, _ORDS)
    checks.check_choice("method", method, _METHODS)
    checks.check_scalar("tol", tol, low=0.0, low_inclusive=False)
    checks.check_positive_int("max_iterations", max_iterations)
    _steps.check_sequence(inputs)
    _steps.check_step(step_fn, carry, inputs)
    flat_carry, unravel = ravel_pytree(carry)
    dtype = dtypes.compute_dtype(flat_carry.dtype)
    blocks = _leaf_blocks(carry) if per_leaf else [slice(0, flat_carry.size)]
    sizes = [block.stop - block.start for block in blocks]
    use_power = ord == "spectral" and (
        method == "power" or (method == "auto" and max(sizes) > _EXACT_MAX_SIZE)
    )
    if use_power and key is None:
        raise ValueError(
            "key is required where the power iteration runs (ord='spectral' with "
            f"method='power', or 'auto' above {_EXACT_MAX_SIZE} rows), got key=None with "
            f"method={method!r} and a largest block of {max(sizes)} rows; pass e.g. "
            "key=jax.random.key(0), or method='exact'."
        )
    if key is not None:
        key = keys.as_key(key, "key")

    def flat_step(flat: jax.Array, x: Any) -> jax.Array:
        return ravel_pytree(step_fn(unravel(flat), x)[0])[0]

    identity = jnp.eye(flat_carry.size, dtype=flat_carry.dtype)
    bases: list[Any] = (
        [_spectral.initial_basis(k, size, dtype)
         for k, size in zip(jax.random.split(key, len(sizes)), sizes, strict=True)]
        if use_power and key is not None else [None] * len(sizes)
    )
    tol = jnp.asarray(tol, dtype)

    def body(
        state: tuple[jax.Array, jax.Array, jax.Array, list[Any]], x: Any
    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array, list[Any]], list[jax.Array]]:
        flat, tangents, log_scale, bases = state
        flat, linear = jax.linearize(lambda f: flat_step(f, x), flat)
        tangents = jax.vmap(linear)(tangents if cumulative else identity)
        log_peak, tangents = _rescaled(tangents)
        log_scale = (log_scale if cumulative else 0.0) + log_peak.astype(dtype)
        # Row j of `tangents` is d carry_t / d carry_0[j]: the Jacobian's block is the
        # transpose of the tangents' block.
        matrices = [tangents[block, block].T.astype(dtype) for block in blocks]
        results = [
            _log_norm(m, b, ord=ord, use_power=use_power, tol=tol,
                      max_iterations=max_iterations)
            for m, b in zip(matrices, bases, strict=True)
        ]
        bases = [r[1] for r in results]
        log_norms = [log_scale + r[0] for r in results]
        return (flat, tangents, log_scale, bases), log_norms

    initial = (flat_carry, identity, jnp.zeros((), dtype), bases)
    _, log_norms = jax.lax.scan(body, initial, inputs)
    norms = log_norms if log_space else [jnp.exp(log_norm) for log_norm in log_norms]
    if not per_leaf:
        return norms[0]
    return jax.tree.unflatten(jax.tree.structure(carry), norms)


def _leaf_blocks(carry: Carry) -> list[slice]:
    """The slice of each carry leaf in the flattened carry (`ravel_pytree` order)."""
    sizes = [math.prod(jnp.shape(leaf)) for leaf in jax.tree.leaves(carry)]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [slice(start, start + size) for start, size in zip(starts, sizes, strict=True)]


def _rescaled(matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(log p, matrix / p)` for `p = max |entry|`: the quotient in `matrix`'s dtype, the
    logarithm in at least float32 (a bfloat16 log would lose 3 digits).

    Dividing by the largest entry, rather than by a norm, keeps every square that a norm
    takes of the result in [0, 1] (the squares of entries of 1e20 overflow float32, and
    those of 1e-21 flush to zero). An exactly-zero matrix gives `(-inf, matrix)`, with
    both `where`s (the double-`where` trick) keeping `log 0` and `0 / 0` out of the
    gradient, which is then 0 and not NaN; a NaN entry gives a NaN `log p`.

    `p` is held constant under differentiation: a norm is homogeneous, so
    `log p + log ||M / p||` has the derivative of `log ||M||` whatever `p` is, and the
    derivative of `max` (which finds the entries equal to the maximum) is not needed;
    it gave NaN when the backward pass recomputed the entries an ulp apart.
    """
    peak = jax.lax.stop_gradient(jnp.max(jnp.abs(matrix), initial=0))
    zero = peak == 0
    safe_peak = jnp.where(zero, jnp.ones_like(peak), peak)
    wide = dtypes.compute_dtype(matrix.dtype)
    log_peak = jnp.where(zero, -jnp.inf, jnp.log(safe_peak.astype(wide)))
    return log_peak, matrix / safe_peak


def _log_norm(
    matrix: jax.Array,
    basis: jax.Array | None,
    *,
    ord: str,
    use_power: bool,
    tol: jax.Array,
    max_iterations: int,
) -> tuple[jax.Array, jax.Array | None]:
    """`(log ||matrix||, basis)`: the norm of `matrix / max |entry|`, plus the log of that
    scale, so that neither the SVD, the Frobenius sum of squares nor the power
    iteration's `M^T M` overflows or underflows; `-inf` (with a zero gradient) for an
    exactly-zero matrix, whose norm is that of the identity standing in for it, and the
    power iteration's basis unchanged (it converges at once on the identity)."""
    log_peak, scaled = _rescaled(matrix)
    zero = log_peak == -jnp.inf
    scaled = jnp.where(zero, jnp.eye(matrix.shape[0], dtype=matrix.dtype), scaled)
    if use_power and basis is not None:
        norm, basis = _spectral.top_singular_value(scaled, basis, tol, max_iterations)
    else:
        norm = jnp.linalg.norm(scaled, 2 if ord == "spectral" else "fro")
    return jnp.where(zero, -jnp.inf, log_peak + jnp.log(norm)), basis
