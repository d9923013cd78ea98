"""What ChatSaffron accepts as input, checked before anything runs, so a bad input is a
:class:`~saffron_runtime.errors.PromptError` that names the problem and the fix, not an internal error
from langchain-core or the tokenizer.

Rules (the issue is silent on them; docs/bad-inputs.md records the choice):
- bytes are refused (decode them first); so is any input langchain-core cannot read as messages.
- a conversation with no text at all (``invoke("")``, only empty messages) is refused: a model
  asked nothing would still answer with something.
- a prompt holding a lone surrogate (``"\\ud800"``, not valid Unicode) is refused: no tokenizer
  encodes it, and guessing what was meant would change the request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.prompt_values import PromptValue

from langchain_saffron._guard import message_text
from saffron_runtime.errors import PromptError

_SURROGATE = re.compile("[\ud800-\udfff]")


def convert_input(model_input: Any, convert: Callable[[Any], PromptValue]) -> PromptValue:
    """``convert(model_input)`` (langchain-core's conversion), with clear errors for what it rejects."""
    if isinstance(model_input, (bytes, bytearray, memoryview)):
        raise PromptError(
            f"the input is {type(model_input).__name__}, not text; decode it first, e.g. "
            "model.invoke(data.decode('utf-8'))"
        )
    try:
        return convert(model_input)
    except (NotImplementedError, ValueError, TypeError, KeyError) as e:
        raise PromptError(
            f"cannot read the input ({type(model_input).__name__}) as a conversation: {e}; give a "
            "string, a list of messages (or (role, text) pairs / {'role', 'content'} dicts) or a "
            "PromptValue"
        ) from None


def check_messages(messages: Sequence[Any]) -> None:
    """Refuse a conversation with no text, or with text that is not valid Unicode."""
    if not messages:
        raise PromptError(
            "the message list is empty; pass at least one message (e.g. a HumanMessage)"
        )
    texts = [message_text(m) for m in messages]
    calls = any(getattr(m, "tool_calls", None) for m in messages)
    if not calls and not any(t.strip() for t in texts):
        raise PromptError(
            "the prompt is empty: there is no text to answer; pass the question, e.g. "
            "model.invoke('What is the capital of France?')"
        )
    for i, text in enumerate(texts):
        bad = _SURROGATE.search(text)
        if bad:
            raise PromptError(
                f"message {i} holds a lone surrogate {bad.group()!r} at character {bad.start()}, "
                "which is not valid Unicode; repair the text (e.g. decode its bytes with "
                "errors='replace') before sending it"
            )
