"""A group's order from pointwise scores and pairwise judgments together: score first, then compare.

The model: candidate i has a latent quality q_i ~ N(m, tau^2); each of its pointwise scores (the overall
score and the anchor scores of one `score` call) reads q_i plus normal noise of variance s^2; each
decision of a pairwise judgment names the better candidate with probability 1 - e, whatever the gap
(as in `_posterior.py`). m, tau^2 and s^2 are read from the group itself (empirical Bayes): s^2 from the
spread of each candidate's own scores around their mean, m and tau^2 from the candidates' means (their
spread less the noise), so the scale the judge scores on does not matter. The scores alone give every
q_i a normal posterior; the pairwise judgments reweigh draws from it (importance sampling), and
P(a better than b) is the weighted share of draws with q_a > q_b.

Measured in simulation (benchmarks/RESULTS.md, 2026-11-30, exploratory): G scores then the rest of half
the calls on the pairs most in doubt reached round robin's Kendall tau with room at G = 9 and 16, with
judges that err on 10% and 25% of pairs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flexjudge.errors import UsageError
from flexjudge.rewards._posterior import _numpy, estimated_error

if TYPE_CHECKING:
    from flexjudge.rewards._formula import Outcome

__all__ = ["DRAWS", "LatentPrior", "latent_order_probabilities", "latent_prior", "latent_win_rates"]

DRAWS = 20_000
"""Draws of the group's qualities: the Monte Carlo error of a probability is at most about 0.004 (one
standard error at p = 1/2 with equal weights; uneven weights raise it)."""

SMALLEST_SPREAD = 1e-6
"""The least prior or noise variance, relative to the squared scale of the scores: identical scores
still leave some doubt."""


class LatentPrior:
    """What the scores say: each candidate's posterior mean and variance of q (the group's prior for a
    candidate never scored)."""

    def __init__(self, means: list[float], variances: list[float]) -> None:
        self.means = means
        self.variances = variances


def latent_prior(scores: Sequence[Sequence[float] | None]) -> LatentPrior:
    """The normal posterior of every q_i from the scores alone (see the module docstring); a candidate
    without scores keeps the group's prior N(m, tau^2)."""
    scored = [list(s) for s in scores if s]
    if len(scored) < 2:
        raise UsageError(f"reading a prior from scores needs at least 2 scored candidates, got {len(scored)}")
    if any(len(s) < 2 for s in scored):
        raise UsageError("each scored candidate needs at least 2 scores (the overall and the anchors)")
    centre = [sum(s) / len(s) for s in scored]
    scale = max(max(abs(x - c) for s, c in zip(scored, centre, strict=True) for x in s), 1.0)
    floor = SMALLEST_SPREAD * scale**2
    residual = sum((x - c) ** 2 for s, c in zip(scored, centre, strict=True) for x in s)
    noise = max(residual / sum(len(s) - 1 for s in scored), floor)
    m = sum(centre) / len(centre)
    spread = sum((c - m) ** 2 for c in centre) / (len(centre) - 1)
    count = sum(len(s) for s in scored) / len(scored)
    tau2 = max(spread - noise / count, floor)
    means, variances = [], []
    for s in scores:
        if not s:
            means.append(m)
            variances.append(tau2)
            continue
        precision = 1.0 / tau2 + len(s) / noise
        means.append((m / tau2 + sum(s) / noise) / precision)
        variances.append(1.0 / precision)
    return LatentPrior(means, variances)


def latent_order_probabilities(
    prior: LatentPrior, outcomes: Sequence[Outcome], error: float, rng: random.Random, draws: int = DRAWS
) -> list[list[float]]:
    """`p[a][b]`: the probability that a is better than b given the scores (`prior`) and the pairwise
    `outcomes` (each decision right with probability 1 - `error`, a tie half a contradiction)."""
    if not 0.0 < error < 0.5:
        raise UsageError(f"the latent posterior needs an error rate in (0, 0.5), got {error}")
    np = _numpy()
    g = len(prior.means)
    generator = np.random.default_rng(rng.getrandbits(64))
    q = np.asarray(prior.means) + generator.standard_normal((draws, g)) * np.sqrt(prior.variances)
    log_weight = _log_likelihood(np, q, outcomes, error)
    weight = np.exp(log_weight - log_weight.max())
    weight /= weight.sum()
    p: list[list[float]] = [((q[:, [a]] > q).T @ weight).tolist() for a in range(g)]  # one row at a time
    return p


def latent_win_rates(scores: Sequence[Sequence[float] | None], outcomes: Sequence[Outcome]) -> list[float]:
    """Each candidate's expected win rate against a random other member of the group under the latent
    posterior, the error rate read from the judgments (`estimated_error`). Its draws are seeded with 0:
    the same scores and outcomes give the same rates."""
    g = len(scores)
    if g < 2:
        return [0.5] * g
    p = latent_order_probabilities(
        latent_prior(scores), outcomes, estimated_error(outcomes), random.Random(0)
    )
    return [sum(row) / (g - 1) for row in p]


def _log_likelihood(np: Any, q: Any, outcomes: Sequence[Outcome], error: float) -> Any:
    right, wrong = math.log(1.0 - error), math.log(error)
    tie = (right + wrong) / 2
    total = np.zeros(q.shape[0])
    for i, j, overall, categories in outcomes:
        decisions = (overall, *categories)
        for_i, for_j = decisions.count(i), decisions.count(j)
        if_i_better = for_i * right + for_j * wrong
        if_j_better = for_j * right + for_i * wrong
        total += np.where(q[:, i] > q[:, j], if_i_better, if_j_better) + decisions.count(None) * tie
    return total
