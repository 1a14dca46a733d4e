"""Guided directions: Gaussian perturbations stretched along a subspace of surrogate
gradients (guided evolution strategies)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks, dtypes
from jaxtricks._src.typing import PyTree
from jaxtricks.estimators import _directions


@dataclasses.dataclass(frozen=True, eq=False)
class Guided(_directions.DirectionKind):
    r"""Guided ES directions: `p ~ N(0, Sigma)`, perturbation = weight = `p`.

    .. math::

        \Sigma = \frac{\alpha}{d} I + \frac{1 - \alpha}{k} Q Q^\top, \qquad
        p = \sqrt{\alpha / d}\, \varepsilon + \sqrt{(1 - \alpha) / k}\, Q \eta,

    `epsilon ~ N(0, I_d)` (drawn leaf by leaf as "gaussian" draws it), `eta ~ N(0, I_k)`,
    `Q [d, k]` an orthonormal basis of the `k` surrogate gradients in `subspace` (the
    params flattened and concatenated: a pytree is one vector of `R^d`). `tr Sigma = 1`,
    so `sigma` is the perturbation's length, as in the paper. The estimate `(1/n) sum_i
    c_i p_i` is the paper's gradient estimate with `beta = 1` (scale the learning rate by
    `beta`); its expectation on a quadratic is `Sigma grad f`, not `grad f`: biased toward
    the subspace by design. A direction needs every leaf of `subspace`, so directions are
    stored, not drawn again (`regenerable = False`).

    Attributes:
        subspace: the `k` surrogate gradients, a pytree like the params with a leading
            axis `k` on every leaf (`k` independent vectors; `1 <= k <= d`).
        alpha: `alpha` in `[0, 1]`, the share of the full-space (isotropic) part.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> u = jnp.array([0.6, 0.8, 0.0])
        >>> kind = estimators.Guided(subspace=u[None], alpha=0.0)  # k = 1: all along u
        >>> p, w = kind.draw(jax.random.key(0), jnp.zeros(3))
        >>> bool(jnp.allclose(p, (p @ u) * u)), bool(jnp.all(w == p))
        (True, True)

    References:
        Maheswaranathan et al., "Guided evolutionary strategies: augmenting random search
        with surrogate gradients", ICML 2019, https://arxiv.org/abs/1806.10230,
        Algorithm 1; https://github.com/brain-research/guided-evolutionary-strategies.
    """

    subspace: PyTree = None
    alpha: float = 0.5
    regenerable: bool = dataclasses.field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.subspace is None or not jax.tree.leaves(self.subspace):
            raise ValueError(f"subspace must be a non-empty pytree of arrays, got "
                             f"{self.subspace!r}.")
        shapes = [jnp.shape(leaf) for leaf in jax.tree.leaves(self.subspace)]
        if min(map(len, shapes)) == 0 or len({s[0] for s in shapes}) != 1 or shapes[0][0] < 1:
            raise ValueError(f"subspace must have one leading axis k >= 1 on every leaf, got "
                             f"shapes {shapes}.")
        if isinstance(self.alpha, bool) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be a float in [0, 1], got {self.alpha!r}.")

    @property
    def rank(self) -> int:
        """`k`, the number of surrogate gradients."""
        return int(jnp.shape(jax.tree.leaves(self.subspace)[0])[0])

    def draw_scaled(
        self, key: jax.Array, params: PyTree, stored: bool = False
    ) -> tuple[PyTree, None]:
        full_key, subspace_key = jax.random.split(key)
        full, _ = _directions.Gaussian().draw_scaled(full_key, params, stored)
        num_params = optax.tree.size(params)
        along = self._basis(params) @ jax.random.normal(subspace_key, (self.rank,))
        sizes = [leaf.size for leaf in jax.tree.leaves(params)]
        parts = jnp.split(along, list(itertools.accumulate(sizes))[:-1])
        leaves = [
            (math.sqrt(self.alpha / num_params) * z
             + math.sqrt((1.0 - self.alpha) / self.rank) * part.reshape(z.shape).astype(z.dtype))
            for z, part in zip(jax.tree.leaves(full), parts, strict=True)]
        return jax.tree.unflatten(jax.tree.structure(params), leaves), None

    def _basis(self, params: PyTree) -> jax.Array:
        """`Q [d, k]`, an orthonormal basis of `subspace` (checked against `params`)."""
        checks.check_same_structure("subspace", self.subspace, "params", params)
        expected = [(self.rank, *jnp.shape(x)) for x in jax.tree.leaves(params)]
        actual = [jnp.shape(x) for x in jax.tree.leaves(self.subspace)]
        if actual != expected:
            raise ValueError(f"subspace must be shaped like the params with a leading axis "
                             f"{self.rank}: expected leaves {expected}, got {actual}.")
        dtype = dtypes.compute_dtype(jnp.result_type(*jax.tree.leaves(self.subspace)))
        rows = jnp.concatenate([leaf.reshape(self.rank, -1).astype(dtype)
                                for leaf in jax.tree.leaves(self.subspace)], axis=1)
        return jnp.linalg.qr(rows.T)[0]

    def second_moment(self, num_params: int) -> float:
        return 1.0  # tr Sigma

    def variance_factor(self, num_params: int) -> float:
        # (tr Sigma tr Sigma + tr Sigma^2) / d: the variance trace over ||g||^2, averaged
        # over the directions of g (larger for a g inside the subspace).
        alpha = self.alpha
        square = alpha**2 / num_params + 2 * alpha * (1 - alpha) / num_params + (
            (1 - alpha) ** 2 / self.rank)
        return (1.0 + square) / num_params

    def coordinate_size(self, num_params: int) -> float:
        return 1.0 / math.sqrt(num_params)  # sqrt(tr Sigma / d)
