"""Prefix-aware routing on an embedded Ray Serve with two replicas (tiny saved models, 127.0.0.1):
every later turn of a chat sent by ChatSaffron(base_url=...) lands on the replica that served its
first turn, so the whole earlier prompt is a trie hit there. Every wait is bounded."""

from __future__ import annotations

import signal
import socket

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("langchain_core")

pytestmark = pytest.mark.serve
START_LIMIT_S = 300  # Ray start plus two replicas loading, on two busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alarm(_signum, _frame):
    raise TimeoutError(f"the service did not start within {START_LIMIT_S} s")


@pytest.fixture(scope="module")
def base_url(saved):
    from saffron_runtime.serve.deployment import ClusterOptions, shutdown, start
    from saffron_runtime.serve.service import ServiceOptions

    port = _free_port()
    service = ServiceOptions(policy=str(saved / "policy"), mrm=str(saved / "mrm"),
                             monitor=str(saved / "monitor"), prm=None,
                             search={"max_new_tokens": 4, "budget": 2})
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(START_LIMIT_S)
    try:
        start(service, ClusterOptions(port=port, ray_cpus=2, num_cpus=0.5, replicas=2,
                                      routing="prefix"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    yield f"http://127.0.0.1:{port}/v1"
    shutdown()


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
