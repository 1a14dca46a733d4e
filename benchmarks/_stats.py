"""Statistics of the benchmarks: one convention for spreads and one paired test.

Every spread is over independent runs (seeds, splits or trials). The standard deviation
is the sample one, `ddof = DDOF = 1` (the unbiased variance); the standard error of a
mean is `std / sqrt(n)`. Two methods run on the same seeds are compared by a paired test
on the per-seed differences `a - b`: Student's t (the statistic of `scipy.stats.ttest_rel`,
`mean / se` with `n - 1` degrees of freedom) and the Wilcoxon signed-rank test
(`scipy.stats.wilcoxon`), both two-sided. A statistic that
`n` does not define (a spread of one run, a test of constant differences) is NaN.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

DDOF = 1


class Summary(NamedTuple):
    """Mean, standard deviation (`ddof=1`) and standard error of `n` runs."""

    mean: float
    std: float
    se: float
    n: int


class Paired(NamedTuple):
    """Paired comparison of `a` and `b` over the same `n` seeds.

    Attributes:
        mean_difference: mean of `a - b`.
        se: its standard error.
        t_pvalue: two-sided p-value of the paired t-test.
        wilcoxon_pvalue: two-sided p-value of the Wilcoxon signed-rank test.
        wins: how many seeds have `a > b`.
        n: number of seeds.
    """

    mean_difference: float
    se: float
    t_pvalue: float
    wilcoxon_pvalue: float
    wins: int
    n: int


def summary(values) -> Summary:
    """`Summary` of the values (flattened), in float64."""
    values = np.asarray(values, np.float64).ravel()
    n = values.size
    mean = float(values.mean()) if n else math.nan
    std = float(values.std(ddof=DDOF)) if n > DDOF else math.nan
    return Summary(mean, std, std / math.sqrt(n) if n > DDOF else math.nan, n)


def paired(a, b) -> Paired:
    """Paired t and Wilcoxon tests of `a` against `b` (arrays over the same seeds)."""
    from scipy import stats

    a, b = (np.asarray(v, np.float64).ravel() for v in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"a and b must pair up seed by seed, got {a.shape} and {b.shape}.")
    differences = a - b
    spread = summary(differences)
    # Both tests need two runs and differences that vary (t) or are not all zero (rank).
    t_pvalue = wilcoxon_pvalue = math.nan
    if spread.n > 1 and spread.std > 0:
        t = spread.mean / spread.se
        t_pvalue = float(2 * stats.t.sf(abs(t), spread.n - 1))
    if spread.n > 1 and np.any(differences != 0):
        wilcoxon_pvalue = float(stats.wilcoxon(differences).pvalue)
    return Paired(spread.mean, spread.se, t_pvalue, wilcoxon_pvalue,
                  int(np.sum(differences > 0)), spread.n)


def mean_std(values, scale: float = 1.0, digits: int = 2) -> str:
    """`"mean ± std"` of `scale * values` (std with `ddof=1`)."""
    s = summary(scale * np.asarray(values, np.float64))
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def mean_se(values, scale: float = 1.0, digits: int = 2) -> str:
    """`"mean ± s.e."` of `scale * values`."""
    s = summary(scale * np.asarray(values, np.float64))
    return f"{s.mean:.{digits}f} ± {s.se:.{digits}f}"


def paired_columns(a, b, name: str, scale: float = 1.0, digits: int = 2) -> dict:
    """Table columns of `paired(a, b)`: the mean difference ± s.e., the p-values, wins."""
    test = paired(scale * np.asarray(a, np.float64), scale * np.asarray(b, np.float64))
    return {
        f"diff_vs_{name}": f"{test.mean_difference:+.{digits}f} ± {test.se:.{digits}f}",
        f"p_t_vs_{name}": test.t_pvalue,
        f"p_wilcoxon_vs_{name}": test.wilcoxon_pvalue,
        f"wins_vs_{name}": f"{test.wins}/{test.n}",
    }
