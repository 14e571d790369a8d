"""A judgment of one pair turned into the outcome the group reward counts."""

from __future__ import annotations

from flexjudge.anchors import anchor_position
from flexjudge.rewards._formula import ANCHOR_COUNT, Outcome
from flexjudge.schema import Candidate, Judgment

__all__ = ["outcome_of"]


def outcome_of(judgment: Judgment, first: int, second: int) -> Outcome:
    """The outcome of `judgment`, which showed candidate `first` as candidate 1 and `second` as candidate 2
    (0-based group indices, either order); the outcome lists the pair lower index first.

    Anchors are found by position and canonical name: the dimension at anchor position k counts for
    anchor k when its name is that anchor's, else the first dimension anywhere that names it. Names the
    judge wrote never key anything (the released code keys rates by them, so a renamed category splits
    a candidate's record). A judgment missing an anchor has its dimensions not counted (empty
    categories), its overall winner still is."""
    i, j = min(first, second), max(first, second)
    shown = (first, second)
    dims = judgment.dimensions
    found: list[Candidate | None] = []
    for k in range(ANCHOR_COUNT):
        at_k = dims[k] if k < len(dims) and _names(dims[k].name, judgment) == k else None
        match = at_k or next((d for d in dims if _names(d.name, judgment) == k), None)
        if match is None:
            return i, j, _index(judgment.verdict.winner, shown), ()
        found.append(match.winner)
    return i, j, _index(judgment.verdict.winner, shown), tuple(_index(w, shown) for w in found)


def _names(name: str, judgment: Judgment) -> int | None:
    return anchor_position(name, judgment.modality, judgment.scoring)


def _index(winner: Candidate | None, shown: tuple[int, int]) -> int | None:
    return None if winner is None else shown[winner - 1]
