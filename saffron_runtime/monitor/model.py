"""The SCM monitor model: a causal LM backbone with a token head, a response head and an optional
prompt head (each ``Linear(hidden, 2)``, index 1 = harmful), plus its saved-folder layout.

Folder layout: ``monitor_config.json`` (backbone reference, rule, hold-back, heads), ``heads.safetensors``
and, for LoRA monitors, ``adapter/`` (a PEFT folder). The input is the backbone's chat template for
the user prompt with the assistant header, then the response token ids: the exact sequence a policy
with the same tokenizer sees, so heads on the policy's own hidden states need no second forward.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saffron_runtime.errors import ModelLoadError
from saffron_runtime.models.chat import chat_prompt_ids
from saffron_runtime.models.kv import kv_kwargs, returned_kv
from saffron_runtime.models.loading import load_policy
from saffron_runtime.models.peft_quiet import quiet_peft
from saffron_runtime.models.weights import set_adapter_base, validate_safetensors
from saffron_runtime.monitor.rules import MonitorRule

FORMAT = "saffron-monitor/1"
CONFIG_FILE = "monitor_config.json"
HEADS_FILE = "heads.safetensors"
ADAPTER_DIR = "adapter"


class SCMMonitorModel(torch.nn.Module):
    """Backbone + heads; scores are softmax probabilities of the harmful class."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        prompt_head: bool = False,
        rule: MonitorRule | None = None,
        hold_back: int = 0,
        backbone_ref: str = "",
        metadata: dict[str, Any] | None = None,
        prompt_theta: float = 0.5,
        response_theta: float = 0.5,
    ) -> None:
        super().__init__()
        self.response_theta = response_theta  # P(harmful response) at or above which a judge flags
        self.prompt_theta = (
            prompt_theta  # P(harmful request) at or above which the prompt head flags
        )
        hidden = int(backbone.config.hidden_size)
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.token_head = torch.nn.Linear(hidden, 2)
        self.response_head = torch.nn.Linear(hidden, 2)
        self.prompt_head = torch.nn.Linear(hidden, 2) if prompt_head else None
        self.rule = rule or MonitorRule()
        self.hold_back = hold_back
        self.backbone_ref = backbone_ref
        self.metadata = metadata or {}

    def prefix_ids(self, prompt: str) -> list[int]:
        """Ids before the response: chat template of the user prompt plus the assistant header."""
        return chat_prompt_ids(self.tokenizer, prompt)

    def head_scores(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Harm probabilities of the token and response heads for hidden states ``[..., hidden]``."""
        h = hidden.to(self.token_head.weight.dtype)
        tok = torch.softmax(self.token_head(h).float(), -1)[..., 1]
        resp = torch.softmax(self.response_head(h).float(), -1)[..., 1]
        return tok, resp

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Last-layer hidden states (and the updated cache) without computing vocabulary logits."""
        body = (
            self.backbone.get_base_model()
            if hasattr(self.backbone, "get_base_model")
            else self.backbone
        )
        out = body.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **kv_kwargs(body.model, past_key_values),
            position_ids=position_ids,
            use_cache=past_key_values is not None,
        )
        return out.last_hidden_state, returned_kv(out)

    @torch.no_grad()
    def score(self, prompt: str, response_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-response-token harm scores of both heads from one uncached forward (for evaluation)."""
        pre = self.prefix_ids(prompt)
        ids = torch.tensor([pre + list(response_ids)], device=self.device)
        hidden, _ = self.hidden_states(ids)
        return self.head_scores(hidden[0, len(pre) :])

    @torch.no_grad()
    def response_score(self, prompt: str, response_ids: list[int]) -> float:
        """Harm probability of a whole response (response head at its last token); 0 when empty."""
        if not response_ids:
            return 0.0
        return float(self.score(prompt, response_ids)[1][-1])

    @torch.no_grad()
    def prompt_score(self, prompt: str) -> float:
        """Harm probability of the request itself (prompt head at the last prefix token)."""
        if self.prompt_head is None:
            raise ModelLoadError(
                "this monitor has no prompt head; train one with the prompt-head option"
            )
        ids = torch.tensor([self.prefix_ids(prompt)[-self.context_tokens :]], device=self.device)
        hidden, _ = self.hidden_states(ids)
        return float(
            torch.softmax(
                self.prompt_head(hidden[0, -1].to(self.prompt_head.weight.dtype)).float(), -1
            )[1]
        )

    @property
    def context_tokens(self) -> int:
        """How many tokens the backbone reads at once (its ``max_position_embeddings``, else 2048):
        the monitor's sliding window over longer texts."""
        body = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        return int(getattr(body.config, "max_position_embeddings", None) or 2048)

    @property
    def device(self) -> torch.device:
        """Device of the backbone."""
        return next(self.backbone.parameters()).device


def save_monitor(
    monitor: SCMMonitorModel, folder: str | os.PathLike[str], *, backbone_ref: str | None = None
) -> Path:
    """Write the monitor folder (heads, config and, for a peft backbone, its adapter)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    heads = {f"token_head.{k}": v for k, v in monitor.token_head.state_dict().items()}
    heads |= {f"response_head.{k}": v for k, v in monitor.response_head.state_dict().items()}
    if monitor.prompt_head is not None:
        heads |= {f"prompt_head.{k}": v for k, v in monitor.prompt_head.state_dict().items()}
    save_file({k: v.detach().contiguous().cpu() for k, v in heads.items()}, str(out / HEADS_FILE))
    has_adapter = hasattr(monitor.backbone, "peft_config")
    if has_adapter:
        monitor.backbone.save_pretrained(str(out / ADAPTER_DIR))
        set_adapter_base(out / ADAPTER_DIR, backbone_ref or monitor.backbone_ref)
    cfg = {
        "format": FORMAT,
        "backbone": backbone_ref or monitor.backbone_ref,
        "hidden_size": int(monitor.backbone.config.hidden_size),
        "prompt_head": monitor.prompt_head is not None,
        "adapter": has_adapter,
        "rule": monitor.rule.model_dump(),
        "hold_back": monitor.hold_back,
        "prompt_theta": monitor.prompt_theta,
        "response_theta": monitor.response_theta,
        "input": "chat template (user prompt + assistant header) followed by response token ids",
        "labels": "index 1 = harmful",
        "metadata": monitor.metadata,
    }
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    return out


# Longer than our ~60-line rule on purpose: the config, backbone, heads and rule are read and checked in
# file order, each failure with its own error; split up, the order would be hard to follow.
def load_monitor(
    folder: str | os.PathLike[str],
    *,
    backbone: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: str | torch.dtype | None = "float32",
) -> SCMMonitorModel:
    """Load a monitor folder (``"bundled"``: the shipped SmolLM2 monitor); ``backbone`` defaults to
    the one its config names (e.g. ``smollm2``)."""
    from saffron_runtime.bundled import DEFAULT_MONITOR, resolve_bundled

    p = resolve_bundled(folder, DEFAULT_MONITOR)
    if not (p / CONFIG_FILE).is_file():
        raise ModelLoadError(
            f"{p} is not a monitor folder ({CONFIG_FILE} is missing); pass a folder written by save_monitor"
        )
    try:
        cfg = json.loads((p / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{p / CONFIG_FILE} is not valid JSON: {e}") from e
    if cfg.get("format") != FORMAT:
        raise ModelLoadError(f"{p} has format {cfg.get('format')!r}; this version reads {FORMAT!r}")
    if not (p / HEADS_FILE).is_file():
        raise ModelLoadError(f"{p} has no {HEADS_FILE}; the monitor folder is incomplete")
    validate_safetensors(p / HEADS_FILE)
    if cfg.get("adapter") and backbone is not None:
        # a LoRA monitor would inject its adapter into the caller's model (often the policy itself):
        # it gets its own copy of the backbone instead
        backbone = None
    if backbone is None:
        loaded = load_policy(cfg["backbone"], tokenizer=tokenizer, dtype=dtype)
        backbone, tokenizer = loaded.model, loaded.tokenizer
    elif tokenizer is None:
        raise ModelLoadError("pass tokenizer= together with backbone=")
    if int(backbone.config.hidden_size) != int(cfg["hidden_size"]):
        raise ModelLoadError(
            f"the monitor's heads expect hidden size {cfg['hidden_size']} but the backbone has "
            f"{backbone.config.hidden_size}; load it with the backbone it was trained on ({cfg['backbone']})"
        )
    if cfg.get("adapter"):
        from peft import PeftModel

        with quiet_peft():
            backbone = PeftModel.from_pretrained(
                backbone, str(p / ADAPTER_DIR), is_trainable=False
            )
    monitor = SCMMonitorModel(
        backbone,
        tokenizer,
        prompt_head=bool(cfg.get("prompt_head")),  # type: ignore[arg-type]
        rule=MonitorRule(**cfg["rule"]),
        hold_back=int(cfg.get("hold_back", 0)),
        backbone_ref=cfg["backbone"],
        metadata=cfg.get("metadata", {}),
        prompt_theta=float(cfg.get("prompt_theta", 0.5)),
        response_theta=float(cfg.get("response_theta", 0.5)),
    )
    heads = load_file(str(p / HEADS_FILE))
    missing = monitor.load_state_dict(heads, strict=False)
    bad = [k for k in missing.missing_keys if not k.startswith("backbone.")]
    if bad or missing.unexpected_keys:
        raise ModelLoadError(
            f"{p / HEADS_FILE} does not match the monitor: missing {bad}, unexpected {missing.unexpected_keys}"
        )
    monitor.to(next(backbone.parameters()).device)
    return monitor.eval()


def update_monitor_config(folder: str | os.PathLike[str], **values: Any) -> Path:
    """Write thresholds chosen after training (``prompt_theta``, ``response_theta``) into a monitor
    folder's config (``"bundled"``: the shipped one); a ``metadata`` dict is merged, not replaced."""
    from saffron_runtime.bundled import DEFAULT_MONITOR, resolve_bundled

    path = resolve_bundled(folder, DEFAULT_MONITOR) / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path.parent} is not a monitor folder ({CONFIG_FILE} is missing)")
    cfg = json.loads(path.read_text())
    meta = values.pop("metadata", None)
    cfg.update(values)
    if meta:
        cfg.setdefault("metadata", {}).update(meta)
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return path
