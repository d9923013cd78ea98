"""Load and save MRMs in the Saffron-1 adapter layout (PEFT LoRA folder + unseen mask).

Layout: ``adapter_config.json``, ``adapter_model.safetensors``, ``unseen_mask.pt`` (or
``unseen_mask.safetensors``) and, for our own models, ``saffron_mrm.json`` (template, base model,
EOS supervision, metadata) and, when trained with one, ``token_bias.safetensors`` (a per-token reward
offset applied as the output layer's bias). The released Saffron-1 folder loads unchanged. The reference code's
``lm_head_bias.pt`` is never loaded (its forward never applies it and it was never trained).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saffron_runtime.bundled import BUNDLED, MRM, resolve_bundled
from saffron_runtime.errors import ConfigError, ModelLoadError, TokenizerMismatchError
from saffron_runtime.models.loading import load_policy
from saffron_runtime.models.mrm import MRMTemplate, MultifurcationRewardModel
from saffron_runtime.models.peft_quiet import quiet_peft
from saffron_runtime.models.token_bias import load_token_bias, save_token_bias
from saffron_runtime.models.vocab import check_vocab_compatible
from saffron_runtime.models.weights import load_tensor_file, set_adapter_base, validate_safetensors

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
UNSEEN_MASK_FILES = ("unseen_mask.safetensors", "unseen_mask.pt")
MRM_META = "saffron_mrm.json"
IGNORED_FILES = ("lm_head_bias.pt",)


def load_unseen_mask(path: str | os.PathLike[str], vocab_size: int) -> torch.Tensor:
    """Load a boolean unseen-token mask (True = never supervised) and check it covers ``vocab_size``."""
    mask = load_tensor_file(path)
    if mask.dim() != 1:
        raise ModelLoadError(f"unseen mask {path} has shape {tuple(mask.shape)}; expected [vocab]")
    if mask.dtype != torch.bool:
        if mask.dtype.is_floating_point or not ((mask == 0) | (mask == 1)).all():
            raise ModelLoadError(f"unseen mask {path} has dtype {mask.dtype}; expected bool")
        mask = mask.bool()
    if mask.shape[0] != vocab_size:
        raise ModelLoadError(
            f"unseen mask {path} covers {mask.shape[0]} tokens but the reward model's vocabulary "
            f"has {vocab_size}; the mask belongs to another model (pass unseen_mask=False to load "
            f"the adapter without it)"
        )
    return mask


def _find_unseen_mask(folder: Path) -> Path | None:
    for name in UNSEEN_MASK_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def read_adapter_folder(
    folder: str | os.PathLike[str],
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Validate an adapter folder (``"bundled"``: the shipped SmolLM2 MRM); return (path, adapter
    config, our metadata or {})."""
    p = resolve_bundled(folder, MRM)
    if not p.is_dir():
        raise ModelLoadError(f"no reward-model adapter folder at {p}; check the path")
    for required in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (p / required).is_file():
            raise ModelLoadError(
                f"{p} is not a PEFT adapter folder: {required} is missing (expected "
                f"{ADAPTER_CONFIG}, {ADAPTER_WEIGHTS} and optionally unseen_mask.pt)"
            )
    try:
        config = json.loads((p / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{p / ADAPTER_CONFIG} is not valid JSON: {e}") from e
    if config.get("peft_type") != "LORA":
        raise ModelLoadError(f"{p} holds a {config.get('peft_type')!r} adapter; expected LORA")
    validate_safetensors(p / ADAPTER_WEIGHTS)
    meta = json.loads((p / MRM_META).read_text()) if (p / MRM_META).is_file() else {}
    for name in IGNORED_FILES:
        if (p / name).exists():
            log.warning("ignoring %s in %s: never trained and never applied (DESIGN 1.1)", name, p)
    return p, config, meta


# Longer than our ~60-line rule on purpose: one check per failure mode of a downloaded adapter, in the
# order the files are read, each with its own clear error; split up, the order would be hard to follow.
def load_mrm(
    adapter: str | os.PathLike[str],
    *,
    base: PreTrainedModel | str | os.PathLike[str] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    template: MRMTemplate | None = None,
    unseen_mask: bool | str | os.PathLike[str] = True,
    policy_tokenizer: PreTrainedTokenizerBase | None = None,
    token_map: torch.Tensor | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
) -> MultifurcationRewardModel:
    """Load an MRM: a causal LM backbone plus a PEFT LoRA adapter in the Saffron-1 layout.

    ``base`` defaults to the adapter's recorded base model. ``unseen_mask``: True loads the folder's
    mask if present, False skips it, a path loads that file. Every adapter tensor in the file must
    land in the model with the same value (peft silently skips modules it cannot find, so this is
    checked here). When ``policy_tokenizer`` is given, the vocabularies are checked now.
    """
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    if adapter == BUNDLED and policy_tokenizer is not None and token_map is None:
        from saffron_runtime.models.smollm2 import speaks_smollm2

        if not speaks_smollm2(policy_tokenizer):  # say so before loading a second model
            raise TokenizerMismatchError(
                f"the bundled MRM scores SmolLM2's vocabulary, but the policy's tokenizer has "
                f"{len(policy_tokenizer)} tokens and a different vocabulary; pass an MRM trained "
                f"for this policy (saffron train mrm --base <policy>) or use method='greedy'"
            )
    folder, config, meta = read_adapter_folder(adapter)
    if base is None:
        base = meta.get("base") or config.get("base_model_name_or_path")
        if not base:
            raise ConfigError(f"{folder} does not name its base model; pass base=...")
    loaded = load_policy(base, tokenizer=tokenizer, dtype=dtype, device=device)
    if isinstance(loaded.model, PeftModel):
        raise ConfigError("base is already a PeftModel; pass the plain backbone")
    try:
        with quiet_peft():
            model = PeftModel.from_pretrained(loaded.model, str(folder), is_trainable=False)
    except Exception as e:  # noqa: BLE001 - peft raises size-mismatch RuntimeErrors and others
        raise ModelLoadError(
            f"the adapter in {folder} does not fit the base model {loaded.source}: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        ) from e
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    _check_adapter_loaded(model, folder / ADAPTER_WEIGHTS, state)
    load_token_bias(model, folder)
    model.eval()

    vocab = int(model.get_output_embeddings().weight.shape[0])
    mask: torch.Tensor | None = None
    if unseen_mask is True:
        found = _find_unseen_mask(folder)
        mask = load_unseen_mask(found, vocab) if found else None
    elif unseen_mask is not False:
        mask = load_unseen_mask(unseen_mask, vocab)

    tmpl = template or (
        MRMTemplate.from_dict(meta["template"]) if "template" in meta else MRMTemplate()
    )
    mrm = MultifurcationRewardModel(
        model=model,
        tokenizer=loaded.tokenizer,
        template=tmpl,
        unseen_mask=mask,
        token_map=token_map,
        eos_supervised=bool(meta.get("eos_supervised", False)),
        metadata={"adapter": str(folder), "base": loaded.source, **meta.get("metadata", {})},
    )
    if policy_tokenizer is not None:
        check_vocab_compatible(policy_tokenizer, mrm.tokenizer, token_map=token_map, what="MRM")
    return mrm


def _check_adapter_loaded(
    model: torch.nn.Module, weights: Path, model_state: dict[str, torch.Tensor]
) -> int:
    """Assert every tensor of the adapter file is in the model and equal; return how many."""
    from safetensors import safe_open

    missing, different = [], []
    with safe_open(str(weights), framework="pt") as f:
        keys = list(f.keys())
        for k in keys:
            if k not in model_state:
                missing.append(k)
            elif not torch.equal(
                model_state[k].detach().cpu().to(f.get_tensor(k).dtype), f.get_tensor(k)
            ):
                different.append(k)
    if missing or different:
        raise ModelLoadError(
            f"the adapter {weights} did not load completely: {len(keys) - len(missing) - len(different)}"
            f" of {len(keys)} tensors loaded; missing in the model: {missing[:4]}"
            f"{'...' if len(missing) > 4 else ''}; different values: {different[:4]}. The base model "
            f"does not have the modules the adapter targets (check its architecture)"
        )
    return len(keys)


def save_mrm(
    mrm: MultifurcationRewardModel,
    folder: str | os.PathLike[str],
    *,
    base: str,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save an MRM in the Saffron-1 layout plus ``saffron_mrm.json`` (our template and metadata)."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    # LoRA only: never the base embedding, which peft writes by default once the head is adapted
    mrm.model.save_pretrained(str(out), save_embedding_layers=False)
    set_adapter_base(out, base)
    save_token_bias(mrm.model, out)
    if mrm.unseen_mask is not None:
        save_file(
            {"mask": mrm.unseen_mask.to(torch.bool).contiguous()}, str(out / UNSEEN_MASK_FILES[0])
        )
    meta = {
        "format": "saffron-mrm/1",
        "base": base,
        "template": mrm.template.to_dict(),
        "eos_supervised": mrm.eos_supervised,
        "metadata": metadata or {},
    }
    (out / MRM_META).write_text(json.dumps(meta, indent=2) + "\n")
    return out
