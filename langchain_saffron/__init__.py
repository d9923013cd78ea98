"""LangChain integration of Saffron: guarded chat model, guard callback, agent middleware."""

from saffron_runtime.errors import GuardrailViolation, OnViolation, Verdict

__all__ = ["GuardrailViolation", "OnViolation", "Verdict"]
