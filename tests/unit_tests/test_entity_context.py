"""EntityContextMiddleware: target entities travel from runtime.context to the model's kwargs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from langchain_saffron.entity_context import EntityContextMiddleware


class RecordingChat(BaseChatModel):
    """A minimal chat model that records the kwargs of every call (the component under test is the middleware)."""

    seen: list[dict[str, Any]] = []

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        self.seen.append(kwargs)
        return ChatResult(generations=[ChatGeneration(message=AIMessage("ok"))])

    def bind_tools(self, tools, **kwargs):
        return self


@dataclass
class Ctx:
    target_entities: list[str]


def test_entities_reach_the_model_sync_and_async():
    import asyncio

    model = RecordingChat(seen=[])
    agent = create_agent(model, tools=[], middleware=[EntityContextMiddleware()], context_schema=Ctx)
    agent.invoke({"messages": [HumanMessage("who starred in Titanic?")]}, context=Ctx(["Leonardo", "Titanic"]))
    assert model.seen[-1]["target_entities"] == ["Leonardo", "Titanic"]
    asyncio.run(agent.ainvoke({"messages": [HumanMessage("q")]}, context=Ctx(["Kate"])))
    assert model.seen[-1]["target_entities"] == ["Kate"]


def test_dict_context_and_absent_entities():
    model = RecordingChat(seen=[])
    agent = create_agent(model, tools=[], middleware=[EntityContextMiddleware(context_key="gold", setting="entities")])
    agent.invoke({"messages": [HumanMessage("q")]}, context={"gold": "Paris"})
    assert model.seen[-1]["entities"] == ["Paris"]
    agent.invoke({"messages": [HumanMessage("q")]}, context={})
    assert "entities" not in model.seen[-1]
