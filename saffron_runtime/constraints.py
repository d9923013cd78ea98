"""Grammar-constrained decoding with llguidance: JSON schemas, regexes, Lark grammars, tool calls.

A :class:`Grammar` compiles once per (tokenizer, grammar); each beam holds its own
:class:`ConstraintState`, forked when a beam branches. The search intersects its candidate set with
``state.allowed()`` so constraints and safety ranking compose. llguidance was chosen because it
installs as a wheel here, supports forking a matcher (``deep_copy``) which tree search needs, and
compiles JSON schema, regex and Lark (with embedded JSON schemas) grammars.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from saffron_runtime.errors import ConfigError


@lru_cache(maxsize=8)
def _ll_tokenizer(tokenizer: PreTrainedTokenizerBase) -> Any:
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer)


def closed_schema(schema: Any) -> Any:
    """A copy where every object schema without ``additionalProperties`` forbids extra keys.

    JSON Schema allows extra keys by default, which lets a model wander off inside an object; a
    decoder should emit exactly the declared fields (as OpenAI's strict mode does).
    """
    if isinstance(schema, list):
        return [closed_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed_schema(v) for k, v in schema.items()}
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def bounded_strings(schema: Any, max_length: int | None) -> Any:
    """A copy where every free string (no ``maxLength``, enum, const, pattern or format) gets
    ``maxLength``: a small model decoding greedily can loop inside a string until it runs out of
    tokens, leaving JSON that never closes. ``None`` returns the schema unchanged."""
    if max_length is None:
        return schema
    if max_length < 1:
        raise ConfigError(f"max string length {max_length} must be at least 1 (or None)")
    if isinstance(schema, list):
        return [bounded_strings(s, max_length) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded_strings(v, max_length) for k, v in schema.items()}
    fixed = {"maxLength", "enum", "const", "pattern", "format"} & out.keys()
    if out.get("type") == "string" and not fixed:
        out["maxLength"] = max_length
    return out


def tool_call_lark(
    tools: list[dict[str, Any]],
    *,
    open_tag: str = "<tool_call>",
    close_tag: str = "</tool_call>",
    max_string_length: int | None = None,
) -> str:
    """A Lark grammar for one ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` of the given tools."""
    if not tools:
        raise ConfigError("tool_call grammar needs at least one tool")
    alts = []
    for t in tools:
        fn = t.get("function", t)
        schema = {
            "type": "object",
            "properties": {
                "name": {"const": fn["name"]},
                "arguments": bounded_strings(
                    closed_schema(fn.get("parameters") or {"type": "object"}), max_string_length
                ),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
            # compact JSON: no free whitespace, so a model cannot wander in blank space inside a call
            "x-guidance": {
                "whitespace_flexible": False,
                "item_separator": ", ",
                "key_separator": ": ",
            },
        }
        alts.append(f"%json {json.dumps(schema)}")
    rules = "\n".join(f"call{i}: {a}" for i, a in enumerate(alts))
    calls = " | ".join(f"call{i}" for i in range(len(alts)))
    return f"start: {json.dumps(open_tag)} ({calls}) {json.dumps(close_tag)}\n{rules}\n"


class Grammar:
    """A compiled grammar over one tokenizer; :meth:`start` makes a fresh per-beam state."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, kind: str, source: str) -> None:
        import llguidance

        self.tokenizer = tokenizer
        self.kind = kind
        self.vocab_size = len(tokenizer)
        builders = {
            "json_schema": llguidance.LLMatcher.grammar_from_json_schema,
            "regex": llguidance.LLMatcher.grammar_from_regex,
            "lark": llguidance.LLMatcher.grammar_from_lark,
        }
        if kind not in builders:
            raise ConfigError(f"grammar kind {kind!r} is not valid; use json_schema, regex or lark")
        try:
            self._grammar = builders[kind](source)
        except Exception as e:  # noqa: BLE001 - llguidance raises ValueError/RuntimeError
            raise ConfigError(f"invalid {kind} grammar: {e}") from e
        self.start()  # surfaces grammar errors now, not at the first token

    @classmethod
    def json_schema(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        schema: dict[str, Any],
        *,
        compact: bool = False,
        max_string_length: int | None = None,
    ) -> Grammar:
        """Output must be one JSON value matching ``schema`` (``compact``: no free whitespace;
        ``max_string_length``: see :func:`bounded_strings`)."""
        schema = bounded_strings(closed_schema(schema), max_string_length)
        if compact:
            schema = {
                **schema,
                "x-guidance": {
                    "whitespace_flexible": False,
                    "item_separator": ", ",
                    "key_separator": ": ",
                },
            }
        return cls(tokenizer, "json_schema", json.dumps(schema))

    @classmethod
    def tool_calls(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        tools: list[dict[str, Any]],
        *,
        max_string_length: int | None = None,
    ) -> Grammar:
        """Output must be exactly one tool call to one of ``tools``."""
        return cls(tokenizer, "lark", tool_call_lark(tools, max_string_length=max_string_length))

    def start(self) -> ConstraintState:
        """A fresh matcher at the start of the output."""
        import llguidance

        m = llguidance.LLMatcher(_ll_tokenizer(self.tokenizer), self._grammar)
        if m.is_error():
            raise ConfigError(f"invalid {self.kind} grammar: {m.get_error()}")
        return ConstraintState(m, self.vocab_size)


class ConstraintState:
    """One beam's position in a grammar: allowed next tokens, advance, fork."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._m = matcher
        self.vocab_size = vocab_size

    def allowed(self) -> torch.Tensor:
        """Boolean mask ``[vocab]`` of the tokens the grammar allows next (EOS only once complete)."""
        import llguidance.torch as llt

        with torch.device("cpu"):  # llguidance fills a host bitmask; GrammarBan moves the mask
            bitmask = llt.allocate_token_bitmask(1, self.vocab_size)
        llt.fill_next_token_bitmask(self._m, bitmask, 0)
        shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
        bits = ((bitmask[0].unsqueeze(-1) >> shifts) & 1).flatten()[: self.vocab_size]
        return bits.bool()

    def advance(self, token_id: int) -> None:
        """Consume one token; raise if the grammar forbids it."""
        if not self._m.consume_token(int(token_id)):
            raise ConfigError(
                f"token {token_id} violates the output grammar: {self._m.get_error()}"
            )

    def fork(self) -> ConstraintState:
        """An independent copy, for a child beam."""
        return ConstraintState(self._m.deep_copy(), self.vocab_size)

    @property
    def done(self) -> bool:
        """True when the output is complete (only EOS can follow)."""
        return bool(self._m.is_stopped())

    @property
    def accepting(self) -> bool:
        """True when the text so far is a complete match."""
        return bool(self._m.is_accepting())


class GrammarLogitsProcessor(LogitsProcessor):
    """A Hugging Face ``LogitsProcessor`` for ``generate()`` (one state per row, batch of any size)."""

    def __init__(self, grammar: Grammar, prompt_len: int) -> None:
        self.grammar = grammar
        self.prompt_len = prompt_len
        self.states: list[ConstraintState] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Mask every token the grammar forbids for each row."""
        if self.states is None:
            self.states = [self.grammar.start() for _ in range(input_ids.shape[0])]
        elif input_ids.shape[1] > self.prompt_len:
            for st, tok in zip(self.states, input_ids[:, -1].tolist(), strict=True):
                if not st.done:
                    st.advance(tok)
        for i, st in enumerate(self.states):
            allowed = st.allowed().to(scores.device)
            width = min(allowed.shape[0], scores.shape[1])
            row = torch.full_like(scores[i], float("-inf"))
            row[:width] = torch.where(allowed[:width], scores[i, :width], row[:width])
            scores[i] = row
        return scores
