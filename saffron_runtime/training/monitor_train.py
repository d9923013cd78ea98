"""Monitor training with dual supervision (SCM): token head + response head (+ optional prompt head).

Loss: ``w_tok * CE_token + w_resp * CE_response + w_logic * L_logic`` (0.6 / 0.4 / 1.0 by default),
``L_logic = -log(1 - c_resp + c_resp * max_t c_tok_t)`` so that "the response is harmful" implies
"some token is harmful". Variants: ``heads`` (a): the backbone is frozen and only the heads learn,
on the exact chat-template token sequence the policy sees (when the backbone is the policy, the
monitor needs no second forward); ``lora`` (b): LoRA on the backbone plus the heads. The decision
rule (name, theta, k) is chosen on a validation split and saved with the model; never on test data.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field

from saffron_runtime.config import Settings
from saffron_runtime.jsonl import read_jsonl
from saffron_runtime.models.loading import LoadedModel, load_policy
from saffron_runtime.models.peft_quiet import quiet_peft
from saffron_runtime.monitor.model import SCMMonitorModel, save_monitor
from saffron_runtime.training.loop import LoopResult, StepFn, StepOutput, train_loop
from saffron_runtime.training.lora import top_layers
from saffron_runtime.training.model_card import write_model_card
from saffron_runtime.training.rule_choice import choose_rule
from saffron_runtime.training.safety_data import harm_start, token_labels
from saffron_runtime.training.warm_start import warm_start


class MonitorRecord(BaseModel):
    """A labelled response; token labels come from ``token_labels`` or the ``harm_start`` char offset."""

    id: str
    prompt: str
    response: str = Field(min_length=1)
    label: int = Field(ge=0, le=1)
    harm_start: int | None = None
    token_labels: list[int] | None = None


class PromptRecord(BaseModel):
    """A labelled request for the prompt head (1 = harmful request)."""

    id: str
    prompt: str
    label: int = Field(ge=0, le=1)


class MonitorTrainConfig(Settings):
    """Settings of one monitor training run."""

    data: Path
    val: Path | None = None
    prompt_data: Path | None = None
    out: Path
    base: str = "smollm2"
    variant: Literal["heads", "lora"] = "heads"
    lora_r: int = Field(8, ge=1, le=256)
    lora_alpha: float = Field(16.0, gt=0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    top_layers: int | None = Field(
        None, ge=1, description="LoRA only in the last N decoder layers (backward stops below them)"
    )
    lr: float = Field(1e-3, gt=0, le=1)
    epochs: int = Field(1, ge=1, le=1000)
    batch_size: int = Field(8, ge=1, le=1024)
    max_response_tokens: int = Field(256, ge=1, le=8192)
    w_token: float = Field(0.6, ge=0)
    w_response: float = Field(0.4, ge=0)
    w_logic: float = Field(1.0, ge=0)
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")
    licences: str = Field("", description="licences of the base model and data, for the model card")
    init_from: Path | None = Field(
        None, description="a saved monitor folder to start from (same variant and LoRA shape)"
    )


def logic_loss(c_resp: torch.Tensor, c_tok_max: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``-log(1 - c_resp + c_resp * max_t c_tok_t)``, averaged over the batch."""
    return -torch.log((1 - c_resp + c_resp * c_tok_max).clamp(min=eps)).mean()


def dual_loss(
    tok_logits: torch.Tensor,
    tok_labels: torch.Tensor,
    tok_mask: torch.Tensor,
    resp_logits: torch.Tensor,
    resp_labels: torch.Tensor,
    cfg: MonitorTrainConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The SCM loss on a padded batch: token logits ``[B, T, 2]``, response logits ``[B, 2]``."""
    ce_tok = torch.nn.functional.cross_entropy(
        tok_logits.reshape(-1, 2), tok_labels.reshape(-1), reduction="none"
    )
    ce_tok = (ce_tok * tok_mask.reshape(-1)).sum() / tok_mask.sum().clamp(min=1)
    ce_resp = torch.nn.functional.cross_entropy(resp_logits, resp_labels)
    p_tok = torch.softmax(tok_logits.float(), -1)[..., 1].masked_fill(tok_mask == 0, 0.0)
    l_logic = logic_loss(torch.softmax(resp_logits.float(), -1)[:, 1], p_tok.max(dim=1).values)
    loss = cfg.w_token * ce_tok + cfg.w_response * ce_resp + cfg.w_logic * l_logic
    return loss, {"token": ce_tok.item(), "response": ce_resp.item(), "logic": l_logic.item()}


def _encode(
    monitor: SCMMonitorModel, r: MonitorRecord, max_resp: int
) -> tuple[list[int], int, list[int]]:
    """(ids, prefix length, token labels) with the response as the policy would see it."""
    tok = monitor.tokenizer
    prefix = monitor.prefix_ids(r.prompt)
    enc = tok(r.response, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:max_resp], enc["offset_mapping"][:max_resp]
    if r.token_labels is not None:
        labels = (list(r.token_labels) + [r.label] * len(ids))[: len(ids)]
    else:
        start = (
            r.harm_start
            if r.harm_start is not None or r.label == 0
            else harm_start(r.response, r.label)
        )
        labels = token_labels([tuple(o) for o in offsets], start)
    return prefix + ids, len(prefix), labels


def _batch(
    items: list[tuple[list[int], int, list[int], int]],
    pad: int,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Padded ids, positions and labels, built on the host then moved to ``device`` (the model's)."""
    with torch.device("cpu"):
        batch = _host_batch(items, pad)
    return {k: v.to(device) for k, v in batch.items()}


def _host_batch(items: list[tuple[list[int], int, list[int], int]], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(i[0]) for i in items)
    n_tok = max(len(i[2]) for i in items)
    out = {
        k: torch.zeros((len(items), w), dtype=torch.long)
        for k, w in (("ids", width), ("att", width), ("pos", n_tok), ("lab", n_tok), ("msk", n_tok))
    }
    out["ids"].fill_(pad)
    out["last"] = torch.zeros(len(items), dtype=torch.long)
    out["resp"] = torch.zeros(len(items), dtype=torch.long)
    for b, (ids, p, labels, label) in enumerate(items):
        out["ids"][b, : len(ids)] = torch.tensor(ids)
        out["att"][b, : len(ids)] = 1
        t = len(labels)
        out["pos"][b, :t] = torch.arange(p, p + t)
        out["lab"][b, :t] = torch.tensor(labels)
        out["msk"][b, :t] = 1
        out["last"][b] = len(ids) - 1
        out["resp"][b] = label
    return out


@torch.no_grad()
def _cached_features(
    monitor: SCMMonitorModel,
    encoded: list[tuple[list[int], int, list[int], int]],
    idx: list[int],
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]],
    pad: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Response-token and last-position hidden states of examples ``idx`` (computed once, then reused)."""
    missing = [j for j in idx if j not in cache]
    if missing:
        b = _batch([encoded[j] for j in missing], pad, monitor.device)
        hidden, _ = monitor.hidden_states(b["ids"], attention_mask=b["att"])
        for r, j in enumerate(missing):
            t = len(encoded[j][2])
            cache[j] = (hidden[r, b["pos"][r, :t]].clone(), hidden[r, b["last"][r]].clone())
    width = max(cache[j][0].shape[0] for j in idx)
    first = cache[idx[0]][0]
    h_tok = torch.zeros((len(idx), width, first.shape[-1]), dtype=first.dtype, device=first.device)
    for r, j in enumerate(idx):
        h_tok[r, : cache[j][0].shape[0]] = cache[j][0]
    return h_tok, torch.stack([cache[j][1] for j in idx])


def _backbone(loaded: LoadedModel, config: MonitorTrainConfig) -> torch.nn.Module:
    """The backbone as the variant trains it: with LoRA adapters, or frozen (heads only)."""
    from peft import LoraConfig, get_peft_model

    backbone = loaded.model
    if config.variant == "lora":
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.0,
            target_modules=list(config.target_modules),
            layers_to_transform=top_layers(backbone, config.top_layers),
        )
        with quiet_peft():
            backbone = get_peft_model(backbone, lora)
    else:
        for p in backbone.parameters():
            p.requires_grad_(False)
    return backbone


def _prompt_loss(
    monitor: SCMMonitorModel,
    prompts: list[PromptRecord],
    step: int,
    config: MonitorTrainConfig,
    pad: int,
) -> torch.Tensor:
    """Cross-entropy of the prompt head on the step's batch of requests (cycling through them)."""
    assert monitor.prompt_head is not None
    batch_p = [
        prompts[(step * config.batch_size + j) % len(prompts)] for j in range(config.batch_size)
    ]
    pid = [monitor.prefix_ids(p.prompt) for p in batch_p]
    pb = _batch(
        [(x, len(x) - 1, [0], p.label) for x, p in zip(pid, batch_p, strict=True)], pad, monitor.device
    )
    with torch.set_grad_enabled(config.variant == "lora"):
        ph, _ = monitor.hidden_states(pb["ids"], attention_mask=pb["att"])
    rows = torch.arange(ph.shape[0], device=ph.device)
    logits = monitor.prompt_head(ph[rows, pb["last"]].to(monitor.prompt_head.weight.dtype))
    return torch.nn.functional.cross_entropy(logits, pb["resp"])


def _step_fn(
    monitor: SCMMonitorModel,
    encoded: list[tuple[list[int], int, list[int], int]],
    prompts: list[PromptRecord],
    config: MonitorTrainConfig,
    pad: int,
) -> StepFn:
    """The monitor's training step: the dual loss on a batch of responses, plus the prompt head's."""
    feature_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def step_fn(step: int, idx: list[int]) -> StepOutput:
        b = _batch([encoded[j] for j in idx], pad, monitor.device)
        if (
            config.variant == "heads"
        ):  # frozen backbone: one forward per example, cached across epochs
            h_tok, h_last = _cached_features(monitor, encoded, idx, feature_cache, pad)
        else:
            hidden, _ = monitor.hidden_states(b["ids"], attention_mask=b["att"])
            h_tok = hidden.gather(1, b["pos"].unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), b["last"]]
        loss, parts = dual_loss(
            monitor.token_head(h_tok),
            b["lab"],
            b["msk"],
            monitor.response_head(h_last),
            b["resp"],
            config,
        )
        if prompts and monitor.prompt_head is not None:
            loss = loss + _prompt_loss(monitor, prompts, step, config, pad)
        return StepOutput(loss, int(b["att"].sum()), {"parts": parts})

    return step_fn


def _checkpoint_fns(
    monitor: SCMMonitorModel, backbone: torch.nn.Module, lora: bool
) -> tuple[Callable[[], dict[str, torch.Tensor]], Callable[[dict[str, torch.Tensor]], None]]:
    """What a checkpoint holds (the heads as ``heads.*``, LoRA weights as ``lora.*``) and how it is
    loaded back."""
    from peft import set_peft_model_state_dict
    from peft.utils import get_peft_model_state_dict

    def trainable() -> dict[str, torch.Tensor]:
        d = {
            f"heads.{k}": v
            for k, v in monitor.state_dict().items()
            if not k.startswith("backbone.")
        }
        if lora:
            d |= {f"lora.{k}": v for k, v in get_peft_model_state_dict(backbone).items()}
        return d

    def restore(tensors: dict[str, torch.Tensor]) -> None:
        monitor.load_state_dict(
            {k[6:]: v for k, v in tensors.items() if k.startswith("heads.")}, strict=False
        )
        if lora:
            set_peft_model_state_dict(
                backbone, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}
            )

    return trainable, restore


def train_monitor(
    config: MonitorTrainConfig,
    *,
    base: LoadedModel | None = None,
    stop_event: object | None = None,
    progress: bool = True,
) -> SCMMonitorModel:
    """Train a monitor, choose its rule on ``config.val`` (if given), save the folder and a model card."""
    t_start = time.perf_counter()
    records = read_jsonl(config.data, MonitorRecord)
    val = read_jsonl(config.val, MonitorRecord) if config.val else []
    prompts = read_jsonl(config.prompt_data, PromptRecord) if config.prompt_data else []
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    loaded = base or load_policy(config.base, dtype="float32")
    backbone = _backbone(loaded, config)
    monitor = SCMMonitorModel(
        backbone, loaded.tokenizer, prompt_head=bool(prompts), backbone_ref=config.base
    )
    if config.init_from is not None:
        warm_start(monitor, backbone, config.init_from, lora=config.variant == "lora")
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = [(*_encode(monitor, r, config.max_response_tokens), r.label) for r in records]
    heads = [monitor.token_head, monitor.response_head] + (
        [monitor.prompt_head] if monitor.prompt_head else []
    )
    params = [p for h in heads for p in h.parameters()] + [
        p for p in backbone.parameters() if p.requires_grad
    ]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    trainable, restore = _checkpoint_fns(monitor, backbone, config.variant == "lora")
    monitor.train()
    done = train_loop(
        config,
        n_examples=len(encoded),
        optimizer=opt,
        step_fn=_step_fn(monitor, encoded, prompts, config, pad),
        trainable=trainable,
        restore=restore,
        checkpoints=config.out / "checkpoints",
        label="train monitor",
        what="monitor training",
        stop_event=stop_event,
        progress=progress,
    )
    monitor.eval()
    val_f1 = _choose_on_val(monitor, val, config)
    _save(monitor, config, done, len(records), val_f1, time.perf_counter() - t_start)
    return monitor


def _choose_on_val(
    monitor: SCMMonitorModel, val: list[MonitorRecord], config: MonitorTrainConfig
) -> float | None:
    """Set the monitor's rule to the best one on the validation records; its macro F1 (None: no
    validation split, the default rule stays)."""
    if not val:
        return None
    scored = []
    for r in val:
        ids, p, _ = _encode(monitor, r, config.max_response_tokens)
        t, s = monitor.score(r.prompt, ids[p:])
        scored.append((t.tolist(), s.tolist(), r.label))
    monitor.rule, val_f1 = choose_rule(scored)
    return val_f1


def _save(
    monitor: SCMMonitorModel,
    config: MonitorTrainConfig,
    done: LoopResult,
    n_records: int,
    val_f1: float | None,
    wall: float,
) -> None:
    """Save the trained monitor with its metadata, and its model card."""
    losses = done.losses
    monitor.metadata = {
        "variant": config.variant,
        "steps": done.step,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "val_macro_f1": val_f1,
        "train_records": n_records,
        "wall_time_s": round(wall, 1),
        "seed": config.seed,
        "init_from": str(config.init_from) if config.init_from else None,
    }
    save_monitor(monitor, config.out, backbone_ref=config.base)
    write_model_card(
        config.out,
        title=f"Streaming content monitor ({config.variant})",
        sections={
            "What": "An SCM-style streaming monitor: token head, response head"
            + (" and prompt head" if monitor.prompt_head else "")
            + " on a causal LM backbone.",
            "Backbone": config.base,
            "Variant": config.variant,
            "Training": f"{n_records} responses from `{config.data}`, {done.step} steps, loss weights token "
            f"{config.w_token} / response {config.w_response} / logic {config.w_logic}"
            + (f", started from `{config.init_from}`." if config.init_from else "."),
            "Decision rule": f"{monitor.rule.model_dump()} (chosen on `{config.val}`, macro F1 {val_f1})"
            if val_f1 is not None
            else f"{monitor.rule.model_dump()} (default; no validation split given)",
            "Wall time": f"{wall:.1f} s",
            "Licences": config.licences
            or "not given: add the base model's and the data's licences",
        },
    )
