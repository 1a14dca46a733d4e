"""Run from outside the source tree by .ci/check-dist: the installed wheel has the whole API."""

import importlib.metadata
import importlib.resources
import pathlib
import sys
import types

import jax.numpy as jnp

import jaxtricks

source = pathlib.Path(jaxtricks.__file__).resolve()
if "site-packages" not in source.parts:
    sys.exit(f"jaxtricks was imported from {source}, not from the installed wheel")
if importlib.metadata.version("jaxtricks") != jaxtricks.__version__:
    sys.exit("the wheel's metadata version differs from jaxtricks.__version__")
if not importlib.resources.files("jaxtricks").joinpath("py.typed").is_file():
    sys.exit("the wheel lacks jaxtricks/py.typed")

exported = [getattr(jaxtricks, name) for name in jaxtricks.__all__]
modules = [jaxtricks, *(value for value in exported if isinstance(value, types.ModuleType))]
names = []
for module in modules:
    for name in module.__all__:
        getattr(module, name)  # AttributeError for a listed name that the wheel lacks
        names.append(f"{module.__name__}.{name}")

loss = jaxtricks.losses.softmax_focal_loss(jnp.zeros((2, 3)), jnp.array([0, 1]), gamma=2.0)
assert loss.shape == (2,), loss.shape
print(f"jaxtricks {jaxtricks.__version__} on Python {sys.version.split()[0]}: "
      f"{len(names)} public names import from {source.parent}")
