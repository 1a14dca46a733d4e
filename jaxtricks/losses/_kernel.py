"""The fused kernel of the softmax losses: target log-probabilities and probabilities.

Most softmax losses are functions of the target log-probability
`log p_y = s_y - logsumexp(s)` (of the logits, of shifted logits for logit adjustment,
of `-K s` for Su's soft truncation). `log_target_probability` computes it in one fused
pass over the logits; its custom JVP is the linear map `t -> t_y - sum_i p_i t_i`, which
JAX transposes into the gradient `g (e_y - p)` of cross-entropy scaled by the
per-example cotangent `g`. A loss `l(log p_y)` therefore costs one cross-entropy plus
elementwise work on per-example scalars, in forward and reverse mode alike (such a loss
is a re-weighted cross-entropy with weight `w = -l'(log p_y)`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def masked_logits(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Logits with the masked-out scores at -inf (so they get probability 0)."""
    if mask is None:
        return logits
    return jnp.where(mask, logits, -jnp.inf)


def _shifted_exponentials(
    logits: jax.Array, mask: jax.Array | None, scale: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(exp(a - max a), its sum, max a)` over the last axis, `a = scale * s` (`s` for
    None).

    Masked scores get 0; a row with every score masked gets the sum 1 and the maximum 0
    (so its logsumexp is 0 and its probabilities 0). The guards test the mask, never the
    values: a NaN or inf score gives a NaN or inf sum. Without a mask there is no guard,
    which lets XLA:CPU fuse the whole softmax, as it does for optax's cross-entropy.
    With a scale, `max a` is `scale * max s` or `scale * min s` by its sign: reductions
    over `s` itself, so that `a` is never materialised (only the exponential reads it).
    """
    if scale is None:
        shifted = masked_logits(logits, mask)
        top = jnp.max(shifted, axis=-1, keepdims=True)
    else:
        shifted = masked_logits(scale * logits, mask)
        lowest = logits if mask is None else jnp.where(mask, logits, jnp.inf)
        top = jnp.where(scale >= 0, scale * jnp.max(masked_logits(logits, mask), axis=-1),
                        scale * jnp.min(lowest, axis=-1))[..., None]
    top = jax.lax.stop_gradient(top)
    if mask is not None:
        present = jnp.any(mask, axis=-1, keepdims=True)
        top = jnp.where(present, top, 0.0)
    exps = jnp.exp(shifted - top)
    total = jnp.sum(exps, axis=-1)
    if mask is not None:
        total = jnp.where(present[..., 0], total, 1.0)
    return exps, total, top[..., 0]


def probabilities(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Softmax over the last axis; masked scores (and all-masked rows) get 0."""
    _, total, top = _shifted_exponentials(logits, mask)
    log_norm = jnp.log(total) + top
    probs = jnp.exp(masked_logits(logits, mask) - log_norm[..., None])
    return probs if mask is None else jnp.where(mask, probs, 0.0)


def _target_terms(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None, scale: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """`(log p_y, exp(a - max a), 1 / sum, e_y)` of `a = scale * s` (`s` for None), NaN
    for a label outside `[0, K)`.

    A row with every score masked gets `log p_y = 0` and `e_y = 0`: a constant.
    """
    scaled = logits if scale is None else scale * logits
    exps, total, top = _shifted_exponentials(logits, mask, scale)
    total = jnp.where(labels < logits.shape[-1], total, jnp.nan)
    target = jnp.take_along_axis(scaled, labels[..., None], axis=-1, mode="clip")[..., 0]
    out = target - (jnp.log(total) + top)
    classes = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    hit = classes == labels[..., None]
    if mask is not None:
        present = jnp.any(mask, axis=-1)
        out = jnp.where(present, out, 0.0)
        hit = hit & present[..., None]
    return out, exps, 1.0 / total, hit


def _target_linear_map(
    terms: tuple[jax.Array, jax.Array, jax.Array, jax.Array], tangent: jax.Array
) -> jax.Array:
    """`t -> t_y - sum_i p_i t_i`, linear in `t`, from `_target_terms`' exponentials."""
    _, exps, inverse_total, hit = terms
    return jnp.sum(jnp.where(hit, tangent, 0.0), axis=-1) - inverse_total * jnp.sum(
        exps * tangent, axis=-1)


@jax.custom_jvp
def log_target_probability(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None
) -> jax.Array:
    """`log p_y = s_y - logsumexp(s)` over the last axis, in one fused pass.

    Args:
        logits: `[..., K]`, floating.
        labels: `[...]` int32 labels from `prepare`: in `[0, K)`, or `K` for a label
            out of range, which gives NaN (value and derivatives).
        mask: None or boolean `[..., K]`; masked scores are left out of the logsumexp
            (`s_y` is the target's score even where it is masked, as in optax).

    Returns:
        `[...]`: the target log-probabilities (0 for rows with every score masked).

    The derivative is the linear map `t -> t_y - sum_i p_i t_i` (its transpose, the
    gradient, is `g (e_y - p)`), with `p` the exponentials `exp(s - max s)` of the
    forward pass over their sum: one exponential per score, as in
    `optax.softmax_cross_entropy_with_integer_labels`, and elementwise derivative work
    that XLA fuses with the loss around it. Forward and reverse mode, to any order.
    """
    return _target_terms(logits, labels, mask)[0]


@log_target_probability.defjvp
def _log_target_probability_jvp(
    primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[jax.Array, jax.Array]:
    # Linear in the tangent (so JAX can transpose it for reverse mode); the
    # exponentials are those of the forward pass, not recomputed from a softmax.
    terms = _target_terms(*primals)
    return terms[0], _target_linear_map(terms, tangents[0])


@jax.custom_jvp
def scaled_log_target_probability(
    logits: jax.Array, scale: jax.Array, labels: jax.Array, mask: jax.Array | None
) -> jax.Array:
    """`log softmax(scale * s)_y`, as `log_target_probability(scale * logits, ...)` but
    without materialising `scale * logits` (XLA computes it inside the fused passes).

    The derivative is `scale (t_y - sum_i q_i t_i) + dscale (s_y - sum_i q_i s_i)`,
    `q = softmax(scale * s)`: linear in both tangents.
    """
    return _target_terms(logits, labels, mask, scale)[0]


@scaled_log_target_probability.defjvp
def _scaled_log_target_probability_jvp(
    primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[jax.Array, jax.Array]:
    logits, scale, labels, mask = primals
    terms = _target_terms(logits, labels, mask, scale)
    unscaled = logits if mask is None else jnp.where(mask, logits, 0.0)  # no NaN * 0
    return terms[0], (scale * _target_linear_map(terms, tangents[0])
                      + tangents[1] * _target_linear_map(terms, unscaled))
