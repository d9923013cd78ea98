"""Incremental detokenisation that never emits half a character.

Byte-level BPE tokens can split a multi-byte UTF-8 character; decoding such a prefix ends in U+FFFD.
The decoder emits only text that later tokens cannot change, so the concatenated stream equals
``tokenizer.decode(ids)`` of the final result.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

REPLACEMENT = "\ufffd"


def decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """The one decoding used for results and streams (special tokens dropped, no space clean-up)."""
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def final_text(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """The text of a finished response: ``decode(ids)`` without an incomplete trailing character."""
    return decode(tokenizer, ids).rstrip(REPLACEMENT)


class IncrementalDecoder:
    """Feed committed token ids; get text deltas whose concatenation is ``decode(all ids)``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, ids: list[int]) -> str:
        """Add tokens; return the new stable text (may be empty while a character is incomplete)."""
        self.ids.extend(ids)
        text = decode(self.tokenizer, self.ids)
        stable = text.rstrip(REPLACEMENT) if text.endswith(REPLACEMENT) else text
        if not stable.startswith(self.emitted):  # a later token re-shaped earlier text: wait
            return ""
        delta = stable[len(self.emitted) :]
        self.emitted = stable
        return delta

    def finish(self) -> str:
        """Flush what remains; an incomplete character at the very end (cut by a token limit) is dropped."""
        text = final_text(self.tokenizer, self.ids)
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text
        return delta
