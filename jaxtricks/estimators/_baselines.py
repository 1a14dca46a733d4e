"""The baselines (control variates) of both estimators: one vocabulary, one table.

For samples `y_i` with rewards `r_i` (function values) and scores `s_i` (or directions
`w_i`), both estimators compute `(1/n) sum_i (r_i - b_i) s_i`. It stays unbiased when
`b_i` does not depend on `y_i` (since `E[s_i] = 0`): a constant, or a statistic of the
other samples only. A baseline is named by one of `BASELINES` or given as a scalar:

- None: `b = 0`, the raw score-function estimate;
- "unperturbed": `b = f(x)`, the objective at the unperturbed parameters (zeroth-order
  only: a policy has no unperturbed sample; pass `reward_fn` of a reference output as
  a scalar instead);
- "mean": `b = mean_j r_j`, which includes `r_i`: expectation `(1 - 1/n)` times the
  gradient, biased;
- "leave_one_out": `b_i = mean_{j!=i} r_j` (RLOO, Kool et al. 2019), unbiased, equal to
  `n/(n-1)` times the "mean" estimate;
- "optimal": the variance-minimising scalar `b* = E[r ||s||^2] / E[||s||^2]` (Su,
  https://kexue.fm/archives/7737), estimated from the other samples,
  `b_i = sum_{j!=i} r_j q_j / sum_{j!=i} q_j` with `q_j = ||s_j||^2`, so that it
  stays unbiased;
- a scalar array `b`: a constant (any float; a tracer too);
- a `GroupBaseline`: the advantages of LLM reinforcement learning, rewards laid out
  `[groups, group_size]` and centred (and scaled) within each group or over the batch
  (GRPO, Dr. GRPO, REINFORCE++): every one of them biased, by amounts that
  `docs/techniques/estimators.md` tabulates exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks._src import checks

if TYPE_CHECKING:
    from typing_extensions import TypeIs



@dataclasses.dataclass(frozen=True)
class GroupBaseline:
    r"""Group-normalised advantages: `A_i = (r_i - m_i) / (s_i + eps)` (or `r_i - m_i`).

    The `n` rewards are laid out `[n / group_size, group_size]` (consecutive samples
    form a group: the answers to one prompt in LLM RL); `m_i` is the mean of sample
    `i`'s group (`center="group"`), of the batch (`"batch"`) or, for the zeroth-order
    estimate, `f(x)` (`"unperturbed"`), `s_i` the standard
    deviation with `ddof` degrees of freedom of its group's or of the batch's centred
    rewards (`scale`), or none (`scale=None`):

    - GRPO: `center="group"`, `scale="group"`, `ddof=1` as verl and tunix compute it
      (arXiv:2402.03300, eq. 3);
    - Dr. GRPO: `center="group"`, `scale=None` (arXiv:2503.20783, section 3);
    - REINFORCE++: `center="batch"`, `scale="batch"`, `ddof=0` (arXiv:2501.03262);
      with a group baseline (verl's `reinforce_plus_plus_baseline`), `center="group"`;
    - FZOO (zeroth order): `center="unperturbed"`, `scale="batch"`, `ddof=0`
      (arXiv:2506.09034).

    Every one is biased: `m_i` includes `r_i` itself (Dr. GRPO's expectation is exactly
    `(1 - 1/group_size)` times the gradient; "leave_one_out" removes that), and `s_i`
    depends on `r_i` (GRPO's and REINFORCE++'s bias has no closed form; the estimators
    page computes it exactly by enumeration).

    Attributes:
        group_size: samples per group, a divisor of `num_samples` (>= 2); None for one
            group of all the samples.
        center: "group", "batch" or "unperturbed" (`zeroth_order_grad` only).
        scale: "group", "batch" or None.
        ddof: the degrees of freedom of the standard deviation (0: population, 1:
            sample, as `torch.std`).
        eps: added to the standard deviation (GRPO's implementations: 1e-6).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> grpo = estimators.GroupBaseline(group_size=2)
        >>> jnp.round(grpo.advantages(jnp.array([1.0, 0.0, 0.5, 0.5])), 4)  # 2 groups
        Array([ 0.7071, -0.7071,  0.    ,  0.    ], dtype=float32)

    References:
        Shao et al. (GRPO), https://arxiv.org/abs/2402.03300; Liu et al. (Dr. GRPO),
        https://arxiv.org/abs/2503.20783; Hu (REINFORCE++),
        https://arxiv.org/abs/2501.03262; Kool, van Hoof & Welling, "Buy 4 REINFORCE
        samples, get a baseline for free!" (2019), for the leave-one-out alternative.
    """

    group_size: int | None = None
    center: Literal["group", "batch", "unperturbed"] = "group"
    scale: Literal["group", "batch"] | None = "group"
    ddof: int = 1
    eps: float = 1e-6

    def advantages(self, rewards: jax.Array, unperturbed: jax.Array | None = None) -> jax.Array:
        """`[n]` advantages of `[n]` rewards (`unperturbed`: `f(x)`, for that center)."""
        size = rewards.shape[0] if self.group_size is None else self.group_size
        groups = rewards.reshape(-1, size)
        if self.center == "group":
            centred = groups - jnp.mean(groups, axis=1, keepdims=True)
        elif self.center == "batch":
            centred = groups - jnp.mean(groups)
        else:
            assert unperturbed is not None, "center='unperturbed' needs f(x)"
            centred = groups - unperturbed
        if self.scale == "group":
            centred = centred / (jnp.std(groups, axis=1, keepdims=True, ddof=self.ddof)
                                 + self.eps)
        elif self.scale == "batch":
            centred = centred / (jnp.std(centred, ddof=self.ddof) + self.eps)
        return centred.reshape(-1)

    def check(self, num_samples: int) -> None:
        """Raises a `ValueError` naming the field that does not fit `num_samples`."""
        checks.check_choice("center", self.center, ("group", "batch", "unperturbed"))
        checks.check_choice("scale", self.scale, ("group", "batch", None))
        checks.check_scalar("eps", self.eps, low=0.0)
        size = num_samples if self.group_size is None else self.group_size
        checks.check_positive_int("group_size", size, minimum=2)
        if num_samples % size:
            raise ValueError(
                f"group_size must divide num_samples={num_samples}, got {size}.")
        if self.scale is not None and not 0 <= self.ddof < size:
            raise ValueError(f"ddof must lie in [0, {size}) (group_size), got {self.ddof}.")


Baseline: TypeAlias = str | jax.typing.ArrayLike | GroupBaseline | None
"""A baseline: a name of `BASELINES` (None included), a scalar or a `GroupBaseline`."""


class _Rule(NamedTuple):
    # (rewards [n], sq_norms [n] | None, unperturbed thunk | None) -> b
    value: Callable[..., jax.typing.ArrayLike]
    min_samples: int = 1
    needs_sq_norms: bool = False
    pools_samples: bool = False  # b_i depends on the other samples' rewards


def leave_one_out_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """`sum_{j!=i} w_j v_j / sum_{j!=i} w_j` for every `i`."""
    weighted_total = jnp.sum(weights * values)
    total_weight = jnp.sum(weights)
    return (weighted_total - weights * values) / (total_weight - weights)


_RULES: dict[str | None, _Rule] = {
    None: _Rule(lambda rewards, sq_norms, unperturbed: 0),
    "unperturbed": _Rule(lambda rewards, sq_norms, unperturbed: unperturbed()),
    "mean": _Rule(lambda rewards, sq_norms, unperturbed: jnp.mean(rewards), pools_samples=True),
    "leave_one_out": _Rule(
        lambda rewards, sq_norms, unperturbed: leave_one_out_mean(
            rewards, jnp.ones_like(rewards)
        ),
        min_samples=2,
        pools_samples=True,
    ),
    "optimal": _Rule(
        lambda rewards, sq_norms, unperturbed: leave_one_out_mean(rewards, sq_norms),
        min_samples=2,
        needs_sq_norms=True,
        pools_samples=True,
    ),
}

BASELINES = tuple(_RULES)
"""Every named baseline; `zeroth_order_grad` accepts them all."""

POLICY_BASELINES = tuple(name for name in BASELINES if name != "unperturbed")
"""The named baselines of `policy_gradient` (no unperturbed sample there)."""


def _accepted(names: tuple[str | None, ...]) -> str:
    return f"one of {names}, a scalar array or a GroupBaseline"


def check_baseline(
    baseline: Baseline, num_samples: int, accepted: tuple[str | None, ...] = BASELINES
) -> None:
    """Checks a baseline: a name of `accepted` or a scalar array.

    Raises:
        ValueError: for a boolean (which `zeroth_order_grad` once took, True for
            "unperturbed" and False for None, and `policy_gradient` would have read as
            the constant 1.0 or 0.0), a name outside `accepted`, a non-scalar array,
            or fewer samples than the baseline needs.
    """
    if isinstance(baseline, GroupBaseline):
        baseline.check(num_samples)
        if baseline.center == "unperturbed" and "unperturbed" not in accepted:
            raise ValueError(
                "baseline.center must be 'group' or 'batch' here (a policy has no "
                "unperturbed sample), got 'unperturbed'.")
        return
    if isinstance(baseline, bool | np.bool_):
        raise _boolean_error(baseline, accepted)
    if is_named(baseline):
        if baseline not in accepted:
            where = (
                f" ({baseline!r} is defined for zeroth_order_grad only; pass the reward "
                "of a reference output as a scalar instead)"
                if baseline in BASELINES
                else ""
            )
            raise ValueError(
                f"baseline must be {_accepted(accepted)}, got {baseline!r}{where}."
            )
        minimum = _RULES[baseline].min_samples
        if num_samples < minimum:
            raise ValueError(
                f"num_samples must be an integer >= {minimum} with "
                f"baseline={baseline!r}, got {num_samples}."
            )
        return
    try:
        dtype, shape = jnp.result_type(baseline), jnp.shape(baseline)
    except TypeError:
        raise ValueError(
            f"baseline must be {_accepted(accepted)}, got {baseline!r}."
        ) from None
    if dtype == jnp.bool_:
        raise _boolean_error(baseline, accepted)
    if shape != ():
        raise ValueError(
            f"baseline must be {_accepted(accepted)}, got an array of shape {shape}."
        )


def _boolean_error(baseline: Baseline, accepted: tuple[str | None, ...]) -> ValueError:
    return ValueError(
        f"baseline must be {_accepted(accepted)}, got the boolean {baseline!r}. "
        "Booleans are ambiguous: zeroth_order_grad's former baseline=True is "
        "'unperturbed' (b = f(params)) and baseline=False is None (b = 0)."
    )


def is_named(baseline: Baseline) -> TypeIs[str | None]:
    """Whether `baseline` is a name (None or a string) rather than a scalar array."""
    return baseline is None or isinstance(baseline, str)


def needs_unperturbed(baseline: Baseline) -> bool:
    """Whether the baseline needs `f(x)`: "unperturbed", or a `GroupBaseline` centred on it."""
    if isinstance(baseline, GroupBaseline):
        return baseline.center == "unperturbed"
    return is_named(baseline) and baseline == "unperturbed"


def needs_sq_norms(baseline: Baseline) -> bool:
    """Whether the baseline needs the squared norms of the scores (or directions)."""
    return is_named(baseline) and _RULES[baseline].needs_sq_norms


def centred_rewards(
    rewards: jax.Array,
    baseline: Baseline,
    sq_norms: jax.Array | None = None,
    unperturbed: Callable[[], jax.Array | None] | None = None,
) -> jax.Array:
    """`r_i - b_i` for every sample (see the module docstring for `b_i`).

    Args:
        rewards: `[n]` rewards (function values) of the samples.
        baseline: a name of `BASELINES` (checked by `check_baseline`) or a scalar.
        sq_norms: `[n]` squared norms `q_j` of the scores (or of the direction
            weights); used by "optimal" only.
        unperturbed: a function returning `f(x)`, called by "unperturbed" only.

    Returns:
        `[n]` centred rewards.
    """
    if isinstance(baseline, GroupBaseline):
        return baseline.advantages(
            rewards, None if unperturbed is None else unperturbed())
    if is_named(baseline):
        return rewards - _RULES[baseline].value(rewards, sq_norms, unperturbed)
    return rewards - baseline


def pools_samples(baseline: Baseline) -> bool:
    """Whether `b_i` depends on the other samples' rewards ("mean", "leave_one_out",
    "optimal"), so that no coefficient is known before every sample is evaluated."""
    return isinstance(baseline, GroupBaseline) or (
        is_named(baseline) and _RULES[baseline].pools_samples)
