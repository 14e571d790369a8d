"""The typed judgment hierarchy: intent -> evidence -> dimensions -> criteria -> scores -> verdict.

Two scoring schemes share one hierarchy (`Judgment.scoring`):

- ``"split"`` (UnifiedReward-Flex): each criterion splits 10 points between the candidates,
  ``score_1 + score_2 == 10``; a relative preference, not an absolute quality.
- ``"rating"`` (UnifiedReward-Think): each candidate gets an independent 1..10 rating. A Think dimension
  is one `Dimension` holding one `Criterion` of the same name; its winner follows the ratings (equal
  ratings are a tie, ``winner=None``).

Field types enforce what makes a value meaningless (a score of 11, a third candidate). The method's rules
(the split, the anchors, 3-5 criteria, consistent winners) are reported by `flexjudge.check`, so one broken
criterion in a teacher trace is a finding with a path, not a lost trace.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue, SkipJsonSchema
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema

from flexjudge.anchors import MAX_GENERATED, Modality, Scoring, canonical_name

Origin = Literal["predefined", "generated"]
SourceFormat = Literal["flex", "think", "native"]


class _ExactCandidate:
    """Validate a candidate number as a strict integer 1 or 2 (the JSON schema stays `enum: [1, 2]`).

    pydantic reads JSON `true` as the literal 1, even in strict mode, which would make a boolean
    candidate 1; a strict integer refuses booleans in pydantic-core itself, at no cost per judgment
    (a text scan for booleans before this cost about a fifth of a `json.loads` of the same text).
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.int_schema(strict=True, ge=1, le=2)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(core_schema.literal_schema([1, 2]))


Candidate = Annotated[Literal[1, 2], _ExactCandidate()]
Score = Annotated[int, Strict(), Field(ge=0, le=10)]
"""A criterion score: an integer (never a boolean or a string) from 0 to 10."""
PointScore = Annotated[int, Strict()]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
"""A probability: a finite number from 0 to 1."""

__all__ = [
    "Candidate",
    "Criterion",
    "Dimension",
    "Evidence",
    "Finding",
    "Intent",
    "Judgment",
    "JudgmentMeta",
    "Modality",
    "Origin",
    "PointCriterion",
    "PointDimension",
    "PointScale",
    "PointVerdict",
    "PointwiseJudgment",
    "Preferences",
    "Probability",
    "Sampling",
    "Scoring",
    "Severity",
    "SourceFormat",
    "SwapReport",
    "Usage",
    "Verdict",
]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Intent(_Schema):
    """What the prompt asks for, read before looking at any candidate."""

    subjects: list[str]
    """Who or what must appear."""
    attributes_and_actions: list[str]
    """Properties of the subjects and what they do."""
    constraints: list[str]
    """Hard requirements: counts, positions, relations, text to render, things to avoid."""
    style: list[str]
    """Requested medium, mood, palette, camera or artistic style."""
    preferences: list[str]
    """The user's stated preferences that this judgment applied (empty when none were given)."""


class Evidence(_Schema):
    """What is actually visible in one candidate, observed before any comparison."""

    candidate: Candidate
    """1-based number of the candidate, in the order the judge saw them."""
    observations: list[str]
    """Concrete visual observations: objects, text, defects, motion."""


class Criterion(_Schema):
    """A prompt-specific sub-dimension: evidence for each candidate, then the scores it justifies."""

    name: str
    """Short criterion name, often with a focus in parentheses ("Subject Completeness (Child & Kirin)")."""
    evidence_1: str
    """Visual evidence for candidate 1 under this criterion."""
    evidence_2: str
    """Visual evidence for candidate 2 under this criterion."""
    score_1: Score
    """Candidate 1's score: its share of 10 points (split) or its 1..10 rating (rating)."""
    score_2: Score
    """Candidate 2's score: its share of 10 points (split) or its 1..10 rating (rating)."""


class Dimension(_Schema):
    """An evaluation dimension (a Flex "category"): a predefined anchor or one generated for this prompt."""

    name: str
    """Dimension name as written by the judge (prefixes such as "A. " are kept)."""
    origin: Origin
    """`predefined` for the method's anchors, `generated` for dimensions the judge added for this prompt."""
    criteria: list[Criterion]
    """The prompt-specific criteria of this dimension (3 to 5 under the Flex method)."""
    analysis: str
    """The judge's comparison at the dimension level."""
    winner: Candidate | None
    """Candidate that wins this dimension; None is a tie."""

    @property
    def totals(self) -> tuple[int, int]:
        """Summed scores of candidate 1 and candidate 2 over this dimension's criteria."""
        return sum(c.score_1 for c in self.criteria), sum(c.score_2 for c in self.criteria)


class Verdict(_Schema):
    """The overall decision."""

    analysis: str
    """The judge's overall reasoning."""
    winner: Candidate | None
    """Candidate preferred overall; None is a tie (never produced by the released judges)."""


class Preferences(_Schema):
    """A user's judging profile: what they care about, how much, and what must always be judged."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    profile: str = ""
    """Free text, e.g. "muted palettes; legible text matters most"."""
    weights: dict[str, float] = Field(default_factory=dict)
    """Dimension name -> weight (default 1.0 for dimensions not listed)."""
    custom_dimensions: tuple[str, ...] = ()
    """Dimensions the judge must add after the anchors (at most two)."""
    weighted_verdict: bool = False
    """Decide the overall winner by weighted dimension votes instead of the judge's verdict."""

    @field_validator("custom_dimensions")
    @classmethod
    def _few_and_new(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_GENERATED:
            raise ValueError(f"at most {MAX_GENERATED} custom dimensions fit after the three anchors")
        if any(not name.strip() for name in value):
            raise ValueError("custom dimension names must not be empty")
        if any(ord(c) < 0x20 or c == "\x7f" for name in value for c in name):
            raise ValueError("custom dimension names must not hold control characters")
        return value

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not v >= 0}
        if bad:
            raise ValueError(f"weights must be >= 0: {bad}")
        return value

    def weight(self, dimension_name: str) -> float:
        """The weight of a dimension, matched by canonical name."""
        wanted = canonical_name(dimension_name)
        for name, weight in self.weights.items():
            if canonical_name(name) == wanted:
                return weight
        return 1.0

    @classmethod
    def coerce(cls, value: Preferences | str | None) -> Preferences | None:
        """Accept a profile string as shorthand for `Preferences(profile=...)`."""
        if value is None or isinstance(value, Preferences):
            return value
        return cls(profile=value)


Severity = Literal["error", "warning", "info"]


class Finding(BaseModel):
    """One problem `flexjudge.check` found in a judgment."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    code: str
    """Stable machine-readable code, e.g. `split_sum`."""
    severity: Severity
    """`error`, `warning` or `info`."""
    path: str
    """Where: `dimensions[1].criteria[0]`; empty for the judgment as a whole."""
    message: str
    """What is wrong, in words."""


class Sampling(_Schema):
    """The decoding settings a judgment was generated with."""

    temperature: float
    """0 for greedy decoding."""
    top_p: float
    """Nucleus sampling mass (1.0: off)."""
    seed: int | None
    """The sampling seed; None when unseeded (greedy decoding needs none)."""
    max_new_tokens: int
    """The token budget of the answer."""


class Usage(_Schema):
    """Tokens a backend reported for one generation."""

    prompt_tokens: int
    """Tokens in the prompt, images included."""
    completion_tokens: int
    """Tokens generated."""


class JudgmentMeta(_Schema):
    """How a judgment was obtained: enough to reproduce it and to know how much to trust it."""

    source_format: SourceFormat | None = None
    """Wire format the judgment was read from; None when it was built in code."""
    candidate_order: list[int] = Field(default_factory=lambda: [1, 2])
    """Caller's candidate numbers in the order the judge saw them ([2, 1] when the pair was swapped)."""
    raw_text: str | None = None
    """The exact text the judgment was read from."""
    recovered: bool = False
    """True when lenient reading was needed (fences, prose, repaired tail, loose winners)."""
    recovery_notes: list[str] = Field(default_factory=list)
    """What the lenient reader did, one note per repair."""
    model: str | None = None
    """The judge model that produced it."""
    backend: str | None = None
    """The backend that ran the model (`transformers`, `openai`)."""
    template: str | None = None
    """The prompt template it was asked with: a bundled template's name, or the path of the user's own."""
    template_digest: str | None = None
    """SHA-256 (first 16 hex digits) of the template text actually used, a user's template included."""
    constrained: bool | None = None
    """True when decoding was constrained (valid by construction); False for prompt-only output."""
    engine: str | None = None
    """Who enforced the constraint: a local engine (`llguidance`, `xgrammar`, `outlines_core`) or `server`."""
    enforced: Literal["grammar", "schema", "strict_schema"] | None = None
    """Which form of the constraint was applied: the grammar (winners follow the scores), the full JSON
    Schema, or OpenAI's strict subset (anchor order and the split left to `check`); None: unconstrained."""
    constraint_digest: str | None = None
    """Content hash of the decoding constraint the request carried."""
    attempts: int = 1
    """Generations it took: more than 1 when the backend re-asked with the rule violations."""
    sampling: Sampling | None = None
    """Temperature, top-p, seed and token budget of the generation."""
    frames_per_video: int | None = None
    """Frames sampled per video (None for images)."""
    usage: Usage | None = None
    """Token usage, when the backend reports it."""
    preferences: Preferences | None = None
    """The user's preferences it was judged under."""
    verdict_rule: Literal["judge", "weighted", "swap"] = "judge"
    """Who decided the overall winner: the judge, weighted dimension votes, or the order-swap merge."""
    swap: SwapReport | None = None
    """Both runs and how they were merged, when judged in both orders."""
    winner_probability: Probability | None = None
    """The probability the model gave to the generated token naming its overall winner, when the backend
    returned log-probabilities; None otherwise (and on a swap-merged judgment: see each run in `swap`)."""
    confidence: Probability | None = None
    """The probability that the overall winner is right (`flexjudge.confidence.confidence_of`, mapped
    through `Judge(calibration=...)` when given; uncalibrated otherwise); 0.5 for a tie verdict. None when
    not computed."""


def _unset_meta() -> JudgmentMeta:
    """`JudgmentMeta()` without validating its defaults again: the same object (every field at its
    default, none set), for about a seventh of the cost. Every judgment read from native text builds
    one before the reader replaces it, and validation made that a quarter of a `json.loads`."""
    meta = JudgmentMeta.__new__(JudgmentMeta)
    values = _META_DEFAULTS.copy()  # in field order, so repr and dumps match `JudgmentMeta()`
    values["candidate_order"] = [1, 2]  # the two mutable defaults, fresh for each object
    values["recovery_notes"] = []
    object.__setattr__(meta, "__dict__", values)
    object.__setattr__(meta, "__pydantic_fields_set__", set())
    object.__setattr__(meta, "__pydantic_extra__", None)
    object.__setattr__(meta, "__pydantic_private__", None)
    return meta


_META_DEFAULTS = {name: field.default for name, field in JudgmentMeta.model_fields.items()}
_META_FACTORIES = {name for name, field in JudgmentMeta.model_fields.items() if field.default_factory}
if {"candidate_order", "recovery_notes"} != _META_FACTORIES:
    raise TypeError("JudgmentMeta's mutable defaults changed: _unset_meta must build each one fresh")


class Judgment(_Schema):
    """A pairwise judgment: the full hierarchy plus the metadata needed to reproduce it."""

    prompt: str
    """The generation prompt as the judge echoed it (empty when the format does not echo it)."""
    modality: Modality
    """Whether the candidates are images or videos."""
    scoring: Scoring = "split"
    """`split`: each criterion splits 10 points; `rating`: independent 1..10 ratings (Think)."""
    intent: Intent | None = None
    """The judge's reading of the prompt; None for formats that do not state it."""
    evidence: list[Evidence] = Field(default_factory=list)
    """Per-candidate observations made before comparing; empty for formats that do not state them."""
    dimensions: list[Dimension]
    """Anchors first, in order, then at most two generated dimensions."""
    verdict: Verdict
    """The overall decision."""
    meta: SkipJsonSchema[JudgmentMeta] = Field(default_factory=_unset_meta)
    """Provenance; not part of any wire format (and left out of the JSON Schema)."""
    findings: SkipJsonSchema[list[Finding]] = Field(default_factory=list)
    """What `flexjudge.check` found, attached by `judge` / `rank`; not part of any wire format."""

    def content(self) -> dict[str, Any]:
        """The judgment without its metadata and findings: what two equal judgments share."""
        return self.model_dump(exclude={"meta", "findings"})


class SwapReport(_Schema):
    """How the two candidate orders compared, and how the merged judgment was decided."""

    first: Judgment
    """The judgment in the caller's order (candidate 1 shown first)."""
    second: Judgment
    """The judgment in swapped order, mapped back to the caller's numbering."""
    dimension_agreement: dict[str, bool]
    """Dimension name -> whether both runs chose the same winner (for dimensions both runs made)."""
    verdict_agreement: bool
    """Whether both runs chose the same overall winner."""
    resolution: Literal["agreed", "dimension_majority", "weighted_majority", "tie"]
    """What decided the overall winner."""


JudgmentMeta.model_rebuild()
Judgment.model_rebuild()


class PointScale(_Schema):
    """The absolute scale of a pointwise judgment."""

    low: int = 1
    """Lowest possible score."""
    high: int = 10
    """Highest possible score."""

    @model_validator(mode="after")
    def _ordered(self) -> PointScale:
        if self.low >= self.high:
            raise ValueError(f"scale low ({self.low}) must be below high ({self.high})")
        return self


class PointCriterion(_Schema):
    """A criterion of a pointwise judgment: evidence, then an absolute score."""

    name: str
    """Short criterion name."""
    evidence: str
    """Visual evidence for this criterion."""
    score: PointScore
    """Absolute score on the judgment's scale."""


class PointDimension(_Schema):
    """A dimension of a pointwise judgment."""

    name: str
    """Dimension name as written by the judge."""
    origin: Origin
    """`predefined` for the method's anchors, `generated` for dimensions added for this prompt."""
    criteria: list[PointCriterion]
    """The prompt-specific criteria of this dimension."""
    analysis: str
    """The judge's assessment at the dimension level."""
    score: PointScore
    """Dimension score on the judgment's scale."""


class PointVerdict(_Schema):
    """The overall assessment of a single candidate."""

    analysis: str
    """The judge's overall reasoning."""
    score: PointScore
    """Overall score on the judgment's scale."""


class PointwiseJudgment(_Schema):
    """One candidate scored on an absolute, declared scale (the released judge has no pointwise mode)."""

    prompt: str
    """The generation prompt as the judge echoed it."""
    modality: Modality
    """Whether the candidate is an image or a video."""
    scale: PointScale = Field(default_factory=PointScale)
    """The declared scale every score lies on."""
    intent: Intent | None = None
    """The judge's reading of the prompt."""
    observations: list[str] = Field(default_factory=list)
    """What is visible in the candidate, observed before scoring."""
    dimensions: list[PointDimension]
    """Anchors first, in order, then at most two generated dimensions."""
    verdict: PointVerdict
    """The overall assessment."""
    meta: SkipJsonSchema[JudgmentMeta] = Field(default_factory=lambda: JudgmentMeta(candidate_order=[1]))
    """Provenance; not part of any wire format (and left out of the JSON Schema)."""
    findings: SkipJsonSchema[list[Finding]] = Field(default_factory=list)
    """What `flexjudge.check` found, attached by `score`; not part of any wire format."""

    @model_validator(mode="after")
    def _scores_on_scale(self) -> PointwiseJudgment:
        low, high = self.scale.low, self.scale.high
        places: list[tuple[tuple[str | int, ...], int]] = [(("verdict", "score"), self.verdict.score)]
        for i, dim in enumerate(self.dimensions):
            places.append((("dimensions", i, "score"), dim.score))
            places += [
                (("dimensions", i, "criteria", j, "score"), c.score) for j, c in enumerate(dim.criteria)
            ]
        errors = [
            InitErrorDetails(
                type=PydanticCustomError(
                    "off_scale",
                    "score {score} is off the scale {low}..{high}",
                    {"score": v, "low": low, "high": high},
                ),
                loc=loc,
                input=v,
            )
            for loc, v in places
            if not low <= v <= high
        ]
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def content(self) -> dict[str, Any]:
        """The judgment without its metadata and findings."""
        return self.model_dump(exclude={"meta", "findings"})
