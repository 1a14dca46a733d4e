"""Zeroth-order and policy-gradient estimators, MeZO's update, and their precision floor.

An exact identity links the two estimators: the forward zeroth-order estimate with
Gaussian directions is, sample by sample, REINFORCE on the Gaussian policy
`N(params, sigma^2 I)` over the parameters (`gaussian_policy`), whose score is
`u / sigma`. This is not the claim of Su's post (https://kexue.fm/archives/7737), which
argues that for an objective of a model's argmax output, zeroth-order perturbation of
the parameters approximates the policy gradient of the model's own softmax policy, by a
Taylor step in the perturbation scale. All are pure functions of an explicit key.
"""

from jaxtricks.estimators._policy_gradient import (
    categorical_policy,
    gaussian_policy,
    policy_gradient,
)
from jaxtricks.estimators._precision import rounding_floor_sigma, rounding_variance
from jaxtricks.estimators._update import zeroth_order_update
from jaxtricks.estimators._zeroth_order import zeroth_order_grad

__all__ = (
    "categorical_policy",
    "gaussian_policy",
    "policy_gradient",
    "rounding_floor_sigma",
    "rounding_variance",
    "zeroth_order_grad",
    "zeroth_order_update",
)
