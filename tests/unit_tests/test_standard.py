"""LangChain's standard suites for ChatSaffron on a tiny random model; the tool-calling and
structured-output tests run on SmolLM2 in tests/integration_tests/test_standard.py."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

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
