"""The method's rules, checked on a judgment that was read: `check(judgment) -> list[Finding]`.

Severities: `error` breaks the method (a split that is not 10, a winner its own scores contradict, a
missing anchor); `warning` is suspect (a verdict against the dimension majority, 2 criteria where 3-5
are asked, empty evidence); `info` is worth knowing. A consistent judgment has no errors or warnings.

Rules by scoring scheme: `split` (Flex) checks the 10-point split and 3-5 criteria per dimension;
`rating` (Think) checks ratings in 1..10 and decides the overall contradiction by total score, as Think does.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from operator import attrgetter, itemgetter

from flexjudge.anchors import anchor_position, anchors, canonical_anchors, canonical_name, canonical_names
from flexjudge.errors import ValidationFailed
from flexjudge.schema import (
    Criterion,
    Dimension,
    Finding,
    Judgment,
    PointDimension,
    PointwiseJudgment,
    Severity,
)
from flexjudge.votes import dimension_votes, leader

__all__ = ["Finding", "Severity", "check", "require_consistent"]


_Add = Callable[[Finding], None]  # `list[Finding].append`, handed to each rule


def check(
    judgment: Judgment | PointwiseJudgment,
    *,
    prompt: str | None = None,
    min_criteria: int = 3,
    max_criteria: int = 5,
    max_generated: int = 2,
) -> list[Finding]:
    """Every rule the judgment breaks. `prompt`, when given, is compared with the echoed prompt."""
    if isinstance(judgment, Judgment) and _clean(judgment, prompt, min_criteria, max_criteria, max_generated):
        return []
    found: list[Finding] = []
    add = found.append
    dims: Sequence[Dimension | PointDimension] = judgment.dimensions
    scoring = judgment.scoring if isinstance(judgment, Judgment) else "split"
    _check_anchors(judgment, add, max_generated)
    _check_unique([d.name for d in dims], "dimensions", "dimension", add)
    count_rule = isinstance(judgment, PointwiseJudgment) or scoring == "split"
    per_run = _criteria_per_run(judgment)
    for i, dim in enumerate(dims):
        path = f"dimensions[{i}]"
        counts = (
            per_run.get(canonical_name(dim.name), [len(dim.criteria)]) if per_run else [len(dim.criteria)]
        )
        count = next((n for n in counts if not min_criteria <= n <= max_criteria), counts[0])
        if count_rule and not min_criteria <= count <= max_criteria:
            add(
                _f(
                    "criteria_count",
                    "warning",
                    path,
                    f"{count} criteria; expected {min_criteria} to {max_criteria}",
                )
            )
        _check_unique([c.name for c in dim.criteria], f"{path}.criteria", "criterion", add)
        if isinstance(dim, Dimension):
            _check_pair_dimension(dim, path, scoring, add)
        else:
            _check_point_dimension(dim, path, add)
    if isinstance(judgment, Judgment):
        _check_verdict(judgment, add)
        for k, ev in enumerate(judgment.evidence):
            if not ev.observations or not all(o.strip() for o in ev.observations):
                add(
                    _f(
                        "empty_evidence",
                        "warning",
                        f"evidence[{k}]",
                        "an observation list or observation is empty",
                    )
                )
    elif not judgment.observations:
        add(_f("empty_evidence", "info", "observations", "no observations recorded before scoring"))
    if prompt is not None and judgment.meta.source_format != "think":
        _check_prompt(judgment.prompt, prompt, add)
    return found


_FIELDS = attrgetter("__dict__")
# A criterion's fields as one tuple, read from its __dict__ in C: pydantic models define `__getattr__`,
# which keeps Python 3.11 from specialising attribute loads on them, so `crit.score_1` costs several
# times a dict subscript, and the per-criterion loop below is most of what checking a judgment costs.
_CRITERION_ROW = itemgetter("score_1", "score_2", "evidence_1", "evidence_2", "name")


def _clean(judgment: Judgment, prompt: str | None, least: int, most: int, max_generated: int) -> bool:
    """True when `judgment` provably breaks no rule at all (not even an `info` one): the usual case,
    settled in one tight pass without building paths, messages or findings (the rule-by-rule walk cost
    about twice as much). False only means "not proven": the full walk then says what is wrong, so the
    two cannot disagree on a finding."""
    try:
        return _proven_clean(judgment, prompt, least, most, max_generated)
    except KeyError:  # a field missing from a model's __dict__ (`model_construct`): the full walk says so
        return False


def _proven_clean(judgment: Judgment, prompt: str | None, least: int, most: int, max_generated: int) -> bool:
    fields = judgment.__dict__  # fields are read from the models' __dict__: see _CRITERION_ROW
    meta = fields["meta"].__dict__
    preferences = meta["preferences"]
    if meta["swap"] is not None or (preferences is not None and preferences.weighted_verdict):
        return False
    if prompt is not None and meta["source_format"] != "think" and fields["prompt"] != prompt:
        return False
    scoring = fields["scoring"]
    split = scoring == "split"
    dims = list(map(_FIELDS, fields["dimensions"]))
    keys = canonical_names(list(map(_NAME_FIELD, dims)))
    n = len(dims)
    if (
        tuple(keys[:3]) != canonical_anchors(fields["modality"], scoring)  # every anchor in its place
        or n - 3 > max_generated
        or list(map(_ORIGIN_FIELD, dims)) != _ORIGINS[:3] + ["generated"] * (n - 3)
        or "" in keys
        or len(set(keys)) != n  # (so no anchor comes again among the generated ones either)
    ):
        return False
    one = two = 0
    blanks = _BLANKS
    for dim in dims:
        crits = dim["criteria"]
        names = []
        total_1 = total_2 = 0
        for a, b, e1, e2, name in map(_CRITERION_ROW, map(_FIELDS, crits)):
            # an empty evidence, or one that starts blank and may be blank, or a broken score
            if (
                not e1
                or not e2
                or e1[0] in blanks
                or e2[0] in blanks
                or (a + b != 10 if split else not a or not b)
            ):
                return False
            total_1 += a
            total_2 += b
            names.append(name)
        keys = canonical_names(names)
        if "" in keys or len(set(keys)) != len(keys):
            return False
        winner = dim["winner"]
        ahead = 1 if total_1 > total_2 else 2 if total_2 > total_1 else None
        if ahead is not None and winner != ahead:
            return False
        if split:
            analysis = dim["analysis"]
            if not least <= len(crits) <= most or not analysis or analysis[0] in blanks:
                return False
            if winner == 1:
                one += 1
            elif winner == 2:
                two += 1
        else:
            one += total_1
            two += total_2
    verdict = fields["verdict"].__dict__
    ahead = 1 if one > two else 2 if two > one else None
    if ahead is not None and verdict["winner"] != ahead:
        return False
    if split and not verdict["analysis"].strip():
        return False
    return all(ev.observations and all(map(str.strip, ev.observations)) for ev in fields["evidence"])


_NAME_FIELD = itemgetter("name")  # of a dimension's __dict__
_ORIGIN_FIELD = itemgetter("origin")
_ORIGINS: list[str] = ["predefined"] * 3


def require_consistent(judgment: Judgment | PointwiseJudgment, *, prompt: str | None = None) -> None:
    """Raise `ValidationFailed` when `check` finds any error or warning."""
    serious = [f for f in check(judgment, prompt=prompt) if f.severity != "info"]
    if serious:
        raise ValidationFailed(serious)


def _f(code: str, severity: Severity, path: str, message: str) -> Finding:
    return Finding(code=code, severity=severity, path=path, message=message)


def _check_anchors(judgment: Judgment | PointwiseJudgment, add: _Add, max_generated: int) -> None:
    scoring = judgment.scoring if isinstance(judgment, Judgment) else "split"
    expected = anchors(judgment.modality, scoring)
    dims: Sequence[Dimension | PointDimension] = judgment.dimensions
    positions = [anchor_position(d.name, judgment.modality, scoring) for d in dims]
    for k, anchor in enumerate(expected):
        if k < len(dims) and positions[k] == k:
            continue
        path = f"dimensions[{k}]"
        if k in positions:
            add(
                _f(
                    "anchor_out_of_order",
                    "error",
                    path,
                    f"anchor {anchor!r} should be dimension {k + 1}, is {positions.index(k) + 1}",
                )
            )
        elif k < len(dims) and positions[k] is None and _similar(dims[k].name, anchor):
            add(_f("anchor_renamed", "error", path, f"{dims[k].name!r} looks like anchor {anchor!r} renamed"))
        else:
            add(_f("anchor_missing", "error", path, f"anchor {anchor!r} is missing"))
    generated = 0
    for i, (dim, position) in enumerate(zip(dims, positions, strict=True)):
        if position is None:
            generated += 1
            if dim.origin == "predefined":
                add(
                    _f(
                        "origin_mismatch",
                        "warning",
                        f"dimensions[{i}].origin",
                        f"{dim.name!r} is not an anchor but is marked predefined",
                    )
                )
        elif dim.origin == "generated":
            add(
                _f(
                    "origin_mismatch",
                    "warning",
                    f"dimensions[{i}].origin",
                    f"anchor {dim.name!r} is marked generated",
                )
            )
    if generated > max_generated:
        add(
            _f(
                "too_many_generated",
                "error",
                "dimensions",
                f"{generated} generated dimensions; at most {max_generated}",
            )
        )


def _similar(name: str, anchor: str) -> bool:
    a, b = canonical_name(name), canonical_name(anchor)
    shared = set(a.split()) & set(b.split()) - {"and", "of", "the"}
    if shared:
        return True
    # The cheap upper bounds first (same answer): a name far longer than the anchor cannot reach 0.6, and
    # the full ratio is quadratic in the worst case on a hostile, huge name.
    matcher = difflib.SequenceMatcher(None, a, b)
    return matcher.real_quick_ratio() >= 0.6 and matcher.quick_ratio() >= 0.6 and matcher.ratio() >= 0.6


def _check_unique(names: list[str], path: str, what: str, add: _Add) -> None:
    keys = [canonical_name(name) for name in names]
    if all(keys) and len(set(keys)) == len(keys):  # the usual case, settled without a Python loop
        return
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        key = canonical_name(name)
        if not key:
            add(_f("empty_name", "warning", f"{path}[{i}].name", f"a {what} without a name"))
        elif key in seen:
            add(_f("duplicate_name", "error", f"{path}[{i}]", f"{what} {name!r} repeats {path}[{seen[key]}]"))
        else:
            seen[key] = i


def _check_pair_dimension(dim: Dimension, path: str, scoring: str, add: _Add) -> None:
    # One pass over the criteria: this loop is most of what checking a judgment costs.
    split = scoring == "split"
    one = two = 0
    for j, crit in enumerate(dim.criteria):
        a, b = crit.score_1, crit.score_2
        one += a
        two += b
        if split and a + b != 10:
            add(_f("split_sum", "error", f"{path}.criteria[{j}]", f"scores {a} + {b} = {a + b}, not 10"))
        elif not split and (a == 0 or b == 0):
            add(
                _f("score_range", "error", f"{path}.criteria[{j}]", "Think ratings run from 1 to 10; found 0")
            )
        e1, e2 = crit.evidence_1, crit.evidence_2
        # `_blank`, inlined on the hot path: only texts that start blank pay for the full test.
        if not e1 or not e2 or e1[0] in _BLANKS or e2[0] in _BLANKS:
            _report_empty_evidence(crit, f"{path}.criteria[{j}]", add)
    if split and _blank(dim.analysis):
        add(_f("empty_analysis", "info", f"{path}.analysis", "no dimension-level analysis"))
    leader = 1 if one > two else 2 if two > one else None
    if leader is None or dim.winner == leader:
        return
    if dim.winner is None:
        message = f"a tie, but the criteria give {one} to {two}"
        add(_f("dimension_winner_contradicts_scores", "warning", f"{path}.winner", message))
    else:
        message = f"winner is candidate {dim.winner} but the criteria give {one} to {two}"
        add(_f("dimension_winner_contradicts_scores", "error", f"{path}.winner", message))


_BLANKS = " \t\n\r\f\v\u00a0\u200b\u200c\u200d\u2060\ufeff"  # whitespace and zero-width characters


def _blank(text: str) -> bool:
    return not text.strip(_BLANKS)


def _report_empty_evidence(crit: Criterion, where: str, add: _Add) -> None:
    for n, text in ((1, crit.evidence_1), (2, crit.evidence_2)):
        if _blank(text):
            add(_f("empty_evidence", "warning", f"{where}.evidence_{n}", f"no evidence for candidate {n}"))


def _check_point_dimension(dim: PointDimension, path: str, add: _Add) -> None:
    for j, crit in enumerate(dim.criteria):
        if _blank(crit.evidence):
            add(_f("empty_evidence", "warning", f"{path}.criteria[{j}].evidence", "no evidence"))
    scores = [c.score for c in dim.criteria]
    if scores and not min(scores) <= dim.score <= max(scores):
        add(
            _f(
                "dimension_score_outside_criteria",
                "warning",
                f"{path}.score",
                f"dimension score {dim.score} is outside its criteria's scores {min(scores)}..{max(scores)}",
            )
        )


def _criteria_per_run(judgment: Judgment | PointwiseJudgment) -> dict[str, list[int]]:
    """For an order-swap merge, each dimension's criteria counts in each run (canonical name -> counts):
    the merge holds both runs' criteria, and the 3-5 rule applies to each run. Empty otherwise."""
    report = judgment.meta.swap
    counts: dict[str, list[int]] = {}
    for run in (report.first, report.second) if report is not None else ():
        for dim in run.dimensions:
            counts.setdefault(canonical_name(dim.name), []).append(len(dim.criteria))
    return counts


def _check_verdict(judgment: Judgment, add: _Add) -> None:
    winner = judgment.verdict.winner
    preferences = judgment.meta.preferences
    weighted = preferences is not None and preferences.weighted_verdict
    one: float
    two: float
    if judgment.scoring == "rating":  # Think decides by total score
        one = sum(c.score_1 for d in judgment.dimensions for c in d.criteria)
        two = sum(c.score_2 for d in judgment.dimensions for c in d.criteria)
        rule = "total scores"
    else:
        one, two = dimension_votes(judgment.dimensions, preferences)
        rule = "weighted dimension wins" if weighted else "dimension wins"
    ahead = leader(one, two)
    if winner is not None and ahead is not None and winner != ahead:
        add(
            _f(
                "verdict_contradicts_dimensions",
                "warning",
                "verdict.winner",
                f"overall winner is candidate {winner} but {rule} are {one:g} to {two:g}",
            )
        )
    elif winner is None and ahead is not None:
        add(
            _f(
                "verdict_contradicts_dimensions",
                "info",
                "verdict.winner",
                f"a tie, but {rule} are {one:g} to {two:g}",
            )
        )
    if not judgment.verdict.analysis.strip() and judgment.scoring == "split":
        add(_f("empty_analysis", "info", "verdict.analysis", "no overall analysis"))


def _check_prompt(echoed: str, given: str, add: _Add) -> None:
    if echoed == given:
        return
    if " ".join(echoed.split()).casefold() == " ".join(given.split()).casefold():
        add(_f("prompt_mismatch", "info", "prompt", "echoed prompt differs only in case or spacing"))
    else:
        add(_f("prompt_mismatch", "warning", "prompt", "echoed prompt differs from the prompt given"))
