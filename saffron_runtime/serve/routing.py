"""Prefix-aware routing on Ray Serve: a chat's turns go to the replica whose trie already holds its
prefix, so their prompt tokens are cache hits there instead of a prefill on a cold replica.

Ray Serve's HTTP proxy routes a request before its body is read (the replica pulls the body), so a
router sees headers, not messages. The routing key is therefore sent by the client in Serve's
session header (:data:`~saffron_runtime.serve.protocol.ROUTING_HEADER`, ``x-session-id``):
:func:`~saffron_runtime.serve.protocol.prefix_key` of the chat, which ``ChatSaffron(base_url=...)``
sends by itself. :class:`PrefixAffinityRouter` hashes the key onto a consistent-hash ring of the
replicas (a replica added or lost moves only its share of the keys); when the chosen replica is
at its limit the request goes to the least-loaded of the others. Requests without the header, and
every request under ``affinity=False`` (``saffron serve --routing random``), are placed by a hash of
their request id: uniformly at random.
"""

from __future__ import annotations

from typing import Any

from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter
from ray.serve.request_router import PendingRequest, RunningReplica


class PrefixAffinityRouter(ConsistentHashRouter):
    """The replica the prefix key hashes to, else the least-loaded other one (see the module)."""

    def initialize_state(self, **kwargs: Any) -> None:
        """``affinity`` (default True): route by the client's key; False: at random."""
        self._affinity = bool(kwargs.pop("affinity", True))
        super().initialize_state(num_fallback_replicas=0, **kwargs)

    def _routing_key(self, pending_request: PendingRequest | None) -> str | None:
        if pending_request is None:
            return None
        if self._affinity:
            return super()._routing_key(pending_request)
        return pending_request.metadata.internal_request_id

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """The hashed replica first; then every other one, of which Serve takes the least loaded."""
        ranks = await super().choose_replicas(candidate_replicas, pending_request)
        if len(ranks) != 1 or len(ranks[0]) != 1:
            return ranks
        chosen = ranks[0][0].replica_id
        rest = [r for r in candidate_replicas if r.replica_id != chosen]
        return [ranks[0], rest] if rest else ranks
