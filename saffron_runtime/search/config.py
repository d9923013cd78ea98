"""The engine's search settings: :class:`SearchConfig` is the fields declared once in
:class:`~saffron_runtime.search_fields.SearchFields` plus the stop strings.

ChatSaffron inherits the same fields, and the ``saffron`` command line generates its options from
them, so a default or a bound lives in one place.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, field_validator

from saffron_runtime.config import Settings
from saffron_runtime.search_fields import METHODS, SEARCH_FIELDS, Method, SearchFields

__all__ = ["METHODS", "SEARCH_FIELDS", "Method", "SearchConfig", "SearchFields"]


class SearchConfig(Settings, SearchFields):
    """The engine's settings: :class:`SearchFields` plus stop strings; invalid values raise a
    ConfigError naming the field (``SearchConfig.budget=0: must be >= 1``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    stop: list[str] = Field(default_factory=list)
    """Strings that end a beam as EOS does."""

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):  # "" occurs everywhere: it would end every answer at once
            raise ValueError("an empty stop string would end the answer at its first token; drop it")
        return v
