"""Exact bias and variance of the group baselines of LLM RL, by enumeration (no sampling).

A categorical policy `p = softmax(s)` over `K` answers with rewards `r`, one group of `G`
answers drawn i.i.d.: the estimate `(1/G) sum_i A_i (e_{y_i} - p)` of `grad_s E_p[r]`
for each baseline, averaged over all `K^G` outcomes with their probabilities in float64.
Reported: the expectation's relative bias `||E g_hat - g|| / ||g||`, its cosine with `g`,
the ratio of its projection on `g` (the effective step scale), and the variance trace.
"""

from __future__ import annotations

import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks import estimators
from jaxtricks.estimators import _baselines

SIZES = {
    "full": types.SimpleNamespace(group_sizes=(2, 4, 6), problems=3),
    "quick": types.SimpleNamespace(group_sizes=(2, 4), problems=2),
    "smoke": types.SimpleNamespace(group_sizes=(2, 3), problems=1),
}
# (logits, rewards): a sparse 0/1 reward (one right answer), graded rewards, a rare one.
PROBLEMS = (
    (np.array([0.5, 0.0, -0.5]), np.array([1.0, 0.0, 0.0])),
    (np.array([0.2, -0.3, 0.1]), np.array([0.9, 0.4, 0.1])),
    (np.array([1.5, 0.0, -1.5]), np.array([0.0, 0.0, 1.0])),
)


def baselines(group_size: int) -> dict[str, _baselines.Baseline]:
    """The baselines compared, by the name of their method."""
    group = estimators.GroupBaseline
    return {
        "none": None,
        "leave_one_out (RLOO)": "leave_one_out",
        "mean (Dr. GRPO)": group(group_size, scale=None),
        "GRPO, ddof=1": group(group_size, ddof=1),
        "GRPO, ddof=0": group(group_size, ddof=0),
        "REINFORCE++ (batch whitening), ddof=0": group(group_size, center="batch",
                                                       scale="batch", ddof=0),
    }


def exact_moments(logits: np.ndarray, rewards: np.ndarray, group_size: int,
                  baseline: _baselines.Baseline) -> tuple[np.ndarray, float]:
    """`(E g_hat, tr Cov g_hat)` over every outcome of one group, in float64."""
    with jax.enable_x64(True):
        p = np.exp(logits - logits.max())
        p /= p.sum()
        outcomes = np.array(list(itertools.product(range(len(p)), repeat=group_size)))
        probabilities = np.prod(p[outcomes], axis=1)
        scores = np.eye(len(p))[outcomes] - p  # [outcomes, G, K]
        advantages = jax.vmap(lambda r: _baselines.centred_rewards(r, baseline))(
            jnp.asarray(rewards[outcomes]))
        estimates = np.einsum("og,ogk->ok", np.asarray(advantages), scores) / group_size
    mean = probabilities @ estimates
    variance = probabilities @ np.sum((estimates - mean) ** 2, axis=1)
    return mean, float(variance)


def true_gradient(logits: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """`grad_s E_{softmax(s)}[r] = p (r - E r)`."""
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return p * (rewards - p @ rewards)


def rows(group_sizes, problems) -> list[dict]:
    out = []
    for index, (logits, rewards) in enumerate(PROBLEMS[:problems]):
        gradient = true_gradient(logits, rewards)
        for group_size in group_sizes:
            for name, baseline in baselines(group_size).items():
                mean, variance = exact_moments(logits, rewards, group_size, baseline)
                out.append({
                    "problem": index, "G": group_size, "baseline": name,
                    "relative bias": np.linalg.norm(mean - gradient) / np.linalg.norm(gradient),
                    "cosine": mean @ gradient / (np.linalg.norm(mean) * np.linalg.norm(gradient)),
                    "scale": mean @ gradient / (gradient @ gradient),
                    "variance trace": variance,
                })
    return out


def run(report) -> None:
    size = report.sized(SIZES)
    report.note("setup", "categorical policy, K = 3 answers, one group of G i.i.d. answers; "
                "problem 0: one right answer (p = 0.51), 1: graded rewards, 2: a rare "
                "right answer (p = 0.04); exact expectation over the K^G outcomes, float64")
    report.table("exact bias and variance of the group baselines",
                 rows(size.group_sizes, size.problems))
