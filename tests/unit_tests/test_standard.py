"""LangChain's standard suites for ChatSaffron on a tiny random model (D1)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_saffron.chat_models import ChatSaffron
from saffron_runtime.models import LoadedModel, MRMTemplate, MultifurcationRewardModel
from saffron_runtime.testing import build_tiny_models


@lru_cache(maxsize=1)
def _parts() -> dict[str, Any]:
    tiny = build_tiny_models("llama", seed=0)
    mrm = MultifurcationRewardModel(
        tiny.reward_backbone, tiny.tokenizer, MRMTemplate(prefix="<|im_start|>", separator="\n")
    )
    return {"policy": LoadedModel(tiny.policy, tiny.tokenizer, "tiny-llama"), "mrm": mrm}


@lru_cache(maxsize=1)
def _smollm2() -> LoadedModel:
    from saffron_runtime.models import load_policy

    return load_policy("smollm2", chat=True)


class _ChatSaffronSuite:
    """What every suite class here shares: the model class under test."""

    @property
    def chat_model_class(self) -> type[ChatSaffron]:
        return ChatSaffron


class TestChatSaffronUnit(_ChatSaffronSuite, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {**_parts(), "budget": 2, "temperature": 0}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True


from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402


class TestChatSaffronIntegration(_ChatSaffronSuite, ChatModelIntegrationTests):
    """The suite's tests that do not depend on what a random model says."""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {**_parts(), "budget": 2, "temperature": 0, "min_new_tokens": 4}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False


TOOL_TESTS = (
    "tool",
    "structured",
    "json_mode",
    "agent_loop",
)


class TestChatSaffronSmolLM2Tools(_ChatSaffronSuite, ChatModelIntegrationTests):
    """The suite's tool-calling and structured-output tests on real SmolLM2-135M-Instruct, with
    grammar-constrained decoding (llguidance) forcing the call format and the schema; greedy and
    short, to fit the CPU budget. The suite's other tests run on the tiny model above and are
    deselected here (tests/conftest.py), not skipped."""

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
