"""The service floor: guarded generation behind an OpenAI-compatible HTTP API, on Ray Serve.

It may import the stack and guarded generation, never LangChain. :mod:`.protocol` is the wire
format, :mod:`.service` one replica's request lifecycle, :mod:`.app` the routes (and an in-process
FastAPI app), :mod:`.deployment` the Ray Serve deployment and :func:`start`. Ray is imported only by
:mod:`.deployment`, so the rest works (and is tested) without a Ray cluster.
"""
