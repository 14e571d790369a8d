"""How sure a pairwise judgment is of its overall winner: one number in [0, 1], from what it holds.

`confidence_of(judgment)` is the judge's own estimate of the probability that the overall winner
(`verdict.winner`) is the candidate people prefer. It is UNCALIBRATED: a monotone score built from the
judgment, not a measured frequency. Fit a map on labelled data (`flexjudge.evaluation.calibration`) and
hand it to `Judge(calibration=...)` to turn it into one; only then does 0.8 mean "right 8 times in 10".

What it is built from, each as a probability for the stated winner `w`:

- Point margins. Every criterion's margin toward `w`: split scoring shares 10 points, so the margin is
  ``(score_w - score_other) / 10``; rating scoring rates 1..10, so it is ``(score_w - score_other) / 9``
  (clamped to [-1, 1]). Their mean `m` over all criteria gives ``0.5 + m / 2``: for split scoring, exactly
  the winner's share of all points handed out. Scores that favour the other candidate (a self-
  contradicting judgment) give less than 0.5.
- The winner token's probability (`meta.winner_probability`), when the backend returned log-probabilities
  and the verdict is the judge's own (`meta.verdict_rule == "judge"`): the probability the model gave to
  the token naming the winner it wrote; the other candidate gets the rest.
- Swap agreement (`meta.swap`): each order's run gives its own estimate for the merged winner, from its
  margins and token as above; runs that chose the other candidate pull it below 0.5.

Estimates are combined by averaging their log-odds (equal weight; the margins and the token are not
independent evidence, so their odds are not multiplied). With no evidence at all the result is 0.5.

A tie verdict (`verdict.winner is None`) names no winner: its confidence is 0.5 by definition, the point
where neither candidate is favoured, and a calibration map is not applied to it (maps are fitted with
ties dropped, as the paper's accuracy drops them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from flexjudge.backends.base import TokenLogprob
from flexjudge.schema import Candidate, Judgment

__all__ = ["TIE_CONFIDENCE", "TokenLogprob", "confidence_of", "margin_of", "winner_token_probability"]

TIE_CONFIDENCE = 0.5
"""The confidence of a tie verdict (and of a judgment that holds no evidence at all)."""

_EDGE = 1e-6  # probabilities are kept off 0 and 1 so that their log-odds stay finite


def margin_of(judgment: Judgment, winner: Candidate) -> float | None:
    """The mean per-criterion point margin toward `winner`, in [-1, 1]; None when there are no criteria."""
    span = 10.0 if judgment.scoring == "split" else 9.0  # split shares 10 points; ratings run 1..10
    margins = [
        (c.score_1 - c.score_2) / span * (1 if winner == 1 else -1)
        for dim in judgment.dimensions
        for c in dim.criteria
    ]
    if not margins:
        return None
    return max(-1.0, min(1.0, sum(margins) / len(margins)))


def confidence_of(judgment: Judgment) -> float:
    """The uncalibrated probability that `judgment`'s overall winner is right (see the module docstring);
    0.5 for a tie verdict."""
    winner = judgment.verdict.winner
    if winner is None:
        return TIE_CONFIDENCE
    swap = judgment.meta.swap
    if swap is None:
        return _mean_odds(_estimates(judgment, winner))
    runs = [_mean_odds(_estimates(run, winner)) for run in (swap.first, swap.second)]
    return _mean_odds(runs)


def _estimates(run: Judgment, winner: Candidate) -> list[float]:
    """One run's probability estimates for `winner`: from its margins and from its winner token."""
    out: list[float] = []
    margin = margin_of(run, winner)
    if margin is not None:
        out.append(0.5 + margin / 2)
    token = run.meta.winner_probability
    said = run.verdict.winner
    # The token spoke for the judge's own verdict: a weighted verdict may name another winner.
    if token is not None and said is not None and run.meta.verdict_rule == "judge":
        out.append(token if said == winner else 1.0 - token)
    return out


def _mean_odds(probabilities: Sequence[float]) -> float:
    if not probabilities:
        return TIE_CONFIDENCE
    if len(probabilities) == 1:  # nothing to average: keep it exact (the clip below would move 0 and 1)
        return probabilities[0]
    clipped = [min(1 - _EDGE, max(_EDGE, p)) for p in probabilities]
    mean = sum(math.log(p / (1 - p)) for p in clipped) / len(clipped)
    return 1.0 / (1.0 + math.exp(-mean))


# The overall winner's value in each wire format, found from the end of the text:
# flex: `"winner": "Image 1"` (categories say "cat_winner"); native: the verdict's `"winner": 1`, its last
# "winner" key (the verdict follows the dimensions); think: `<answer>Image 1 is better</answer>`.
_JSON_WINNER = re.compile(r'(?<![\\_\w])"winner"\s*:\s*(?:"[^"\d]*)?([12])')
_THINK_ANSWER = re.compile(r"<answer>[^<\d]*([12])", re.IGNORECASE)


def winner_token_probability(
    text: str, tokens: Sequence[TokenLogprob] | None, winner: Candidate | None
) -> float | None:
    """The probability of the generated token that holds the overall winner's digit in `text`, or None
    when it cannot be told: no winner, no tokens, tokens whose tail does not spell the text's tail from
    that digit on, or a digit there that is not `winner` (the reader recovered the verdict elsewhere)."""
    if winner is None or not tokens:
        return None
    found = [m for pattern in (_JSON_WINNER, _THINK_ANSWER) for m in pattern.finditer(text)]
    if not found:
        return None
    last = max(found, key=lambda m: m.start(1))
    if int(last.group(1)) != winner:
        return None
    # Walk back from the end: only the tail after the digit must match, so a multi-byte character split
    # across tokens earlier in the text (spelled as bytes by some servers) does not matter.
    suffix, tail = text[last.start(1) :], ""
    for token in reversed(tokens):
        tail = token.token + tail
        if len(tail) >= len(suffix):
            return math.exp(token.logprob) if tail[len(tail) - len(suffix) :] == suffix else None
    return None
