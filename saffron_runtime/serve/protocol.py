"""The OpenAI chat-completions wire format, as the service speaks it: the request (validated once,
the search settings being :class:`SearchFields` extra body fields), the response, the stream chunks
and the error bodies.

Nothing here runs a model, so the format can be tested without one. Every bad request becomes a
:class:`RequestError` whose message names the field (``"messages[1].role"``), which the app answers
with HTTP 400 in OpenAI's ``{"error": {...}}`` shape.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from saffron_runtime.chat_format import ParsedOutput
from saffron_runtime.errors import OnViolation, Verdict
from saffron_runtime.search_fields import SEARCH_FIELDS

Role = Literal["system", "user", "assistant", "tool", "developer"]
IGNORED_OPENAI_FIELDS = frozenset(
    {"n", "user", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
     "logit_bias", "stream_options", "parallel_tool_calls", "store", "metadata"}
)
"""OpenAI fields clients send by default that change nothing here (one answer per request)."""


ROUTING_HEADER = "x-session-id"
"""The header Ray Serve routes by (its session header, ``RAY_SERVE_SESSION_ID_HEADER_KEY``): a
client that sends :func:`prefix_key` in it reaches the replica whose trie holds its chat's prefix."""


def prefix_key(messages: list[Mapping[str, Any]]) -> str:
    """The routing key of a chat: a hash of its messages up to and including the first user turn.

    Every later turn of one conversation extends that prefix, so all of them share the key (and a
    replica); different conversations spread over the replicas. Example:
    ``prefix_key([{"role": "user", "content": "hi"}]) == prefix_key([{"role": "user", "content":
    "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}])``.
    """
    head: list[Any] = []
    for m in messages:
        head.append([m.get("role"), m.get("content")])
        if m.get("role") == "user":
            break
    digest = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode()).hexdigest()
    return f"chat-{digest[:32]}"


class RequestError(ValueError):
    """A malformed request: ``field`` names what is wrong, ``status`` is the HTTP status to answer."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status


class ChatMessage(BaseModel):
    """One message: a role and its content (a string or a list of text parts)."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The plain text (text parts joined; images and other parts are not read)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(
            p.get("text", "") for p in self.content or [] if p.get("type", "text") == "text"
        )

    def plain(self, where: str) -> dict[str, Any]:
        """This message in the plain chat form of :mod:`saffron_runtime.chat_format` (an assistant's
        ``tool_calls`` with their arguments parsed; ``where`` names the message in errors)."""
        role = "system" if self.role == "developer" else self.role
        out: dict[str, Any] = {"role": role, "content": self.text()}
        extra = self.model_extra or {}
        if role == "assistant" and extra.get("tool_calls"):
            out["tool_calls"] = [_call(c, f"{where}.tool_calls[{i}]")
                                 for i, c in enumerate(extra["tool_calls"])]
        if role == "tool":
            out["tool_call_id"] = extra.get("tool_call_id")
        return out


def _call(call: Any, where: str) -> dict[str, Any]:
    """One OpenAI tool call of the history, ``{"function": {"name", "arguments": "<json>"}}``."""
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise RequestError(where, 'must be {"type": "function", "function": {"name": ..., "arguments": ...}}')
    args = fn.get("arguments") or "{}"
    try:
        parsed = json.loads(args) if isinstance(args, str) else args
    except json.JSONDecodeError as e:
        raise RequestError(f"{where}.function.arguments", f"is not JSON: {e}") from None
    if not isinstance(parsed, Mapping):
        raise RequestError(f"{where}.function.arguments", "must be a JSON object")
    return {"name": fn["name"], "args": dict(parsed)}


def _check_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Each tool must be ``{"type": "function", "function": {"name": ..., "parameters": {...}}}``."""
    for i, tool in enumerate(tools or []):
        fn = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(fn, Mapping) or not (
                isinstance(fn.get("name"), str) and fn["name"]):
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., "
                             "'parameters': {...}}}}")
        if not isinstance(fn.get("parameters", {}), Mapping):
            raise ValueError(f"tools[{i}].function.parameters must be a JSON schema object")
    return tools


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's fields, Saffron's search settings and ``on_violation``."""

    model_config = ConfigDict(extra="forbid")

    model: str = "saffron"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    """"auto", "none", "required" or ``{"type": "function", "function": {"name": ...}}``."""
    response_format: dict[str, Any] | None = None
    json_max_string_length: int | None = Field(None, ge=1, le=65536)
    """Cap on free strings in constrained output (ChatSaffron's setting of the same name)."""
    on_violation: OnViolation | None = None
    search: dict[str, Any] = Field(default_factory=dict)
    """Search settings (the fields of SearchFields), gathered from the extra body fields."""

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        return [v] if isinstance(v, str) else v

    @field_validator("tools")
    @classmethod
    def _tools_shape(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        return _check_tools(v)

    @field_validator("tool_choice")
    @classmethod
    def _choice_shape(cls, v: Any) -> Any:
        fn = v.get("function") if isinstance(v, Mapping) else None
        named = isinstance(fn, Mapping) and isinstance(fn.get("name"), str)
        if v is None or v in ("auto", "none", "required") or named:
            return v
        raise ValueError('must be "auto", "none", "required" or {"type": "function", "function": '
                         f'{{"name": ...}}}}; got {v!r}')

    def chat(self) -> list[dict[str, Any]]:
        """The messages as the plain chat the chat template renders."""
        return [m.plain(f"messages[{i}]") for i, m in enumerate(self.messages)]

    def search_settings(self) -> dict[str, Any]:
        """The per-request SearchFields values (OpenAI's ``temperature``, ``top_p`` and ``seed`` are
        SearchFields names already; ``max_tokens`` is ``max_new_tokens``)."""
        values = dict(self.search)
        limit = self.max_tokens or self.max_completion_tokens
        if limit is not None:
            values["max_new_tokens"] = limit
        return values


def parse_request(body: Any) -> ChatRequest:
    """Validate a JSON body; raise :class:`RequestError` naming the first bad field.

    Search settings may come as top-level extra fields (what ``ChatOpenAI(extra_body=...)`` sends)
    or inside ``"saffron": {...}``; an unknown field is an error listing the accepted ones.
    """
    if not isinstance(body, Mapping):
        raise RequestError("body", "must be a JSON object")
    data = {k: v for k, v in body.items() if k not in IGNORED_OPENAI_FIELDS}
    nested = data.pop("saffron", None) or {}
    if not isinstance(nested, Mapping):
        raise RequestError("saffron", "must be an object of search settings")
    search = {k: data.pop(k) for k in list(data) if k in SEARCH_FIELDS}
    search.update(nested)
    unknown = sorted(set(data) - set(ChatRequest.model_fields) - {"search"})
    if unknown:
        accepted = sorted((set(ChatRequest.model_fields) - {"search"}) | set(SEARCH_FIELDS))
        raise RequestError(unknown[0], f"unknown field; accepted: {accepted}")
    if "n" in body and body["n"] not in (None, 1):
        raise RequestError("n", "only n=1 is supported (one guarded answer per request)")
    try:
        return ChatRequest(**data, search=search)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"])
        raise RequestError(field.replace(".[", "["), err["msg"]) from None


def error_body(message: str, *, kind: str, field: str | None = None,
               code: str | None = None, **extra: Any) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code", ...}}``."""
    return {"error": {"message": message, "type": kind, "param": field, "code": code, **extra}}


def saffron_field(*, blocked: bool, on_violation: str, verdicts: list[Verdict],
                  stats: Mapping[str, Any] | None, score: float | None,
                  monitor_path: str | None = None) -> dict[str, Any]:
    """The ``saffron`` field of a response: the same keys as ChatSaffron's
    ``response_metadata["saffron"]`` (blocked, on_violation, verdicts, stats, score, monitor_path), except that a
    verdict's ``text`` (the flagged text itself) is emptied: flagged text never leaves the server;
    ``position`` and ``span`` still say where it fired."""
    return {
        "blocked": blocked,
        "on_violation": on_violation if blocked else None,
        "verdicts": [{**v.to_dict(), "text": ""} for v in verdicts],
        "stats": dict(stats or {}),
        "score": score,
        "monitor_path": monitor_path,
    }


def new_id() -> str:
    """A completion id in OpenAI's style."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(cid: str, model: str, text: str, finish: str, usage: Mapping[str, int],
               saffron: Mapping[str, Any], tool_calls: list[dict[str, Any]] | None = None
               ) -> dict[str, Any]:
    """A whole (non-streaming) ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message = {"role": "assistant", "content": text or None, "tool_calls": tool_calls}
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "finish_reason": finish, "message": message}],
        "usage": dict(usage), "saffron": dict(saffron),
    }


def openai_tool_calls(parsed: ParsedOutput) -> list[dict[str, Any]]:
    """The calls of an output in OpenAI's shape (arguments as a JSON string). A call that does not
    parse keeps its raw text as ``arguments``, so the client reports it as invalid, as ChatSaffron
    does locally."""
    calls = [(c["name"], json.dumps(c["args"], ensure_ascii=False)) for c in parsed.calls]
    calls += [(c["name"] or "", c["raw"]) for c in parsed.invalid]
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": name, "arguments": args}} for name, args in calls]


def chunk(cid: str, model: str, delta: Mapping[str, Any], finish: str | None = None,
          **extra: Any) -> dict[str, Any]:
    """One ``chat.completion.chunk`` (``extra``: ``usage`` and ``saffron`` on the last one)."""
    return {
        "id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish}], **extra,
    }


def sse(data: Mapping[str, Any] | str) -> str:
    """One server-sent event line pair."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, default=str)}\n\n"


def usage(n_prompt: int, n_out: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out,
            "total_tokens": n_prompt + n_out}
