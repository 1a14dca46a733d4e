"""Fail the build when a public name of jaxtricks is missing from the API reference.

The public names are `jaxtricks.__all__` and the `__all__` of every sub-package it
lists. A name counts as documented when the Python domain holds an entry for it
(`.. autofunction:: jaxtricks.losses.softmax_focal_loss`, `.. automodule::`, ...); a
top-level re-export (`jaxtricks.weissi`) is documented by the entry of the same object in
its sub-package (`jaxtricks.regularizers.weissi`). Each missing name is a Sphinx warning,
an error under `-W`.
"""

from __future__ import annotations

import importlib
import types

from sphinx.util import logging

logger = logging.getLogger(__name__)


def public_names(package_name: str = "jaxtricks") -> dict[str, tuple[str, ...]]:
    """`{qualified name: accepted documented names}` of every public name."""
    package = importlib.import_module(package_name)
    wanted: dict[str, tuple[str, ...]] = {}
    submodules = [
        value for value in (getattr(package, name) for name in package.__all__)
        if isinstance(value, types.ModuleType)
    ]
    for name in package.__all__:
        value = getattr(package, name)
        # A top-level re-export is documented where its sub-package documents it.
        wanted[f"{package_name}.{name}"] = (f"{package_name}.{name}", *(
            f"{module.__name__}.{name}" for module in submodules
            if not isinstance(value, types.ModuleType) and getattr(module, name, None) is value
        ))
    for module in submodules:
        for name in module.__all__:
            wanted[f"{module.__name__}.{name}"] = (f"{module.__name__}.{name}",)
    return wanted


def check_coverage(app, env) -> None:
    documented = set(env.get_domain("py").objects)
    missing = [
        full for full, accepted in public_names(app.config.api_coverage_package).items()
        if not documented.intersection(accepted)
    ]
    for full in missing:
        logger.warning(
            "public name %s is not in the API reference (add it to docs/api/)", full,
            type="api_coverage", subtype="missing",
        )


def setup(app):
    app.add_config_value("api_coverage_package", "jaxtricks", "env")
    app.connect("env-check-consistency", check_coverage)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
