"""The exact posterior over a group's rankings under a judge that errs at random, and what follows from it.

The model: each decision of a judgment (the overall winner and the three anchor winners) names the better
candidate with probability 1 - `error`, whatever the gap, independently, and every ranking is equally
likely a priori. A ranking's posterior weight is then (error / (1 - error)) ** (decisions it contradicts),
a tie half a contradiction. The probability that a is better than b sums over all G! rankings, which a
forward-backward pass over the 2^G subsets of candidates does exactly (`order_probabilities`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flexjudge.errors import UsageError

if TYPE_CHECKING:  # _formula fills rates from this module: a runtime import would be circular
    from flexjudge.rewards._formula import Outcome

__all__ = ["MAX_EXACT", "estimated_error", "order_probabilities", "posterior_win_rates"]

MAX_EXACT = 16
"""The largest group the exact posterior takes: it sums over the 2^G subsets of candidates (65,536 at
G = 16: about 30 ms with numpy on one core, after building index tables of about 30 MB, 0.1 s, that
double with each candidate more)."""

PRIOR_ERROR = 0.15
PRIOR_JUDGMENTS = 4.0
"""`estimated_error` starts from an error of `PRIOR_ERROR`, worth `PRIOR_JUDGMENTS` judgments."""


def order_probabilities(g: int, outcomes: Sequence[Outcome], error: float) -> list[list[float]]:
    """`p[a][b]`: the posterior probability that candidate a is better than b (see the module docstring).

    A ranking is built best first; placing x just below the set S already placed contradicts the
    decisions that x beat a member of S, a factor F(S, x). Forward sums run over the orders of S,
    backward ones over the orders of the rest, and a placed just below S with b not in S means a is
    better than b. Each pass goes one layer of subsets (one size) at a time, vectorised over the layer.
    A ranking that contradicts hundreds of decisions (the same pairs judged over and over) can weigh less
    than the smallest float; then the passes run again in logarithms (`_shares_in_logs`)."""
    if g > MAX_EXACT:
        raise UsageError(f"the exact posterior takes at most {MAX_EXACT} candidates (2^G subsets), got {g}")
    if not 0.0 < error < 0.5:
        raise UsageError(f"the posterior needs an error rate in (0, 0.5), got {error}")
    np = _numpy()
    against = np.zeros((g, g))  # against[x, s]: decisions that x beat s
    for i, j, overall, categories in outcomes:
        for winner in (overall, *categories):
            if winner is None:
                against[i, j] += 0.5
                against[j, i] += 0.5
            else:
                against[winner, j if winner == i else i] += 1.0
    layers, (low_members, high_members), not_in = _subset_tables(g)
    log_factor = against.T * np.log(error / (1.0 - error))  # [s, x]: log F({s}, x)
    # log F(S, x) = log F(S's low bits, x) + log F(S's high bits, x): two small tables
    low = g // 2
    halves = (high_members @ log_factor[low:], low_members @ log_factor[:low])
    share = _shares(np, layers, halves)
    if share is None:
        share = _shares_in_logs(np, layers, halves)
    p = share.reshape(1 << g, g).T @ not_in  # p[a, b]: a placed while b is still below
    np.fill_diagonal(p, 0.0)
    return p.tolist()  # type: ignore[no-any-return]


SMALLEST_SHARE = 1e-250
"""`_shares` gives up on a layer whose largest weight is below this. What underflow drops is below the
float range (about 1e-308), so it stays under 1e-58 of the largest weight, negligible, only while the
largest is above this."""


def _shares(np: Any, layers: list[_Layer], halves: tuple[Any, Any]) -> Any:
    """share[S * g + a]: the posterior weight of the orders that place a just below S, each size of S
    summing to 1 (every order places one candidate below one S of each size). The fast pass: weights as
    floats, each layer of the forward and backward sums rescaled to its largest. None when a layer's
    weights underflow (`SMALLEST_SHARE`), which only judgments repeated many times bring about."""
    high, low = halves
    g = high.shape[1]
    placed = (np.exp(high)[:, None, :] * np.exp(low)[None, :, :]).ravel()  # [S * g + x]: F(S, x)
    forward = np.empty(1 << g)
    forward[0] = 1.0
    for layer in layers[1:]:
        sums = (forward[layer.short] * placed[layer.short_x]).sum(axis=1)
        if not sums.max() > SMALLEST_SHARE:
            return None
        forward[layer.subsets] = sums / sums.max()
    backward = np.empty(1 << g)
    backward[-1] = 1.0
    share = np.zeros(g << g)
    for layer in reversed(layers[:-1]):
        below = placed[layer.next_x] * backward[layer.next]
        sums = below.sum(axis=1)
        if not sums.max() > SMALLEST_SHARE:
            return None
        backward[layer.subsets] = sums / sums.max()
        layer_share = forward[layer.subsets][:, None] * below
        if not layer_share.max() > SMALLEST_SHARE:
            return None
        share[layer.next_x] = layer_share / layer_share.sum()
    return share


def _shares_in_logs(np: Any, layers: list[_Layer], halves: tuple[Any, Any]) -> Any:
    """`_shares` in logarithms: slower (three times the exponentials), but never out of the float range."""
    high, low = halves
    g = high.shape[1]
    log_placed = (high[:, None, :] + low[None, :, :]).ravel()
    log_forward = np.empty(1 << g)
    log_forward[0] = 0.0
    for layer in layers[1:]:
        log_forward[layer.subsets] = _log_sum(np, log_forward[layer.short] + log_placed[layer.short_x])
    log_backward = np.empty(1 << g)
    log_backward[-1] = 0.0
    share = np.zeros(g << g)
    for layer in reversed(layers[:-1]):
        log_below = log_placed[layer.next_x] + log_backward[layer.next]
        log_backward[layer.subsets] = _log_sum(np, log_below)
        log_share = log_forward[layer.subsets][:, None] + log_below
        layer_share = np.exp(log_share - log_share.max())
        share[layer.next_x] = layer_share / layer_share.sum()
    return share


def _log_sum(np: Any, logs: Any) -> Any:
    """log(sum(exp(logs))) along each row, without leaving the float range."""
    top = logs.max(axis=1)
    return top + np.log(np.exp(logs - top[:, None]).sum(axis=1))


class _Layer:
    """The subsets of one size k, and for each the index arrays its passes gather from."""

    def __init__(self, np: Any, subsets: Any, members: Any, g: int) -> None:
        size = len(subsets)
        inside = np.nonzero(members[subsets])[1].reshape(size, -1)  # each subset's k members
        outside = np.nonzero(~members[subsets])[1].reshape(size, -1)  # and its g - k others
        self.subsets = subsets
        self.short = subsets[:, None] ^ (1 << inside)  # the subsets one member short
        self.short_x = self.short * g + inside  # F(S - x, x): x placed just below S - x
        self.next = subsets[:, None] | (1 << outside)  # the subsets one member more
        self.next_x = subsets[:, None] * g + outside  # F(S, y): y placed just below S


@functools.cache
def _subset_tables(g: int) -> tuple[list[_Layer], tuple[Any, Any], Any]:
    np = _numpy()
    subsets = np.arange(1 << g, dtype=np.int64)
    members = ((subsets[:, None] >> np.arange(g)) & 1).astype(bool)  # members[S, x]: x in S
    size = members.sum(axis=1)
    layers = [_Layer(np, subsets[size == k], members, g) for k in range(g + 1)]
    low = g // 2
    halves = (
        members[: 1 << low, :low].astype(np.float64),
        members[: 1 << (g - low), : g - low].astype(np.float64),
    )
    return layers, halves, (~members).astype(np.float64)


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise UsageError("the exact posterior needs numpy: pip install 'flexjudge[media]'") from exc
    return numpy


def estimated_error(outcomes: Sequence[Outcome]) -> float:
    """The judge's per-decision error rate, read from the judgments themselves: under the model, a
    judgment's four decisions all agree with probability (1 - e)^4 + e^4, whatever the pair, so the share
    of judgments whose decisions split tells e without knowing who is better. Shrunk towards
    `PRIOR_ERROR` (a group has few judgments) and kept in [0.02, 0.45]. Judgments without anchor winners
    (a failed pair read as a tie) say nothing about it and are skipped."""
    full = [(overall, *categories) for _, _, overall, categories in outcomes if categories]
    split = sum(1 for decisions in full if len(set(decisions)) > 1)
    share = (split + PRIOR_JUDGMENTS * _split_share(PRIOR_ERROR)) / (len(full) + PRIOR_JUDGMENTS)
    low, high = 0.0, 0.5  # _split_share rises from 0 to 7/8 on [0, 0.5]: bisect
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if _split_share(middle) < share else (low, middle)
    return min(max(low, 0.02), 0.45)


def posterior_win_rates(g: int, outcomes: Sequence[Outcome]) -> list[float]:
    """Each candidate's posterior expected win rate against a random other member of the group, with the
    error rate read from the outcomes (`estimated_error`): (1 / (G - 1)) * sum_b P(a better than b).
    Ranking by it ranks by posterior mean rank."""
    if g < 2:
        return [0.5] * g
    p = order_probabilities(g, outcomes, estimated_error(outcomes))
    return [sum(row) / (g - 1) for row in p]


def _split_share(error: float) -> float:
    return 1.0 - (1.0 - error) ** 4 - error**4
