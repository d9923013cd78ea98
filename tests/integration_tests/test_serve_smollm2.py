"""The service on the real stack (SmolLM2, the bundled MRM and heads monitor) in one process: a streamed
Saffron answer and a whole greedy one, each cleared by the monitor on the policy's own hidden states."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from saffron_runtime.serve.app import build_app  # noqa: E402
from saffron_runtime.serve.service import GuardedService, ServiceOptions  # noqa: E402

pytestmark = [pytest.mark.serve, pytest.mark.smollm2]
MESSAGES = [{"role": "user", "content": "Give me three tips for staying safe while hiking."}]


@pytest.fixture(scope="module")
def client():
    service = GuardedService(ServiceOptions(policy="smollm2", mrm="bundled", monitor="bundled", prm=None,
                                            search={"budget": 2, "max_new_tokens": 8}))
    return TestClient(build_app(service))


def test_a_streamed_saffron_answer_on_smollm2_is_text_cleared_on_the_shared_path(client):
    with client.stream("POST", "/v1/chat/completions", json={"messages": MESSAGES, "stream": True}) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    last = events[-1]
    assert len(text.split()) >= 3, text  # real words from SmolLM2, not an empty or broken stream
    assert last["saffron"]["blocked"] is False
    assert last["saffron"]["monitor_path"] == "shared"  # heads on the policy's hidden states
    assert last["saffron"]["stats"]["method"] == "saffron" and last["saffron"]["stats"]["reward_forwards"] > 0
    assert last["usage"]["completion_tokens"] == 8


def test_a_whole_greedy_answer_on_smollm2_matches_its_stream(client):
    body = {"messages": MESSAGES, "method": "greedy", "max_tokens": 6}
    whole = client.post("/v1/chat/completions", json=body).json()
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        streamed = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]")
    assert whole["choices"][0]["message"]["content"] == streamed != ""
    assert whole["saffron"]["stats"]["method"] == "greedy"
