"""Test configuration for the suite (tests/), the docstring examples (jaxtricks/, run as
doctests) and the tests of the benchmarks (benchmarks/tests/): this file sits above all
three, so pytest applies it to each. Four host devices, so sharding tests run on any
machine, and cheap compilation.

XLA reads `XLA_FLAGS` when the backend starts, so this must run before JAX is used (it
does: pytest imports conftest first, in every xdist worker too). The suite compiles
thousands of tiny programs, whose time goes to LLVM's optimisation passes rather than
to running them; `--xla_backend_optimization_level=0` skips them and cuts the suite's
time by about a fifth. The HLO (fusion, reduction order) is unchanged, but the machine
code may contract or order products differently, so a test must not compare two
different programs bit for bit: float32 results agree to a few ulps, not exactly.

For the same reason every test compiles with most of XLA's HLO optimisations off
(`jax_disable_most_optimizations`; measured on three test modules: 142 s -> 115 s).
Tests of what the optimised program does, its planned memory or its buffer reuse, are
marked `@pytest.mark.optimized` and compile as users' programs do.
"""

import os
import pathlib

import pytest

_BENCHMARKS = pathlib.Path(__file__).parent / "benchmarks"

_FLAGS = (
    "--xla_force_host_platform_device_count=4",
    "--xla_backend_optimization_level=0",
)
_current = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join([_current, *(f for f in _FLAGS if f not in _current)]).strip()


@pytest.fixture(autouse=True)
def _cheap_compiles_unless_optimized(request):
    import jax

    flag = "jax_disable_most_optimizations"
    previous = jax.config.values[flag]
    jax.config.update(flag, request.node.get_closest_marker("optimized") is None)
    yield
    jax.config.update(flag, previous)


@pytest.fixture(autouse=True)
def _strict_dtype_promotion(request):
    # Users may run under strict promotion (equinox tests under it): no implicit casts. Not
    # benchmarks/, nor an example training with optax's Adam (`b1 ** count`, an int32 count).
    import jax

    example = getattr(request.node, "dtest", None)
    standard = request.node.path.is_relative_to(_BENCHMARKS) or (
        example is not None and "optax.adam" in example.docstring)
    with jax.numpy_dtype_promotion("standard" if standard else "strict"):
        yield
