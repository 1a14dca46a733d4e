"""The largest singular value of a square block by subspace (block power) iteration.

Used by `jacobian_norms(method="power")` for blocks too large for an SVD per step. The
iteration is a `while_loop` stopped on the residual `||M^T u - sigma v|| <= tol sigma`;
its derivative is the implicit rule `d sigma = u^T dM v` (Magnus, "On differentiating
eigenvalues and eigenvectors", Econometric Theory 1(2), 1985), a `custom_jvp`, so both
modes work without differentiating through the loop.
"""

from __future__ import annotations

import functools
from typing import TypeAlias

import jax
import jax.numpy as jnp

from jaxtricks._src.typing import DTypeLike

# (sigma^2, top eigenvector w, M^T M basis, residual) of a basis.
_Ritz: TypeAlias = tuple[jax.Array, jax.Array, jax.Array, jax.Array]

# Number of vectors of the subspace (block power) iteration.
BLOCK_SIZE = 8


def initial_basis(key: jax.Array, size: int, dtype: DTypeLike) -> jax.Array:
    """An orthonormal `[size, min(8, size)]` Gaussian basis to start from."""
    gaussian = jax.random.normal(key, (size, min(BLOCK_SIZE, size)), dtype)
    return jnp.linalg.qr(gaussian)[0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def top_singular_value(
    matrix: jax.Array, basis: jax.Array, tol: jax.Array, max_iterations: int
) -> tuple[jax.Array, jax.Array]:
    """Largest singular value of `matrix` by subspace iteration from `basis`.

    Returns:
        (sigma, basis): the Rayleigh-Ritz estimate (a lower bound of `||M||_2`) and the
        final basis, to start the next call from.
    """
    sigma, basis, _, _ = _subspace_iteration(matrix, basis, tol, max_iterations)
    return sigma, basis


@top_singular_value.defjvp
def _top_singular_value_jvp(
    max_iterations: int,
    primals: tuple[jax.Array, jax.Array, jax.Array],
    tangents: tuple[jax.Array, jax.Array, jax.Array],
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    # d sigma = u^T dM v for a simple singular value sigma = u^T M v (Magnus 1985); the
    # starting basis and `tol` change nothing at convergence.
    matrix, basis, tol = primals
    sigma, basis, left, right = _subspace_iteration(matrix, basis, tol, max_iterations)
    return (sigma, basis), (left @ tangents[0] @ right, jnp.zeros_like(basis))


def _subspace_iteration(
    matrix: jax.Array, basis: jax.Array, tol: jax.Array, max_iterations: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Iterates `basis <- qr(M^T M basis)` until `||M^T u - sigma v|| <= tol sigma`.

    Returns:
        (sigma, basis, u, v): the Ritz value, the final basis and the Ritz pair.
    """

    def ritz(basis: jax.Array) -> _Ritz:
        image = matrix @ basis
        values, vectors = jnp.linalg.eigh(image.T @ image)
        top, squared = vectors[:, -1], values[-1]
        product = matrix.T @ image
        # ||M^T M v - sigma^2 v|| = sigma ||M^T u - sigma v|| for v = V w, u = M v / sigma.
        residual = jnp.linalg.norm(product @ top - squared * (basis @ top))
        return squared, top, product, residual

    def not_converged(state: tuple[jax.Array, _Ritz, int]) -> jax.Array:
        _, (squared, _, _, residual), iteration = state
        return (iteration < max_iterations) & (residual > tol * squared)

    def iterate(state: tuple[jax.Array, _Ritz, int]) -> tuple[jax.Array, _Ritz, int]:
        _, (_, _, product, _), iteration = state
        basis = jnp.linalg.qr(product)[0]
        return basis, ritz(basis), iteration + 1

    basis, (squared, top, _, _), _ = jax.lax.while_loop(
        not_converged, iterate, (basis, ritz(basis), 0)
    )
    sigma = jnp.sqrt(jnp.maximum(squared, 0.0))
    right = basis @ top
    return sigma, basis, matrix @ right / sigma, right
