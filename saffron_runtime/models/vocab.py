"""Policy and reward model (or monitor) must index the same vocabulary, or the caller maps it."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from saffron_runtime.errors import TokenizerMismatchError


def check_vocab_compatible(
    policy: PreTrainedTokenizerBase,
    other: PreTrainedTokenizerBase,
    *,
    token_map: torch.Tensor | None = None,
    what: str = "reward model",
) -> None:
    """Raise :class:`TokenizerMismatchError` naming what differs, unless the vocabularies agree.

    With ``token_map`` (policy id -> other id, a LongTensor over the policy vocabulary) only the
    map's size and range are checked: the caller vouches for the mapping.
    """
    pv, ov = policy.get_vocab(), other.get_vocab()
    if token_map is not None:
        if token_map.dim() != 1 or token_map.shape[0] < len(pv):
            raise TokenizerMismatchError(
                f"token_map must be a 1-D tensor with one entry per policy token ({len(pv)}); "
                f"got shape {tuple(token_map.shape)}"
            )
        if int(token_map.min()) < 0 or int(token_map.max()) >= len(ov):
            raise TokenizerMismatchError(
                f"token_map points outside the {what}'s vocabulary of {len(ov)} tokens"
            )
        return
    if pv == ov and policy.eos_token_id == other.eos_token_id:
        return
    problems = []
    if len(pv) != len(ov):
        problems.append(f"sizes differ (policy {len(pv)}, {what} {len(ov)})")
    diff = [t for t, i in pv.items() if ov.get(t) != i]
    if diff:
        shown = ", ".join(f"{t!r}: {pv[t]} vs {ov.get(t)}" for t in sorted(diff)[:5])
        problems.append(f"{len(diff)} tokens have different ids (e.g. {shown})")
    if policy.eos_token_id != other.eos_token_id:
        problems.append(f"EOS differs (policy {policy.eos_token_id}, {what} {other.eos_token_id})")
    raise TokenizerMismatchError(
        f"the policy and the {what} do not share a tokenizer: {'; '.join(problems)}. Use a {what} "
        f"trained on the policy's tokenizer, or pass token_map= (policy id -> {what} id)"
    )
