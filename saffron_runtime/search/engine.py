"""Search over a policy with reward models, on trie KV caches: Saffron, Best-of-N, PRM beam, greedy.

``SearchEngine.search(prompt_ids, config, stop_event)`` returns a :class:`SearchResult`;
``SearchEngine.stream(...)`` yields the committed tokens (those every live beam agrees on) as soon
as they are final, and holds the result in ``.result`` once exhausted. The stop event is checked
once per step, so setting it ends the search within one step.

The engine holds the models and their tries and validates a request; each method is its own
module (:mod:`.registry` maps ``SearchConfig.method`` to it), and a :class:`SearchRun` carries a
request's state and counts its model calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from saffron_runtime.cache import TrieKVCache
from saffron_runtime.constraints import Grammar
from saffron_runtime.errors import ConfigError, PromptError
from saffron_runtime.models.chat import chat_prompt_ids
from saffron_runtime.models.flops import FlopsModel
from saffron_runtime.models.loading import LoadedModel
from saffron_runtime.models.mrm import MultifurcationRewardModel
from saffron_runtime.models.vocab import check_vocab_compatible
from saffron_runtime.search.config import SearchConfig
from saffron_runtime.search.flagging import BeamMonitor
from saffron_runtime.search.method import Scorer
from saffron_runtime.search.prm import ProcessRewardModel
from saffron_runtime.search.registry import method_class
from saffron_runtime.search.result import SearchResult, SearchStats, StreamChunk
from saffron_runtime.search.run import SearchRun

__all__ = ["Scorer", "SearchEngine", "SearchStream", "StreamChunk"]

PRUNING_METHODS = ("saffron", "prm_beam")
"""The methods that read ``prune_flagged_beams`` (the frontier searches); the others ignore it."""


class SearchStream:
    """Iterator of :class:`StreamChunk`; ``result`` is set when it is exhausted."""

    def __init__(self, gen: Iterator[StreamChunk], stats: SearchStats) -> None:
        self._gen = gen
        self.stats = stats  # live counters, also valid when the stream is closed early
        self.result: SearchResult | None = None

    def __iter__(self) -> Iterator[StreamChunk]:
        self.result = yield from self._gen
        return self.result

    def run(self) -> SearchResult:
        """Consume the stream and return the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


class SearchEngine:
    """A policy plus optional MRM / PRM, each with the trie that lives with its model."""

    def __init__(
        self,
        policy: LoadedModel,
        mrm: MultifurcationRewardModel | None = None,
        prm: ProcessRewardModel | None = None,
        *,
        cache_bytes: int | None = None,
    ) -> None:
        self.policy = policy
        self.mrm = mrm
        self.prm = prm
        if mrm is not None:
            check_vocab_compatible(
                policy.tokenizer, mrm.tokenizer, token_map=mrm.token_map, what="MRM"
            )
        self.policy_cache = TrieKVCache.for_model(policy.model, max_bytes=cache_bytes)
        self.mrm_cache = TrieKVCache.for_model(mrm.model, max_bytes=cache_bytes) if mrm else None
        self.prm_cache = TrieKVCache.for_model(prm.model, max_bytes=cache_bytes) if prm else None
        self.flops_policy = FlopsModel.of(policy.model)
        self.flops_mrm = FlopsModel.of(mrm.model) if mrm else None
        self.flops_prm = FlopsModel.of(prm.model) if prm else None
        self.eos_ids = _eos_ids(policy)
        self.vocab = int(policy.model.get_output_embeddings().weight.shape[0])
        self.max_context = int(getattr(policy.model.config, "max_position_embeddings", 0) or 0)

    # ------------------------------------------------------------------ entry points
    def reset_caches(self) -> None:
        """Empty every trie, so the next search starts cold (its compute counts it alone)."""
        for cache in (self.policy_cache, self.mrm_cache, self.prm_cache):
            if cache is not None:
                cache.clear()

    def chat_prompt_ids(self, prompt: str) -> list[int]:
        """Policy prompt ids of a one-turn chat (chat template with the assistant header)."""
        return chat_prompt_ids(self.policy.tokenizer, prompt)

    def search(
        self,
        prompt_ids: Sequence[int],
        config: SearchConfig | None = None,
        stop_event: threading.Event | None = None,
        **kw: Any,
    ) -> SearchResult:
        """Run a search to the end and return its result (see :meth:`stream` for the arguments)."""
        return self.stream(prompt_ids, config, stop_event, **kw).run()

    def stream(
        self,
        prompt_ids: Sequence[int],
        config: SearchConfig | None = None,
        stop_event: threading.Event | None = None,
        *,
        prompt_text: str | None = None,
        prefill_ids: Sequence[int] = (),
        constraint: Grammar | None = None,
        scorer: Scorer | None = None,
        reward_sees_prefill: bool = False,
        beam_monitor: BeamMonitor | None = None,
    ) -> SearchStream:
        """A streaming search.

        ``prompt_text`` is what the reward model reads as the prompt (required for methods that use
        the MRM or PRM). ``prefill_ids`` are forced after the prompt (a prefilling attack): the policy
        conditions on them; the result does not include them, and the reward models do not read them
        unless ``reward_sees_prefill`` (then they score the prefill and the continuation as one
        response, as a judge reading the whole transcript would). ``beam_monitor`` scores every
        live beam when ``config.prune_flagged_beams`` is on (see :mod:`.flagging`); the policy's
        trie keeps hidden states for it while the search runs.
        """
        cfg = config or SearchConfig()
        ids = [int(t) for t in prompt_ids] + [int(t) for t in prefill_ids]
        self._validate(prompt_ids, ids, cfg, prompt_text, scorer)
        prunes = cfg.prune_flagged_beams and cfg.method in PRUNING_METHODS
        if prunes and beam_monitor is None:
            raise ConfigError(
                "prune_flagged_beams=True needs a monitor that scores beams: run the search through "
                "ChatSaffron or GuardedGeneration with an SCM monitor on the policy's own model (the "
                "bundled heads monitor), or pass beam_monitor=; or set prune_flagged_beams=False"
            )
        run = SearchRun(
            self,
            cfg,
            stop_event,
            reward_extra=prefill_ids if reward_sees_prefill else (),
            beam_monitor=beam_monitor if prunes else None,
        )
        method = method_class(cfg)(run, ids, prompt_text or "", constraint, scorer)
        return SearchStream(_closing(run, method.search()), run.stats)

    def _validate(
        self,
        prompt_ids: Sequence[int],
        ids: list[int],
        cfg: SearchConfig,
        prompt_text: str | None,
        scorer: Scorer | None,
    ) -> None:
        """Reject a request this engine cannot run, naming what is missing and how to fix it."""
        if not prompt_ids:
            raise PromptError("the prompt is empty; pass at least one token")
        if self.max_context and len(ids) + cfg.max_new_tokens > self.max_context:
            raise PromptError(
                f"the prompt has {len(ids)} tokens and max_new_tokens is {cfg.max_new_tokens}, more than "
                f"the policy's context of {self.max_context}; shorten the prompt or lower max_new_tokens"
            )
        needs = {"saffron": "mrm", "prm_beam": "prm"}.get(cfg.method)
        if needs == "mrm" and self.mrm is None:
            raise ConfigError("method='saffron' needs a multifurcation reward model; pass mrm=...")
        if needs == "prm" and self.prm is None:
            raise ConfigError("method='prm_beam' needs a process reward model; pass prm=...")
        if (needs or (cfg.method == "best_of_n" and scorer is None)) and prompt_text is None:
            raise ConfigError(
                f"method={cfg.method!r} needs prompt_text: the reward model reads the prompt as text"
            )
        if cfg.method == "best_of_n" and scorer is None and self.mrm is None and self.prm is None:
            raise ConfigError(
                "method='best_of_n' needs a scorer, an MRM or a PRM to rank its samples"
            )


def _eos_ids(policy: LoadedModel) -> frozenset[int]:
    """The tokenizer's EOS plus every EOS of the model's generation config."""
    tok = policy.tokenizer
    eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    gen_eos = getattr(getattr(policy.model, "generation_config", None), "eos_token_id", None)
    eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    return frozenset(int(e) for e in eos)


def _closing(run: SearchRun, steps: Iterator[StreamChunk]) -> Iterator[StreamChunk]:
    """The method's steps; the request's trie references are released however the stream ends
    (and the policy trie's hidden states, kept for a beam monitor, are no longer asked for)."""
    holds = run.beam_monitor is not None
    if holds:
        run.engine.policy_cache.hold_hidden()
    try:
        result = yield from steps
    finally:
        run.close()
        if holds:
            run.engine.policy_cache.release_hidden()
    return result
