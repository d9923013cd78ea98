"""Tool-template detection on the real SmolLM2 tokenizer as well as the tiny one (the other message tests run
in tests/unit_tests/test_messages.py)."""

from __future__ import annotations

import pytest

from langchain_saffron.messages import template_supports_tools

pytestmark = pytest.mark.smollm2


def test_template_tool_detection(tiny, smollm2):
    assert not template_supports_tools(tiny.tokenizer) and not template_supports_tools(smollm2.tokenizer)
