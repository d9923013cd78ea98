"""LangChain's standard integration suite's tool-calling and structured-output tests for ChatSaffron on the
real SmolLM2-135M-Instruct; the suites' other tests run on a tiny model in tests/unit_tests/test_standard.py."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests

from saffron_runtime.models import LoadedModel

from ..unit_tests.test_standard import _ChatSaffronSuite


@lru_cache(maxsize=1)
def _smollm2() -> LoadedModel:
    from saffron_runtime.models import load_policy

    return load_policy("smollm2", chat=True)


TOOL_TESTS = (
    "tool",
    "structured",
    "json_mode",
    "agent_loop",
)


class TestChatSaffronSmolLM2Tools(_ChatSaffronSuite, ChatModelIntegrationTests):
    """The suite's tool-calling and structured-output tests on real SmolLM2-135M-Instruct, with
    grammar-constrained decoding (llguidance) forcing the call format and the schema; greedy and
    short, to fit the CPU budget. The suite's other tests run on the tiny model (tests/unit_tests/
    test_standard.py) and are deselected here (tests/integration_tests/conftest.py), not skipped."""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "policy": _smollm2(),
            "mrm": None,
            "monitor": None,
            "method": "greedy",
            "max_tokens": 128,
            "json_max_string_length": 80,
        }

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @pytest.mark.xfail(
        strict=True,
        reason="SmolLM2-135M-Instruct answers from its own knowledge instead of calling a tool when "
        "tool_choice is left to the model (it hallucinates the weather; its own tool-calling system "
        "prompt does no better). With a forced tool_choice the call is produced: test_tool_choice, "
        "test_tool_calling and the structured-output tests pass on this model.",
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)
