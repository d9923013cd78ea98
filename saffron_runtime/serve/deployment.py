"""The Ray Serve deployment: one :class:`GuardedService` per replica behind a FastAPI ingress, and
:func:`start`, which brings up Ray (embedded single-node, or joins ``address``) and Serve on a port.

Routing: :class:`~saffron_runtime.serve.routing.PrefixAffinityRouter` sends a chat to the replica
whose trie holds its prefix (``routing="prefix"``, the default) or places requests at random.

Back-pressure has two layers: each replica refuses past its ``queue_limit`` with 503 + Retry-After
(:mod:`saffron_runtime.serve.app`), and Serve's own ``max_ongoing_requests`` keeps a replica from
being handed more than that many requests at once. When a replica dies, Serve restarts it (its health
check fails) and routes new requests to live replicas; a client mid-stream sees its stream end with
an error, never with a final chunk (see docs/serving.md).
"""

from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ConfigDict, Field
from ray import serve
from ray.serve.config import RequestRouterConfig

from saffron_runtime.config import Settings
from saffron_runtime.serve import app as routes
from saffron_runtime.serve.routing import PrefixAffinityRouter
from saffron_runtime.serve.service import GuardedService, ServiceOptions

APP_NAME = "saffron"
ingress = FastAPI(title="saffron", docs_url=None, redoc_url=None)


@serve.deployment(name="SaffronServer", health_check_period_s=2, health_check_timeout_s=10)
@serve.ingress(ingress)
class SaffronServer:
    """One replica: its own stack (policy, MRM, monitor, tries) answering the OpenAI API."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.service = GuardedService(ServiceOptions(**options))

    @ingress.get("/health")
    async def health(self) -> dict[str, Any]:
        """Liveness and load of this replica."""
        return await routes.health(self.service)

    @ingress.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        """The model this service answers as."""
        return await routes.models(self.service)

    @ingress.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        """OpenAI chat completions, guarded."""
        return await routes.chat_completions(self.service, request)


class ClusterOptions(Settings):
    """Where and how many: Ray, the HTTP port and the replicas' resources."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    """A running Ray cluster to join ("auto", "ray://host:10001"); None starts an embedded one."""
    host: str = "127.0.0.1"
    """The address the HTTP proxy listens on (0.0.0.0 to serve other machines)."""
    port: int = Field(8000, ge=1, le=65535)
    """The HTTP port."""
    replicas: int = Field(1, ge=1, le=1024)
    """Replicas of the deployment (each loads its own stack)."""
    num_cpus: float = Field(1.0, ge=0.0)
    """CPUs each replica reserves."""
    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs each replica reserves (a fraction shares one GPU)."""
    ray_cpus: int | None = Field(None, ge=1)
    """CPUs an embedded Ray may use (None: all of the machine's)."""
    routing: Literal["prefix", "random"] = "prefix"
    """How requests pick a replica: "prefix" (the replica whose trie holds the chat's prefix, by the
    client's ``x-session-id`` key; the least-loaded one when it is full) or "random"."""


def start(service: ServiceOptions, cluster: ClusterOptions, *, blocking: bool = False) -> Any:
    """Start Ray (if not running) and Serve, deploy the service; return the app's handle."""
    import ray

    if not ray.is_initialized():
        kw: dict[str, Any] = {"address": cluster.address} if cluster.address else {
            "num_cpus": cluster.ray_cpus, "include_dashboard": False}
        ray.init(**kw, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": cluster.host, "port": cluster.port})
    deployment = SaffronServer.options(
        num_replicas=cluster.replicas,
        max_ongoing_requests=service.queue_limit,
        ray_actor_options={"num_cpus": cluster.num_cpus, "num_gpus": cluster.num_gpus},
        request_router_config=RequestRouterConfig(
            request_router_class=PrefixAffinityRouter,
            request_router_kwargs={"affinity": cluster.routing == "prefix"},
        ),
    )
    return serve.run(deployment.bind(service.model_dump()), name=APP_NAME, route_prefix="/",
                     blocking=blocking)


def shutdown() -> None:
    """Stop Serve (and the embedded Ray this process started)."""
    import ray

    serve.shutdown()
    ray.shutdown()
