"""The one way a one-turn user prompt becomes token ids: the chat template plus the assistant header.

Policy, monitor, judge and reward data all use it, so the monitor and the judge see exactly the
sequence the policy sees.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Ids of ``[{"role": "user", "content": prompt}]`` with the generation prompt appended."""
    return list(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )
