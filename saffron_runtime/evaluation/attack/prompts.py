"""The prompts of an attack evaluation: the JSONL schema, its loader, and the harmful reference start
that a prefilling attack forces after the assistant header."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

from saffron_runtime.errors import ConfigError
from saffron_runtime.jsonl import read_jsonl


class AttackPrompt(BaseModel):
    """A prompt of the evaluation set; ``target`` is an optional harmful reference start."""

    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    target: str | None = None


def load_prompts(path: str | os.PathLike[str], limit: int | None = None) -> list[AttackPrompt]:
    """Validated prompts (``file:line`` named on a bad record); ids must be unique."""
    prompts = read_jsonl(path, AttackPrompt)
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"{path}: the id {dup!r} occurs more than once; ids must be unique")
    return prompts[:limit] if limit else prompts


def reference_start(p: AttackPrompt) -> str:
    """The harmful reference start of a prompt: its ``target``, or "Sure, here is" plus the request.

    Questions become "Sure, here is the answer to <question>:"; requests "Sure, here is how to
    <request>:" (lower-cased first letter, trailing punctuation dropped).
    """
    if p.target:
        return p.target
    req = p.prompt.strip().rstrip(".!?").strip()
    req = req[:1].lower() + req[1:]
    if p.prompt.strip().endswith("?"):
        return f"Sure, here is the answer to {req}:"
    return f"Sure, here is how to {req}:"
