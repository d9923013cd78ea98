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
    """Feed committed token ids; get text deltas whose concatenation is ``decode(all ids)``.

    Each push decodes a short window, not every id so far, so its cost does not grow with the length:
    the ids since the last boundary where the text ended in whole characters, plus the window before
    that boundary, whose own text is subtracted (a decoder that treats a window's first token
    specially, as SentencePiece drops a leading space, does so on both sides of the subtraction).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""
        self._start = 0  # the window's first id
        self._boundary = 0  # ids[:_boundary] decode to whole characters, all emitted
        self._before = ""  # decode(ids[_start:_boundary]): the part of the window already emitted
        self._since = ""  # text emitted past the boundary

    def push(self, ids: list[int]) -> str:
        """Add tokens; return the new stable text (may be empty while a character is incomplete)."""
        self.ids.extend(ids)
        text = decode(self.tokenizer, self.ids[self._start :])
        if not text.startswith(self._before):  # a later token re-shaped earlier text: wait
            return ""
        tail = text[len(self._before) :]
        whole = not tail.endswith(REPLACEMENT)
        stable = tail if whole else tail.rstrip(REPLACEMENT)
        if not stable.startswith(self._since):
            return ""
        delta = stable[len(self._since) :]
        self.emitted += delta
        self._since = stable
        if whole and len(self.ids) > self._boundary:  # a new boundary: slide the window
            self._start, self._boundary = self._boundary, len(self.ids)
            self._before = decode(self.tokenizer, self.ids[self._start : self._boundary])
            self._since = ""
        return delta

    def finish(self) -> str:
        """Flush what remains; an incomplete character at the very end (cut by a token limit) is dropped."""
        text = final_text(self.tokenizer, self.ids)
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text
        return delta
