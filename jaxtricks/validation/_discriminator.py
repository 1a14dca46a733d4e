"""The discriminator of adversarial validation: the model, its objective and the loop.

`fit_and_score` trains one train-vs-test discriminator on a subset of rows with any
training loop `Fit` (by default `optimizer_steps`, full-batch steps of an optax
optimiser) and scores every row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import dtypes
from jaxtricks.regularizers import l2_penalty


class Discriminator(nn.Module):
    """Logistic regression (`hidden_sizes=()`) or an MLP with ReLU, one logit out."""

    hidden_sizes: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # In the features' dtype (float32 or wider): float32 kernels, cast explicitly.
        for width in self.hidden_sizes:
            x = nn.relu(nn.Dense(width, dtype=x.dtype)(x))
        return nn.Dense(1, dtype=x.dtype)(x)[..., 0]


Fit = Callable[[Callable[[optax.Params], jax.Array], optax.Params], optax.Params]
"""A training loop `fit(loss_fn, params) -> params`: from the initial `params`, minimise
the scalar full-batch objective `loss_fn(params)`; traced under `jax.jit` and `jax.vmap`
(one call per fold)."""


def optimizer_steps(
    loss_fn: Callable[[optax.Params], jax.Array],
    params: optax.Params,
    *,
    optimizer: optax.GradientTransformation,
    steps: int,
) -> optax.Params:
    """The default `Fit`: `steps` full-batch steps of `optimizer` in a `jax.lax.scan`."""

    def step(
        carry: tuple[optax.Params, optax.OptState], _: None
    ) -> tuple[tuple[optax.Params, optax.OptState], None]:
        params, opt_state = carry
        grads = jax.grad(loss_fn)(params)
        # optax's Adam promotes implicitly (`b1 ** count`, an int32 count), which a user's
        # strict dtype promotion refuses: the optimiser alone runs under standard rules.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
    return params


def standardize(features: jax.Array, fit_rows: jax.Array) -> jax.Array:
    """`(x - mean) / std` per column, the mean and std over the rows where `fit_rows`.

    Each column is first divided by its largest `|x|` over those rows, so the squares
    neither overflow (`|x| ~ 1e20` in float32) nor underflow (`|x| ~ 1e-30`): the result
    does not depend on a column's scale. It is then shifted by its value in the first
    fit row, so a constant column is exactly 0 (a mean of equal entries with rounding
    errors would leave noise that its tiny std blows up); a column with std 0 is left
    unscaled. A NaN or inf among the fit rows makes its column NaN.
    """
    magnitude = jnp.max(jnp.where(fit_rows[:, None], jnp.abs(features), 0), axis=0)
    scaled = features / jnp.where(magnitude == 0, 1, magnitude)
    shifted = scaled - scaled[jnp.argmax(fit_rows)]
    row_weight = fit_rows.astype(features.dtype)
    row_weight /= jnp.sum(row_weight)
    mean = row_weight @ shifted
    std = jnp.sqrt(row_weight @ jnp.square(shifted - mean))
    return (shifted - mean) / jnp.where(std == 0, 1, std)


def fit_and_score(
    key: jax.Array,
    fit_rows: jax.Array,
    features: jax.Array,
    is_test: jax.Array,
    *,
    hidden_sizes: tuple[int, ...],
    fit: Fit,
    weight_decay: jax.typing.ArrayLike,
) -> jax.Array:
    """Trains one discriminator on the rows where `fit_rows`; returns every row's logit.

    Features are standardised (`standardize`) with the scale, mean and standard
    deviation of the fit rows only, so a held-out row influences nothing its own logit
    depends on.
    """
    inputs = standardize(features, fit_rows)
    fit_test = (fit_rows & is_test).astype(inputs.dtype)
    fit_train = (fit_rows & ~is_test).astype(inputs.dtype)
    # Balanced: each set carries total weight 1/2 whatever its size.
    class_weight = 0.5 * (fit_test / jnp.sum(fit_test) + fit_train / jnp.sum(fit_train))
    model = Discriminator(hidden_sizes)
    params = model.init(key, jnp.zeros((1, inputs.shape[1]), inputs.dtype))

    def loss_fn(params: Any) -> jax.Array:
        # flax types `apply` as returning the output or (output, mutated state).
        logits = cast(jax.Array, model.apply(params, inputs))
        cross_entropy = optax.sigmoid_binary_cross_entropy(logits, is_test.astype(logits.dtype))
        # The default mask selects exactly the Dense kernels (the only leaves with ndim 2).
        penalty = jnp.multiply(*dtypes.promoted(weight_decay, l2_penalty(params)))
        return class_weight @ cross_entropy + penalty.astype(cross_entropy.dtype)

    trained: Any = fit(loss_fn, params)
    return cast(jax.Array, model.apply(trained, inputs))
