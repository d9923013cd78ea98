"""Entity matching in thoughts. The default is the paper's: a gold entity is matched when its full
phrase appears as an exact substring. Options, each a documented deviation from the paper: case
folding, Unicode NFKC normalisation, word boundaries, and per-entity variant lists (synonyms,
abbreviations; the paper found variants helped a little and an LLM judge was reward-hacked)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence

from pydantic import Field

from saffron_runtime.config import Settings


class MatchOptions(Settings):
    """How entities are matched (all off = exact full-phrase substring, as in E-GRPO)."""

    casefold: bool = False
    unicode_normalize: bool = False
    word_boundary: bool = False
    variants: dict[str, list[str]] = Field(default_factory=dict)


def _norm(text: str, opts: MatchOptions) -> str:
    if opts.unicode_normalize:
        text = unicodedata.normalize("NFKC", text)
    if opts.casefold:
        text = text.casefold()
    return text


def _found(phrase: str, text: str, opts: MatchOptions) -> bool:
    p = _norm(phrase, opts)
    if not p:
        return False
    if opts.word_boundary:
        return re.search(rf"(?<!\w){re.escape(p)}(?!\w)", text) is not None
    return p in text


def matched_entities(
    thoughts: str, entities: Sequence[str], options: MatchOptions | None = None
) -> set[str]:
    """The gold entities whose phrase (or one of its variants) appears in ``thoughts``."""
    opts = options or MatchOptions()
    text = _norm(thoughts, opts)
    variants: Mapping[str, list[str]] = opts.variants
    return {e for e in entities if any(_found(v, text, opts) for v in [e, *variants.get(e, [])])}


def match_rate(
    thoughts: str, entities: Sequence[str], options: MatchOptions | None = None
) -> float:
    """gamma = |matched| / |gold| (0 for an empty gold set)."""
    gold = list(dict.fromkeys(entities))
    return len(matched_entities(thoughts, gold, options)) / len(gold) if gold else 0.0
