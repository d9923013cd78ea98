"""MRM training with partial supervision (DESIGN 1.1).

For a response ``y`` to prompt ``x`` with token rewards ``r_t``, only the reward entry of the token
actually observed is supervised: ``L = mean_t loss(R(x, y_<t)[y_t], r_t)`` (squared error by default;
the paper's sum, averaged over tokens for a step size that does not depend on length). The head rows of
the observed tokens are gathered from the final hidden states, so no ``[T, vocab]`` logits are built
and no other vocabulary entry receives gradient. LoRA through peft; the unseen-token mask marks every
token never supervised in the training data.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from saffron_runtime.config import Settings
from saffron_runtime.jsonl import read_jsonl
from saffron_runtime.models.loading import LoadedModel, load_policy
from saffron_runtime.models.mrm import MRMTemplate, MultifurcationRewardModel
from saffron_runtime.models.mrm_io import save_mrm
from saffron_runtime.models.peft_quiet import quiet_peft
from saffron_runtime.models.token_bias import mean_centred_child_reward, set_token_bias, token_bias
from saffron_runtime.training.loop import LoopResult, StepOutput, train_loop
from saffron_runtime.training.lora import top_layers
from saffron_runtime.training.model_card import write_model_card
from saffron_runtime.training.reward_data import TokenRewardRecord

_BIAS_KEY = "saffron.token_bias"
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: dict[str, LossFn] = {
    "mse": lambda pred, target: (pred - target).pow(2),
    "huber": lambda pred, target: torch.nn.functional.huber_loss(pred, target, reduction="none"),
}


class MRMTrainConfig(Settings):
    """Settings of one MRM training run; every field is validated."""

    data: Path
    out: Path
    base: str = "smollm2"
    template_prefix: str = MRMTemplate().prefix
    template_separator: str = MRMTemplate().separator
    lora_r: int = Field(8, ge=1, le=256)
    lora_alpha: float = Field(16.0, gt=0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    top_layers: int | None = Field(
        None, ge=1, description="LoRA only in the last N decoder layers (backward stops below them)"
    )
    lr: float = Field(1e-3, gt=0, le=1.0)
    epochs: int = Field(1, ge=1, le=1000)
    batch_size: int = Field(8, ge=1, le=1024)
    max_response_tokens: int = Field(256, ge=1, le=8192)
    loss: Literal["mse", "huber"] = "mse"
    rank_weight: float = Field(0.0, ge=0.0, le=1e4)
    """Weight of the within-prefix term: squared error of each position's entries centred on their
    own mean (the search ranks children of one prefix; their rewards differ ~100x less than the
    levels of different prefixes do, so the plain loss all but ignores that order). 0: off."""
    head_lora: bool = False
    """LoRA on the output layer too (same rank): every token gets its own adaptable row, so the MRM can
    learn what a token adds to a prefix's reward wherever it appears (the frozen, tied embedding rows
    alone leave the children's order to the context). The adapter stays in peft's layout."""
    loraplus_ratio: float = Field(1.0, ge=1.0, le=256.0)
    """LoRA+ (peft's ``create_loraplus_optimizer``): the B matrices learn this many times faster than the
    A ones, which speeds up a fit that is still falling when the epochs end. 1: plain AdamW."""
    token_bias: bool = False
    """A learnable reward offset per token (the output layer's bias), started from each token's mean
    judge reward relative to its siblings in the data: the context-free part of the children's order,
    which the LoRA would otherwise have to learn token by token. Saved as ``token_bias.safetensors``."""
    train_final_norm: bool = False
    """Train the final norm's gain too (peft ``modules_to_save``). Frozen, it fixes the scale of every
    logit, so the base model's own gaps between a prefix's children (several units) must be cancelled
    by the LoRA alone to expose reward gaps about 100x smaller."""
    final_norm_scale: float = Field(1.0, gt=0.0, le=1.0)
    """With ``train_final_norm``: the trained gain starts at this multiple of the base's. Below 1 it damps
    the base model's logits (uncorrelated with the judge's order among children, and ~5x its spread)
    from the first step, so the token bias and the LoRA are not drowned out while they learn."""
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)
    max_steps: int | None = Field(None, ge=1)
    licences: str = Field("", description="licences of the base model and data, for the model card")

    @model_validator(mode="after")
    def _scale_needs_a_trained_norm(self) -> MRMTrainConfig:
        """A gain scale on a frozen norm would be silently ignored; say so instead."""
        if self.final_norm_scale != 1.0 and not self.train_final_norm:
            raise ValueError("final_norm_scale scales the trained final norm: set train_final_norm=True too")
        return self


def partial_supervision_loss(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    targets: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    loss_fn: LossFn = LOSSES["mse"],
    rank_weight: float = 0.0,
) -> torch.Tensor:
    """Mean loss of the gathered rewards ``R[pos, y] = h_pos . W[y] (+ b[y])`` against ``r``.

    ``hidden`` [B, T, H] are the states that predict the next token; ``head`` is the output layer
    (plain or under LoRA); ``targets``/``rewards``/``mask`` are [B, T] (the observed token at each
    position) or [B, T, K] (K supervised entries per position: the observed token and judged
    children). Only the gathered rows of ``W`` enter the graph (:func:`head_rows`).
    ``rank_weight`` adds the squared error of the entries centred on their position's mean (over
    positions with two or more entries): the order of one prefix's children, which the search reads.
    """
    rows, bias = head_rows(head, targets)  # [B, T, H] or [B, T, K, H]
    states = hidden if targets.dim() == 2 else hidden.unsqueeze(2)
    pred = (states.to(rows.dtype) * rows).sum(-1)
    if bias is not None:
        pred = pred + bias
    per_tok = loss_fn(pred.float(), rewards.float()) * mask
    level = per_tok.sum() / mask.sum().clamp(min=1)
    if rank_weight == 0.0 or targets.dim() == 2:
        return level
    return level + rank_weight * centred_loss(pred.float(), rewards.float(), mask)


def head_rows(head: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output layer's effective weight rows (and biases) for token ``ids``, without the
    vocabulary-wide product. Under peft's LoRA the row of token ``v`` is
    ``W[v] + scaling * B[v] @ A``: a per-token adaptation of the head (``--head-lora``)."""
    base = getattr(head, "base_layer", head)
    rows = base.weight[ids]
    bias = base.bias[ids] if base.bias is not None else None
    for name in getattr(head, "active_adapters", []):
        if name in getattr(head, "lora_A", {}):
            a, b = head.lora_A[name].weight, head.lora_B[name].weight  # [r, H], [V, r]
            rows = rows + head.scaling[name] * (b[ids] @ a)
    return rows, bias


def centred_loss(pred: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared error of [B, T, K] entries after subtracting each position's masked mean, over the
    positions with at least two entries (zero when every position has one)."""
    n = mask.sum(-1, keepdim=True)
    many = (n >= 2).float() * mask

    def centre(x: torch.Tensor) -> torch.Tensor:
        return x - (x * mask).sum(-1, keepdim=True) / n.clamp(min=1)

    err = (centre(pred) - centre(rewards)) ** 2 * many
    return err.sum() / many.sum().clamp(min=1)


def _entries(r: TokenRewardRecord, max_resp: int) -> list[list[tuple[int, float]]]:
    """Per position, the supervised (token, reward) entries: the observed token first, then the
    judged children of that prefix (the observed token not repeated)."""
    y, rw = r.response_ids[:max_resp], r.rewards[:max_resp]
    entries = [[(tok, rew)] for tok, rew in zip(y, rw, strict=True)]
    for c in r.children:
        if c.t < len(y):
            entries[c.t] += [(i, v) for i, v in zip(c.ids, c.rewards, strict=True) if i != y[c.t]]
    return entries


def _batch(
    records: list[TokenRewardRecord],
    prefix_ids: dict[str, list[int]],
    pad: int,
    max_resp: int,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Right-padded inputs ``prefix + y[:-1]``; the state at ``P-1+t`` predicts the rewards of the
    entries at ``t`` (``targets``/``rewards``/``mask`` are [B, T, K]). Built on the host, element
    by element, then moved to ``device`` (the model's) in one copy per tensor."""
    with torch.device("cpu"):
        batch = _host_batch(records, prefix_ids, pad, max_resp)
    return {k: v.to(device) for k, v in batch.items()}


def _host_batch(
    records: list[TokenRewardRecord], prefix_ids: dict[str, list[int]], pad: int, max_resp: int
) -> dict[str, torch.Tensor]:
    rows = [prefix_ids[r.id] + r.response_ids[:max_resp][:-1] for r in records]
    entries = [_entries(r, max_resp) for r in records]
    width = max(len(row) for row in rows)
    n_tok = max(len(e) for e in entries)
    k = max(len(at) for e in entries for at in e)
    ids = torch.full((len(records), width), pad, dtype=torch.long)
    att = torch.zeros((len(records), width), dtype=torch.long)
    pos = torch.zeros((len(records), n_tok), dtype=torch.long)
    targets = torch.zeros((len(records), n_tok, k), dtype=torch.long)
    rewards = torch.zeros((len(records), n_tok, k))
    mask = torch.zeros((len(records), n_tok, k))
    for i, (row, r, e) in enumerate(zip(rows, records, entries, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        att[i, : len(row)] = 1
        p = len(prefix_ids[r.id])
        pos[i, : len(e)] = torch.arange(p - 1, p - 1 + len(e))
        for t, at in enumerate(e):
            targets[i, t, : len(at)] = torch.tensor([tok for tok, _ in at])
            rewards[i, t, : len(at)] = torch.tensor([rew for _, rew in at])
            mask[i, t, : len(at)] = 1
    return {
        "input_ids": ids,
        "attention_mask": att,
        "pos": pos,
        "targets": targets,
        "rewards": rewards,
        "mask": mask,
    }


def compute_unseen_mask(
    records: list[TokenRewardRecord], vocab_size: int, max_resp: int
) -> torch.Tensor:
    """True for every token never supervised (never an observed token nor a judged child) in the data."""
    seen = torch.zeros(vocab_size, dtype=torch.bool)
    for r in records:
        seen[torch.tensor(r.response_ids[:max_resp])] = True
        for c in r.children:
            if c.t < max_resp:
                seen[torch.tensor(c.ids)] = True
    return ~seen


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body (LoRA layers are injected in place, so it carries the adapter)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model


def _lora_model(loaded: LoadedModel, config: MRMTrainConfig) -> torch.nn.Module:
    """The base model with LoRA adapters, in training mode."""
    from peft import LoraConfig, get_peft_model

    modules = list(config.target_modules)
    if config.head_lora:
        head = loaded.model.get_output_embeddings()
        # peft matches a full module name before it applies layers_to_transform, so the head is kept
        modules += [name for name, m in loaded.model.named_modules() if m is head]
    norm = _decoder(loaded.model).norm
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=modules,
        bias="none",
        layers_to_transform=top_layers(loaded.model, config.top_layers),
        modules_to_save=[n for n, m in loaded.model.named_modules() if m is norm]
        if config.train_final_norm
        else None,
    )
    with quiet_peft():
        model = get_peft_model(loaded.model, lora)
    if config.train_final_norm and config.final_norm_scale != 1.0:
        with torch.no_grad():
            _decoder(model).norm.modules_to_save["default"].weight.mul_(config.final_norm_scale)
    model.train()
    return model


def initial_token_bias(
    records: list[TokenRewardRecord], vocab_size: int, max_resp: int
) -> torch.Tensor:
    """The token bias's starting point: each token's mean reward relative to its judged siblings."""
    children = ((c.ids, c.rewards) for r in records for c in r.children if c.t < max_resp)
    return mean_centred_child_reward(children, vocab_size)


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: the adapter (and saved modules) plus the token bias, if any."""
    from peft.utils import get_peft_model_state_dict

    tensors = get_peft_model_state_dict(model, save_embedding_layers=False)
    bias = token_bias(model)
    return tensors if bias is None else {**tensors, _BIAS_KEY: bias}


def _restore(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`_trainable`."""
    from peft import set_peft_model_state_dict

    bias = tensors.pop(_BIAS_KEY, None)
    if bias is not None:  # in place: the optimizer holds this very parameter
        with torch.no_grad():
            token_bias(model).copy_(bias)  # type: ignore[union-attr]
    set_peft_model_state_dict(model, tensors)


def _optimizer(model: torch.nn.Module, config: MRMTrainConfig) -> torch.optim.Optimizer:
    """AdamW over the adapter, or LoRA+ groups when ``loraplus_ratio`` is above 1."""
    if config.loraplus_ratio > 1.0:
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model, torch.optim.AdamW, lr=config.lr, loraplus_lr_ratio=config.loraplus_ratio,
            weight_decay=0.0,
        )
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)


def train_mrm(
    config: MRMTrainConfig,
    *,
    base: LoadedModel | None = None,
    stop_event: object | None = None,
    progress: bool = True,
) -> MultifurcationRewardModel:
    """Train an MRM on token-level reward data; resume from ``out/checkpoints`` if present.

    Writes the Saffron-1 layout plus ``saffron_mrm.json`` and a model card into ``config.out``.
    """
    t_start = time.perf_counter()
    records = read_jsonl(config.data, TokenRewardRecord)  # validated up front
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    loaded = base or load_policy(config.base, dtype="float32")
    template = MRMTemplate(prefix=config.template_prefix, separator=config.template_separator)
    tok = loaded.tokenizer
    prefix_ids = {r.id: template.prompt_ids(tok, r.prompt) for r in records}
    model = _lora_model(loaded, config)
    head = model.get_output_embeddings()
    if config.token_bias:
        vocab = int(head.weight.shape[0])
        init = initial_token_bias(records, vocab, config.max_response_tokens)
        set_token_bias(model, init, trainable=True)
    opt = _optimizer(model, config)
    loss_fn = LOSSES[config.loss]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    saved_config = {"config": config.model_dump(mode="json")}

    def step_fn(step: int, idx: list[int]) -> StepOutput:
        b = _batch(
            [records[j] for j in idx], prefix_ids, pad, config.max_response_tokens, head.weight.device
        )
        hidden = _decoder(model)(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"]
        ).last_hidden_state
        h = hidden.gather(1, b["pos"].unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        loss = partial_supervision_loss(
            h, head, b["targets"], b["rewards"], b["mask"], loss_fn, config.rank_weight
        )
        return StepOutput(loss, int(b["mask"].sum()), saved_config)

    done = train_loop(
        config,
        n_examples=len(records),
        optimizer=opt,
        step_fn=step_fn,
        trainable=lambda: _trainable(model),
        restore=lambda tensors: _restore(model, tensors),
        checkpoints=config.out / "checkpoints",
        label="train MRM",
        what="MRM training",
        stop_event=stop_event,
        progress=progress,
    )
    model.eval()
    return _save(model, tok, template, records, config, done, time.perf_counter() - t_start)


def _save(
    model: torch.nn.Module,
    tok: Any,
    template: MRMTemplate,
    records: list[TokenRewardRecord],
    config: MRMTrainConfig,
    done: LoopResult,
    wall: float,
) -> MultifurcationRewardModel:
    """The trained MRM with its unseen-token mask, saved with its metadata and model card."""
    head = model.get_output_embeddings()
    mask = compute_unseen_mask(records, int(head.weight.shape[0]), config.max_response_tokens)
    mrm = MultifurcationRewardModel(
        model=model,
        tokenizer=tok,
        template=template,
        unseen_mask=mask,
        eos_supervised=any(r.ended_with_eos for r in records),
    )
    losses = done.losses
    meta = {
        "steps": done.step,
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "train_records": len(records),
        "wall_time_s": round(wall, 1),
        "seed": config.seed,
        "eos_token_id": tok.eos_token_id,
    }
    save_mrm(mrm, config.out, base=config.base, metadata=meta)
    write_model_card(
        config.out,
        title="Multifurcation reward model (Saffron MRM)",
        sections={
            "What": "A LoRA adapter that turns the base causal LM's output head into a per-token safety "
            "reward vector: R(x, y_<t)[v] = predicted judge margin after appending token v.",
            "Base model": config.base,
            "Training": f"partial supervision ({config.loss}) on {len(records)} responses from "
            f"`{config.data}`; {done.step} steps, batch {config.batch_size}, lr {config.lr}, "
            f"{f'LoRA+ (ratio {config.loraplus_ratio:g}), ' if config.loraplus_ratio > 1 else ''}"
            f"LoRA r={config.lora_r} alpha={config.lora_alpha} on {config.target_modules}"
            f"{' and the output layer' if config.head_lora else ''}"
            f"{', the final norm trained' if config.train_final_norm else ''}"
            f"{', a learnable per-token bias' if config.token_bias else ''}"
            f" ({f'last {config.top_layers} layers' if config.top_layers else 'all layers'}).",
            "Loss": f"first {meta['first_loss']}, last {meta['final_loss']}",
            "Unseen tokens": f"{int(mask.sum())} of {mask.numel()} vocabulary entries were never "
            f"supervised and are masked at search time.",
            "Wall time": f"{wall:.1f} s",
            "Licences": config.licences
            or "not given: add the base model's and the data's licences",
        },
    )
    return mrm
