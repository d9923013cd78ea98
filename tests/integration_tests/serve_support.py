"""Starting and stopping the tiny-model service on an embedded Ray Serve for a test module, on a free local
port, with the start bounded in time."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

START_LIMIT_S = 300  # Ray start plus the replicas loading, on two busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alarm(_signum: int, _frame: Any) -> None:
    raise TimeoutError(f"the service did not start within {START_LIMIT_S} s")


def served(saved: Path, search: dict[str, Any], **cluster: Any) -> Iterator[str]:
    """Yield the base URL of the service on the saved tiny models; shut Ray Serve down afterwards."""
    from ray.exceptions import RayActorError

    from saffron_runtime.serve.deployment import ClusterOptions, shutdown, start
    from saffron_runtime.serve.service import ServiceOptions

    port = _free_port()
    service = ServiceOptions(policy=str(saved / "policy"), mrm=str(saved / "mrm"),
                             monitor=str(saved / "monitor"), prm=None, search=search)
    options = ClusterOptions(port=port, ray_cpus=2, num_cpus=0.5, **cluster)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(START_LIMIT_S)
    try:
        try:
            start(service, options)
        except RayActorError:
            # Serve gives its HTTP proxy 60 s to come up and kills it after; on two cores under load that
            # happens (seen once while benchmarks ran beside the suite). Start once more on a clean Ray.
            shutdown()
            start(service, options)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    yield f"http://127.0.0.1:{port}/v1"
    shutdown()
