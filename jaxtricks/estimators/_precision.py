r"""The precision floor of the zeroth-order estimators: rounding noise vs the step `sigma`.

A finite difference `f(x + sigma u) - f(x)` is of size `sigma |g.u|` (`g` the gradient),
while each computed value of `f` carries a rounding error that does not shrink with
`sigma`. Divided by `sigma`, the rounding error grows like `1/sigma`, and below some
`sigma_floor` it outweighs the estimator's own variance. This module predicts both.

Rounding of one number. A float of precision `eps = jnp.finfo(dtype).eps` (2^-7 for
bfloat16, 2^-10 for float16, 2^-23 for float32) spaces its numbers in `[2^e, 2^(e+1))`
by `h = eps 2^e`. Round-to-nearest moves `y` by at most `h / 2`; when `y` varies over
many spacings the error is uniform on `[-h/2, h/2]`, with variance `h^2 / 12` (Higham,
"Accuracy and Stability of Numerical Algorithms", 2nd ed., SIAM 2002, sections 2.1-2.2,
for the model `fl(y) = y (1 + delta)`, `|delta| <= eps / 2`). Relative to `y = m 2^e`
(`m` in `[1, 2)`) that is `eps^2 / (12 m^2)`; with a log-uniformly distributed
mantissa (density `1 / (m ln 2)`, Benford's law) `E[1/m^2] = (1/ln 2) int_1^2 m^-3 dm
= 3 / (8 ln 2)`, so

    E[(rounding error / y)^2] = eps^2 / (32 ln 2) ~= 0.045 eps^2.

For one given value the exact spacing is known and `h(y)^2 / 12` is used instead: it
lies between 0.54 and 1.85 times `eps^2 y^2 / (32 ln 2)`, depending on `m`.

Rounding of a computed value. Model the computed `f` at the perturbed point as
`F = f(y) + r`, `y = round(x + sigma u)` the perturbed point rounded to the params' dtype
(each coordinate off by `e_j`, variance `h(y_j)^2 / 12`), `r` the rounding of the output
and of whatever intermediate results reach it. To first order `F = f(x + sigma u) + g.e
+ r`, and

    tau^2(y) = Var(r) + Var(g.e)
             ~= eps^2 / (32 ln 2) (kappa f(y)^2 + sum_j (y_j d_j f)^2),

`kappa` the (effective) number of roundings of the size of `f` that reach the output (1
for a single final rounding; a mean of `K` values each rounded, of the size of the mean,
has `kappa = 1/K`). Both errors are taken independent of `u` and zero-mean; that holds
when the rounded quantities vary over many spacings from evaluation to evaluation (see
Validity).

Its contribution to the variance. With `n` directions, weights `w` (`E||w||^2 = W`):

- forward, `(1/n) sum_i (F(x + sigma u_i) - F(x)) / sigma w_i`: the rounding part is
  `(1/n) sum_i (r_i - r_0) / sigma w_i`; `r_0`, the error of the one `F(x)`, multiplies
  `sum_i w_i`, whose squared norm has mean `n W`, so the variance trace is
  `W (tau_+^2 + tau_0^2) / (n sigma^2)`, `tau_+^2 = tau_out^2 + tau_in^2` (the perturbed
  point is rounded) and `tau_0^2 = tau_out^2` (`x` itself is representable):

      V_round = W (2 tau_out^2 + tau_in^2) / (n sigma^2);

- antithetic, `(1/n) sum_i (F(x + sigma u_i) - F(x - sigma u_i)) / (2 sigma) w_i`: the
  two output errors are independent (`2 tau_out^2`), but the input errors are opposite,
  `e_- = -e_+`: `x` lies on the dtype's grid, which is symmetric about it, so
  `round(x - t) - x = -(round(x + t) - x)`; their difference has variance `4 tau_in^2`:

      V_round = W (tau_out^2 / 2 + tau_in^2) / (n sigma^2).

`W = E||w||^2` is `d` for "gaussian" (`w = u ~ N(0, I_d)`), `d` for "rademacher"
(`||w||^2 = d` exactly) and `d^2` for "sphere" (`w = d v`, `||v|| = 1`); the sphere's
steps are `1/sqrt(d)` of the others per coordinate at the same `sigma`, hence the factor.

The floor. As `sigma -> 0` the estimator's own variance trace (both forms) tends to
`I = c_I ||g||^2 / n`, `c_I = d + 1` for "gaussian" (`E[(g.u)^2 ||u||^2] - ||g||^2`) and
`d - 1` for "sphere" and "rademacher" (on a quadratic, exactly so for the antithetic
form). `V_round = ratio I` at

    sigma_floor = sqrt(W T / (ratio c_I)) / ||g||,  T = 2 tau_out^2 + tau_in^2 (forward)
                                                    T = tau_out^2 / 2 + tau_in^2 (antithetic),

i.e. `sigma_floor ~= c tau_out / ||g||` with `c = 1/sqrt(2)` (antithetic) or `sqrt(2)`
(forward) for Gaussian and Rademacher directions when the output rounding dominates,
`sqrt(d)` times that for the sphere. With the log-uniform mantissa, one final rounding
and Gaussian directions, the antithetic floor is `sigma ~= 0.15 eps |f| / ||g||`: for
bfloat16 values of `f ~ 2` and `||g|| ~ 1`, `sigma_floor ~ 2e-3` to `3e-3`, above MeZO's
`sigma = 1e-3` (Malladi et al., https://arxiv.org/abs/2305.17333, the default of
`zeroth_order_grad`): a bfloat16 loss needs a larger `sigma`, or a float32 loss;
in float32 it is `~5e-8`, far below it. The sample count `n` cancels: averaging more
directions lowers both terms alike.

Validity. The independence of `r` from `u`, and of the two output errors of an
antithetic pair, needs the rounded values to move over many spacings between evaluations
(the rounding is then "dithered"). A network's loss, a sum of many intermediate results
each rounded, meets that. A smooth `f` rounded once does not below its floor: there the
exact values `f(x +- sigma u)` differ by `2 sigma |g.u|`, less than a spacing, the
computed difference is 0 or one spacing, and the estimate is quantized; depending on
where `f(x)` falls between two representable numbers it is exactly 0 (a collapse, all
bias) or a few large values. Either way, keep `sigma` above the floor.

Excess precision (measured on CPU, see `benchmarks/precision.py`). XLA's
`--xla_allow_excess_precision` (default true, CPU and GPU) evaluates bfloat16 arithmetic
inside a fusion in float32 and rounds only where a value is materialised. An antithetic
estimate of a bfloat16 objective then shows no floor at all (its evaluations and their
difference fuse); a forward one only the rounding of the separately computed `f(x)`.
With the flag false the results match one final rounding, but which roundings happen
still depends on fusion decisions (seen to change with the batch size). float16 was
rounded as written either way. `jax.lax.reduce_precision` applies one rounding exactly
and reproducibly; `jax.default_matmul_precision("bfloat16")` changed nothing on CPU.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxtricks._src import checks, dtypes
from jaxtricks._src.typing import DTypeLike
from jaxtricks.estimators import _directions
from jaxtricks.estimators._directions import DirectionKind

# E[(rounding error / y)^2] = LOG_UNIFORM_FACTOR * eps^2 for a log-uniform mantissa.
LOG_UNIFORM_FACTOR = 1.0 / (32.0 * math.log(2.0))


def rounding_variance(
    sigma: jax.typing.ArrayLike,
    value: jax.typing.ArrayLike,
    grad_norm: jax.typing.ArrayLike,
    dtype: DTypeLike,
    *,
    num_params: int,
    num_directions: int = 1,
    antithetic: bool = True,
    directions: str | DirectionKind = "gaussian",
    value_dtype: DTypeLike | None = None,
    num_roundings: jax.typing.ArrayLike = 1.0,
    param_scale: jax.typing.ArrayLike = 0.0,
) -> jax.Array:
    r"""The rounding contribution to the variance trace of one `zeroth_order_grad` estimate.

    .. math::

        \tau_{\mathrm{out}}^2 = \kappa \frac{h(\mathrm{value})^2}{12}, \quad
        \tau_{\mathrm{in}}^2 = \frac{\epsilon_p^2 s^2 \lVert g \rVert^2}{32 \ln 2}, \quad
        V = \frac{W}{n \sigma^2} \begin{cases}
        2 \tau_{\mathrm{out}}^2 + \tau_{\mathrm{in}}^2 & \text{(forward)} \\
        \tau_{\mathrm{out}}^2 / 2 + \tau_{\mathrm{in}}^2 & \text{(antithetic)} \end{cases}

    with `h(v) = eps 2^floor(log2 |v|)` the spacing of `value_dtype` at `|v|`, `eps_p` the
    `eps` of `dtype` and `W = E||w||^2` (`d` for "gaussian" and "rademacher", `d^2` for
    "sphere"). It assumes dithered rounding; derivation: :ref:`estimators-precision`. Add
    the estimator's own variance (`(d + 1) ||g||^2 / n` for Gaussian directions).

    Args:
        sigma: the perturbation scale, `> 0`, after `zeroth_order_grad` raised it.
        value: the typical value of `f` near `x` (its magnitude sets the spacing).
        grad_norm: `||g|| = ||grad f(x)||`, `>= 0` (used by the input term only).
        dtype: the params' dtype, in which the perturbed points are rounded.
        num_params: `d`, the number of parameters.
        num_directions: `n`: `num_samples / 2` when antithetic, else `num_samples`.
        antithetic: central (True) or forward (False, baseline "unperturbed") differences.
        directions: a name of `DIRECTION_KINDS` or a `DirectionKind` (its `second_moment`).
        value_dtype: the dtype of the last rounding of `f` (default `dtype`).
        num_roundings: `kappa >= 0`, roundings of the size of `value` reaching the output:
            1 for one final rounding, `1/K` for a mean of `K` rounded values, 0 for none.
        param_scale: `s >= 0`, the gradient-weighted RMS of the params,
            `sqrt(sum_j (x_j g_j)^2) / ||g||`; 0 ignores the input rounding.

    Returns:
        The predicted variance trace (a float32 scalar, or wider with wider inputs).

    Raises:
        ValueError: for a concrete `sigma <= 0`, a non-finite `value`, a negative
            `grad_norm`, `num_roundings` or `param_scale`, a non-float `dtype` or
            `value_dtype`, a non-positive `num_params` or `num_directions`, or an unknown
            `directions`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks.estimators import rounding_variance
        >>> v = rounding_variance(0.01, 768.0, 1.0, jnp.bfloat16, num_params=10)
        >>> round(float(v), 1)  # 10 (16 / 12) / 2 / 0.01^2: h = 4 at 768 in bfloat16
        66666.7

    References:
        Higham, "Accuracy and Stability of Numerical Algorithms" (SIAM, 2002), ch. 2.
        Malladi et al. (MeZO), https://arxiv.org/abs/2305.17333.
    """
    checks.check_scalar("sigma", sigma, low=0.0, low_inclusive=False)
    terms = _rounding_terms(value, grad_norm, dtype, num_params, antithetic, directions,
                            value_dtype, num_roundings, param_scale, num_directions)[0]
    return jnp.divide(*dtypes.promoted(terms, jnp.square(sigma)))


def rounding_floor_sigma(
    value: jax.typing.ArrayLike,
    grad_norm: jax.typing.ArrayLike,
    dtype: DTypeLike,
    *,
    num_params: int,
    antithetic: bool = True,
    directions: str | DirectionKind = "gaussian",
    ratio: jax.typing.ArrayLike = 1.0,
    value_dtype: DTypeLike | None = None,
    num_roundings: jax.typing.ArrayLike = 1.0,
    param_scale: jax.typing.ArrayLike = 0.0,
) -> jax.Array:
    r"""The `sigma` below which rounding adds more than `ratio` times the estimator's variance.

    Solves `rounding_variance(sigma, ...) = ratio c_I grad_norm^2 / n` (the estimator's
    own variance trace as `sigma -> 0`, `c_I = d + 1` for "gaussian", `d - 1` for
    "sphere" and "rademacher"); `n` cancels:

        sigma_floor = sqrt(W T / (ratio c_I)) / grad_norm,
        T = 2 tau_out^2 + tau_in^2 (forward), tau_out^2 / 2 + tau_in^2 (antithetic),

    with `W`, `tau_out`, `tau_in` as in `rounding_variance`. For one final rounding
    and Gaussian antithetic directions `sigma_floor ~= h(value) / (sqrt(24) ||g||)`
    (`~= 0.15 eps |value| / ||g||` for a log-uniform mantissa). Above it the floor costs
    at most a factor `1 + ratio` in variance; `ratio = 0.01` gives the `sigma` above which
    rounding is negligible.

    Args:
        value: the typical value of `f` near `x`.
        grad_norm: `||grad f(x)|| > 0` (an estimate will do: the floor scales as `1/it`).
        dtype, num_params, antithetic, directions: as in `rounding_variance`.
        value_dtype, num_roundings, param_scale: as in `rounding_variance`.
        ratio: `> 0`, the allowed rounding variance relative to the intrinsic one.

    Returns:
        `sigma_floor` (a scalar array).

    Raises:
        ValueError: as `rounding_variance`, and for a concrete `grad_norm <= 0`, a
            `ratio <= 0`, or `num_params = 1` with "sphere" or "rademacher" (whose
            variance is then 0: no floor).

    References:
        Higham, "Accuracy and Stability of Numerical Algorithms" (SIAM, 2002), ch. 2.
        Malladi et al. (MeZO), https://arxiv.org/abs/2305.17333 (`sigma = 1e-3`).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks.estimators import rounding_floor_sigma
        >>> # a bfloat16 loss near 2.3 with ||g|| = 1 and 10^6 params: above MeZO's 1e-3
        >>> round(float(rounding_floor_sigma(2.3, 1.0, jnp.bfloat16, num_params=10**6)), 4)
        0.0032
    """
    checks.check_scalar("grad_norm", grad_norm, low=0.0, low_inclusive=False)
    checks.check_scalar("ratio", ratio, low=0.0, low_inclusive=False)
    if _directions.resolve(directions).variance_factor(num_params) <= 0:
        raise ValueError(
            f"num_params must be >= 2 with directions={directions!r} (one parameter "
            "gives an exact estimate, no floor), got 1."
        )
    total, intrinsic = _rounding_terms(value, grad_norm, dtype, num_params, antithetic,
                                       directions, value_dtype, num_roundings,
                                       param_scale, 1)
    floor = jnp.sqrt(jnp.divide(*dtypes.promoted(total, ratio * intrinsic)))
    return jnp.divide(*dtypes.promoted(floor, grad_norm))


def _rounding_terms(
    value: jax.typing.ArrayLike, grad_norm: jax.typing.ArrayLike, dtype: DTypeLike,
    num_params: int, antithetic: bool, directions: str | DirectionKind,
    value_dtype: DTypeLike | None,
    num_roundings: jax.typing.ArrayLike, param_scale: jax.typing.ArrayLike,
    num_directions: int,
) -> tuple[jax.Array, float]:
    """`(sigma^2 V_round, c_I)` of the module docstring."""
    checks.check_scalar("grad_norm", grad_norm, low=0.0)
    checks.check_scalar("num_roundings", num_roundings, low=0.0)
    checks.check_scalar("param_scale", param_scale, low=0.0)
    checks.check_positive_int("num_params", num_params)
    checks.check_positive_int("num_directions", num_directions)
    kind = _directions.resolve(directions)
    eps_params = _float_eps("dtype", dtype)
    final_dtype = dtype if value_dtype is None else value_dtype
    eps_value = _float_eps("value_dtype", final_dtype)
    largest = float(jnp.finfo(final_dtype).max)  # the value must be representable
    checks.check_scalar("value", value, low=-largest, high=largest)
    value = jnp.asarray(value, dtypes.result_type(value, jnp.float32))
    spacing = _spacing(value, eps_value, final_dtype)
    tau_out = jnp.square(spacing) * num_roundings / 12.0
    tau_in = LOG_UNIFORM_FACTOR * (eps_params * param_scale * grad_norm) ** 2
    tau_out, tau_in = dtypes.promoted(tau_out, tau_in)
    weight = kind.second_moment(num_params)
    total = tau_out / 2 + tau_in if antithetic else 2 * tau_out + tau_in
    intrinsic = kind.variance_factor(num_params)
    return weight * total / num_directions, intrinsic


def _spacing(value: jax.Array, eps: float, dtype: DTypeLike) -> jax.Array:
    """`h(v) = eps 2^floor(log2 |v|)`, the spacing of `dtype` at `|v|`; at 0 (and among
    subnormals) the subnormal spacing `eps 2^minexp` (`finfo(dtype).smallest_subnormal`)."""
    _, exponent = jnp.frexp(value)  # |value| = m 2^exponent, m in [0.5, 1)
    minimum = int(jnp.finfo(dtype).minexp)
    exponent = jnp.where(value == 0, minimum + 1, exponent)
    return eps * jnp.ldexp(jnp.ones_like(value), jnp.maximum(exponent - 1, minimum))


def _float_eps(name: str, dtype: DTypeLike) -> float:
    if dtype is None:
        raise ValueError(f"{name} must be a floating dtype, got None.")
    try:
        floating = jnp.issubdtype(dtype, jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise ValueError(f"{name} must be a floating dtype, got {dtype!r}.")
    return float(jnp.finfo(dtype).eps)
