"""Prefix-aware routing: the chat's routing key, the header ChatSaffron(base_url=...) sends, and the
router's ranking (the hashed replica first, then the others for Serve's least-loaded pick)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from saffron_runtime.serve.protocol import ROUTING_HEADER, prefix_key

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "how bake bread?"}]


def test_every_turn_of_a_chat_has_its_first_turns_key_and_other_chats_differ():
    later = CHAT + [{"role": "assistant", "content": "knead"}, {"role": "user", "content": "more?"}]
    assert prefix_key(CHAT) == prefix_key(later) == prefix_key([dict(m) for m in CHAT])
    assert prefix_key(CHAT) != prefix_key([CHAT[0], {"role": "user", "content": "name a river"}])
    assert prefix_key(CHAT) != prefix_key(CHAT[1:])  # the system prompt is part of the prefix


def test_the_remote_client_sends_the_routing_key():
    pytest.importorskip("langchain_core")
    from langchain_saffron.remote import RemoteSaffron

    assert RemoteSaffron.headers({"messages": CHAT}) == {ROUTING_HEADER: prefix_key(CHAT)}


class _Replica:
    """What the router reads of a running replica (its id, its limit, its queue)."""

    def __init__(self, name: str, deployment: Any) -> None:
        from ray.serve._private.common import ReplicaID

        self.replica_id = ReplicaID(unique_id=name, deployment_id=deployment)
        self.max_ongoing_requests = 8
        self.multiplexed_model_ids: set[str] = set()
        self.node_id = self.availability_zone = None

    async def get_queue_len(self, *a: Any, **kw: Any) -> int:
        return 0


def _request(session_id: str | None, request_id: str) -> Any:
    return SimpleNamespace(metadata=SimpleNamespace(session_id=session_id,
                                                    internal_request_id=request_id),
                           routing_context=SimpleNamespace(should_backoff=False))


def _ranks(affinity: bool, requests: list[Any]) -> list[list[list[str]]]:
    pytest.importorskip("ray.serve")
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    from saffron_runtime.serve.routing import PrefixAffinityRouter

    async def run() -> list[list[list[str]]]:
        dep = DeploymentID(name="SaffronServer", app_name="saffron")
        router = PrefixAffinityRouter(deployment_id=dep, handle_source=DeploymentHandleSource.UNKNOWN)
        router.initialize_state(affinity=affinity)
        replicas = [_Replica(f"r{i}", dep) for i in range(4)]
        router.update_replicas(replicas)
        out = []
        for req in requests:
            ranks = await router.choose_replicas(replicas, req)
            out.append([[r.replica_id.unique_id for r in rank] for rank in ranks])
        return out

    return asyncio.run(run())


def test_a_chats_requests_go_to_one_replica_with_the_others_as_fallback():
    keys = [prefix_key([{"role": "user", "content": f"chat {i}"}]) for i in range(12)]
    ranks = _ranks(True, [_request(k, f"req-{n}") for n, k in enumerate(keys + keys)])
    for first, again in zip(ranks[:12], ranks[12:], strict=True):
        assert first == again  # the same key, whatever the request id: the same replica
        assert len(first) == 2 and len(first[0]) == 1 and len(first[1]) == 3
        assert sorted(first[0] + first[1]) == ["r0", "r1", "r2", "r3"]
    assert len({r[0][0] for r in ranks[:12]}) > 1  # chats spread over the replicas


def test_random_routing_ignores_the_key():
    key = prefix_key(CHAT)
    ranks = _ranks(False, [_request(key, f"req-{n}") for n in range(16)])
    assert len({r[0][0] for r in ranks}) > 1
