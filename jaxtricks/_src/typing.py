"""Type aliases shared by the signatures of the library (for the type checker and the docs)."""

from __future__ import annotations

from typing import Any, TypeAlias

import jax

DTypeLike: TypeAlias = jax.typing.DTypeLike
# A pytree of arrays (parameters, updates, a carry); JAX has no precise static type for it.
PyTree: TypeAlias = Any
# A typed key (`jax.random.key`) or a legacy raw key (`jax.random.PRNGKey`, uint32[..., 2]).
KeyLike: TypeAlias = jax.Array
