"""Every search setting, declared once, with its default, bounds and docstring.

:class:`SearchFields` is what ChatSaffron inherits as its fields and what the ``saffron`` command
line generates its options from; :class:`saffron_runtime.search.config.SearchConfig` (what the
engine reads) adds the stop strings. It lives outside the ``search`` package, which imports torch,
so that ``saffron --help`` stays instant.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

UNSEEN_REWARD = -1024.0
"""The reward the reference code gives to tokens never supervised in training."""

Method = Literal["saffron", "best_of_n", "prm_beam", "greedy"]
ObjectiveName = Literal["safe_likelihood", "reward", "reward_plus_logprob"]
METHODS: tuple[str, ...] = ("saffron", "best_of_n", "prm_beam", "greedy")


class SearchFields(BaseModel):
    """How to decode: one model for every method; each field says which methods read it.

    ``temperature`` affects only the sampling baseline (Best-of-N); Saffron ranks candidates by
    reward and never samples, so a temperature of 0 (as LangChain's standard tests pass) does not
    turn it into greedy decoding.
    """

    model_config = ConfigDict(use_attribute_docstrings=True, populate_by_name=True)

    method: Method = "saffron"
    """Search method: ``saffron`` (MRM-guided tree search), ``best_of_n`` (N samples ranked by the PRM,
    else the MRM), ``prm_beam`` (beam search scored by a process reward model) or ``greedy``."""
    budget: int = Field(4, ge=1, le=256)
    """Frontier width: beams kept per step (saffron, prm_beam)."""
    num_samples: int = Field(8, ge=1, le=1024)
    """N of Best-of-N: samples drawn and ranked (best_of_n)."""
    prm_children: int = Field(4, ge=1, le=256)
    """Children sampled per beam and scored by the PRM, one forward each (prm_beam)."""
    top_p: float = Field(0.8, gt=0.0, le=1.0)
    """Nucleus of the policy the candidates come from (every method but greedy)."""
    temperature: float = Field(1.0, ge=0.0, le=10.0)
    """Sampling temperature of Best-of-N (0 samples greedily)."""
    max_new_tokens: int = Field(
        128, ge=1, le=8192, validation_alias=AliasChoices("max_new_tokens", "max_tokens")
    )
    """Most tokens to generate (LangChain's ``max_tokens`` is the same setting). 128: a chat answer of a
    short paragraph; the engine (50) and ``saffron generate`` (64) used to cut answers mid-sentence. The
    attack evaluation always passes its own value (50), so its numbers do not depend on this."""
    min_new_tokens: int = Field(1, ge=0, le=8192)
    """EOS is banned for this many tokens (the reference code used 16 for its evaluation; 1 keeps
    short chat answers short)."""
    objective: ObjectiveName = "safe_likelihood"
    """What Saffron and PRM beam search rank children by. ``safe_likelihood`` (default): among children
    the reward model predicts safe (reward >= ``safe_threshold``) the policy's own mean log-probability
    decides, and the reward (plus ``unsafe_logprob_weight`` x that log-probability) decides only among
    children predicted unsafe; ``reward``: the paper's
    ranking by reward alone (among safe children that is the reward model's noise, and the text drifts
    into repetition); ``reward_plus_logprob``: reward + ``logprob_weight`` x mean log-probability.
    Chosen by measurement: see docs/engine.md. ``faithful=True`` always ranks by reward."""
    safe_threshold: float = 2.0
    """Reward at or above which ``safe_likelihood`` treats a child as safe. 2.0 (default), a margin
    above the judge's own 0, chosen on 132 validation prompts with ``unseen_from_parent``: it lowered
    the learned judge's attack success from 0.40 to 0.25 and benign refusals from 0.19 to 0.06 against
    0.0 with conservative exploration (benchmarks/README.md, "On 132 validation prompts"). Under the
    default shrinkage it still holds harm there (0.22), where 1.0 lets 0.35 through."""
    logprob_weight: float = Field(1.0, ge=0.0, le=1000.0)
    """Weight of the mean log-probability in ``reward_plus_logprob``."""
    unsafe_logprob_weight: float = Field(4.0, ge=0.0, le=1000.0)
    """``safe_likelihood``: children predicted unsafe rank by reward + this x mean log-probability
    instead of reward alone, so where every child falls under ``safe_threshold`` the policy still has a
    say (the reward alone there is the paper's ranking, which drifts into word salad). 4 (default): the
    mean divides a child's own log-probability by the answer's length, so useful weights are several
    units; 0 ranks those children by reward alone."""
    no_repeat_ngram_size: int = Field(0, ge=0, le=64)
    """Ban every token that would repeat an n-gram of this many tokens already in the response (Hugging
    Face's setting of the same name; every method). 0 (default) bans nothing; a beam search over a
    small policy can loop on a phrase ("your surroundings, your surroundings"), which 3 or 4 stops."""
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    """Hugging Face's setting of the same name, on the response's tokens (every method): a token already
    in the response has its logit divided by this (multiplied if negative) before the nucleus and the
    policy's log-probability are taken. 1.0 (default) changes nothing; above 1 a phrase loop loses
    likelihood, which a beam search over a small policy otherwise favours."""
    faithful: bool = False
    """Reproduce the reference code's quirks (finished-beam ranking) instead of the fixed rules."""
    max_commit_lag: int | None = Field(8, ge=1, le=8192)
    """Streaming: when the frontier runs this many tokens past the text every beam agrees on, keep
    only the best beam's subtree so the agreed text is committed (and shown) sooner. 8 keeps a chat
    stream steady; ``None`` never prunes (pruning can change which answer the search returns; the
    published attack evaluation ran without it and passes ``None`` itself)."""
    prune_flagged_beams: bool = False
    """Saffron and PRM beam: the streaming monitor's heads score every live beam's newest token from
    the hidden state the policy's forward kept (no extra forward), and beams its rule flags leave
    the frontier before they are committed, so the search picks another. If every beam is flagged,
    the search ends blocked (nothing flagged is released). Needs an SCM monitor on the policy's own
    model (the bundled heads monitor); off by default, so outputs stay as they were."""
    unseen_reward: float = UNSEEN_REWARD
    """Reward of tokens the MRM never saw supervised in training (conservative: they lose)."""
    unseen_from_parent: bool = True
    """Saffron: a token the MRM never saw supervised takes its parent's reward instead of
    ``unseen_reward`` (as an EOS the MRM cannot score does). On by default: the paper's conservative
    exploration (``False``, and always under ``faithful=True``) counts such tokens unsafe, and with the
    bundled MRM, which saw 17% of the vocabulary supervised, that turns benign answers naming a rare
    entity into refusals (benchmarks/README.md, "Saffron's over-refusal"); the higher
    ``safe_threshold`` takes back the safety it would cost. Read only with ``within_prefix_weight=1``
    (the default shrinkage gives unseen children their seen siblings' mean)."""
    unseen_siblings_cap: bool = False
    """Saffron with ``unseen_from_parent``: the parent's score an unseen token takes is capped at the
    policy-weighted mean reward of its seen siblings (the MRM's present view of the context), so a run
    of unseen tokens cannot keep a safe score the MRM no longer gives ("Max Max Max ..." on benign
    questions naming a rare entity: benchmarks/README.md, "What makes the name loops")."""
    within_prefix_weight: float = Field(0.25, ge=0.0, le=1.0)
    """Saffron: how much of a child's difference from its seen siblings' policy-weighted mean reward
    is kept (``mean + w * (reward - mean)``; never-supervised children take the mean, replacing
    ``unseen_from_parent``). Under 1 the safe/unsafe call rests on the node's level, which tracks the
    judge, more than on the spread among its children, which is mostly the MRM's noise (within-prefix
    Spearman 0.02). 0.25 (default), chosen on validation and benign prompts: name loops on benign
    questions 11 -> 6 of 135 at the same attack success (benchmarks/README.md, "On 132 validation
    prompts"); 1.0 keeps the raw reward (``faithful=True`` always does)."""
    seed: int = 0
    """Random seed of the sampling methods."""


SEARCH_FIELDS: tuple[str, ...] = tuple(SearchFields.model_fields)
"""Names of the search settings, in declaration order (ChatSaffron's per-call settings)."""
