"""Load a policy (causal LM + tokenizer) from an object, a local folder, a GGUF file or a HF id.

Every failure is turned into a :class:`ModelLoadError` that names the source and the fix: missing
path, not a causal LM, corrupt weights, missing chat template, model not in the local HF cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from saffron_runtime.errors import ConfigError, ModelLoadError
from saffron_runtime.models.smollm2 import SMOLLM2_ALIASES, smollm2_dir
from saffron_runtime.models.weights import validate_weights_in

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """Turn a dtype option into a torch dtype (or ``"auto"``); raise ConfigError on an unknown name."""
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ConfigError(f"dtype={dtype!r} is not valid; use one of auto, {', '.join(_DTYPES)}")


def _looks_like_path(source: str) -> bool:
    """A local path (existing, explicit, or with more than one ``/``) rather than a hub id ``org/name``."""
    return (
        source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or source.endswith(".gguf")
        or Path(source).expanduser().exists()
    )


def require_chat_template(tokenizer: PreTrainedTokenizerBase, source: str) -> None:
    """Raise when a tokenizer cannot format a chat (no ``chat_template``)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"the tokenizer of {source} has no chat template, which a chat call needs; set "
            f"tokenizer.chat_template to a Jinja template (or load an instruct model's tokenizer)"
        )


def check_causal_lm_folder(folder: Path) -> None:
    """Raise a clear error when a model folder is not a causal LM (before loading any weights)."""
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(
            f"{folder} is not a Hugging Face model folder (no config.json); pass a folder saved "
            f"with save_pretrained, a .gguf file, or 'smollm2'"
        )
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg_file} is not valid JSON ({e}); re-save the model") from e
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(
            f"{folder} holds a {model_type!r} model, which is not a causal language model; "
            f"the policy, reward model and monitor backbones must be causal LMs "
            f"(AutoModelForCausalLM), e.g. Llama, Qwen2 or SmolLM2"
        )


def load_policy(
    source: str | os.PathLike[str] | PreTrainedModel = "smollm2",
    *,
    tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    chat: bool = False,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``source`` is a model object, ``"smollm2"`` (the bundled SmolLM2-135M-Instruct), a local folder,
    a ``.gguf`` file, or a Hugging Face id already in the local cache (there is no hub at run time).
    ``chat=True`` requires a chat template. ``trust_remote_code`` stays off unless asked for.
    """
    torch_dtype = resolve_dtype(dtype)
    if isinstance(source, PreTrainedModel):
        if tokenizer is None:
            raise ConfigError(
                "tokenizer is required when the model is given as an object; pass tokenizer=..."
            )
        tok = (
            tokenizer
            if isinstance(tokenizer, PreTrainedTokenizerBase)
            else _load_tokenizer(str(tokenizer), None, trust_remote_code)
        )
        name = getattr(source.config, "_name_or_path", "") or type(source).__name__
        loaded = LoadedModel(model=source, tokenizer=tok, source=name)
    else:
        src = str(source)
        if src in SMOLLM2_ALIASES:
            folder: Path | None = smollm2_dir()
            gguf_file: str | None = None
        elif src.endswith(".gguf"):
            path = Path(src).expanduser()
            if not path.is_file():
                raise ModelLoadError(f"no GGUF file at {path}; check the path")
            folder, gguf_file = path.parent, path.name
        elif _looks_like_path(src):
            folder, gguf_file = Path(src).expanduser(), None
            if not folder.exists():
                raise ModelLoadError(
                    f"no model at {folder}: the path does not exist; pass an existing folder saved "
                    f"with save_pretrained, a .gguf file, or 'smollm2'"
                )
        else:
            folder, gguf_file = None, None  # a hub id, resolved from the local cache only
        loaded = _load_from(src, folder, gguf_file, tokenizer, torch_dtype, trust_remote_code)
    loaded.model.to(device)
    loaded.model.eval()
    if chat:
        require_chat_template(loaded.tokenizer, loaded.source)
    return loaded


def _load_tokenizer(
    src: str, gguf_file: str | None, trust_remote_code: bool
) -> PreTrainedTokenizerBase:
    try:
        kw = {"gguf_file": gguf_file} if gguf_file else {}
        return AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load a tokenizer from {src}: {e}") from e


def _load_from(
    src: str,
    folder: Path | None,
    gguf_file: str | None,
    tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None,
    torch_dtype: torch.dtype | str,
    trust_remote_code: bool,
) -> LoadedModel:
    if folder is not None and gguf_file is None:
        check_causal_lm_folder(folder)
        validate_weights_in(folder)
        where = str(folder)
    elif folder is not None:
        where = str(folder)
    else:
        where = src
        try:
            cfg = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"model {src!r} is neither a local path nor a Hugging Face id in the local cache "
                f"(there is no model hub at run time): {e}. Download it where you have network "
                f"and pass its folder, or use 'smollm2'"
            ) from e
        if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ModelLoadError(f"{src!r} is a {cfg.model_type!r} model, not a causal LM")
    kw: dict = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=torch_dtype, trust_remote_code=trust_remote_code, **kw
        )
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers/safetensors raise many types here
        raise ModelLoadError(
            f"could not load model weights from {where}: {type(e).__name__}: {e}. The weights "
            f"may be corrupt or truncated; re-download or re-convert them"
        ) from e
    if gguf_file:
        model.hf_quantizer = None
    if tokenizer is None:
        tok = _load_tokenizer(where, gguf_file, trust_remote_code)
    elif isinstance(tokenizer, PreTrainedTokenizerBase):
        tok = tokenizer
    else:
        tok = _load_tokenizer(str(tokenizer), None, trust_remote_code)
    return LoadedModel(model=model, tokenizer=tok, source=where if not gguf_file else src)
