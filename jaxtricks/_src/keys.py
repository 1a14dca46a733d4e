"""One entry point for PRNG keys: typed (`jax.random.key`) and legacy (`PRNGKey`) alike.

JAX has two key kinds: typed key arrays (`jax.random.key(s)`, dtype `key<impl>`) and
legacy raw keys (`jax.random.PRNGKey(s)`, `uint32[..., 2]` for the default threefry
implementation), which most flax code and tutorials still pass. `as_key` turns either
into a typed key array of the same batch shape, so that every function of the library
accepts both and, as `jax.random` itself does, gives the same numbers for
`jax.random.key(s)` and `jax.random.PRNGKey(s)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtricks._src.typing import KeyLike

_THREEFRY = "threefry2x32"
_RBG = ("rbg", "unsafe_rbg")


def is_typed_key(key: object) -> bool:
    """Whether `key` is a typed key array (`jax.random.key`)."""
    return hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def _raw_key(key: KeyLike, name: str) -> jax.Array:
    """`key` as a legacy raw key, `uint32[..., 2]` (threefry) or `uint32[..., 4]` (rbg)."""
    try:
        raw = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    except (TypeError, ValueError):
        raw = None
    if raw is None or raw.dtype != jnp.uint32 or raw.ndim < 1 or raw.shape[-1] not in (2, 4):
        shown = f"{key!r}" if raw is None else f"dtype {raw.dtype} and shape {raw.shape}"
        raise ValueError(
            f"{name} must be a jax.random.key or a jax.random.PRNGKey (uint32 of shape "
            f"(..., 2), or (..., 4) for rbg keys), got {shown}."
        )
    return raw


def _default_rbg() -> str:
    """The rbg implementation of a 4-word raw key: the default one if it is rbg-like."""
    default = str(jax.config.jax_default_prng_impl)  # type: ignore[attr-defined]
    return default if default in _RBG else "rbg"


def as_key(key: KeyLike, name: str = "key", *, shape: tuple[int, ...] = ()) -> jax.Array:
    """Returns `key` as a typed key array of batch shape `shape`.

    Args:
        key: a typed key array or a legacy raw key (`uint32[..., 2]`); also a tracer,
            for example inside `jax.vmap` over a batch of keys.
        name: the argument's name, used in the message.
        shape: the expected batch shape (`()` for one key).

    Raises:
        ValueError: naming the argument, when `key` is neither kind or has another
            batch shape.
    """
    if is_typed_key(key):
        typed = key
    else:
        raw = _raw_key(key, name)
        # uint32[..., 2] is a threefry key whatever the default implementation;
        # uint32[..., 4] an rbg one (`PRNGKey` under `jax_default_prng_impl="rbg"`).
        impl = _THREEFRY if raw.shape[-1] == 2 else _default_rbg()
        typed = jax.random.wrap_key_data(raw, impl=impl)
    if typed.shape != tuple(shape):
        raise ValueError(
            f"{name} must be a single key of batch shape {tuple(shape)}, got batch shape "
            f"{typed.shape}."
        )
    return typed



def batch_invariant(key: jax.Array, name: str = "key") -> jax.Array:
    """A threefry key for draws that must not depend on batching (typed keys in and out).

    A threefry draw is the same under `jax.vmap`, in a `lax.scan` or alone, so a
    direction drawn again from its key (the seed trick) is the same direction. An "rbg"
    or "unsafe_rbg" draw is not: under `vmap` the bits come from one generator for the
    whole batch, so a direction drawn in a vmapped block and again in a loop differ.
    Such a key is two threefry keys side by side (JAX splits and folds each half with
    threefry, and seeds both with `threefry_seed`), so its first half is a threefry key
    of the same seed: `jax.random.key(s, impl="rbg")` gives the numbers of
    `jax.random.key(s)`. Keys of a batch shape are converted elementwise.

    Raises:
        ValueError: naming the argument, for a key of another implementation.
    """
    impl = str(jax.random.key_impl(key))
    if impl == _THREEFRY:
        return key
    if impl not in _RBG:
        raise ValueError(
            f"{name} must be a key of the implementation {_THREEFRY!r}, 'rbg' or "
            f"'unsafe_rbg' (draws that are drawn again must not depend on batching), "
            f"got {impl!r}."
        )
    return jax.random.wrap_key_data(jax.random.key_data(key)[..., :2], impl=_THREEFRY)
