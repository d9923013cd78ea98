"""The multifurcation reward model (MRM): a causal LM whose vocabulary-sized output is a reward vector.

``R(x, y_<t)[v]`` is the predicted safety margin (higher = safer, below 0 = unsafe) of the prefix
``y_<t`` extended by token ``v``; one forward scores every child of a node (DESIGN 1.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saffron_runtime.search_fields import UNSEEN_REWARD

SAFFRON1_PREFIX = "<|begin_of_text|>\n\nUser:"
SAFFRON1_SEPARATOR = "\n\nAgent:"


@dataclass(frozen=True)
class MRMTemplate:
    """How the MRM's input is laid out: ``prefix + prompt + separator`` then the response token ids.

    The response is appended as token ids (never re-tokenised text), identically in training and in
    search. ``add_special_tokens`` is False because the Saffron-1 prefix spells out its BOS token.
    """

    prefix: str = SAFFRON1_PREFIX
    separator: str = SAFFRON1_SEPARATOR

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
        """Token ids of everything before the response (the part every beam shares)."""
        text = f"{self.prefix}{prompt}{self.separator}"
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def input_ids(
        self, tokenizer: PreTrainedTokenizerBase, prompt: str, response_ids: list[int]
    ) -> list[int]:
        """Full MRM input for a prompt and a (partial) response given as token ids."""
        return self.prompt_ids(tokenizer, prompt) + list(response_ids)

    def to_dict(self) -> dict[str, str]:
        """JSON form, saved next to trained adapters."""
        return {"prefix": self.prefix, "separator": self.separator}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MRMTemplate:
        """Inverse of :meth:`to_dict`."""
        return cls(prefix=str(d["prefix"]), separator=str(d["separator"]))


MRM_TEMPLATES: dict[str, MRMTemplate] = {
    "saffron1": MRMTemplate(),
    "chatml": MRMTemplate(
        prefix="<|im_start|>user\n", separator="<|im_end|>\n<|im_start|>assistant\n"
    ),
}
"""Named layouts: ``saffron1`` as the released adapter was trained; ``chatml`` for ChatML models
(SmolLM2), the policy's own turn markers without its default system prompt."""


@dataclass
class MultifurcationRewardModel:
    """An MRM ready for search: backbone (usually peft-wrapped), tokenizer, template, unseen mask.

    ``token_map`` (optional) maps policy token id -> MRM vocabulary index when the two vocabularies
    differ but the caller supplies a mapping; None means they are identical.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    template: MRMTemplate = field(default_factory=MRMTemplate)
    unseen_mask: torch.Tensor | None = None
    token_map: torch.Tensor | None = None
    eos_supervised: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        """Size of the reward vector (the backbone's output dimension)."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    @torch.no_grad()
    def rewards(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Uncached reward vectors at the last position of each row, in fp32 ``[batch, vocab]``.

        Unseen tokens are NOT masked here; :meth:`mask_unseen` does it, so callers choose.
        """
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def mask_unseen(self, rewards: torch.Tensor, value: float = UNSEEN_REWARD) -> torch.Tensor:
        """Set the reward of never-supervised tokens to ``value`` (conservative exploration)."""
        if self.unseen_mask is None:
            return rewards
        mask = self.unseen_mask
        if mask.device != rewards.device:  # moved once, not on every search step
            mask = self.unseen_mask = mask.to(rewards.device)
        return rewards.masked_fill(mask[: rewards.shape[-1]], value)
