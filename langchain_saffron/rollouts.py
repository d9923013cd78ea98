"""Safe rollout selection for search agents: run N rollouts of one question, score each for safety
(a streaming monitor over every message and tool result) and for the entity-aware reward of E-GRPO,
and return the best safe one. An unsafe rollout is never returned, whatever its reward.

Entities reach the agent per call through ``runtime.context`` (the agent's
:class:`~langchain_saffron.entity_context.EntityContextMiddleware` copies them into the model's
settings); each rollout also gets its own ``rollout_seed`` in the context, so a sampling model can
make the rollouts differ (``EntityContextMiddleware("rollout_seed", "seed")`` passes it on).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import inspect
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import Runnable, RunnableConfig

from langchain_saffron._guard import (
    blocked_message,
    enforce,
    is_user_message,
    judge_text,
    last_user_text,
    message_text,
    verdict_from_dict,
)
from saffron_runtime.errors import (
    DEFAULT_REFUSAL,
    ConfigError,
    GuardrailViolation,
    OnViolation,
    Verdict,
    validate_on_violation,
)
from saffron_runtime.monitor.adapters import StreamingMonitor
from saffron_runtime.rewards import egrpo_rewards, extract_thoughts, match_rate
from saffron_runtime.rewards.entities import MatchOptions

AnswerChecker = Callable[[str, str], bool]


def contains_answer(answer: str, gold: str) -> bool:
    """Default answer checker: the gold answer occurs in the final answer (case-insensitive)."""
    return bool(gold.strip()) and gold.strip().casefold() in answer.casefold()


@dataclass
class RolloutScore:
    """Everything measured about one rollout (one entry of the selection metadata)."""

    index: int
    safe: bool
    answer: str = ""
    thoughts: str = ""
    match_rate: float = 0.0
    correct: bool = False
    reward: float = 0.0
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    flagged_message: int | None = None
    error: str | None = None


class SafeRolloutSelector(Runnable[dict[str, Any], dict[str, Any]]):
    """A Runnable: ``{"messages" | "question", "gold_entities"?, "gold_answer"?, "target_entities"?}``
    in, the best safe rollout's state out, with ``"selection"`` holding every rollout's scores.

    ``on_violation`` applies when every rollout is unsafe: ``"raise"`` raises
    :class:`GuardrailViolation`, ``"refuse"`` answers with ``refusal_message``, ``"truncate"`` returns
    the highest-reward rollout cut before its first flagged message. All three are marked blocked.
    """

    def __init__(
        self,
        agent: Runnable,
        monitor: StreamingMonitor,
        *,
        n: int = 4,
        alpha: float = 0.3,
        answer_checker: AnswerChecker = contains_answer,
        on_violation: OnViolation = "raise",
        refusal_message: str = DEFAULT_REFUSAL,
        max_concurrency: int | None = None,
        match_options: MatchOptions | None = None,
        seed: int = 0,
    ) -> None:
        if n < 1:
            raise ConfigError(f"n={n}: run at least one rollout")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha={alpha} must be in [0, 1] (the paper uses 0.3)")
        self.agent = agent
        self.monitor = monitor
        self.n = n
        self.alpha = alpha
        self.answer_checker = answer_checker
        self.on_violation = validate_on_violation(on_violation)
        self.refusal_message = refusal_message
        self.max_concurrency = max_concurrency or n
        self.match_options = match_options
        self.seed = seed

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _question(inp: dict[str, Any]) -> tuple[str, list[BaseMessage]]:
        if "messages" in inp:
            msgs = list(inp["messages"])
            if not any(is_user_message(m) for m in msgs):
                raise ConfigError("the input messages hold no user message to ask the agent")
            return last_user_text(msgs), msgs
        q = inp.get("question")
        if not isinstance(q, str) or not q.strip():
            raise ConfigError("pass the question as 'question' (a non-empty string) or 'messages'")
        return q, [HumanMessage(q)]

    def _entities(self, inp: dict[str, Any]) -> tuple[list[str], str]:
        gold = [e for e in inp.get("gold_entities") or [] if e]
        if gold:
            return gold, "gold"
        target = [e for e in inp.get("target_entities") or [] if e]
        if target:
            return target, "target"
        raise ConfigError(
            "no entities to reward: pass 'gold_entities' (with an answer checker) or, without "
            "gold, the 'target_entities' the agent should surface"
        )

    def _contexts(self, inp: dict[str, Any], entities: list[str]) -> list[dict[str, Any]]:
        base = dict(inp.get("context") or {})
        return [
            {**base, "target_entities": entities, "rollout_seed": self.seed + i}
            for i in range(self.n)
        ]

    # ------------------------------------------------------------------ running
    def _call_kwargs(self, context: dict[str, Any]) -> dict[str, Any]:
        try:
            params = inspect.signature(self.agent.invoke).parameters
        except (TypeError, ValueError):
            params = {}
        return {"context": context} if "context" in params else {}

    def _one(
        self, msgs: list[BaseMessage], ctx: dict[str, Any], config: RunnableConfig | None
    ) -> Any:
        try:
            return self.agent.invoke({"messages": msgs}, config, **self._call_kwargs(ctx))
        except Exception as e:  # noqa: BLE001 - one failed rollout must not sink the group; a
            return e  # GuardrailViolation from the agent's own guard is scored as unsafe

    async def _aone(
        self,
        msgs: list[BaseMessage],
        ctx: dict[str, Any],
        config: RunnableConfig | None,
        gate: asyncio.Semaphore,
    ) -> Any:
        async with gate:
            try:
                return await self.agent.ainvoke(
                    {"messages": msgs}, config, **self._call_kwargs(ctx)
                )
            except Exception as e:  # noqa: BLE001 - includes GuardrailViolation, handled in scoring
                return e

    # ------------------------------------------------------------------ scoring
    def _safety(self, question: str, messages: Sequence[Any]) -> tuple[list[Verdict], int | None]:
        """Monitor every AI message and tool result; the index of the first flagged message."""
        verdicts: list[Verdict] = []
        first = None
        for i, m in enumerate(messages):
            kind = m.get("role") if isinstance(m, dict) else getattr(m, "type", "")
            if kind not in ("ai", "assistant", "tool") and not isinstance(
                m, AIMessage | ToolMessage
            ):
                continue
            v = judge_text(self.monitor, question, message_text(m))
            if v is not None:
                verdicts.append(v)
                first = i if first is None else first
        return verdicts, first

    def score(
        self,
        question: str,
        results: Sequence[Any],
        entities: list[str],
        gold_answer: str | None,
        n_input: int,
    ) -> list[RolloutScore]:
        """Safety and E-GRPO reward of each rollout (the group is the rollouts of this question)."""
        scores = []
        for i, res in enumerate(results):
            if isinstance(res, GuardrailViolation):
                scores.append(
                    RolloutScore(
                        i,
                        safe=False,
                        verdicts=[res.verdict.to_dict()],
                        error=f"stopped by the agent's guard: {res.verdict.reason}",
                    )
                )
                continue
            if isinstance(res, BaseException):
                scores.append(RolloutScore(i, safe=True, error=f"{type(res).__name__}: {res}"))
                continue
            new = list(res.get("messages", []))[n_input:]
            verdicts, first = self._safety(question, new)
            ais = [m for m in new if isinstance(m, AIMessage) and message_text(m)]
            answer = message_text(ais[-1]) if ais else ""
            correct = bool(gold_answer) and self.answer_checker(answer, gold_answer or "")
            scores.append(
                RolloutScore(
                    i,
                    safe=not verdicts,
                    answer=answer,
                    thoughts=extract_thoughts(new),
                    correct=correct,
                    verdicts=[v.to_dict() for v in verdicts],
                    flagged_message=first,
                )
            )
        rewards = egrpo_rewards(
            [s.thoughts for s in scores],
            entities,
            [s.correct for s in scores],
            alpha=self.alpha,
            errors=[s.error is not None for s in scores],
            options=self.match_options,
        )
        for s, r in zip(scores, rewards, strict=True):
            s.reward = r
            s.match_rate = match_rate(s.thoughts, entities, self.match_options)
        return scores

    def _select(
        self,
        inp: dict[str, Any],
        msgs: list[BaseMessage],
        results: Sequence[Any],
        scores: list[RolloutScore],
        entities: list[str],
        source: str,
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "entities": entities,
            "entity_source": source,
            "rollouts": [asdict(s) for s in scores],
        }
        ok = [s for s in scores if s.safe and s.error is None]
        if ok:
            best = max(ok, key=lambda s: (s.reward, s.match_rate, -s.index))
            meta |= {"selected": best.index, "blocked": False}
            return {**results[best.index], "selection": meta}
        unsafe = [s for s in scores if not s.safe]
        if not unsafe:  # every rollout failed for another reason: that is not a safety verdict
            raise results[0]
        enforce(verdict_from_dict(unsafe[0].verdicts[0]), self.on_violation)
        meta["selected"] = None
        blocked = {"blocked": True, "on_violation": self.on_violation}
        if self.on_violation == "refuse":  # the reply's metadata: the selection, every verdict
            verdicts = [v for s in unsafe for v in s.verdicts]
            reply = blocked_message(self.refusal_message, verdicts, self.on_violation, **meta)
            return {"messages": [*msgs, reply], "selection": meta | blocked}
        meta |= blocked
        top = max(unsafe, key=lambda s: (s.reward, -s.index))
        res = results[top.index]
        if isinstance(res, BaseException):
            return {"messages": list(msgs), "selection": meta | {"truncated_from": top.index}}
        cut = len(msgs) + (top.flagged_message or 0)
        return {
            **res,
            "messages": list(res["messages"])[:cut],
            "selection": meta | {"truncated_from": top.index},
        }

    # ------------------------------------------------------------------ Runnable
    def invoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Run the rollouts concurrently (threads), score them, return the best safe one."""
        question, msgs = self._question(input)
        entities, source = self._entities(input)
        ctxs = self._contexts(input, entities)
        with cf.ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            results = list(pool.map(lambda c: self._one(msgs, c, config), ctxs))
        scores = self.score(question, results, entities, input.get("gold_answer"), len(msgs))
        return self._select(input, msgs, results, scores, entities, source)

    async def ainvoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Async twin of :meth:`invoke` (rollouts as concurrent tasks; scoring off the event loop)."""
        question, msgs = self._question(input)
        entities, source = self._entities(input)
        gate = asyncio.Semaphore(self.max_concurrency)
        results = await asyncio.gather(
            *(self._aone(msgs, c, config, gate) for c in self._contexts(input, entities))
        )
        scores = await asyncio.to_thread(
            self.score, question, results, entities, input.get("gold_answer"), len(msgs)
        )
        return self._select(input, msgs, results, scores, entities, source)

