"""Training checkpoints that resume exactly: trainable tensors (safetensors), optimizer state
(``torch.load(weights_only=True)``) and a JSON trainer state, written atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saffron_runtime.errors import ModelLoadError

_TRAINABLE = "trainable.safetensors"
_OPTIM = "optimizer.pt"
_STATE = "trainer_state.json"


def save_checkpoint(
    folder: str | os.PathLike[str],
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write ``folder/step-XXXXXXXX`` (via a temporary folder and rename) and keep the last ``keep``."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / _TRAINABLE)
    )
    torch.save(optimizer.state_dict(), tmp / _OPTIM)
    (tmp / _STATE).write_text(json.dumps({"step": step, **state}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint in ``folder``, or None."""
    root = Path(folder)
    done = (
        [p for p in sorted(root.glob("step-*")) if (p / _STATE).is_file()] if root.is_dir() else []
    )
    return done[-1] if done else None


def load_checkpoint(
    path: Path, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint's trainable tensors and trainer state; restore the optimizer in place."""
    try:
        tensors = load_file(str(path / _TRAINABLE))
        optimizer.load_state_dict(torch.load(path / _OPTIM, map_location="cpu", weights_only=True))
        state = json.loads((path / _STATE).read_text())
    except Exception as e:  # noqa: BLE001 - many error types from corrupt files
        raise ModelLoadError(
            f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); delete it to resume from "
            f"the previous one"
        ) from e
    return tensors, state
