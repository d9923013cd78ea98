"""Prefix-aware routing on an embedded Ray Serve with two replicas (tiny saved models, 127.0.0.1):
every later turn of a chat sent by ChatSaffron(base_url=...) lands on the replica that served its
first turn, so the whole earlier prompt is a trie hit there. Every wait is bounded."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("langchain_core")

from .serve_support import served  # noqa: E402

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def base_url(saved):
    yield from served(saved, {"max_new_tokens": 4, "budget": 2}, replicas=2, routing="prefix")


def test_every_later_turn_of_a_chat_hits_the_trie_that_served_its_first(base_url):
    from langchain_core.messages import AIMessage, HumanMessage

    from langchain_saffron import ChatSaffron

    remote = ChatSaffron(base_url=base_url, budget=2, max_new_tokens=4)
    for opening in ("how bake bread?", "name a river", "why sky blue", "best cat name"):
        history = [HumanMessage(opening)]
        previous_prompt = 0
        for turn in range(3):
            msg = remote.invoke(history)
            hits = msg.response_metadata["saffron"]["stats"]["cache_hits"]
            if turn:  # the earlier turn's whole prompt is cached on this replica
                assert hits >= previous_prompt - 1, (opening, turn, hits, previous_prompt)
            previous_prompt = msg.usage_metadata["input_tokens"]
            history += [AIMessage(str(msg.content)), HumanMessage(f"and then {turn}?")]
