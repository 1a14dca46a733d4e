"""Zeroth-order, forward-gradient and policy-gradient estimators, MeZO's update, and
their precision floor.

An exact identity links the estimators: the forward zeroth-order estimate with Gaussian
directions is, sample by sample, REINFORCE on the Gaussian policy `N(params, sigma^2 I)`
over the parameters (`gaussian_policy`), whose score is `u / sigma`; as `sigma -> 0` it
becomes the forward gradient `(grad f . u) u`. This is not the claim of Su's post
(https://kexue.fm/archives/7737), which argues that for an objective of a model's argmax
output, zeroth-order perturbation of the parameters approximates the policy gradient of
the model's own softmax policy. All are pure functions of an explicit key.

The modules:

- `_directions`: the direction kinds (`DirectionKind` and its subclasses), the draws
  and every constant of a kind; `_guided`: guided ES's kind, along surrogate gradients;
  `_random`: fusible threefry draws;
- `_sampling`: sample keys, perturbed points and their one evaluation (`value_at`),
  the smallest resolved `sigma`, the checks of `params`;
- `_baselines`: the baselines of both estimators, one table;
- `_plan`: one estimate's resolved arguments and its coefficients `c_i`;
- `_strategy`: the one place that chooses how an estimate is evaluated (its table),
  run by `_one_pass` (blocks of directions) or `_two_phase` (the seed trick);
- `_zeroth_order`, `_forward_gradient`, `_update`, `_policy_gradient`: the public
  estimators; `_transforms`: the estimates as Optax transforms (and the perturbation
  mask); `_hizoo`, `_svrg`: the zeroth-order optimisers whose state a chain of optax
  transforms cannot hold (HiZOO's Hessian, MeZO-SVRG's anchor); `_precision`: the
  rounding floor.
"""

from jaxtricks.estimators._baselines import GroupBaseline
from jaxtricks.estimators._directions import (
    DIRECTION_KINDS,
    DirectionKind,
    Gaussian,
    LowRank,
    Orthogonal,
    Rademacher,
    Sphere,
)
from jaxtricks.estimators._forward_gradient import forward_gradient
from jaxtricks.estimators._guided import Guided
from jaxtricks.estimators._hizoo import HiZOOState, hizoo_estimate
from jaxtricks.estimators._policy_gradient import (
    categorical_policy,
    gaussian_policy,
    policy_gradient,
)
from jaxtricks.estimators._precision import rounding_floor_sigma, rounding_variance
from jaxtricks.estimators._svrg import SVRGState, svrg_estimate
from jaxtricks.estimators._transforms import (
    EstimateState,
    forward_gradient_estimate,
    keep_best_step,
    zeroth_order_estimate,
)
from jaxtricks.estimators._update import zeroth_order_update
from jaxtricks.estimators._zeroth_order import zeroth_order_grad

__all__ = (
    "DIRECTION_KINDS",
    "DirectionKind",
    "EstimateState",
    "Gaussian",
    "GroupBaseline",
    "Guided",
    "HiZOOState",
    "LowRank",
    "Orthogonal",
    "Rademacher",
    "SVRGState",
    "Sphere",
    "categorical_policy",
    "forward_gradient",
    "forward_gradient_estimate",
    "gaussian_policy",
    "hizoo_estimate",
    "keep_best_step",
    "policy_gradient",
    "rounding_floor_sigma",
    "rounding_variance",
    "svrg_estimate",
    "zeroth_order_estimate",
    "zeroth_order_grad",
    "zeroth_order_update",
)
