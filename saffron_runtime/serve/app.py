"""The HTTP routes, as plain async functions of a :class:`GuardedService`: the Ray Serve ingress
(:mod:`saffron_runtime.serve.deployment`) and :func:`build_app` (one process, no Ray: tests, a laptop)
both call them, so the two speak the same API.

- ``POST /v1/chat/completions``: OpenAI chat completions, streaming (SSE) or not. Only text the
  monitor cleared is sent; a block ends the stream with the refusal, the cleared prefix, or (under
  ``on_violation="raise"``) an error event ``{"error": {"type": "guardrail_violation", ...}}``. The
  last chunk (and a whole response) carries ``usage`` and the ``saffron`` field.
- ``GET /v1/models`` and ``GET /health``.

The search runs in a worker thread of the service's pool (one per admitted request; the running
ones step together through the service's batcher); the response generator's ``finally`` sets the
run's stop event, so a client that disconnects (the generator is cancelled or closed) stops its
search within one step.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from saffron_runtime.serve import protocol
from saffron_runtime.serve.protocol import RequestError, sse
from saffron_runtime.serve.service import Busy, Final, GuardedService, Prepared

RETRY_AFTER_S = 1
_DONE = object()


def bad_request(e: RequestError) -> JSONResponse:
    """400 (or the error's status) in OpenAI's error shape, naming the field."""
    body = protocol.error_body(str(e), kind="invalid_request_error", field=e.field)
    return JSONResponse(body, status_code=e.status)


def busy() -> JSONResponse:
    """503 with Retry-After: the replica holds its queue limit of requests."""
    body = protocol.error_body("the server is at its queue limit; retry shortly",
                               kind="server_busy", code="queue_full")
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


async def health(service: GuardedService) -> dict[str, Any]:
    """Liveness plus the load of this replica."""
    return {"status": "ok", "pending": service.pending, "running": service.running,
            "queue_limit": service.options.queue_limit, "max_batch": service.options.max_batch}


async def models(service: GuardedService) -> dict[str, Any]:
    """OpenAI's model list: the one guarded model this service answers as."""
    name = service.options.model_name
    return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "saffron"}]}


async def chat_completions(service: GuardedService, request: Request) -> Response:
    """``POST /v1/chat/completions``: validate, admit (or 503), then stream or answer whole."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return bad_request(RequestError("body", "is not valid JSON"))
    stop_event = threading.Event()
    try:
        req = protocol.parse_request(body)
        prepared = service.prepare(req, stop_event)
    except RequestError as e:
        return bad_request(e)
    try:
        service.admit(prepared)
    except Busy:
        return busy()
    cid = protocol.new_id()
    if req.stream:
        events = _stream_events(service, prepared, cid, req.model)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return await _whole(service, prepared, cid, req.model)


async def _deltas(service: GuardedService, prepared: Prepared) -> AsyncIterator[str]:
    """Released deltas from the search thread; leaving early (cancel, close) stops the search."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def produce() -> None:
        try:
            for delta in service.run(prepared):
                loop.call_soon_threadsafe(queue.put_nowait, delta)
        except BaseException as e:  # noqa: BLE001 - re-raised in the event loop
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            service.release(prepared)
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    worker = loop.run_in_executor(service.executor, produce)
    try:
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        prepared.stop_event.set()  # the client left or the run ended: no further search step
        await asyncio.shield(worker)


async def _stream_events(service: GuardedService, prepared: Prepared, cid: str,
                         model: str) -> AsyncIterator[str]:
    try:
        yield sse(protocol.chunk(cid, model, {"role": "assistant", "content": ""}))
        async for delta in _deltas(service, prepared):
            if not prepared.tools:  # with tools, calls are read from the whole output at the end
                yield sse(protocol.chunk(cid, model, {"content": delta}))
    except RequestError as e:
        yield sse(protocol.error_body(str(e), kind="invalid_request_error", field=e.field))
        return
    except Exception as e:  # noqa: BLE001 - a fault ends the stream with an error, never silently
        yield sse(protocol.error_body(f"{type(e).__name__}: {e}", kind="server_error"))
        return
    finally:
        service.release(prepared)  # also when the client left before the search started
    end: Final = service.final(prepared)
    if end.error is not None:  # blocked under "raise": the flagged text never leaves
        yield sse(protocol.error_body(end.error, kind="guardrail_violation",
                                      code="content_filter", saffron=end.saffron))
        return
    delta: dict[str, Any] = {"content": end.tail} if end.tail else {}
    if end.tool_calls:
        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(end.tool_calls)]
    yield sse(protocol.chunk(cid, model, delta, end.finish_reason, usage=end.usage,
                             saffron=end.saffron))
    yield sse("[DONE]")


async def _whole(service: GuardedService, prepared: Prepared, cid: str, model: str) -> Response:
    text = []
    try:
        async for delta in _deltas(service, prepared):
            text.append(delta)
    except RequestError as e:
        return bad_request(e)
    end = service.final(prepared)
    if end.error is not None:
        body = protocol.error_body(end.error, kind="guardrail_violation", code="content_filter",
                                   saffron=end.saffron)
        return JSONResponse(body, status_code=400)
    if prepared.tools:  # nothing was streamed: the tail is the whole answer
        answer = end.tail
    elif prepared.on_violation == "refuse" and end.tail:
        answer = end.tail.lstrip("\n")
    else:
        answer = "".join(text) + end.tail
    return JSONResponse(protocol.completion(cid, model, answer, end.finish_reason, end.usage,
                                            end.saffron, end.tool_calls))


def build_app(service: GuardedService) -> FastAPI:
    """The API over one in-process service (no Ray): for tests and a single process."""
    app = FastAPI(title="saffron", docs_url=None, redoc_url=None)

    @app.get("/health")
    async def _health() -> dict[str, Any]:
        return await health(service)

    @app.get("/v1/models")
    async def _models() -> dict[str, Any]:
        return await models(service)

    @app.post("/v1/chat/completions")
    async def _chat(request: Request) -> Response:
        return await chat_completions(service, request)

    return app
