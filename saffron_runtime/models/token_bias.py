"""A per-token reward offset on the MRM's output layer: the part of a child's reward that does not
depend on the context.

The offset is the output layer's bias, so every forward (training, evaluation and the search's cached
one) adds it with no extra code path. It is saved beside the adapter as ``token_bias.safetensors``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from saffron_runtime.errors import ModelLoadError
from saffron_runtime.models.weights import load_tensor_file

TOKEN_BIAS_FILE = "token_bias.safetensors"


def output_base_layer(model: torch.nn.Module) -> torch.nn.Linear:
    """The plain linear output layer (under peft's LoRA, its ``base_layer``)."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    return getattr(head, "base_layer", head)


def set_token_bias(model: torch.nn.Module, bias: torch.Tensor, *, trainable: bool = False) -> None:
    """Install ``bias`` [vocab] as the output layer's bias (its dtype and device follow the weight)."""
    layer = output_base_layer(model)
    vocab = layer.weight.shape[0]
    if bias.dim() != 1 or bias.shape[0] != vocab:
        raise ModelLoadError(
            f"the token bias has shape {tuple(bias.shape)} but the output layer scores {vocab} "
            f"tokens; the bias belongs to another model (delete {TOKEN_BIAS_FILE} to load without it)"
        )
    param = bias.detach().to(dtype=layer.weight.dtype, device=layer.weight.device).clone()
    layer.bias = torch.nn.Parameter(param, requires_grad=trainable)


def token_bias(model: torch.nn.Module) -> torch.Tensor | None:
    """The output layer's bias, or None when it has none."""
    return output_base_layer(model).bias


def save_token_bias(model: torch.nn.Module, folder: str | os.PathLike[str]) -> None:
    """Write the output layer's bias to ``folder`` when there is one."""
    bias = token_bias(model)
    if bias is not None:
        save_file(
            {"bias": bias.detach().float().cpu().contiguous()}, str(Path(folder) / TOKEN_BIAS_FILE)
        )


def load_token_bias(model: torch.nn.Module, folder: str | os.PathLike[str]) -> bool:
    """Install the folder's token bias when it has one; return whether it did."""
    path = Path(folder) / TOKEN_BIAS_FILE
    if not path.is_file():
        return False
    set_token_bias(model, load_tensor_file(path))
    return True


def mean_centred_child_reward(
    children: Iterable[tuple[list[int], list[float]]], vocab_size: int, pseudo_count: float = 1.0
) -> torch.Tensor:
    """Each token's mean judge reward relative to its siblings, shrunk toward 0 for rare tokens.

    ``children`` yields, per judged prefix, the children's token ids and rewards. A token's value is
    ``sum(r - mean of its siblings) / (count + pseudo_count)``: the offset a context-free ranker would
    give it. Prefixes with a single child carry no order and are skipped.
    """
    sums: dict[int, float] = defaultdict(float)
    counts: dict[int, int] = defaultdict(int)
    for ids, rewards in children:
        if len(ids) < 2:
            continue
        mean = sum(rewards) / len(rewards)
        for i, v in zip(ids, rewards, strict=True):
            sums[i] += v - mean
            counts[i] += 1
    out = torch.zeros(vocab_size)
    for i, s in sums.items():
        out[i] = s / (counts[i] + pseudo_count)
    return out
