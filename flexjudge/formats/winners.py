"""Read a winner the way judges write it: a small grammar of accepted phrases, and nothing else.

A winner is read only when the whole text is one of these shapes (case, surrounding whitespace,
markdown ``*``/`````, surrounding quotes and a final ``.`` or ``!`` are ignored)::

    phrase  := [lead] ref [claim]
    lead    := ["the" | "overall"] "winner" [":" | "is"]
    ref     := ["the"] noun ["#"] N  |  ["the"] N  |  ["the"] ("first" | "second") [noun | "one"]
    noun    := image | video | candidate | picture | clip | option
    claim   := "wins" adv* [against] adv*
             | ["is" | "was"] adv* good adv* [against] adv*
    good    := better | superior | preferred | preferable | stronger
             | "the" ("winner" | (better | stronger | superior | best | preferred) [noun | "one"])
    against := ("than" | "over" | "to") ref        -- the beaten candidate: another number than the winner
    adv     := clearly | slightly | much | far | significantly | definitely | overall | marginally
             | noticeably | substantially | considerably | somewhat | obviously | certainly

| accepted                           | refused (and why)                                        |
|------------------------------------|----------------------------------------------------------|
| ``Image 2``, ``2``, ``image #2``   | ``Image 1 vs Image 2``, ``Image 1 or 2``, ``1/2``: two   |
| ``Image 2 is better``              | ``Image 1 isn't better``, ``not Image 1``: negated       |
| ``Image 2 is better than Image 1`` | ``Image 2 is probably better``, ``Image 2?``: doubt      |
| ``Image 2 is clearly better``      | ``tie``, ``both``, ``neither``, ``equal``: no single one |
| ``the second image``, ``Winner: 2``| ``Image 3`` (of 2), ``true``: no such candidate          |

Anything outside the grammar is refused; the reason given is a diagnosis of the refusal, never a
second route to a verdict. The reader is a token scanner: linear in its input, no backtracking.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

from flexjudge.anchors import Modality

_LABEL = {"image": "Image", "video": "Video"}
_NOUNS = frozenset({"image", "video", "candidate", "picture", "clip", "option"})
_ADVERBS = frozenset(
    {"clearly", "slightly", "much", "far", "significantly", "definitely", "overall", "marginally"}
    | {"noticeably", "substantially", "considerably", "somewhat", "obviously", "certainly"}
)
_GOOD = frozenset({"better", "superior", "preferred", "preferable", "stronger"})
_GOOD_AFTER_THE = frozenset({"better", "stronger", "superior", "best", "preferred"})
_AGAINST = frozenset({"than", "over", "to"})
_ORDINALS = {"first": 1, "second": 2}
# One token: a word (with an inner apostrophe, as in "isn't"), a number, or any other single character.
# Each alternative consumes at least one character and none nests a quantifier, so scanning is linear.
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+|\S")
_MAX_DIGITS = 6  # no judgment compares a million candidates; int() of longer digit runs is wasted work
# Diagnosis only (which refusal message to give); acceptance is decided by the grammar above.
_NEGATION = frozenset({"not", "no", "never", "nor", "neither", "none", "nothing", "without", "cannot"})
_DOUBT = frozenset(
    {"probably", "maybe", "perhaps", "possibly", "likely", "unlikely", "arguably", "might", "may"}
    | {"could", "seems", "seem", "appears", "unclear", "uncertain", "unsure", "hard", "debatable"}
)
_JOINERS = frozenset({"/", "&", "or", "and", "vs", "versus"})
# A token ending in "n't" ("isn't"), found in the distinct tokens joined one per line (none holds a newline).
_NEGATED = re.compile(r"n't$", re.M)
_TIE = frozenset({"tie", "tied", "draw", "equal", "equally", "same", "both", "either", "even", "par"})


class WinnerError(ValueError):
    """A winner that names no candidate, several candidates, or one that does not exist."""


def label(modality: Modality) -> str:
    """The word the released formats put before a candidate number ("Image" or "Video")."""
    return _LABEL[modality]


def winner_text(candidate: int, modality: Modality) -> str:
    """The exact released spelling of a winner: "Image 2", "Video 1"."""
    return f"{_LABEL[modality]} {candidate}"


def read_winner(value: object, *, candidates: int = 2) -> int:
    """The one candidate `value` names, by the grammar in this module's docstring; `WinnerError` otherwise.

    Numbers are read as themselves (2, 2.0); JSON booleans are never candidates.
    """
    if isinstance(value, bool):
        raise WinnerError(f"a boolean ({str(value).lower()}) is not a candidate")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        number = _read_text(value)
    else:
        raise WinnerError(f"expected a candidate such as 'Image 1', got {type(value).__name__}")
    if not 1 <= number <= candidates:
        raise WinnerError(f"candidate {number} does not exist (there are {candidates})")
    return number


def tokens(value: str) -> list[str]:
    """The words, numbers and other characters of `value` that the grammar reads, lowercased."""
    found = _TOKEN.findall(_normal(value))
    while found and found[-1] in (".", "!"):
        found.pop()
    return found


def _normal(value: str) -> str:
    return value.replace("*", "").replace("`", "").replace("\u2019", "'").strip().strip("_'\"").lower()


def _read_text(value: str) -> int:
    text = _normal(value)
    if len(text) <= _SHORT:
        found = _TOKEN.findall(text)
        while found and found[-1] in (".", "!"):
            found.pop()
        number = _Phrase(found).read()
    else:
        number = _LazyPhrase(_TOKEN.finditer(text)).read()
    if number is None:
        raise WinnerError(_diagnose(value, text))
    return number


# Winners as judges write them are a few words: read from one list of tokens, the cheapest way.
# A longer text is tokenized only as far as the grammar reads it (`_LazyPhrase`).
_SHORT = 256


class _Phrase:
    """Recursive descent over the tokens; every rule returns False (or None) without consuming on failure."""

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.i = 0

    def peek(self) -> str:
        return self.words[self.i] if self.i < len(self.words) else ""

    def at_end(self) -> bool:
        return self.i >= len(self.words)

    def take(self, *options: str) -> bool:
        if self.peek() in options:
            self.i += 1
            return True
        return False

    def read(self) -> int | None:
        self.lead()
        number = self.ref()
        if number is None:
            return None
        if not self.at_end() and not self.claim(number):
            return None
        return number if self.at_end() else None

    def lead(self) -> None:
        start = self.i
        self.take("the", "overall")
        if self.take("winner"):
            self.take(":", "is")
        else:
            self.i = start

    def ref(self) -> int | None:
        start = self.i
        self.take("the")
        word = self.peek()
        if word in _ORDINALS:
            self.i += 1
            if not self.take(*_NOUNS):
                self.take("one")
            return _ORDINALS[word]
        if word in _NOUNS:
            self.i += 1
            self.take("#")
        number = self.number()
        if number is None:
            self.i = start
        return number

    def number(self) -> int | None:
        word = self.peek()
        if not word.isdigit() or not word.isascii() or len(word) > _MAX_DIGITS:
            return None
        self.i += 1
        return int(word)

    def adverbs(self) -> None:
        while self.peek() in _ADVERBS:
            self.i += 1

    def claim(self, number: int) -> bool:
        if self.take("wins"):
            self.adverbs()
        else:
            self.take("is", "was")
            self.adverbs()
            if not self.good():
                return False
            self.adverbs()
        if self.peek() in _AGAINST:
            self.i += 1
            other = self.ref()
            if other is None or other == number:
                return False
        self.adverbs()
        return True

    def good(self) -> bool:
        if self.take(*_GOOD):
            return True
        start = self.i
        if self.take("the"):
            if self.take("winner"):
                return True
            if self.take(*_GOOD_AFTER_THE):
                if not self.take(*_NOUNS):
                    self.take("one")
                return True
        self.i = start
        return False


class _LazyPhrase(_Phrase):
    """The same grammar over tokens cut from the text only as the grammar reaches them: a long text
    outside the grammar is refused after its first few tokens instead of being split into a list of
    every word first. Final "." and "!" tokens are the end of the phrase (no rule reads either, so
    only the end test sees them)."""

    def __init__(self, found: Iterator[re.Match[str]]) -> None:
        super().__init__([])
        self._found = found

    def _reach(self, i: int) -> bool:
        """Cut tokens until there is one at `i`; False when the text ends first."""
        while len(self.words) <= i:
            match = next(self._found, None)
            if match is None:
                return False
            self.words.append(match.group())
        return True

    def peek(self) -> str:
        return self.words[self.i] if self._reach(self.i) else ""

    def at_end(self) -> bool:
        """Nothing but "." and "!" tokens from here on."""
        j = self.i
        while self._reach(j):
            if self.words[j] not in (".", "!"):
                return False
            j += 1
        return True


def _diagnose(value: str, text: str) -> str:
    """Why a phrase outside the grammar names no single winner (the message only; never a verdict).

    Each test runs on the distinct tokens of `text`, found from its distinct whitespace-separated
    chunks (no token spans whitespace), with set operations and one regex: a long refused winner
    ("Image 2 is better than " a thousand times) costs no Python step per word.
    """
    ambiguous = f"ambiguous winner {value!r}:"
    seen: Counter[str] = Counter()
    for chunk, times in Counter(text.split()).items():
        for token, count in Counter(_TOKEN.findall(chunk)).items():
            seen[token] += count * times
    if "?" in seen:
        return f"{ambiguous} a question, not a verdict"
    if not _NEGATION.isdisjoint(seen) or _NEGATED.search("\n".join(seen)):
        return f"{ambiguous} negated, so it does not settle on one candidate"
    if not _TIE.isdisjoint(seen):
        return f"{ambiguous} names no single candidate (a tie, both or neither)"
    if not _DOUBT.isdisjoint(seen):
        return f"{ambiguous} hedged, so it does not settle on one candidate"
    numbers = 0
    for word, count in seen.items():  # one step per distinct token, stopping at the second number
        if word.isdigit() or word in _ORDINALS:
            numbers += count
            if numbers > 1:
                break
    if numbers > 1 or not _JOINERS.isdisjoint(seen):
        return f"{ambiguous} names more than one candidate"
    if numbers == 0:
        return f"no candidate named in winner {value!r}"
    return f"unreadable winner {value!r}: not a phrase of the winner grammar (flexjudge.formats.winners)"
