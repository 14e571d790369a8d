"""flexjudge: personalized, interpretable judging of generated images and videos.

The public surface is flat; everything here is cheap to import (no torch, no model libraries).
"""

from flexjudge.anchors import FLEX_ANCHORS, THINK_ANCHORS
from flexjudge.anchors import anchors as anchor_dimensions
from flexjudge.backends.base import Backend, Constraint
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
    UsageError,
    ValidationFailed,
)
from flexjudge.formats import detect_format, parse, parse_pointwise, render, render_pointwise
from flexjudge.judging import DEFAULT_MODEL, Judge
from flexjudge.media import Limits
from flexjudge.outlines_types import outlines_type
from flexjudge.ranking import RankedPair, Ranking
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
    Sampling,
    SwapReport,
    Usage,
    Verdict,
)
from flexjudge.verbs import ajudge, arank, ascore, judge, rank, score

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "FLEX_ANCHORS",
    "THINK_ANCHORS",
    "Backend",
    "BackendError",
    "Constraint",
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
    "Limits",
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
    "Sampling",
    "SwapReport",
    "TraceFileError",
    "TruncatedOutput",
    "Usage",
    "UsageError",
    "ValidationFailed",
    "Verdict",
    "__version__",
    "ajudge",
    "anchor_dimensions",
    "arank",
    "ascore",
    "check",
    "detect_format",
    "judge",
    "outlines_type",
    "parse",
    "parse_pointwise",
    "rank",
    "render",
    "render_pointwise",
    "require_consistent",
    "score",
]
