"""The one error tree of flexjudge: every failure a caller can see is a `FlexjudgeError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flexjudge.checks import Finding


class FlexjudgeError(Exception):
    """Root of every error flexjudge raises on purpose."""


class UsageError(FlexjudgeError, ValueError):
    """A call flexjudge cannot honour as written (an unknown option, a wrong candidate count, an empty
    prompt, a setting out of range); the message names the fix. Also a `ValueError`, as such errors are."""


class ParseError(FlexjudgeError):
    """Model output that cannot be read as a judgment.

    `offset` is the character offset in the text given to `parse` where reading failed;
    `path` names the field (``categories[1].dims[0].score_2``) when the text was well-formed
    but a value was not.
    """

    def __init__(
        self, reason: str, *, offset: int, path: str | None = None, format: str | None = None
    ) -> None:
        self.reason = reason
        self.offset = offset
        self.path = path
        self.format = format
        where = f" at {path}" if path else ""
        super().__init__(f"{reason}{where} (offset {offset})")


class TruncatedOutput(ParseError):
    """The text stops before the judgment is complete (usually the token budget ran out).

    `partial_text` is everything that was read, so a caller can log it or retry with a larger budget.
    """

    def __init__(
        self,
        reason: str,
        *,
        offset: int,
        partial_text: str,
        path: str | None = None,
        format: str | None = None,
    ) -> None:
        self.partial_text = partial_text
        super().__init__(reason, offset=offset, path=path, format=format)


class RenderError(FlexjudgeError):
    """A judgment the requested format cannot express (for example several criteria per Think dimension)."""


class ValidationFailed(FlexjudgeError):
    """A judgment was read but breaks the method's rules; `findings` lists every problem."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        summary = "; ".join(f"{f.path}: {f.message}" for f in findings[:3])
        more = f" (+{len(findings) - 3} more)" if len(findings) > 3 else ""
        super().__init__(f"{len(findings)} problem(s): {summary}{more}")


class BackendError(FlexjudgeError):
    """A model backend failed; `retryable` says whether the same call may succeed later."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status_code: int | None = None,
        original: BaseException | None = None,
    ) -> None:
        self.retryable = retryable
        self.status_code = status_code
        self.original = original
        super().__init__(message)


class ConstraintError(BackendError):
    """The request's output constraint (a JSON Schema or a grammar) cannot be compiled by this backend:
    the caller's to change, never worth retrying as it is."""

    def __init__(self, message: str, *, original: BaseException | None = None) -> None:
        super().__init__(message, retryable=False, original=original)


class TraceFileError(FlexjudgeError):
    """A trace file that cannot be read at all (missing, a directory, unreadable)."""


class MediaError(FlexjudgeError):
    """An image or video that cannot be used: missing, unreadable, corrupt, unsupported, or over a limit.

    `source` names what was given (a path, a URL, or the kind and size of an in-memory object) and
    `reason` says why it was refused.
    """

    def __init__(self, reason: str, *, source: str) -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}")


class LogFileError(FlexjudgeError):
    """A JSON Lines output that cannot be resumed: unreadable, not a file, or a complete line in it that
    is not a JSON record. `path` names the file and `line` the 1-based line, when one is to blame."""

    def __init__(self, reason: str, *, path: str, line: int | None = None) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")


class DataError(FlexjudgeError):
    """Labelled evaluation data that cannot be used: a missing file, an unknown layout, or a row without
    what an example needs. `source` names the file or dataset and `row` the 1-based line or row."""

    def __init__(self, reason: str, *, source: str, row: int | None = None) -> None:
        self.reason = reason
        self.source = source
        self.row = row
        where = f"{source}:{row}" if row is not None else source
        super().__init__(f"{where}: {reason}")
