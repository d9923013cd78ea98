"""Validated settings: every invalid value raises a ConfigError naming the field and its allowed range."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from saffron_runtime.errors import ConfigError


def describe_validation_error(model: str, err: ValidationError) -> str:
    """One readable line per invalid field: ``Model.field=value: what is allowed``."""
    parts = []
    for e in err.errors():
        field = ".".join(str(x) for x in e["loc"])
        if not field:  # a check across fields: its message names them; the whole input would bury it
            parts.append(f"{model}: {e['msg'].removeprefix('Value error, ')}")
            continue
        ctx = e.get("ctx") or {}
        bounds = ", ".join(f"{k} {v}" for k, v in ctx.items() if k in ("ge", "gt", "le", "lt"))
        allowed = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        rng = " and ".join(f"{allowed[k]} {v}" for k, v in ctx.items() if k in allowed)
        got = e.get("input")
        msg = e["msg"] if not bounds else f"must be {rng}"
        parts.append(f"{model}.{field}={got!r}: {msg}")
    return "; ".join(parts)


class Settings(BaseModel):
    """Base of every config model: unknown fields are errors, and errors are ConfigErrors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(describe_validation_error(type(self).__name__, e)) from None

    def updated(self, **changes: Any) -> Settings:
        """A validated copy with some fields changed (per-call overrides)."""
        return type(self)(**{**self.model_dump(), **changes})
