"""LangChain integration of Saffron: guarded chat model, guard() for any model, guard callback,
agent middleware."""

from langchain_saffron.callbacks import (
    AsyncSaffronGuardCallbackHandler,
    SaffronGuardCallbackHandler,
)
from langchain_saffron.chat_models import ChatSaffron
from langchain_saffron.entity_context import EntityContextMiddleware
from langchain_saffron.guard_model import GuardedChatModel, guard
from saffron_runtime.errors import GuardrailViolation, OnViolation, Verdict

__all__ = [
    "AsyncSaffronGuardCallbackHandler",
    "ChatSaffron",
    "EntityContextMiddleware",
    "GuardedChatModel",
    "GuardrailViolation",
    "OnViolation",
    "SaffronGuardCallbackHandler",
    "Verdict",
    "guard",
]
