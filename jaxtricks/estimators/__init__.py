"""Zeroth-order and policy-gradient estimators, and their precision floor.

Two views of one estimator (Su, https://kexue.fm/archives/7737): a zeroth-order
estimate with Gaussian directions is the policy gradient of a Gaussian policy over
the parameters. Both are pure functions of an explicit key, vmapped over samples.
"""

from jaxtricks.estimators._policy_gradient import (
    categorical_policy,
    gaussian_policy,
    policy_gradient,
)
from jaxtricks.estimators._precision import rounding_floor_sigma, rounding_variance
from jaxtricks.estimators._zeroth_order import zeroth_order_grad

__all__ = (
    "categorical_policy",
    "gaussian_policy",
    "policy_gradient",
    "rounding_floor_sigma",
    "rounding_variance",
    "zeroth_order_grad",
)
