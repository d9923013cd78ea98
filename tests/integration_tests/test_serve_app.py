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


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6}},
                   "required": ["city"]}}}
FORCED = {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
          "method": "greedy", "max_tokens": 120, "min_new_tokens": 0}
ANSWER = {"title": "Answer", "type": "object", "properties": {"word": {"type": "string", "maxLength": 5},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["word", "n"]}


def _local(saved):
    from langchain_saffron import ChatSaffron

    return ChatSaffron(policy=saved / "policy", mrm=saved / "mrm", monitor=saved / "monitor",
                       prm=None, method="greedy", max_tokens=120, min_new_tokens=0)


def test_a_forced_tool_call_is_served_as_chat_saffron_makes_it_locally(plain, saved):
    _, client = plain
    whole = client.post("/v1/chat/completions", json={"messages": MESSAGES, **FORCED}).json()
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    local = _local(saved).bind_tools([WEATHER], tool_choice="get_weather").invoke(MESSAGES[0]["content"])
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
        local.tool_calls[0]["name"], local.tool_calls[0]["args"])
    events = _events(client, {"messages": MESSAGES, **FORCED})
    deltas = [e["choices"][0]["delta"] for e in events if isinstance(e, dict) and "choices" in e]
    assert not any(d.get("content") for d in deltas[:-1])  # the call is read from the whole output
    (streamed,) = deltas[-1]["tool_calls"]
    assert streamed["index"] == 0 and streamed["function"] == call["function"]


def test_a_response_schema_constrains_the_answer_as_it_does_locally(plain, saved):
    _, client = plain
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}}
    body = {"messages": MESSAGES, "response_format": fmt, "method": "greedy", "max_tokens": 120,
            "min_new_tokens": 0}
    whole = client.post("/v1/chat/completions", json=body).json()
    value = json.loads(whole["choices"][0]["message"]["content"])
    assert set(value) == {"word", "n"} and len(value["word"]) <= 5 and 0 <= value["n"] <= 9
    local = _local(saved).with_structured_output(ANSWER, method="json_schema")
    assert local.invoke(MESSAGES[0]["content"]) == value


def test_tool_history_renders_the_prompt_chat_saffron_renders(plain, saved):
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from langchain_saffron._prompting import render_prompt

    service, _ = plain
    history = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21C"},
    ]
    prepared = service.prepare(parse_request({"messages": history, "tools": [WEATHER]}),
                               threading.Event())
    lc = [HumanMessage("weather in Paris?"),
          AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]),
          ToolMessage("sunny, 21C", tool_call_id="c1")]
    tok = service.stack.engine_for("saffron").policy.tokenizer
    ids, _ = render_prompt(tok, "policy", lc, [WEATHER])
    assert prepared.generation.prompt_ids == ids
    assert "<tool_response>\nsunny, 21C\n</tool_response>" in tok.decode(ids)


@pytest.mark.parametrize(("extra", "field"), [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"function": "get_weather"}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}, "tools"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
])
def test_malformed_tool_and_schema_requests_get_400_naming_the_field(plain, extra, field):
    r = plain[1].post("/v1/chat/completions", json={"messages": MESSAGES, **extra})
    assert r.status_code == 400, r.json()
    assert r.json()["error"]["param"] == field, r.json()
