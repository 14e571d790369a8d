"""Order-swap debiasing: judge (1, 2) and (2, 1), map the second back, and merge them.

The released judge favours the first candidate on close pairs. Judging both orders and merging cancels
that bias where the two runs disagree. The merge rule (also in README.md):

- Dimensions are matched by canonical name (the anchors always match). A matched dimension keeps both
  runs' criteria (the second run's names end in " (swapped order)"), so its winner is the candidate with
  more points over both runs, and a dead heat is a tie (`winner=None`). Dimensions only one run made
  are kept from that run as they are.
- The overall winner: the two verdicts when they agree; otherwise the majority of the merged dimension
  winners (weighted when the preferences ask for it); a tie when that majority is even.
- `meta.swap` records both runs, agreement per dimension and overall, and which rule decided.
"""

from __future__ import annotations

from flexjudge.anchors import canonical_name
from flexjudge.schema import (
    Candidate,
    Criterion,
    Dimension,
    Evidence,
    Judgment,
    Preferences,
    SwapReport,
    Verdict,
)
from flexjudge.votes import dimension_votes, leader

SWAPPED_SUFFIX = " (swapped order)"

__all__ = ["SWAPPED_SUFFIX", "merge_swapped", "unswap"]


def _flip(winner: Candidate | None) -> Candidate | None:
    return None if winner is None else (2 if winner == 1 else 1)


def unswap(judgment: Judgment) -> Judgment:
    """Map a judgment made with the candidates swapped back to the caller's numbering."""
    dimensions = [
        dim.model_copy(
            update={
                "criteria": [
                    Criterion(
                        name=c.name,
                        evidence_1=c.evidence_2,
                        evidence_2=c.evidence_1,
                        score_1=c.score_2,
                        score_2=c.score_1,
                    )
                    for c in dim.criteria
                ],
                "winner": _flip(dim.winner),
            }
        )
        for dim in judgment.dimensions
    ]
    evidence = sorted(
        (
            Evidence(candidate=_flip(e.candidate) or e.candidate, observations=e.observations)
            for e in judgment.evidence
        ),
        key=lambda e: e.candidate,
    )
    # `meta.candidate_order` keeps saying in which order the judge saw the candidates.
    return judgment.model_copy(
        update={
            "dimensions": dimensions,
            "evidence": evidence,
            "verdict": Verdict(analysis=judgment.verdict.analysis, winner=_flip(judgment.verdict.winner)),
        }
    )


def merge_swapped(first: Judgment, second: Judgment, preferences: Preferences | None = None) -> Judgment:
    """Merge a judgment in the caller's order with one in swapped order already passed through `unswap`;
    when the verdicts disagree, the dimension vote decides (weighted when `preferences` ask for it)."""
    seconds = {canonical_name(d.name): d for d in second.dimensions}
    merged: list[Dimension] = []
    agreement: dict[str, bool] = {}
    for dim in first.dimensions:
        other = seconds.pop(canonical_name(dim.name), None)
        if other is None:
            merged.append(dim)
            continue
        agreement[dim.name] = dim.winner == other.winner
        criteria = dim.criteria + [
            c.model_copy(update={"name": c.name + SWAPPED_SUFFIX}) for c in other.criteria
        ]
        one, two = sum(c.score_1 for c in criteria), sum(c.score_2 for c in criteria)
        winner: Candidate | None = 1 if one > two else 2 if two > one else None
        analysis = f"{dim.analysis}\n[swapped order] {other.analysis}".strip()
        merged.append(dim.model_copy(update={"criteria": criteria, "winner": winner, "analysis": analysis}))
    merged += [d for d in second.dimensions if canonical_name(d.name) in seconds]
    verdict_agreement = first.verdict.winner == second.verdict.winner
    if verdict_agreement:
        winner, resolution = first.verdict.winner, "agreed"
    else:
        winner = leader(*dimension_votes(merged, preferences))
        weighted = preferences is not None and preferences.weighted_verdict
        resolution = "tie" if winner is None else ("weighted_majority" if weighted else "dimension_majority")
    analysis = f"{first.verdict.analysis}\n[swapped order] {second.verdict.analysis}".strip()
    report = SwapReport(
        first=first,
        second=second,
        dimension_agreement=agreement,
        verdict_agreement=verdict_agreement,
        resolution=resolution,
    )
    meta = first.meta.model_copy(
        update={
            "swap": report,
            "raw_text": None,
            "recovered": first.meta.recovered or second.meta.recovered,
            "verdict_rule": "swap",
        }
    )
    return first.model_copy(
        update={"dimensions": merged, "verdict": Verdict(analysis=analysis, winner=winner), "meta": meta}
    )
