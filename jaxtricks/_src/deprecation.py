"""Deprecated names and call paths: one `DeprecationWarning` per name, on first use.

`deprecated_alias(old_name, new)` is the old name of a renamed public function: it calls
`new` unchanged (same arguments, same numbers) and warns the first time it is called in
a process, naming the new name and the version that removes the old one.
`warn_once(key, message)` does the same for a deprecated way of calling a function that
keeps its name (an argument that moved into an object, a mode that became a function).
Deprecated names are not in their package's `__all__`.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Callable
from typing import ParamSpec, TypeVar

REMOVED_IN = "0.3.0"
"""The version that removes every name and call path deprecated so far."""

_WARNED: set[str] = set()  # the keys warned about in this process

P = ParamSpec("P")
R = TypeVar("R")


def warn_once(key: str, message: str, *, stacklevel: int = 3) -> None:
    """A `DeprecationWarning` with `message`, the first time `key` is seen.

    `stacklevel=3` points at the caller of the public function that calls this.
    """
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, DeprecationWarning, stacklevel=stacklevel)


def public_name(fn: Callable[..., object]) -> str:
    """`jaxtricks.losses.f` for a function defined in `jaxtricks.losses._module`."""
    parts = itertools.takewhile(lambda part: not part.startswith("_"),
                                fn.__module__.split("."))
    return ".".join((*parts, fn.__name__))


def deprecated_alias(old_name: str, new: Callable[P, R]) -> Callable[P, R]:
    """`new` under its former name `old_name`, warning once (on its first call).

    Args:
        old_name: the former name, in the same namespace as `new`.
        new: the function that replaces it.

    Returns:
        A function with `new`'s signature (through `__wrapped__`) that calls it.
    """
    new_name = public_name(new)
    old = new_name.rsplit(".", 1)[0] + "." + old_name
    message = (f"{old} is deprecated and will be removed in jaxtricks {REMOVED_IN}: use "
               f"{new_name}, which takes the same arguments.")

    @functools.wraps(new)
    def alias(*args: P.args, **kwargs: P.kwargs) -> R:
        warn_once(old, message)
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = (f"Deprecated alias of `{new_name}` (same arguments and results), "
                     f"removed in {REMOVED_IN}.")
    return alias
