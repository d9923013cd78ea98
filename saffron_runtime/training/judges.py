"""Prefix judges: score every prefix ``y_<=t`` of a response with a safety margin (higher = safer).

A judge is anything with ``score_prefixes(prompt, response_ids) -> list[float]``. A causal judge with
a response head scores all prefixes in one forward; that is exact only when nothing (a suffix, an
EOS) follows the response in the judge's input, which :class:`CausalHeadJudge` guarantees by building
its input as ``prefix_ids(prompt) + response_ids`` (token ids joined, never re-tokenised text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saffron_runtime.errors import ConfigError
from saffron_runtime.models.chat import chat_prompt_ids
from saffron_runtime.models.kv import kv_kwargs


@runtime_checkable
class PrefixJudge(Protocol):
    """Scores every prefix of a response: element t is the margin of ``prompt + response[: t + 1]``."""

    name: str

    def score_prefixes(self, prompt: str, response_ids: Sequence[int]) -> list[float]:
        """One safety margin per response token (higher = safer, below 0 = unsafe)."""
        ...


def chat_prefix_builder(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], list[int]]:
    """Prefix ids = the chat template of a one-turn user prompt with the assistant header, as the policy sees it."""

    def build(prompt: str) -> list[int]:
        return chat_prompt_ids(tokenizer, prompt)

    return build


class CausalHeadJudge:
    """A causal backbone plus a 2-way head (index 1 = harmful): margin = logit[safe] - logit[harmful].

    All prefixes are scored in one forward: causal attention makes position ``P + t`` see exactly
    ``prefix + response[: t + 1]``. With ``ema`` in (0, 1], the margin of a prefix is the exponential
    moving average of the per-position margins up to it (``m_t = ema * raw_t + (1 - ema) * m_{t-1}``):
    still a function of the prefix alone, but without the token-to-token jitter of a single position.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        head: torch.nn.Linear,
        prefix_ids: Callable[[str], list[int]],
        *,
        name: str = "causal-head-judge",
        ema: float = 1.0,
    ) -> None:
        if not 0.0 < ema <= 1.0:
            raise ConfigError(f"ema={ema}: must be in (0, 1]; 1 keeps the raw per-position margins")
        self.backbone = backbone
        self.head = head
        self.prefix_ids = prefix_ids
        self.ema = ema
        self.name = name if ema == 1.0 else f"{name}/ema{ema:g}"

    @torch.no_grad()
    def score_prefixes(self, prompt: str, response_ids: Sequence[int]) -> list[float]:
        """Margins for every prefix of ``response_ids`` from a single forward."""
        if not response_ids:
            return []
        prefix = self.prefix_ids(prompt)
        ids = torch.tensor([prefix + list(response_ids)], device=self.backbone.device)
        out = self.backbone(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
        h = out.hidden_states[-1][0, len(prefix) :].to(self.head.weight.dtype)
        logits = self.head(h).float()
        raw = (logits[:, 0] - logits[:, 1]).tolist()
        if self.ema == 1.0:
            return raw
        out, m = [], raw[0]
        for x in raw:
            m = self.ema * x + (1.0 - self.ema) * m
            out.append(m)
        return out

    @torch.no_grad()
    def score_children(
        self, prompt: str, prefix: Sequence[int], children: Sequence[int]
    ) -> list[float]:
        """``score_prefixes(prompt, [*prefix, c])[-1]`` for every child ``c``, from one forward over
        the shared prefix and one batched single-token step (the prefix's KV cache repeated)."""
        from transformers import DynamicCache

        base = self.prefix_ids(prompt) + list(prefix)
        dev = self.backbone.device
        cache = DynamicCache()
        out = self.backbone(
            input_ids=torch.tensor([base], device=dev),
            **kv_kwargs(self.backbone, cache),
            use_cache=True,
            output_hidden_states=True,
        )
        n = len(children)
        cache.batch_repeat_interleave(n)
        step = self.backbone(
            input_ids=torch.tensor(list(children), device=dev)[:, None],
            **kv_kwargs(self.backbone, cache),
            use_cache=True,
            output_hidden_states=True,
        )
        h = step.hidden_states[-1][:, -1].to(self.head.weight.dtype)
        logits = self.head(h).float()
        raw = (logits[:, 0] - logits[:, 1]).tolist()
        if self.ema == 1.0 or not prefix:
            return raw
        hp = out.hidden_states[-1][0, len(base) - len(prefix) :].to(self.head.weight.dtype)
        lp = self.head(hp).float()
        m = None
        for x in (lp[:, 0] - lp[:, 1]).tolist():
            m = x if m is None else self.ema * x + (1.0 - self.ema) * m
        return [self.ema * x + (1.0 - self.ema) * m for x in raw]  # type: ignore[operator]


def judge_from_monitor(
    monitor: object, *, name: str = "monitor-response-head", ema: float = 1.0
) -> CausalHeadJudge:
    """The response head of an SCM monitor as a prefix judge (its layout ends at the response)."""
    from saffron_runtime.monitor.model import SCMMonitorModel

    if not isinstance(monitor, SCMMonitorModel):
        raise TypeError(f"expected an SCMMonitorModel, got {type(monitor).__name__}")
    return CausalHeadJudge(
        monitor.backbone, monitor.response_head, monitor.prefix_ids, name=name, ema=ema
    )


class CallableJudge:
    """Wraps ``fn(prompt, response_text) -> margin``; scores each prefix with its own call (O(T) calls)."""

    def __init__(
        self,
        fn: Callable[[str, str], float],
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str = "callable-judge",
    ) -> None:
        self.fn = fn
        self.tokenizer = tokenizer
        self.name = name

    def score_prefixes(self, prompt: str, response_ids: Sequence[int]) -> list[float]:
        """Margins for every prefix, decoding each prefix's text."""
        ids = list(response_ids)
        return [
            float(self.fn(prompt, self.tokenizer.decode(ids[: t + 1], skip_special_tokens=True)))
            for t in range(len(ids))
        ]
