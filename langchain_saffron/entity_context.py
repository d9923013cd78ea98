"""Per-call target entities for search agents: copy them from ``runtime.context`` into the model's
settings, so they reach ``_generate``/``_stream`` as keyword arguments (E-GRPO rollouts)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse


def context_value(context: Any, key: str) -> Any:
    """Read ``key`` from a runtime context that is a dict, a dataclass/pydantic object, or None."""
    if context is None:
        return None
    if isinstance(context, dict):
        return context.get(key)
    return getattr(context, key, None)


class EntityContextMiddleware(AgentMiddleware):
    """Copies ``runtime.context[context_key]`` into ``model_settings[setting]`` on every model call.

    Example: ``create_agent(model, tools, middleware=[EntityContextMiddleware()], context_schema=Ctx)``
    then ``agent.invoke(inputs, context={"target_entities": ["Leonardo", "Titanic"]})``.
    """

    def __init__(
        self,
        context_key: str = "target_entities",
        setting: str = "target_entities",
        *,
        as_list: bool = True,
    ) -> None:
        super().__init__()
        self.context_key = context_key
        self.setting = setting
        self.as_list = as_list  # entity lists: a bare string becomes a one-item list

    @property
    def name(self) -> str:
        """Unique per copied key, so one agent can carry several (e.g. entities and a seed)."""
        if self.context_key == "target_entities":
            return "EntityContextMiddleware"
        return f"EntityContextMiddleware[{self.context_key}]"

    def _with_entities(self, request: ModelRequest) -> ModelRequest:
        value = context_value(getattr(request.runtime, "context", None), self.context_key)
        if value is None:
            return request
        if self.as_list:
            value = [value] if isinstance(value, str) else list(value)
        return request.override(model_settings={**request.model_settings, self.setting: value})

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        """Add the entities, then call the model."""
        return handler(self._with_entities(request))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        """Async twin of :meth:`wrap_model_call`."""
        return await handler(self._with_entities(request))
