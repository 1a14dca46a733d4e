"""Moment checks of the statistical tests: Hotelling's test of a mean in the span of its
covariance, and the standard error of an empirical variance trace (see the docstring of
`tests/test_estimators.py` for the reasoning)."""

import math

import numpy as np
from scipy import stats

LEVEL = 0.999
RANK_TOLERANCE = 1e-9  # relative eigenvalue below which a direction carries no variance


def hotelling(samples, mean, cov, *, estimated=False):
    """`(T, critical value at LEVEL, rank)` of the mean of `samples` against `mean`.

    `cov` is the exact covariance of one sample, or (`estimated=True`) its estimate
    from `samples` themselves.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    kept = eigenvalues > RANK_TOLERANCE * eigenvalues.max()
    basis, variances, rank = eigenvectors[:, kept], eigenvalues[kept], int(kept.sum())
    count = len(samples)
    diff = samples.mean(0) - mean
    # Outside the span the estimator has no variance: only rounding may remain there,
    # far below the standard error of the mean in the span.
    outside = diff - basis @ (basis.T @ diff)
    assert np.linalg.norm(outside) < 1e-3 * math.sqrt(variances.min() / count)
    statistic = count * np.sum((basis.T @ diff) ** 2 / variances)
    if estimated:
        scale = rank * (count - 1) / (count - rank)
        critical = scale * stats.f.ppf(LEVEL, rank, count - rank)
    else:
        critical = stats.chi2.ppf(LEVEL, rank)
    return statistic, critical, rank


def assert_mean_is(samples, mean, cov=None):
    """The mean of `samples` is `mean` (Hotelling; `cov` None: estimated)."""
    estimated = cov is None
    cov = np.cov(samples.T) if estimated else cov
    statistic, critical, _ = hotelling(samples, mean, cov, estimated=estimated)
    assert statistic < critical


def trace_band(samples):
    """Empirical variance trace and its standard error."""
    squared = np.sum((samples - samples.mean(0)) ** 2, axis=1)
    return squared.mean(), squared.std() / math.sqrt(len(samples))
