"""Up-front checks of weight files, so a corrupt download fails with a message and not a torch trace."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from saffron_runtime.errors import ModelLoadError

_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}


def validate_safetensors(path: str | Path) -> dict[str, dict]:
    """Check a safetensors file's header and size; return its tensor table (name -> dtype/shape/offsets).

    Catches truncated files and garbage headers, which otherwise surface as opaque deserialisation
    errors (or, for a truncated mmap, as a crash at first use).
    """
    p = Path(path)
    fix = "re-download or re-export the file"
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ModelLoadError(f"weights file {p} is truncated ({size} bytes); {fix}")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise ModelLoadError(
                    f"weights file {p} is corrupt or truncated: header claims {n} bytes but the file "
                    f"has {size}; {fix}"
                )
            header = json.loads(f.read(n))
    except ModelLoadError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(
            f"weights file {p} is not a valid safetensors file ({e}); {fix}"
        ) from e
    end = 0
    tensors: dict[str, dict] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or "data_offsets" not in info:
            raise ModelLoadError(f"weights file {p} has a malformed entry {name!r}; {fix}")
        start, stop = info["data_offsets"]
        numel = 1
        for d in info["shape"]:
            numel *= int(d)
        width = _DTYPE_BYTES.get(info["dtype"])
        if width is not None and stop - start != numel * width:
            raise ModelLoadError(f"weights file {p}: tensor {name!r} has inconsistent size; {fix}")
        end = max(end, stop)
        tensors[name] = info
    if 8 + n + end > size:
        raise ModelLoadError(
            f"weights file {p} is truncated: its tensors need {8 + n + end} bytes but the file has "
            f"{size}; {fix}"
        )
    return tensors


def validate_weights_in(folder: str | Path) -> None:
    """Validate every ``*.safetensors`` file in a model folder (no-op for folders without any)."""
    for f in sorted(Path(folder).glob("*.safetensors")):
        validate_safetensors(f)


def load_tensor_file(path: str | Path) -> torch.Tensor:
    """Load one tensor from ``.pt`` (``weights_only=True``) or ``.safetensors`` (key ``"mask"`` or the only key)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        validate_safetensors(p)
        d = load_file(str(p))
        if len(d) == 1:
            return next(iter(d.values()))
        if "mask" in d:
            return d["mask"]
        raise ModelLoadError(f"{p} holds {len(d)} tensors; expected one (or one named 'mask')")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad pickles
        raise ModelLoadError(
            f"could not load {p} with torch.load(weights_only=True): {e}. Only plain tensors are "
            f"accepted; re-save it with torch.save(tensor, path)"
        ) from e
    if not isinstance(obj, torch.Tensor):
        raise ModelLoadError(f"{p} holds a {type(obj).__name__}, not a tensor")
    return obj


def set_adapter_base(folder: str | os.PathLike[str], base: str) -> None:
    """Record ``base`` in a saved PEFT adapter's config when it is a local folder, else leave it empty.

    peft looks ``base_model_name_or_path`` up on the Hub when it is not a local folder (there is no
    Hub here), and a cache path is this machine's only; our own metadata names the base instead.
    """
    cfg_path = Path(folder) / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base if base and Path(base).expanduser().is_dir() else ""
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
