"""The service on an embedded Ray Serve (one replica, the tiny saved models, 127.0.0.1): the openai
client, ChatOpenAI and ChatSaffron(base_url=...) stream through it, and a replica killed mid-stream
gives the client a clear error while the next request succeeds. Every wait is bounded."""

from __future__ import annotations

import time

import pytest
from pydantic import BaseModel, Field

pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")
pytest.importorskip("langchain_openai")

from .serve_support import served  # noqa: E402

pytestmark = pytest.mark.serve
MESSAGES = [{"role": "user", "content": "how bake bread?"}]


@pytest.fixture(scope="module")
def base_url(saved):
    yield from served(saved, {"max_new_tokens": 6, "budget": 2})


def _kill_replica() -> None:
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if "SaffronServer" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
    assert names, "no SaffronServer replica is running"
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=False)


def _until_ok(call, limit_s: float = 120.0):
    """Retry while Serve restarts the replica (bounded)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def test_the_openai_client_streams_and_gets_the_saffron_field(base_url):
    client = openai.OpenAI(base_url=base_url, api_key="none", timeout=60, max_retries=0)
    chunks = list(client.chat.completions.create(model="saffron", messages=MESSAGES, stream=True,
                                                 extra_body={"budget": 2}))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].model_extra["saffron"]["blocked"] is False
    whole = client.chat.completions.create(model="saffron", messages=MESSAGES)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert whole.choices[0].message.content == streamed
    assert [m.id for m in client.models.list()] == ["saffron"]


def test_chat_openai_streams_through_the_service(base_url):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=base_url, api_key="none", model="saffron", timeout=60,
                     max_retries=0, extra_body={"budget": 2})
    text = "".join(str(c.content) for c in llm.stream("how bake bread?"))
    assert text == llm.invoke("how bake bread?").content


async def test_chat_saffron_remote_has_the_local_interface(base_url, saved):
    from langchain_saffron import ChatSaffron

    remote = ChatSaffron(base_url=base_url, budget=2, max_new_tokens=6)
    local = ChatSaffron(policy=saved / "policy", mrm=saved / "mrm", monitor=saved / "monitor",
                        prm=None, budget=2, max_new_tokens=6)
    msg = remote.invoke("how bake bread?")
    assert msg.content == local.invoke("how bake bread?").content
    assert set(msg.response_metadata) == {"saffron", "model_name"}
    assert set(msg.response_metadata["saffron"]) == set(
        local.invoke("how bake bread?").response_metadata["saffron"])
    streamed = list(remote.stream("how bake bread?"))
    assert "".join(str(c.content) for c in streamed) == msg.content
    assert streamed[-1].response_metadata["saffron"]["blocked"] is False
    assert streamed[-1].usage_metadata["input_tokens"] > 0
    chunks = [c async for c in remote.astream("how bake bread?")]
    assert "".join(str(c.content) for c in chunks) == msg.content
    assert [m.content for m in remote.batch(["how bake bread?", "name a river"])][0] == msg.content


class Answer(BaseModel):
    """An answer."""

    word: str = Field(max_length=5)
    n: int = Field(ge=0, le=9)


class GetWeather(BaseModel):
    """Get the weather in a city."""

    city: str = Field(max_length=6)


FORCING = {"method": "greedy", "max_tokens": 120, "min_new_tokens": 0}


def test_tools_and_structured_output_through_chat_openai(base_url):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=base_url, api_key="none", model="saffron", timeout=120,
                     max_retries=0, extra_body=FORCING)
    msg = llm.bind_tools([GetWeather], tool_choice="GetWeather").invoke("weather in Paris?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "GetWeather"
    assert len(msg.tool_calls[0]["args"]["city"]) <= 6
    out = llm.with_structured_output(Answer, method="json_schema").invoke("a word and a digit")
    assert isinstance(out, Answer)


def test_tools_and_structured_output_through_chat_saffron_remote(base_url, saved):
    from langchain_saffron import ChatSaffron

    remote = ChatSaffron(base_url=base_url, **FORCING)
    local = ChatSaffron(policy=saved / "policy", mrm=saved / "mrm", monitor=saved / "monitor",
                        prm=None, **FORCING)
    remote_calls = remote.bind_tools([GetWeather], tool_choice="GetWeather")
    msg = remote_calls.invoke("weather in Paris?")
    here = local.bind_tools([GetWeather], tool_choice="GetWeather").invoke("weather in Paris?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [
        (c["name"], c["args"]) for c in here.tool_calls]
    assert msg.response_metadata["saffron"]["blocked"] is False
    streamed = list(remote_calls.stream("weather in Paris?"))
    merged = streamed[0]
    for c in streamed[1:]:
        merged += c
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [
        (c["name"], c["args"]) for c in msg.tool_calls]
    for method in ("json_schema", "function_calling"):
        got = remote.with_structured_output(Answer, method=method).invoke("a word and a digit")
        assert got == local.with_structured_output(Answer, method=method).invoke("a word and a digit")


def test_a_malformed_request_gets_400_over_http(base_url):
    client = openai.OpenAI(base_url=base_url, api_key="none", timeout=60, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="budget"):
        client.chat.completions.create(model="saffron", messages=MESSAGES, extra_body={"budget": 0})


def test_a_replica_killed_mid_stream_gives_a_clear_error_then_recovers(base_url):
    from langchain_saffron import ChatSaffron
    from langchain_saffron.remote import RemoteStreamError

    remote = ChatSaffron(base_url=base_url, budget=8, max_new_tokens=400, min_new_tokens=400,
                         max_commit_lag=1)  # no early EOS: the kill lands mid-stream
    received = []
    with pytest.raises(RemoteStreamError, match="incomplete"):
        for i, chunk in enumerate(remote.stream("how bake bread?")):
            received.append(chunk)
            if i == 0:
                _kill_replica()
    assert all(c.response_metadata.get("saffron") is None for c in received)  # no final chunk
    small = ChatSaffron(base_url=base_url, budget=2, max_new_tokens=6)
    assert _until_ok(lambda: small.invoke("name a river")).response_metadata["saffron"]
