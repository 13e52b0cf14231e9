"""What a tenant's category in the instructions means: phrases, or rules in the style of AWS
Contact Lens.

A category started as a list of phrases ("cancellation": ["cancel", "terminate"]), and
tenants' instructions hold such lists, so that form stays valid and is stored and shown back
as written. A category can also be a set of rules that must *all* match for a call to be in
it, which says what a list of phrases cannot: "the agent did not greet in the first 15 s",
"30 s of silence", "the caller was still angry at the end":

* ``phrase``: any of the phrases is said (``present: false``: none is), by one track or
  either, in the whole call or only in its first or last seconds;
* ``non_talk``: a stretch of at least ``min_s`` in which neither track talks, anywhere or
  within a window;
* ``interruptions``: a track (or either) interrupts the other at least ``min_count`` times;
* ``sentiment``: a track's sentiment in a window is below (or above) a value in [-1, 1].

A list of phrases is the one rule ``{"type": "phrase", "phrases": [...]}`` (present, either
track, whole call): ``category_rules`` turns either form into rules. What the rules mean on a
transcript is ``ai.categories``'s business; this module only says what may be written.

The phrase checks live here rather than in ``storage.instructions``, which imports this
module for its ``categories`` field (the reverse import would be a cycle).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "MAX_CATEGORY_PHRASES",
    "MAX_COUNT",
    "MAX_PHRASE_CHARS",
    "MAX_RULES",
    "MAX_WINDOW_S",
    "MIN_NON_TALK_S",
    "RULE_TYPES",
    "CategoryDefinition",
    "CategoryRules",
    "InterruptionsRule",
    "NonTalkRule",
    "PhraseRule",
    "Rule",
    "SentimentRule",
    "Window",
    "category_rules",
    "check_phrase",
    "has_control",
]

MAX_CATEGORY_PHRASES = 50
"""Most phrases a category's list, or one phrase rule, may hold (counted before duplicates
are removed)."""

MAX_PHRASE_CHARS = 100
"""Longest phrase, in characters after stripping surrounding whitespace."""

MAX_RULES = 20
"""Most rules one category may hold."""

MAX_WINDOW_S = 14_400.0
"""Longest window (``first_s``, ``last_s``) and longest ``non_talk`` ``min_s``: 4 hours,
longer than any call worth a rule."""

MIN_NON_TALK_S = 1.0
"""Shortest ``non_talk`` ``min_s``: shorter pauses are every turn's hand-over, and the VAD
places speech edges a few tenths of a second inside the speech."""

MAX_COUNT = 1000
"""Largest ``interruptions`` ``min_count`` (the smallest is 1)."""

_RuleType = Literal["phrase", "non_talk", "interruptions", "sentiment"]
RULE_TYPES: tuple[str, ...] = get_args(_RuleType)
"""Every rule ``type``, in the order errors list them."""

# As storage.instructions: JSON true/false only, unknown keys refused, values immutable.
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)
_STRICT_VALUES = ConfigDict(strict=True)


def has_control(text: str) -> bool:
    """Whether ``text`` has a control character (Unicode category ``Cc``: C0, DEL and C1:
    newlines and escapes that would corrupt logs or headers)."""
    return any(unicodedata.category(char) == "Cc" for char in text)


def check_phrase(phrase: str) -> str:
    """``phrase`` stripped of surrounding whitespace; ``ValueError`` when it is then empty,
    longer than ``MAX_PHRASE_CHARS`` or has a control character."""
    # Kept as written apart from the surrounding whitespace: the matcher (ai.text) decides
    # case and diacritics, so normalising here would only hide what the tenant typed.
    stripped = phrase.strip()
    if not 1 <= len(stripped) <= MAX_PHRASE_CHARS:
        raise ValueError(f"a phrase must be 1 to {MAX_PHRASE_CHARS} characters (not blank)")
    if has_control(stripped):
        raise ValueError("a phrase cannot contain control characters")
    return stripped


def _dedupe_phrases(phrases: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(phrases))


# strict=False only for the container: JSON arrays arrive as lists. Items stay strict
# strings; the schema states the length check_phrase makes in code.
_Phrases = Annotated[
    tuple[
        Annotated[
            str,
            Strict(),
            AfterValidator(check_phrase),
            WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_PHRASE_CHARS}),
        ],
        ...,
    ],
    Field(strict=False, min_length=1, max_length=MAX_CATEGORY_PHRASES),
    AfterValidator(_dedupe_phrases),
]
_PHRASES: TypeAdapter[tuple[str, ...]] = TypeAdapter(_Phrases, config=_STRICT_VALUES)
_Seconds = Annotated[float, Field(gt=0, le=MAX_WINDOW_S)]
_Score = Annotated[float, Field(ge=-1.0, le=1.0)]
_Track = Literal["inbound", "outbound", "either"]


class Window(BaseModel):
    """A part of the call a rule looks at: its first or its last seconds (exactly one)."""

    model_config = _STRICT

    first_s: _Seconds | None = None
    """The first this many seconds of the call."""
    last_s: _Seconds | None = None
    """The last this many seconds of the call."""

    @model_validator(mode="after")
    def _one_edge(self) -> Window:
        if (self.first_s is None) == (self.last_s is None):
            raise ValueError("must have exactly one of first_s and last_s")
        return self


class PhraseRule(BaseModel):
    """Any of the phrases is said (or, with `present` false, none of them is)."""

    model_config = _STRICT

    type: Literal["phrase"]
    """`phrase`."""
    phrases: _Phrases
    """1 to 50 phrases, matched on word boundaries, case- and diacritics-insensitively, the
    last word's inflections too; duplicates are removed."""
    present: bool = True
    """true: the rule matches when a phrase is said; false: when none is."""
    track: _Track = "either"
    """Whose speech: `inbound` (the caller), `outbound` (the agent) or `either`."""
    window: Window | None = None
    """Only utterances with any part in this window count; null: the whole call."""


class NonTalkRule(BaseModel):
    """A stretch in which neither track talks lasts at least `min_s`."""

    model_config = _STRICT

    type: Literal["non_talk"]
    """`non_talk`."""
    min_s: Annotated[float, Field(ge=MIN_NON_TALK_S, le=MAX_WINDOW_S)]
    """Shortest stretch without speech that matches, in seconds (1 to 14400)."""
    window: Window | None = None
    """Only the part of a stretch inside this window counts; null: the whole call."""


class InterruptionsRule(BaseModel):
    """A track interrupts the other at least `min_count` times."""

    model_config = _STRICT

    type: Literal["interruptions"]
    """`interruptions`."""
    track: _Track = "either"
    """Who interrupts: `inbound`, `outbound`, or `either` (both counted together)."""
    min_count: Annotated[int, Field(ge=1, le=MAX_COUNT)]
    """Fewest interruptions that match (1 to 1000)."""


class SentimentRule(BaseModel):
    """A track's sentiment in a window is below, or above, a value (exactly one of them)."""

    model_config = _STRICT

    type: Literal["sentiment"]
    """`sentiment`."""
    track: _Track = "either"
    """Whose utterances: `inbound`, `outbound` or `either`."""
    window: Window | None = None
    """Only utterances with any part in this window count; null: the whole call."""
    below: _Score | None = None
    """Matches when the sentiment score (-1 to 1) is below this."""
    above: _Score | None = None
    """Matches when the sentiment score (-1 to 1) is above this."""

    @model_validator(mode="after")
    def _one_bound(self) -> SentimentRule:
        if (self.below is None) == (self.above is None):
            raise ValueError("must have exactly one of below and above")
        return self


Rule = PhraseRule | NonTalkRule | InterruptionsRule | SentimentRule
"""One rule of a category."""

_RULE_MODELS: dict[str, type[Rule]] = {
    "phrase": PhraseRule,
    "non_talk": NonTalkRule,
    "interruptions": InterruptionsRule,
    "sentiment": SentimentRule,
}


class _Typed(BaseModel):
    """A rule's ``type`` alone, checked before its model is chosen, so that a missing or
    unknown type is reported on ``type`` itself."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: _RuleType
    """The rule's type."""


def _validate_rule(value: Any, handler: ValidatorFunctionWrapHandler) -> Rule:
    # Chosen by "type" by hand rather than by pydantic's tagged union, whose errors put the
    # tag in the path (rules.0.phrase.phrases): here they read rules.0.phrases.
    if isinstance(value, PhraseRule | NonTalkRule | InterruptionsRule | SentimentRule):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("dict_type", "Input should be a valid dictionary")
    kind = _Typed.model_validate(value).type
    return _RULE_MODELS[kind].model_validate(value)


class CategoryRules(BaseModel):
    """A category as rules: a call is in it when every rule matches."""

    model_config = _STRICT

    rules: tuple[Annotated[Rule, WrapValidator(_validate_rule)], ...] = Field(
        strict=False, min_length=1, max_length=MAX_RULES
    )
    """1 to 20 rules (`phrase`, `non_talk`, `interruptions`, `sentiment`), all of which must
    match."""


def _validate_definition(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # The form is told by the JSON type: an array is the old list of phrases, an object with
    # "rules" the new form. Anything else is refused on the category itself. ``handler`` (the
    # union's own validation) is never called: the union is there for the JSON Schema and
    # the serialiser, and its errors would name a branch instead of the field.
    if isinstance(value, list | tuple):
        return _PHRASES.validate_python(value)
    if isinstance(value, CategoryRules):
        return value
    if isinstance(value, dict) and "rules" in value:
        return CategoryRules.model_validate(value)
    raise PydanticCustomError(
        "category_type",
        'must be a JSON array of phrases, or a JSON object with "rules"',
    )


CategoryDefinition = Annotated[_Phrases | CategoryRules, WrapValidator(_validate_definition)]
"""A category's value in the instructions: the old list of 1 to 50 phrases (stored and
shown as written, duplicates removed) or ``{"rules": [...]}``."""


def category_rules(definition: Sequence[str] | CategoryRules) -> tuple[Rule, ...]:
    """The rules of a category in either form: a list of phrases is one phrase rule (present,
    either track, whole call)."""
    if isinstance(definition, CategoryRules):
        return definition.rules
    return (PhraseRule(type="phrase", phrases=tuple(definition)),)
