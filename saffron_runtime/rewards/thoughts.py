"""Thought extraction from search-agent rollouts: the agent's own reasoning, never tool observations.

Supported: ``<think>...</think>`` blocks, ReAct transcripts ("Thought:" lines up to the next
"Action:"/"Observation:"/"Final Answer:"), and LangChain-style message lists (AI messages' text,
including their ``<think>`` blocks; tool messages excluded). Messages are read by duck typing
(``.type``/``.content`` objects or ``{"role"|"type", "content"}`` dicts), so no LangChain import.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

THINK_RE = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
REACT_RE = re.compile(
    r"^\s*Thought\s*:\s*(.*?)(?=^\s*(?:Action|Action Input|Observation|Final Answer)\s*:|\Z)",
    re.DOTALL | re.MULTILINE | re.IGNORECASE,
)
AI_ROLES = frozenset({"ai", "assistant", "AIMessage", "AIMessageChunk"})


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") in ("text", "reasoning", "thinking"):
                parts.append(
                    str(block.get("text") or block.get("reasoning") or block.get("thinking") or "")
                )
        return "".join(parts)
    return ""


def _role(message: Any) -> str:
    if isinstance(message, dict):
        return str(message.get("role") or message.get("type") or "")
    return str(getattr(message, "type", "") or type(message).__name__)


def thoughts_from_text(text: str) -> str:
    """The thought text of one string: its ``<think>`` blocks, else its ReAct "Thought:" parts, else all of it."""
    blocks = THINK_RE.findall(text)
    if blocks:
        return "\n".join(b.strip() for b in blocks)
    react = REACT_RE.findall(text)
    if react:
        return "\n".join(r.strip() for r in react)
    if re.search(r"^\s*Observation\s*:", text, re.MULTILINE | re.IGNORECASE):
        return ""  # a transcript with observations but no thoughts: nothing counts
    return text


def extract_thoughts(rollout: str | Sequence[Any]) -> str:
    """All thought text of a rollout (a string or a list of messages); tool observations excluded."""
    if isinstance(rollout, str):
        return thoughts_from_text(rollout)
    parts = []
    for m in rollout:
        if _role(m) in AI_ROLES:
            content = m.get("content") if isinstance(m, dict) else getattr(m, "content", "")
            text = _content_text(content)
            if text:
                parts.append(thoughts_from_text(text))
    return "\n".join(p for p in parts if p)
