"""LangChain integration of Saffron: guarded chat model, guard callback, agent middleware."""

from langchain_saffron.callbacks import (
    AsyncSaffronGuardCallbackHandler,
    SaffronGuardCallbackHandler,
)
from langchain_saffron.chat_models import ChatSaffron
from langchain_saffron.entity_context import EntityContextMiddleware
from saffron_runtime.errors import GuardrailViolation, OnViolation, Verdict

__all__ = [
    "AsyncSaffronGuardCallbackHandler",
    "ChatSaffron",
    "EntityContextMiddleware",
    "GuardrailViolation",
    "OnViolation",
    "SaffronGuardCallbackHandler",
    "Verdict",
]
