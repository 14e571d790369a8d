"""flexjudge: personalized, interpretable judging of generated images and videos.

The public surface is flat; everything here is cheap to import (no torch, no model libraries).
"""

from flexjudge.anchors import FLEX_ANCHORS, THINK_ANCHORS, anchors
from flexjudge.checks import Finding, check, require_consistent
from flexjudge.errors import (
    BackendError,
    ConstraintError,
    FlexjudgeError,
    MediaError,
    ParseError,
    RenderError,
    TraceFileError,
    TruncatedOutput,
    ValidationFailed,
)
from flexjudge.formats import detect_format, parse, parse_pointwise, render, render_pointwise
from flexjudge.judging import DEFAULT_MODEL, Judge, RankedPair, Ranking, ajudge, judge
from flexjudge.schema import (
    Criterion,
    Dimension,
    Evidence,
    Intent,
    Judgment,
    JudgmentMeta,
    PointCriterion,
    PointDimension,
    PointScale,
    PointVerdict,
    PointwiseJudgment,
    Preferences,
    SwapReport,
    Usage,
    Verdict,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "FLEX_ANCHORS",
    "THINK_ANCHORS",
    "BackendError",
    "ConstraintError",
    "Criterion",
    "Dimension",
    "Evidence",
    "Finding",
    "FlexjudgeError",
    "Intent",
    "Judge",
    "Judgment",
    "JudgmentMeta",
    "MediaError",
    "ParseError",
    "PointCriterion",
    "PointDimension",
    "PointScale",
    "PointVerdict",
    "PointwiseJudgment",
    "Preferences",
    "RankedPair",
    "Ranking",
    "RenderError",
    "SwapReport",
    "TraceFileError",
    "TruncatedOutput",
    "Usage",
    "ValidationFailed",
    "Verdict",
    "__version__",
    "ajudge",
    "anchors",
    "check",
    "detect_format",
    "judge",
    "parse",
    "parse_pointwise",
    "render",
    "render_pointwise",
    "require_consistent",
]
