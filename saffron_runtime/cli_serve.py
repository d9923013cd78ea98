"""``saffron serve``: guarded generation behind an OpenAI-compatible API on Ray Serve (an embedded
single-node Ray by default, or a running cluster with ``--address``). Ray is imported only when the
command runs, so ``saffron --help`` stays instant."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from saffron_runtime.cli_options import search_options
from saffron_runtime.cli_support import console, one_line_errors
from saffron_runtime.errors import validate_on_violation

if TYPE_CHECKING:
    from saffron_runtime.search.config import SearchConfig

DEFAULTS = ("method", "budget", "max_new_tokens")
"""The search settings a service sets defaults for; a request's extra fields override any of them."""


def _none(value: str) -> str | None:
    return None if value.lower() == "none" else value


@one_line_errors
@search_options(*DEFAULTS)
def serve(
    search: SearchConfig,
    policy: Annotated[str, typer.Option(help="Policy: 'smollm2', a folder or a .gguf file.")] = "smollm2",
    mrm: Annotated[str, typer.Option(help="MRM: 'auto', 'bundled', an adapter folder or 'none'.")] = "auto",
    monitor: Annotated[str, typer.Option(help="Monitor: 'auto', 'bundled', a folder or 'none'.")] = "auto",
    prm: Annotated[str, typer.Option(help="PRM: 'auto', 'bundled', a monitor folder or 'none'.")] = "auto",
    on_violation: Annotated[str, typer.Option(help="raise (error event) | refuse | truncate.")] = "raise",
    replicas: Annotated[int, typer.Option(help="Replicas (each loads its own models).")] = 1,
    num_cpus: Annotated[float, typer.Option(help="CPUs per replica.")] = 1.0,
    num_gpus: Annotated[float, typer.Option(help="GPUs per replica (a fraction shares one).")] = 0.0,
    ray_cpus: Annotated[int | None, typer.Option(help="CPUs an embedded Ray may use.")] = None,
    address: Annotated[str | None, typer.Option(help="Join this Ray cluster ('auto', ray://...).")] = None,
    host: Annotated[str, typer.Option(help="Listen address (0.0.0.0 for other machines).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    queue_limit: Annotated[int, typer.Option(help="Requests a replica holds; more get 503.")] = 8,
    max_batch: Annotated[int, typer.Option(
        help="Searches a replica steps together, one forward per model per step (1: one at a time).")] = 8,
    batch_window_ms: Annotated[float, typer.Option(
        help="How long a batched step waits for a straggling search (ms).")] = 20.0,
    routing: Annotated[str, typer.Option(
        help="prefix (a chat's turns go to the replica holding its prefix) | random.")] = "prefix",
    model_name: Annotated[str, typer.Option(help="The model id clients see.")] = "saffron",
) -> None:
    """Serve guarded chat completions (OpenAI API) until interrupted.

    Example: saffron serve --policy smollm2 --budget 4 --replicas 1 --port 8000
    """
    from saffron_runtime.serve.deployment import ClusterOptions, start
    from saffron_runtime.serve.service import ServiceOptions

    service = ServiceOptions(
        policy=policy, mrm=_none(mrm), monitor=_none(monitor), prm=_none(prm),
        search=search.model_dump(include=set(DEFAULTS)), on_violation=validate_on_violation(on_violation),
        queue_limit=queue_limit, max_batch=max_batch, batch_window_ms=batch_window_ms,
        model_name=model_name,
    )
    cluster = ClusterOptions(address=address, host=host, port=port, replicas=replicas,
                             num_cpus=num_cpus, num_gpus=num_gpus, ray_cpus=ray_cpus,
                             routing=routing)  # type: ignore[arg-type]  # validated here
    console.print(f"saffron serve: http://{host}:{port}/v1 (Ctrl-C stops)")
    start(service, cluster, blocking=True)
