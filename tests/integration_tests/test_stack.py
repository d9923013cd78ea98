"""Every method ChatSaffron advertises runs from a default ChatSaffron: SmolLM2 with the bundled models, which
read the policy model (the assembler's other tests run on tiny models in tests/unit_tests/test_stack.py)."""

from __future__ import annotations

import pytest

from langchain_saffron.chat_models import ChatSaffron
from saffron_runtime.search.config import METHODS


@pytest.mark.smollm2
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_from_default_chat_saffron(default_chat, method):
    msg = default_chat.bind(method=method).invoke("Name a colour.")
    stats = msg.response_metadata["saffron"]["stats"]
    assert isinstance(msg.content, str) and msg.content.strip() and stats["method"] == method
    assert (stats["reward_forwards"] > 0) == (method != "greedy")


@pytest.fixture(scope="module")
def default_chat():
    return ChatSaffron(max_tokens=8, budget=2, num_samples=2, prm_children=2)


@pytest.mark.smollm2
def test_the_bundled_heads_monitor_and_prm_read_the_policy_model(default_chat):
    stack = default_chat.stack
    policy = stack.policy.model
    assert stack.monitor_model is not None and stack.monitor_model.backbone is policy
    assert stack.engine_for("prm_beam").prm.model is policy  # type: ignore[union-attr]
