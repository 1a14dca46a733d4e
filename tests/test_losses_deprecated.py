"""The losses' former names (`jaxtricks.losses.__init__`, `jaxtricks._src.deprecation`):
each is its new name under the old one, with the same numbers, and warns exactly once.

`call_twice_warning_once` is the check every deprecated call path uses (the other
deprecations are tested next to their functions: `test_losses_metrics.py`,
`test_teaforn.py`, `test_weissi.py`).
"""

import inspect
import warnings
from unittest import mock

import jax
import numpy as np
import pytest

from jaxtricks import losses
from jaxtricks._src import deprecation


def call_twice_warning_once(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` twice, as the first calls of the process (the record of the
    deprecations already warned about is emptied for the duration).

    Asserts that the first call raises exactly one `DeprecationWarning`, attributed to
    the line that called `fn` (here), naming the version that removes the old path, and
    the second none. Returns both results and the warning's message.
    """
    with mock.patch.object(deprecation, "_WARNED", set()):
        with warnings.catch_warnings(record=True) as first_caught:
            warnings.simplefilter("always")
            first = fn(*args, **kwargs)
        with warnings.catch_warnings(record=True) as second_caught:
            warnings.simplefilter("always")
            second = fn(*args, **kwargs)
    assert [w.category for w in first_caught] == [DeprecationWarning], first_caught
    assert not second_caught, [str(w.message) for w in second_caught]
    assert first_caught[0].filename == __file__, "the warning must point at the caller"
    message = str(first_caught[0].message)
    assert f"removed in jaxtricks {deprecation.REMOVED_IN}" in message
    return first, second, message


_RNG = np.random.default_rng(0)
_LOGITS = _RNG.standard_normal((6, 4)).astype(np.float32)
_LABELS = np.array([0, 3, 1, 2, 2, 0], np.int32)
_MULTI_HOT = (_RNG.uniform(size=(6, 4)) < 0.4).astype(np.float32)
_BINARY_LOGITS = _RNG.standard_normal(8).astype(np.float32)
_BINARY_LABELS = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float32)
_PRIORS = np.array([0.4, 0.3, 0.2, 0.1])
_SOFTMAX = (_LOGITS, _LABELS)
_BINARY = (_BINARY_LOGITS, _BINARY_LABELS)

# old name -> (new name, arguments, keyword arguments); every rename of the prefix change.
RENAMES = {
    "binary_f1_weighted_cross_entropy": ("sigmoid_f1_weighted_cross_entropy", _BINARY, {}),
    "binary_smoothed_accuracy_loss": ("sigmoid_smoothed_accuracy_loss", _BINARY, {}),
    "binary_smoothed_f1_loss": ("sigmoid_smoothed_f1_loss", _BINARY, {}),
    "hard_truncated_cross_entropy": (
        "sigmoid_hard_truncated_cross_entropy", _BINARY, {"margin": 0.7}),
    "soft_truncated_cross_entropy": (
        "sigmoid_soft_truncated_cross_entropy", _BINARY, {"steepness": 2.0}),
    "logit_adjusted_softmax_cross_entropy": (
        "softmax_logit_adjusted_cross_entropy", _SOFTMAX, {"class_priors": _PRIORS, "tau": 0.5}),
    "multilabel_softmax_cross_entropy": (
        "softmax_multilabel_cross_entropy", (_LOGITS, _MULTI_HOT), {}),
    "smoothed_accuracy_loss": ("softmax_smoothed_accuracy_loss", _SOFTMAX, {}),
    "smoothed_f1_loss": ("softmax_smoothed_f1_loss", _SOFTMAX, {"average": "micro"}),
    "weighted_softmax_cross_entropy": (
        "softmax_weighted_cross_entropy", _SOFTMAX, {"class_weights": 1 / _PRIORS}),
}
# Public names that are not losses, so take no sigmoid_/softmax_ prefix.
NOT_LOSSES = {"adjust_logits", "balanced_accuracy", "balanced_accuracy_from_logits",
              "class_priors", "cross_entropy_weights"}


@pytest.mark.parametrize("old_name", sorted(RENAMES))
def test_an_old_name_gives_the_new_numbers_and_warns_once_naming_the_new_name(old_name):
    new_name, args, kwargs = RENAMES[old_name]
    old, new = getattr(losses, old_name), getattr(losses, new_name)
    expected = new(*args, **kwargs)
    first, second, message = call_twice_warning_once(old, *args, **kwargs)
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)
    assert f"jaxtricks.losses.{old_name} is deprecated" in message
    assert f"use jaxtricks.losses.{new_name}," in message
    # Under jit and grad too (the warning, at trace time, was tested above).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        np.testing.assert_array_equal(
            jax.jit(lambda s: old(s, *args[1:], **kwargs))(args[0]), expected)
        np.testing.assert_array_equal(
            jax.grad(lambda s: old(s, *args[1:], **kwargs).sum())(args[0]),
            jax.grad(lambda s: new(s, *args[1:], **kwargs).sum())(args[0]))


@pytest.mark.parametrize("old_name", sorted(RENAMES))
def test_an_old_name_is_importable_has_the_new_signature_and_is_not_in_all(old_name):
    new_name = RENAMES[old_name][0]
    old, new = getattr(losses, old_name), getattr(losses, new_name)
    assert old_name not in losses.__all__ and new_name in losses.__all__
    assert old.__name__ == old_name and new.__name__ == new_name
    assert inspect.signature(old) == inspect.signature(new)
    assert f"`jaxtricks.losses.{new_name}`" in old.__doc__
    assert deprecation.REMOVED_IN in old.__doc__


def test_every_public_loss_name_has_the_sigmoid_or_softmax_prefix():
    public = set(losses.__all__)
    assert public >= NOT_LOSSES
    for name in public - NOT_LOSSES:
        assert name.startswith(("sigmoid_", "softmax_")), name
    assert {new for new, _, _ in RENAMES.values()} <= public


def test_warn_once_warns_once_per_key_and_names_the_caller():
    def old_path(key):
        deprecation.warn_once(key, f"{key} is deprecated")

    with (mock.patch.object(deprecation, "_WARNED", set()),
          pytest.warns(DeprecationWarning, match=" is deprecated$") as caught):
        old_path("a")
        old_path("a")
        old_path("b")
    assert [str(w.message) for w in caught] == ["a is deprecated", "b is deprecated"]
    assert {w.filename for w in caught} == {__file__}
