"""Start a monitor's training from a saved monitor's weights (heads and, for LoRA, the adapter).

Fine-tuning a trained monitor on new rows (the policy's own continuations, say) costs one short
pass instead of retraining from scratch. The saved monitor must have the variant and LoRA shape of
the run; a mismatch is an error that names the setting to change, never a silent partial load.
"""

from __future__ import annotations

from pathlib import Path

import torch

from saffron_runtime.errors import ConfigError
from saffron_runtime.monitor.model import SCMMonitorModel, load_monitor


def _check_same_shape(
    mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], folder: Path
) -> None:
    """Refuse an adapter whose tensors differ from the run's in name or shape."""
    if set(mine) != set(theirs):
        only = sorted(set(mine) ^ set(theirs))[:3]
        raise ConfigError(
            f"the adapter in {folder} covers other modules or layers than this run ({only} ...): "
            "pass the --target-modules and --top-layers it was trained with"
        )
    for k, v in mine.items():
        if v.shape != theirs[k].shape:
            raise ConfigError(
                f"the adapter in {folder} has {k} of shape {tuple(theirs[k].shape)}, this run "
                f"{tuple(v.shape)}: pass the --lora-r it was trained with"
            )


def warm_start(
    monitor: SCMMonitorModel, backbone: torch.nn.Module, folder: str | Path, *, lora: bool
) -> None:
    """Copy a saved monitor's heads (and adapter, for ``lora``) into ``monitor``.

    A prompt head is copied when both have one; otherwise the run's own stays as initialised.
    """
    from peft import set_peft_model_state_dict
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    saved = load_monitor(folder)
    has_adapter = hasattr(saved.backbone, "peft_config")
    if has_adapter != lora:
        kind = "a LoRA" if has_adapter else "a heads-only"
        raise ConfigError(
            f"{folder} is {kind} monitor: train with --variant {'lora' if has_adapter else 'heads'} "
            "to start from it"
        )
    pairs = [(monitor.token_head, saved.token_head), (monitor.response_head, saved.response_head)]
    if monitor.prompt_head is not None and saved.prompt_head is not None:
        pairs.append((monitor.prompt_head, saved.prompt_head))
    for mine, theirs in pairs:
        mine.load_state_dict(theirs.state_dict())
    if lora:
        theirs_lora = get_peft_model_state_dict(saved.backbone)
        _check_same_shape(get_peft_model_state_dict(backbone), theirs_lora, folder)
        set_peft_model_state_dict(backbone, theirs_lora)
