"""Entity-aware rewards for search agents (E-GRPO): thoughts, matching, rewards, advantages."""

from saffron_runtime.rewards.egrpo import egrpo_rewards, grpo_advantages, normalised_rates
from saffron_runtime.rewards.entities import MatchOptions, match_rate, matched_entities
from saffron_runtime.rewards.thoughts import extract_thoughts
from saffron_runtime.rewards.trl import make_egrpo_reward_func

__all__ = [
    "MatchOptions",
    "egrpo_rewards",
    "extract_thoughts",
    "grpo_advantages",
    "make_egrpo_reward_func",
    "match_rate",
    "matched_entities",
    "normalised_rates",
]
