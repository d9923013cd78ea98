"""ChatSaffron's remote path: when ``base_url`` is set, ChatSaffron sends its calls to a ``saffron
serve`` service (the OpenAI chat-completions API) instead of loading models, and builds the same
messages and chunks as the local path: released text, a last chunk with ``usage_metadata`` and
``response_metadata = {"saffron": {...}, "model_name": ...}``, GuardrailViolation under "raise".

A stream that ends without its last event (a replica died, the connection dropped) raises
:class:`RemoteStreamError`: the text received so far was cleared, but the answer is incomplete.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages import convert_to_openai_messages as to_openai
from langchain_core.messages.tool import InvalidToolCall, ToolCall
from langchain_core.outputs import ChatGenerationChunk

from langchain_saffron._guard import verdict_from_dict
from saffron_runtime.errors import ConfigError, GuardrailViolation, SaffronError, Verdict
from saffron_runtime.serve.protocol import ROUTING_HEADER, prefix_key

FORWARDED = ("on_violation", "max_tokens", "tools", "tool_choice", "response_format",
             "json_max_string_length")
"""Per-call settings sent as they are (with every search setting)."""


def _tool_choice(choice: Any) -> Any:
    """LangChain's forcing values as OpenAI's: "any" and True are "required"."""
    return "required" if choice in ("any", True) else (None if choice is False else choice)


def _tool_calls(raw: list[Mapping[str, Any]] | None) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """OpenAI's tool calls of a response as LangChain's (arguments that are not a JSON object are
    invalid calls, as a local call reports them)."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for c in raw or []:
        fn = c.get("function") or {}
        name, args, cid = fn.get("name"), fn.get("arguments") or "{}", c.get("id")
        try:
            parsed = json.loads(args)
            if not isinstance(parsed, dict):
                raise TypeError("arguments must be a JSON object")
            calls.append(ToolCall(name=name, args=parsed, id=cid, type="tool_call"))
        except (json.JSONDecodeError, TypeError) as e:
            invalid.append(InvalidToolCall(name=name or None, args=args, id=cid, error=str(e),
                                           type="invalid_tool_call"))
    return calls, invalid


class RemoteStreamError(SaffronError):
    """The service's stream broke off before its last event; retry the request."""


class RemoteBusy(SaffronError):
    """The service answered 503 (its queue is full); ``retry_after`` says when to retry."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _raise_for(status: int, body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
    err = body.get("error") if isinstance(body, Mapping) else None
    err = err if isinstance(err, Mapping) else {"message": str(body)}
    message = str(err.get("message"))
    if err.get("type") == "guardrail_violation":
        verdicts = (err.get("saffron") or {}).get("verdicts") or []
        verdict = verdict_from_dict(verdicts[-1]) if verdicts else Verdict(
            unsafe=True, rule="remote", score=float("nan"), reason=message)
        raise GuardrailViolation(verdict)
    if status == 503:
        raise RemoteBusy(f"saffron serve is busy: {message}",
                         float(headers.get("retry-after", 1)))
    if 400 <= status < 500:
        raise ConfigError(f"saffron serve refused the request ({status}): {message}")
    raise SaffronError(f"saffron serve failed ({status}): {message}")


class RemoteSaffron:
    """An HTTP client of one ``saffron serve`` endpoint (``base_url`` ends before ``/v1``)."""

    def __init__(self, base_url: str, model_name: str, timeout: float = 600.0) -> None:
        self.url = base_url.rstrip("/").removesuffix("/v1") + "/v1/chat/completions"
        self.model_name = model_name
        self.timeout = httpx.Timeout(timeout, connect=10.0)

    def body(self, messages: list[BaseMessage], stop: list[str] | None,
             settings: Mapping[str, Any], stream: bool) -> dict[str, Any]:
        """The request body: OpenAI messages plus the search settings as extra fields."""
        body: dict[str, Any] = {"model": self.model_name, "messages": to_openai(messages),
                                "stream": stream, **{k: v for k, v in settings.items() if v is not None}}
        if "tool_choice" in body:
            body["tool_choice"] = _tool_choice(body["tool_choice"])
        if not body.get("tools"):
            body.pop("tools", None)
            body.pop("tool_choice", None)
        if stop:
            body["stop"] = list(stop)
        return body

    @staticmethod
    def headers(body: Mapping[str, Any]) -> dict[str, str]:
        """The routing key of the chat, so its turns reach the replica that holds its prefix."""
        return {ROUTING_HEADER: prefix_key(body["messages"])}

    def _metadata(self, saffron: Mapping[str, Any]) -> dict[str, Any]:
        return {"saffron": dict(saffron), "model_name": self.model_name}

    @staticmethod
    def _usage(usage: Mapping[str, int] | None) -> dict[str, int]:
        u = usage or {}
        n_in, n_out = int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))
        return {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out}

    def invoke(self, messages: list[BaseMessage], stop: list[str] | None,
               settings: Mapping[str, Any]) -> AIMessage:
        """One whole answer (``stream: false``)."""
        with httpx.Client(timeout=self.timeout) as client:
            body = self.body(messages, stop, settings, stream=False)
            r = client.post(self.url, json=body, headers=self.headers(body))
        data = r.json()
        if r.status_code != 200:
            _raise_for(r.status_code, data, r.headers)
        choice = data["choices"][0]
        calls, invalid = _tool_calls(choice["message"].get("tool_calls"))
        return AIMessage(
            content=choice["message"].get("content") or "",
            tool_calls=calls,
            invalid_tool_calls=invalid,
            usage_metadata=self._usage(data.get("usage")),  # type: ignore[arg-type]
            response_metadata=self._metadata(data.get("saffron") or {}),
        )

    def chunks(self, messages: list[BaseMessage], stop: list[str] | None,
               settings: Mapping[str, Any], stop_event: threading.Event
               ) -> Iterator[ChatGenerationChunk]:
        """Released text as chunks, then the last chunk; setting ``stop_event`` hangs up, which
        stops the search on the server within one step."""
        body = self.body(messages, stop, settings, stream=True)
        try:
            with httpx.Client(timeout=self.timeout) as client, client.stream(
                    "POST", self.url, json=body, headers=self.headers(body)) as r:
                if r.status_code != 200:
                    r.read()
                    _raise_for(r.status_code, r.json(), r.headers)
                for line in r.iter_lines():
                    if stop_event.is_set():
                        return
                    if not line.startswith("data: "):
                        continue
                    payload = line[len("data: "):]
                    if payload == "[DONE]":
                        return
                    last = yield from self._event(json.loads(payload))
                    if last:
                        return
        except httpx.HTTPError as e:
            raise RemoteStreamError(f"the stream from {self.url} broke off ({type(e).__name__}: "
                                    f"{e}); the answer is incomplete, retry the request") from e
        raise RemoteStreamError(f"the stream from {self.url} ended before its last event; "
                                "the answer is incomplete, retry the request")

    def _event(self, event: Mapping[str, Any]) -> Iterator[ChatGenerationChunk]:
        """Chunks of one SSE event; returns True for the last one (it carries the metadata)."""
        if "error" in event:
            _raise_for(400, event, {})
        choice = event["choices"][0]
        text = choice["delta"].get("content") or ""
        if choice.get("finish_reason") is None:
            if text:
                yield ChatGenerationChunk(message=AIMessageChunk(content=text))
            return False
        calls = [{"name": (c.get("function") or {}).get("name"), "index": c.get("index", i),
                  "args": (c.get("function") or {}).get("arguments"), "id": c.get("id")}
                 for i, c in enumerate(choice["delta"].get("tool_calls") or [])]
        yield ChatGenerationChunk(message=AIMessageChunk(
            content=text,
            tool_call_chunks=calls,  # type: ignore[arg-type]
            usage_metadata=self._usage(event.get("usage")),  # type: ignore[arg-type]
            response_metadata=self._metadata(event.get("saffron") or {}),
            chunk_position="last",
        ))
        return True
