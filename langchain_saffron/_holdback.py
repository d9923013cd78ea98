"""Hold-back over any chat model's stream: the state of one guarded response.

The chunks of an inner model's stream are split in two: their text goes to a monitor session and
only what the session has cleared (:meth:`MonitorSession.release`) is handed on; everything else
(tool-call chunks, usage, response metadata) is kept until the end, so tool-call arguments are
judged whole before they leave. :class:`HeldStream` knows nothing about LangChain's run managers;
``guard_model.py`` drives it for invoke, stream and astream alike, and the agent middleware reuses
it through ``guard()``.

Everything fails closed: a monitor that raises while opening, feeding, releasing or finishing gives
a ``monitor-failed`` verdict, never a silent pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessageChunk, BaseMessageChunk

from langchain_saffron._guard import feed, finish, judge_text, message_text
from saffron_runtime.errors import Verdict
from saffron_runtime.monitor.adapters import StreamingMonitor
from saffron_runtime.monitor.faults import open_session
from saffron_runtime.monitor.session import MonitorSession

HOLD_LIMIT_RULE = "hold-back-limit"


def hold_limit_verdict(held: int, limit: int) -> Verdict:
    """The verdict when the monitor has left more than ``limit`` characters uncleared."""
    return Verdict(
        unsafe=True,
        rule=HOLD_LIMIT_RULE,
        score=float("nan"),
        reason=(
            f"the monitor held {held} characters it had not cleared (max_held_chars={limit}); "
            "raise max_held_chars, or let the monitor score more often (a smaller every_chars "
            "or hold_back)"
        ),
    )


def tool_call_text(call: dict[str, Any]) -> str:
    """The text a monitor reads for one tool call: ``name(arguments)``.

    Arguments arrive as a JSON string (streamed ``tool_call_chunks``) or a dict (``tool_calls``);
    both are judged as the JSON the tool would receive.
    """
    args = call.get("args")
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False, default=str)
    return f"{call.get('name') or ''}({args or ''})"


@dataclass
class HeldStream:
    """One response under hold-back: feed chunks with :meth:`push`, end with :meth:`close`.

    ``released`` is the text handed on so far; ``verdict`` the verdict that stopped the text (None
    while it runs clean); ``peak_held`` the most characters the monitor ever held uncleared (the
    latency cost of hold-back, reported in ``response_metadata["saffron"]["held_chars"]``).
    """

    monitor: StreamingMonitor
    prompt: str
    max_held_chars: int | None = None
    session: MonitorSession | None = None
    verdict: Verdict | None = None
    received: str = ""
    released: str = ""
    peak_held: int = 0
    rest: AIMessageChunk | None = None
    tool_verdicts: dict[int, Verdict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # every fault (raising, hanging, NaN / inf scores, failing to open) becomes a monitor-failed
        # verdict there, or passes with a logged warning when the monitor is fail_open
        self.session = open_session(self.monitor, self.prompt)

    # ------------------------------------------------------------------ text
    def _release(self, *, everything: bool = False) -> str:
        session = self.session
        if session is None:
            return ""
        try:
            release_all = getattr(session, "release_all", None)  # not in the protocol: optional
            if everything and self.verdict is None and release_all is not None:
                out = release_all()
            else:
                out = session.release()
        except Exception as e:  # noqa: BLE001 - a release fault blocks what is still held
            self.verdict = self.verdict or Verdict.monitor_failure(f"{type(e).__name__}: {e}")
            return ""
        out = out or ""
        if not self.received[len(self.released) :].startswith(out):  # never more than was received
            self.verdict = self.verdict or Verdict.monitor_failure(
                "the monitor released text it was not given"
            )
            return ""
        self.released += out
        return out

    def _keep(self, chunk: BaseMessageChunk) -> None:
        """Keep the chunk's non-text parts (tool-call chunks, usage, metadata) for the end."""
        if not isinstance(chunk, AIMessageChunk):
            return
        part = chunk.model_copy(update={"content": ""})
        self.rest = part if self.rest is None else self.rest + part  # type: ignore[assignment]

    def push(self, chunk: BaseMessageChunk) -> str:
        """Take one chunk of the inner stream; return the text the monitor has now cleared."""
        self._keep(chunk)
        if self.verdict is not None or self.session is None:
            return ""
        text = message_text(chunk)
        if not text:
            return ""
        self.received += text
        self.verdict = feed(self.session, text)
        out = self._release()
        held = len(self.received) - len(self.released)
        self.peak_held = max(self.peak_held, held)
        limit = self.max_held_chars
        if self.verdict is None and limit is not None and held > limit:
            self.verdict = hold_limit_verdict(held, limit)
        return out

    def finish(self) -> str:
        """The inner stream ended: score the tail; return the text that is now cleared."""
        if self.verdict is not None or self.session is None:
            return ""
        self.verdict = finish(self.session)
        return self._release(everything=True)

    # ------------------------------------------------------------------ tool calls
    def judge_tool_calls(self) -> None:
        """Judge each complete tool call (name and arguments); flagged ones go to ``tool_verdicts``."""
        for i, call in enumerate(self.tool_call_chunks()):
            verdict = judge_text(self.monitor, self.prompt, tool_call_text(call))
            if verdict is not None:
                self.tool_verdicts[i] = verdict

    def tool_call_chunks(self) -> list[dict[str, Any]]:
        """The inner message's tool calls, merged from its streamed chunks (in order)."""
        rest = self.rest
        if rest is None:
            return []
        if rest.tool_call_chunks:
            return [dict(c) for c in rest.tool_call_chunks]
        return [  # a chunk built from tool_calls only
            {"name": c["name"], "args": json.dumps(c["args"]), "id": c.get("id"), "index": i}
            for i, c in enumerate(rest.tool_calls)
        ]

    @property
    def verdicts(self) -> list[Verdict]:
        """Every verdict of this response: the text's, then the flagged tool calls'."""
        return ([self.verdict] if self.verdict else []) + list(self.tool_verdicts.values())
