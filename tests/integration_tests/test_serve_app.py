"""The service's HTTP API in one process (FastAPI's test client, no Ray): the wire format, hold-back
with a monitor that fires, malformed requests, back-pressure and a client that stops reading."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from saffron_runtime.serve.app import _deltas, build_app  # noqa: E402
from saffron_runtime.serve.protocol import parse_request  # noqa: E402
from saffron_runtime.serve.service import GuardedService, ServiceOptions  # noqa: E402

pytestmark = pytest.mark.serve
MESSAGES = [{"role": "user", "content": "how bake bread?"}]


@pytest.fixture(scope="module")
def firing_monitor(saved, tiny):
    """A tiny monitor whose delay-k rule fires on the first token (theta=0: every score counts)."""
    from saffron_runtime.models import load_policy
    from saffron_runtime.monitor import MonitorRule, SCMMonitorModel, save_monitor

    folder = saved / "firing-monitor"
    if not folder.exists():
        mon = SCMMonitorModel(load_policy(saved / "backbone").model, tiny.tokenizer,
                              rule=MonitorRule(theta=0.0, k=1))
        save_monitor(mon, folder, backbone_ref=str(saved / "backbone"))
    return folder


def _service(saved, monitor, **kw):
    return GuardedService(ServiceOptions(policy=str(saved / "policy"), mrm=str(saved / "mrm"),
                                         monitor=str(monitor), prm=None,
                                         search={"max_new_tokens": 6, "budget": 2}, **kw))


@pytest.fixture(scope="module")
def plain(saved):
    service = _service(saved, saved / "monitor", queue_limit=1)
    return service, TestClient(build_app(service))


@pytest.fixture(scope="module")
def firing(saved, firing_monitor):
    return TestClient(build_app(_service(saved, firing_monitor)))


def _events(client, body):
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        return [json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]"
                for line in r.iter_lines() if line.startswith("data: ")]


def test_stream_and_whole_answer_agree_on_the_format(plain):
    _, client = plain
    events = _events(client, {"messages": MESSAGES})
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    assert set(last["saffron"]) == {"blocked", "on_violation", "verdicts", "stats", "score", "monitor_path"}
    assert last["saffron"]["blocked"] is False and last["saffron"]["stats"]["method"] == "saffron"
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    whole = client.post("/v1/chat/completions", json={"messages": MESSAGES}).json()
    assert whole["choices"][0]["message"]["content"] == streamed  # the search is deterministic
    assert whole["usage"]["prompt_tokens"] > 0
    assert client.get("/v1/models").json()["data"][0]["id"] == "saffron"
    assert client.get("/health").json()["status"] == "ok"


def test_a_violation_under_raise_ends_the_stream_with_an_error_event(firing):
    events = _events(firing, {"messages": MESSAGES})
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if "choices" in e)
    assert text == ""  # the monitor fired on the first token: nothing was cleared
    err = events[-1]["error"]
    assert err["type"] == "guardrail_violation" and err["code"] == "content_filter"
    assert err["saffron"]["blocked"] is True
    assert all(v["text"] == "" for v in err["saffron"]["verdicts"])  # flagged text never leaves
    whole = firing.post("/v1/chat/completions", json={"messages": MESSAGES})
    assert whole.status_code == 400 and whole.json()["error"]["type"] == "guardrail_violation"


def test_a_violation_under_refuse_sends_the_refusal(firing):
    events = _events(firing, {"messages": MESSAGES, "on_violation": "refuse"})
    last = events[-2]
    assert last["choices"][0]["finish_reason"] == "content_filter"
    assert last["choices"][0]["delta"]["content"] == "I can't help with that."
    whole = firing.post("/v1/chat/completions",
                        json={"messages": MESSAGES, "on_violation": "refuse"}).json()
    assert whole["choices"][0]["message"]["content"] == "I can't help with that."
    assert whole["saffron"]["on_violation"] == "refuse"


@pytest.mark.parametrize(("body", "field"), [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
    ({"messages": MESSAGES, "budget": 0}, "budget"),
    ({"messages": MESSAGES, "method": "magic"}, "method"),
    ({"messages": MESSAGES, "max_tokens": -1}, "max_tokens"),
    ({"messages": MESSAGES, "on_violation": "ignore"}, "on_violation"),
    ({"messages": MESSAGES, "frobnicate": 1}, "frobnicate"),
    ({"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools"),
])
def test_a_malformed_request_gets_400_naming_the_field(plain, body, field):
    _, client = plain
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == field and field in r.json()["error"]["message"]


def test_a_body_that_is_not_json_gets_400(plain):
    r = plain[1].post("/v1/chat/completions", content=b"{not json",
                      headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"


def test_past_the_queue_limit_a_request_gets_503_with_retry_after(plain):
    service, client = plain
    held = service.prepare(parse_request({"messages": MESSAGES}), threading.Event())
    service.admit(held)  # the one slot (queue_limit=1) is taken
    try:
        r = client.post("/v1/chat/completions", json={"messages": MESSAGES})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    finally:
        service.release(held)
    assert client.post("/v1/chat/completions", json={"messages": MESSAGES}).status_code == 200


def test_a_client_that_stops_reading_stops_its_search_within_one_step(plain):
    service, _ = plain
    req = parse_request({"messages": MESSAGES, "max_tokens": 64, "max_commit_lag": 1})
    prepared = service.prepare(req, threading.Event())
    service.admit(prepared)

    async def read_one() -> None:
        deltas = _deltas(service, prepared)
        await deltas.__anext__()
        await deltas.aclose()  # what the server does when the client hangs up

    asyncio.run(read_one())
    stats = prepared.generation.outcome.stats
    assert prepared.stop_event.is_set() and service.pending == 0
    assert stats.steps < 64 and stats.stopped
