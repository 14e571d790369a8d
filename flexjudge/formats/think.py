"""The UnifiedReward-Think text format: numbered dimension blocks with independent 1..10 ratings.

    <think>
    1. Semantic consistency:
        Image 1 (9/10) - rationale;
        Image 2 (7/10) - rationale
    ...
    Total score:
    Image 1: 9+8+8=25
    Image 2: 7+8+5=20
    </think>
    <answer>Image 1 is better</answer>

Each block becomes a `Dimension` holding one `Criterion` of the same name, scored as ``rating``; the
dimension's winner follows its ratings (equal ratings: a tie). The prompt is not echoed, so `parse`
takes it from the caller.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Final

from flexjudge.anchors import Modality, anchor_position
from flexjudge.errors import ParseError, RenderError, TruncatedOutput
from flexjudge.formats.winners import WinnerError, label, read_winner, winner_text
from flexjudge.schema import Criterion, Dimension, Judgment, JudgmentMeta, Verdict

FORMAT: Final = "think"

# The reader is a line scanner: each line is looked at a bounded number of times, and every regex below
# is matched at one known position with no two adjacent quantifiers over overlapping characters, so
# reading is linear in the text (whitespace runs once made the old whole-text regexes backtrack for
# minutes).
# "1. Semantic consistency:" -> the enumerator that precedes the dimension name.
_ENUMERATOR = re.compile(r"[ \t]*(?:\d+[ \t]*[.)][ \t]*)?")
# "    Image 1 (9/10) - " with optional bullet, bold and dash variants; the rest of the line is the rationale.
_SCORE_LINE = re.compile(
    r"[ \t]*(?:[-*•][ \t]*)?\**(image|video)[ \t]*([12])\**[ \t]*"
    r"\([ \t]*(\d{1,3})[ \t]*/[ \t]*10[ \t]*\)\**[ \t]*(?:[-–—:][ \t]?)?",
    re.I,
)
# "image" or "video" as re.I reads them, spelled out: scanning with re.I costs twice as much per character.
_IMAGE_OR_VIDEO = "(?:[iIİı][mM][aA][gG][eE]|[vV][iIİı][dD][eE][oO])"
_OPENING = rf"[ \t]*(?:[-*•][ \t]*)?\**{_IMAGE_OR_VIDEO}[ \t]*"  # of a rating line, up to its candidate
# Where a block can be: the colon ending a 'Name:' line over the openings of two rating lines. The scan
# runs in the regex engine, so text that cannot hold a block costs no Python; the first lookahead is a
# cheap filter; every quantifier is followed by a character it cannot take, so an attempt costs at most
# the lines it covers.
_BLOCK_COLON = re.compile(
    r":[*_ \t]*\r?\n(?=[-*• \t]*[iIİıvV])"
    rf"(?={_OPENING}1\**[ \t]*\([ \t]*\d{{1,3}}[ \t]*/[ \t]*10[ \t]*\)[^\n]*\n{_OPENING}2\**[ \t]*\()"
)
_TOTAL_HEADER = re.compile(r"^[ \t*]*total[ \t]+score[ \t*]*:[ \t*\r]*$", re.M | re.I)
# "Image 1: 7+8+9=24" read in three pieces: label up to the terms, the terms, and "=total".
_TOTAL_LABEL = re.compile(r"^[ \t*-]*(image|video)[ \t]*([12])[ \t*]*:[ \t]*", re.M | re.I)
_TOTAL_TERMS = re.compile(r"[\d \t+]*")
_TOTAL_SUM = re.compile(r"[ \t]*(\d{1,4})[ \t*\r]*")
# The answer runs to the first closing tag or the end. Written as runs of anything but "<", each "<"
# taken alone when no closing tag starts there: the two pieces never match the same character, so this
# is linear, and the engine skips a run in one C loop instead of trying "</answer>" at every character
# as a lazy `.*?` did (5x json.loads on a long answer, now a fraction of it).
_ANSWER = re.compile(r"<answer>([^<]*(?:<(?!/answer>)[^<]*)*)(?:</answer>|\Z)", re.I)
_SCORE_MARK = re.compile(rf"{_IMAGE_OR_VIDEO}[ \t]*[12]\**[ \t]*\(")  # where a rating line starts


@dataclass
class _Total:
    offset: int
    terms: str
    total: str


@dataclass
class _Block:
    name: str
    scores: tuple[int, int]
    reasons: tuple[str, str]
    labels: tuple[str, str]
    offset: int
    end: int


def parse_think(text: str, *, modality: Modality | None, strict: bool, prompt: str) -> Judgment:
    notes: list[str] = []
    think_open = text.find("<think>")
    think_close = text.find("</think>")
    if strict:
        _check_envelope(text, think_open, think_close)
    elif think_open < 0:
        notes.append("no <think> tag")
    body_end = think_close if think_close >= 0 else len(text)
    blocks = _blocks(text, max(think_open, 0), body_end)
    _refuse_unread_blocks(text, blocks, max(think_open, 0), body_end)
    answers = list(_ANSWER.finditer(text, think_close if think_close >= 0 else 0))
    answer = answers[0] if answers else None
    if answer is None:
        where = "inside <think>" if think_close < 0 else "after </think>"
        raise TruncatedOutput(
            f"output ends {where} with no <answer>", offset=len(text), partial_text=text, format=FORMAT
        )
    if not blocks:
        raise ParseError(
            "no dimension blocks ('Name:' then 'Image 1 (x/10) - ...')",
            offset=max(think_open, 0),
            format=FORMAT,
        )
    resolved = _modality(blocks, answer.group(1), modality, strict, notes)
    winner = _answer(text, answer, resolved, strict, notes)
    # A repeated answer is read once: thousands of copies of one tag cost a lookup each, not a reading.
    read = {answer.group(0): winner}
    for extra in answers[1:]:
        again = read.get(extra.group(0))
        if again is None:
            again = read[extra.group(0)] = _answer(text, extra, resolved, strict, notes)
        if again != winner:
            raise ParseError("two <answer> tags name different winners", offset=extra.start(), format=FORMAT)
    if answers[1:]:
        notes.append(f"{len(answers) - 1} more <answer> tag(s) repeat the first")
    _check_totals(text, blocks, body_end, resolved, strict, notes)
    if not strict and not answer.group(0).lower().endswith("</answer>"):
        notes.append("the <answer> tag is not closed")
    dimensions = [_dimension(b, i, resolved) for i, b in enumerate(blocks)]
    return Judgment(
        prompt=prompt,
        modality=resolved,
        scoring="rating",
        dimensions=dimensions,
        verdict=Verdict(analysis="", winner=winner),
        meta=JudgmentMeta(source_format=FORMAT, raw_text=text, recovered=bool(notes), recovery_notes=notes),
    )


def _check_envelope(text: str, think_open: int, think_close: int) -> None:
    if think_open < 0:
        raise ParseError("no <think> tag", offset=0, format=FORMAT)
    if text[:think_open].strip():
        raise ParseError("text before <think>", offset=0, format=FORMAT)
    if think_close < 0:
        raise TruncatedOutput("<think> is never closed", offset=len(text), partial_text=text, format=FORMAT)
    after = text[think_close + len("</think>") :].strip()
    if not re.fullmatch(r"<answer>[^<]*</answer>", after):
        raise ParseError(
            "expected exactly <answer>...</answer> after </think>",
            offset=think_close + len("</think>"),
            format=FORMAT,
        )


def _refuse_unread_blocks(text: str, blocks: list[_Block], start: int, end: int) -> None:
    """A rating line outside every block read means a dimension would be lost: refuse, never drop it."""
    # Blocks are disjoint and in order, as are the marks: one sweep, not every mark against every block.
    spans = iter((b.offset, b.end) for b in blocks)
    lo, hi = next(spans, (end, end))
    for mark in _SCORE_MARK.finditer(text, start, end):
        while hi <= mark.start():
            lo, hi = next(spans, (end, end))
        if not lo <= mark.start() < hi:
            raise ParseError(
                "a dimension block could not be read (expected 'Name:' then 'Image 1 (x/10) - ...;'"
                " and 'Image 2 (y/10) - ...' on the next two lines)",
                offset=mark.start(),
                format=FORMAT,
            )


def _blocks(text: str, start: int, end: int) -> list[_Block]:
    """Each 'Name:' line (at or after `start`) over candidate 1's and 2's rating lines, read in order."""
    blocks: list[_Block] = []
    resume = start  # lines before this are before `start` or inside a block already read
    newline = -1  # a newline before the colon found next (or -1): where to look back for its line
    found = _BLOCK_COLON.search(text, start, end)
    while found is not None:
        line = text.rfind("\n", max(newline, 0), found.start()) + 1
        newline = text.index("\n", found.start())
        # Search again from the next line, which may itself be the 'Name:' line of a block.
        following = _BLOCK_COLON.search(text, newline + 1, end)
        if line >= resume:
            block = _block_at(text, line, newline, end)
            if block is not None:
                if not _TOTAL_HEADER.fullmatch(text, line, newline):  # "Total score:" is no block
                    blocks.append(block)
                resume = block.end + 1
        found = following
    return blocks


def _block_at(text: str, line: int, newline: int, end: int) -> _Block | None:
    name = _header_name(text[line:newline])
    if name is None:
        return None
    first_end = text.find("\n", newline + 1, end)
    if first_end < 0:
        return None
    first = _SCORE_LINE.match(text, newline + 1, first_end)
    second_start = first_end + 1
    second_end = text.find("\n", second_start, end)
    second_end = end if second_end < 0 else second_end
    second = _SCORE_LINE.match(text, second_start, second_end)
    if first is None or second is None or first[2] != "1" or second[2] != "2":
        return None
    return _Block(
        name=name,
        scores=(int(first[3]), int(second[3])),
        reasons=(_first_reason(text[first.end() : first_end]), text[second.end() : second_end].rstrip()),
        labels=(first[1], second[1]),
        offset=line,
        end=second_end,
    )


def _header_name(line: str) -> str | None:
    """The name in '1. Name:' (a line ending in ':' and markdown), or None when the line is no header."""
    body = (line[:-1] if line.endswith("\r") else line).rstrip("*_ \t")
    if not body.endswith(":"):
        return None
    head = body[:-1]
    enumerator = _ENUMERATOR.match(head)
    assert enumerator is not None  # every part of it is optional
    return head[enumerator.end() :].strip("*_ \t")


def _first_reason(raw: str) -> str:
    # The rationale of candidate 1 ends with ';' that separates it from candidate 2's line.
    reason = raw.rstrip()
    return reason[:-1] if reason.endswith(";") else reason


def _modality(
    blocks: list[_Block], answer: str, modality: Modality | None, strict: bool, notes: list[str]
) -> Modality:
    counts = Counter(lab.lower() for b in blocks for lab in b.labels)
    counts.update(m for m in ("image", "video") if m in answer.lower())
    said = set(counts)
    if strict and (len(said) != 1 or (modality is not None and said != {modality})):
        raise ParseError(
            f"candidate labels {sorted(said)} do not name one modality",
            offset=blocks[0].offset,
            format=FORMAT,
        )
    if modality is not None:
        if said != {modality}:
            notes.append(f"labels {sorted(said)} but the caller said {modality}")
        return modality
    if len(said) == 1:
        return "video" if "video" in said else "image"
    # Mixed labels: the majority decides; an even split goes to what the anchor names say.
    if counts["video"] != counts["image"]:
        guess: Modality = "video" if counts["video"] > counts["image"] else "image"
    else:
        names = [b.name for b in blocks]
        guess = "video" if any(anchor_position(n, "video", "rating") == 1 for n in names) else "image"
    notes.append(f"labels mix {dict(counts)}; read as {guess}")
    return guess


def _answer(text: str, answer: re.Match[str], modality: Modality, strict: bool, notes: list[str]) -> int:
    raw = answer.group(1).strip()
    if strict:
        exact = {f"{winner_text(n, modality)} is better": n for n in (1, 2)}
        if raw not in exact:
            raise ParseError(
                f"answer {raw!r} is not '{label(modality)} 1 is better' or '{label(modality)} 2 is better'",
                offset=answer.start(1),
                path="answer",
                format=FORMAT,
            )
        return exact[raw]
    if not answer.group(0).lower().endswith("</answer>"):
        # Cut inside the answer: only the complete released phrase is a verdict; "Image 1 and" is not.
        phrase = raw.lower().rstrip(". ")
        complete = {f"{winner_text(n, modality)} is better".lower(): n for n in (1, 2)}
        if phrase not in complete:
            raise TruncatedOutput(
                f"output ends inside <answer> ({raw!r})", offset=len(text), partial_text=text, format=FORMAT
            )
        return complete[phrase]
    try:
        winner = read_winner(raw)
    except WinnerError as exc:
        raise ParseError(str(exc), offset=answer.start(1), path="answer", format=FORMAT) from None
    if raw != f"{winner_text(winner, modality)} is better":
        notes.append(f"read answer {raw!r} as candidate {winner}")
    return winner


def _check_totals(
    text: str, blocks: list[_Block], end: int, modality: Modality, strict: bool, notes: list[str]
) -> None:
    header = _TOTAL_HEADER.search(text, blocks[-1].offset, end)
    if header is None:
        if strict:
            raise ParseError("no 'Total score:' block", offset=end, format=FORMAT)
        notes.append("no 'Total score:' block")
        return
    lines = _total_lines(text, header.end(), end)
    for candidate in (1, 2):
        scores = [b.scores[candidate - 1] for b in blocks]
        line = lines.get(candidate)
        if line is None:
            problem = f"no total line for {winner_text(candidate, modality)}"
            offset = header.end()
        else:
            terms = [int(t) if len(t) <= 4 else -1 for t in re.findall(r"\d+", line.terms)]
            if terms == scores and int(line.total) == sum(scores):
                continue
            written = f"{line.terms.strip()}={line.total}"
            problem = (
                f"total for {winner_text(candidate, modality)} reads {written}, ratings give {sum(scores)}"
            )
            offset = line.offset
        if strict:
            raise ParseError(problem, offset=offset, format=FORMAT)
        notes.append(problem)


def _total_lines(text: str, start: int, end: int) -> dict[int, _Total]:
    """Lines 'Image N: a+b+c=total' in the lines after `start`; a later line for N replaces an earlier one."""
    found: dict[int, _Total] = {}
    for head in _TOTAL_LABEL.finditer(text, start, end):
        stop = text.find("\n", head.end(), end)
        stop = end if stop < 0 else stop
        equals = text.find("=", head.end(), stop)
        if equals < 0:
            continue
        terms = text[head.end() : equals].rstrip(" \t")
        total = _TOTAL_SUM.fullmatch(text, equals + 1, stop)
        if _TOTAL_TERMS.fullmatch(terms) and total is not None:
            found[int(head[2])] = _Total(offset=head.start(), terms=terms, total=total[1])
    return found


def _dimension(block: _Block, index: int, modality: Modality) -> Dimension:
    one, two = block.scores
    for score in (one, two):
        if not 0 <= score <= 10:
            raise ParseError(
                f"rating {score}/10 is out of range",
                offset=block.offset,
                path=f"dimensions[{index}]",
                format=FORMAT,
            )
    origin = "generated" if anchor_position(block.name, modality, "rating") is None else "predefined"
    criterion = Criterion(
        name=block.name, evidence_1=block.reasons[0], evidence_2=block.reasons[1], score_1=one, score_2=two
    )
    return Dimension(
        name=block.name,
        origin=origin,
        criteria=[criterion],
        analysis="",
        winner=1 if one > two else 2 if two > one else None,
    )


def render_think(judgment: Judgment) -> str:
    """Render a Think judgment; raises `RenderError` for what the format cannot carry."""
    _check_representable(judgment)
    name = label(judgment.modality)
    lines = ["<think>"]
    for i, dim in enumerate(judgment.dimensions, 1):
        c = dim.criteria[0]
        lines += [
            f"{i}. {dim.name}:",
            f"    {name} 1 ({c.score_1}/10) - {c.evidence_1};",
            f"    {name} 2 ({c.score_2}/10) - {c.evidence_2}",
        ]
    lines.append("Total score:")
    for n in (1, 2):
        scores = [d.criteria[0].score_1 if n == 1 else d.criteria[0].score_2 for d in judgment.dimensions]
        lines.append(f"{name} {n}: {'+'.join(map(str, scores))}={sum(scores)}")
    lines.append("</think>")
    assert judgment.verdict.winner is not None  # checked above
    lines.append(f"<answer>{winner_text(judgment.verdict.winner, judgment.modality)} is better</answer>")
    return "\n".join(lines)


def _check_representable(judgment: Judgment) -> None:
    def refuse(why: str) -> RenderError:
        return RenderError(f"think cannot carry this judgment: {why}")

    if judgment.scoring != "rating":
        raise refuse("its scores are a 10-point split, Think rates each candidate 1..10")
    if judgment.verdict.winner is None or judgment.verdict.analysis:
        raise refuse("Think's verdict is a bare winner: no tie, no analysis")
    if judgment.intent is not None or judgment.evidence:
        raise refuse("Think states no intent or evidence")
    if not judgment.dimensions:
        raise refuse("it has no dimensions")
    for i, dim in enumerate(judgment.dimensions):
        where = f"dimensions[{i}]"
        if len(dim.criteria) != 1 or dim.criteria[0].name != dim.name or dim.analysis:
            raise refuse(f"{where} must be one criterion of the same name with no analysis")
        c = dim.criteria[0]
        expected = 1 if c.score_1 > c.score_2 else 2 if c.score_2 > c.score_1 else None
        if dim.winner != expected:
            raise refuse(f"{where}.winner does not follow its ratings")
        if not _one_line(dim.name) or not dim.name or dim.name != dim.name.strip("*_"):
            raise refuse(f"{where}.name must be one non-empty line without surrounding space or markdown")
        if not (_one_line(c.evidence_1) and _one_line(c.evidence_2)):
            raise refuse(f"{where} rationales must be single lines without surrounding space or Think tags")


_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _one_line(text: str) -> bool:
    return (
        "\n" not in text and "\r" not in text and text == text.strip() and not any(t in text for t in _TAGS)
    )
