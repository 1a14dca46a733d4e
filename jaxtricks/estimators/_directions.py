r"""Direction kinds: what the estimators draw, and every constant that depends on it.

A direction is a draw `z` shaped like the params, perturbation `a z` and weight `b z`
(`a`, `b` scalars of the whole draw, 1 for most kinds). The zeroth-order estimate is
`(1/n) sum_i c_i w_i` with `c_i` from `f(x +- sigma a z_i)`; it is unbiased for the
gradient of the smoothed objective when `E[p w^T] = I` (perturbation `p`, weight `w`).

A kind is an object: the estimators ask it for a draw, and the precision floor
(`rounding_floor_sigma`, `rounding_variance`, `resolved_sigma`) asks it for three
constants. To add a kind, subclass `DirectionKind` (a frozen dataclass, so that it is
hashable and can be a static argument) and override `sample_leaf`, and whatever
differs from a Gaussian among `scales`, `second_moment`, `variance_factor`,
`coordinate_size`; a kind whose directions are drawn together overrides `group_size` and
`draw_group` and sets `regenerable = False`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import dtypes
from jaxtricks._src.typing import DTypeLike, PyTree
from jaxtricks.estimators import _random


@dataclasses.dataclass(frozen=True)
class DirectionKind:
    r"""A kind of random direction, `u ~ N(0, I)` unless a subclass says otherwise.

    Subclass it (a frozen dataclass) and override `sample_leaf`, and whatever differs
    from a Gaussian among the other methods; pass an instance as `directions=`.

    Attributes:
        regenerable: a leaf of a direction can be drawn again from its own key alone
            (MeZO's seed trick, the memory-saving strategies of `zeroth_order_grad` and
            `zeroth_order_update`); False where a direction depends on others.

    Examples:
        >>> import dataclasses, jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> @dataclasses.dataclass(frozen=True)
        ... class Uniform(estimators.DirectionKind):  # unit variance, fourth moment 9/5
        ...     def sample_leaf(self, key, shape, dtype, stored):
        ...         return jax.random.uniform(key, shape, dtype, -3**0.5, 3**0.5)
        ...     def variance_factor(self, num_params):
        ...         return num_params - 0.2
        >>> g = estimators.zeroth_order_grad(lambda x: jnp.sum(x), jnp.zeros(3),
        ...                                  jax.random.key(0), num_samples=8,
        ...                                  directions=Uniform())
        >>> g.shape
        (3,)

    References:
        Malladi et al. (MeZO), https://arxiv.org/abs/2305.17333, for the seed trick.
    """

    regenerable: bool = dataclasses.field(default=True, init=False)

    def sample_leaf(
        self, key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike, stored: bool
    ) -> jax.Array:
        """One leaf of the draw `z` from its own key (`stored`: kept for several uses)."""
        return _random.normal(key, shape, dtype, stored)

    def scales(self, draw: PyTree, num_params: int) -> tuple[jax.Array, jax.Array] | None:
        """`(a, b)`, perturbation `a z` and weight `b z`; None for `a = b = 1`."""
        del draw, num_params
        return None

    def second_moment(self, num_params: int) -> float:
        """`W = E||w||^2`, the weight's mean squared norm (`d` for `N(0, I_d)`)."""
        return float(num_params)

    def variance_factor(self, num_params: int) -> float:
        """`c_I`: the variance trace of one direction's central estimate of a linear
        function, over `||g||^2` (`d + 1` for `N(0, I_d)`)."""
        return num_params + 1.0

    def coordinate_size(self, num_params: int) -> float:
        """`s`, the typical `|p_j|` of a perturbation (1 for `N(0, I)`)."""
        del num_params
        return 1.0

    def group_size(self, num_directions: int, num_params: int) -> int:
        """How many consecutive directions are drawn together (1: each from its key)."""
        del num_directions, num_params
        return 1

    def draw_scaled(
        self, key: jax.Array, params: PyTree, stored: bool = False
    ) -> tuple[PyTree, tuple[jax.Array, jax.Array] | None]:
        """`(z, scales(z))` of the direction of `key`, in `compute_dtype` of each leaf;
        leaf `L` drawn from `jax.random.split(key, num_leaves)[L]` alone."""
        draw = jax.tree.map(
            lambda leaf, leaf_key: self.sample_leaf(
                leaf_key, leaf.shape, dtypes.compute_dtype(leaf.dtype), stored),
            params, optax.tree.split_key_like(key, params))
        return draw, self.scales(draw, optax.tree.size(params))

    def draw(self, key: jax.Array, params: PyTree, stored: bool = False) -> tuple[PyTree, PyTree]:
        """One direction shaped like `params`: `(perturbation, weight)`."""
        draw, scales = self.draw_scaled(key, params, stored)
        if scales is None:
            return draw, draw
        return optax.tree.scale(scales[0], draw), optax.tree.scale(scales[1], draw)

    def draw_group(
        self, keys: jax.Array, params: PyTree, stored: bool = False
    ) -> tuple[PyTree, PyTree]:
        """The directions of `keys` (`[m]`), stacked: `(perturbations, weights)`."""
        return jax.vmap(lambda k: self.draw(k, params, stored))(keys)


@dataclasses.dataclass(frozen=True)
class Gaussian(DirectionKind):
    """`u ~ N(0, I)`, perturbation = weight = `u`.

    Examples:
        >>> from jaxtricks import estimators
        >>> kind = estimators.Gaussian()  # directions="gaussian"
        >>> kind.second_moment(10), kind.variance_factor(10)  # W = d, c_I = d + 1
        (10.0, 11.0)

    References:
        Nesterov & Spokoiny, "Random gradient-free minimization of convex functions",
        Found. Comput. Math. (2017); Malladi et al. (MeZO),
        https://arxiv.org/abs/2305.17333.
    """


@dataclasses.dataclass(frozen=True)
class Sphere(DirectionKind):
    """`v = u / ||u||` uniform on the unit sphere, perturbation `v`, weight `d v`: unbiased
    for the gradient of the ball smoothing `E_{w ~ U(B)} f(x + sigma w)`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> p, w = estimators.Sphere().draw(jax.random.key(0), jnp.zeros(4))
        >>> round(float(jnp.linalg.norm(p)), 4), bool(jnp.allclose(w, 4 * p))
        (1.0, True)

    References:
        Nesterov & Spokoiny, "Random gradient-free minimization of convex functions",
        Found. Comput. Math. (2017); Flaxman, Kalai & McMahan,
        https://arxiv.org/abs/cs/0408007.
    """

    def scales(self, draw: PyTree, num_params: int) -> tuple[jax.Array, jax.Array]:
        inverse_norm = 1.0 / optax.tree.norm(draw)
        return inverse_norm, num_params * inverse_norm

    def second_moment(self, num_params: int) -> float:
        return float(num_params) ** 2

    def variance_factor(self, num_params: int) -> float:
        return num_params - 1.0

    def coordinate_size(self, num_params: int) -> float:
        return 1.0 / math.sqrt(num_params)


@dataclasses.dataclass(frozen=True)
class Rademacher(DirectionKind):
    """`Δ_j = ±1`, perturbation = weight = `Δ` (SPSA): exact on quadratics.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> p, w = estimators.Rademacher().draw(jax.random.key(0), jnp.zeros(4))
        >>> jnp.abs(p).tolist(), bool(jnp.all(w == p))
        ([1.0, 1.0, 1.0, 1.0], True)

    References:
        Spall, "Multivariate stochastic approximation using a simultaneous perturbation
        gradient approximation", IEEE Trans. Automatic Control 37(3) (1992).
    """

    def sample_leaf(
        self, key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike, stored: bool
    ) -> jax.Array:
        return _random.rademacher(key, shape, dtype, stored)

    def variance_factor(self, num_params: int) -> float:
        return num_params - 1.0


@dataclasses.dataclass(frozen=True)
class LowRank(DirectionKind):
    r"""`z = U V^T / sqrt(r)` for each 2-D leaf `[m, n]`, `U [m, r]`, `V [n, r]` i.i.d.
    `N(0, 1)`; other leaves `N(0, I)` (LOZO, arXiv:2410.07698; SubZero, arXiv:2410.08989).

    `E[vec z vec z^T] = I`, so the estimate is unbiased as with Gaussian directions; a
    draw costs `(m + n) r` numbers instead of `m n`. One direction's central estimate
    of a linear function has `E||g_hat||^2 = sum_L ||g_L||^2 (d + e_L)`, `e_L = 2` for a
    Gaussian leaf and `2 (m + n + r + 1) / r` for a low-rank one (Isserlis' theorem):
    more variance than Gaussian directions, by `O((m + n) / (r d))` relative.
    `variance_factor` keeps the Gaussian `d + 1`, which the precision floor needs only
    roughly.

    Attributes:
        rank: `r >= 1`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> p, _ = estimators.LowRank(rank=2).draw(jax.random.key(0), jnp.zeros((6, 5)))
        >>> int(jnp.linalg.matrix_rank(p))
        2

    References:
        Chen et al. (LOZO), https://arxiv.org/abs/2410.07698; Yu et al. (SubZero),
        https://arxiv.org/abs/2410.08989.
    """

    rank: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}.")

    def sample_leaf(
        self, key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike, stored: bool
    ) -> jax.Array:
        if len(shape) != 2:
            return _random.normal(key, shape, dtype, stored)
        left_key, right_key = jax.random.split(key)
        left = _random.normal(left_key, (shape[0], self.rank), dtype, stored)
        right = _random.normal(right_key, (shape[1], self.rank), dtype, stored)
        return (left @ right.T) / jnp.sqrt(jnp.asarray(self.rank, dtype))


@dataclasses.dataclass(frozen=True)
class Orthogonal(DirectionKind):
    r"""Orthogonal Gaussian directions (Choromanski et al., ICML 2018, arXiv:1804.02395).

    The `n` directions form groups of `m` consecutive ones, `m` the largest divisor of
    `n` of at most `d` (the params flattened and concatenated: a pytree is one vector
    of `R^d`). Within a group the Gaussian draws `g_1..g_m` of the keys are
    orthogonalised in order (Gram-Schmidt, by a QR decomposition) and each row `q_i`
    rescaled to `||g_i||`: `u_i = ||g_i|| q_i`. By Bartlett's decomposition `G = L Q`
    the norms (rows of `L`) are i.i.d. `chi_d` and independent of the Haar-distributed
    frame `Q`, so every `u_i` is `N(0, I)` and the estimate stays unbiased; for a
    linear function one group's central estimate has the variance trace
    `((d + 2) / m - 1) ||g||^2`, against `((d + 1) / m) ||g||^2` for i.i.d. Gaussian
    directions. Groups are independent: with `k = n / m` of them, `((d + 2)/n - 1/k)
    ||g||^2`.

    A direction depends on its whole group, so a group is drawn at once and kept
    (`m x params` numbers and a `d x m` QR, `O(d m^2)`): not regenerable from a key
    alone, so neither `chunk_size` nor `zeroth_order_update` take this kind.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> keys = jax.random.split(jax.random.key(0), 3)  # one group of m = d = 3
        >>> u, _ = estimators.Orthogonal().draw_group(keys, jnp.zeros(3))
        >>> gram = u @ u.T
        >>> bool(jnp.allclose(gram, jnp.diag(jnp.diag(gram)), atol=1e-5))
        True

    References:
        Choromanski et al., "Structured evolution with compact architectures for scalable
        policy optimization", ICML 2018, https://arxiv.org/abs/1804.02395.
    """

    regenerable: bool = dataclasses.field(default=False, init=False)

    def group_size(self, num_directions: int, num_params: int) -> int:
        limit = max(1, min(num_directions, num_params))
        return next(m for m in range(limit, 0, -1) if num_directions % m == 0)

    def draw_group(
        self, keys: jax.Array, params: PyTree, stored: bool = False
    ) -> tuple[PyTree, PyTree]:
        gaussian = jax.vmap(lambda k: Gaussian().draw(k, params, True)[0])(keys)
        leaves, treedef = jax.tree.flatten(gaussian)
        rows = jnp.concatenate([leaf.reshape(len(keys), -1) for leaf in leaves], axis=1)
        q, r = jnp.linalg.qr(rows.T)  # rows^T = Q R, column i of R: g_i in the frame Q
        diagonal = jnp.diagonal(r)
        lengths = jnp.where(diagonal < 0, -1, 1) * jnp.linalg.norm(r, axis=0)
        directions = q.T * lengths[:, None]
        sizes = [math.prod(leaf.shape[1:]) for leaf in leaves]
        splits = jnp.split(directions, list(itertools.accumulate(sizes))[:-1], axis=1)
        stacked = jax.tree.unflatten(treedef, [
            part.reshape(leaf.shape) for part, leaf in zip(splits, leaves, strict=True)])
        return stacked, stacked


DIRECTION_KINDS: dict[str, DirectionKind] = {
    "gaussian": Gaussian(),
    "sphere": Sphere(),
    "rademacher": Rademacher(),
    "orthogonal": Orthogonal(),
    "low_rank": LowRank(),
}
"""The kinds by name, the shortcuts that `directions=` accepts."""


def resolve(directions: str | DirectionKind) -> DirectionKind:
    """The kind of `directions`, a name of `DIRECTION_KINDS` or a `DirectionKind`.

    Raises:
        ValueError: naming `directions`, for anything else.
    """
    if isinstance(directions, DirectionKind):
        return directions
    if isinstance(directions, str) and directions in DIRECTION_KINDS:
        return DIRECTION_KINDS[directions]
    raise ValueError(
        f"directions must be one of {tuple(DIRECTION_KINDS)} or a DirectionKind, got "
        f"{directions!r}."
    )
