"""Model loading: policies, multifurcation reward models, the bundled SmolLM2, weight checks."""

from saffron_runtime.models.loading import LoadedModel, load_policy, require_chat_template
from saffron_runtime.models.mrm import (
    UNSEEN_REWARD,
    MRMTemplate,
    MultifurcationRewardModel,
)
from saffron_runtime.models.mrm_io import load_mrm, load_unseen_mask, save_mrm
from saffron_runtime.models.smollm2 import smollm2_dir, smollm2_gguf_path, smollm2_installed
from saffron_runtime.models.vocab import check_vocab_compatible
from saffron_runtime.models.weights import validate_safetensors

__all__ = [
    "UNSEEN_REWARD",
    "LoadedModel",
    "MRMTemplate",
    "MultifurcationRewardModel",
    "check_vocab_compatible",
    "load_mrm",
    "load_policy",
    "load_unseen_mask",
    "require_chat_template",
    "save_mrm",
    "smollm2_dir",
    "smollm2_gguf_path",
    "smollm2_installed",
    "validate_safetensors",
]
