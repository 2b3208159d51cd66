"""A client for one Docker engine, set up as the docker CLI would (unix://, tcp:// with
TLS from $DOCKER_CERT_PATH, ssh:// through the ssh binary), and what its errors mean.

Every call on the client blocks: callers run it in a thread, never on the event loop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.tls
import docker.utils
import requests.exceptions

TLS_API_VERSION = "1.41"


class EngineSetupError(Exception):
    """The client cannot even be made (bad TLS files...): the engine is unreachable."""


def connect(url: str | None, *, tls: bool = False) -> docker.DockerClient:
    """Blocking: a client for the engine at `url` (None: $DOCKER_HOST, as `docker` does),
    checked with a ping."""
    kwargs: dict[str, Any] = {"timeout": 30}
    if tls:  # as the docker CLI does with --tlsverify: from $DOCKER_CERT_PATH
        # requests would verify with $REQUESTS_CA_BUNDLE in place of the engine's CA (it
        # overrides a session's CA), even for the API version query the client's
        # constructor makes: so the version is given (1.41: Docker 20.10 and later) and the
        # environment is not trusted.
        kwargs["version"] = TLS_API_VERSION
        try:
            kwargs["tls"] = docker.tls.TLSConfig(**_tls_files())
        except docker.errors.TLSParameterError as exc:
            raise EngineSetupError(f"TLS settings for {url}: {exc}") from None
    if url and url.startswith("ssh://"):
        kwargs["use_ssh_client"] = True  # the ssh binary: its config, keys and agent
    client = docker.DockerClient(base_url=url, **kwargs) if url else docker.from_env(**kwargs)
    if tls:
        client.api.trust_env = False
    client.ping()
    return client


def memory_in_use(client: docker.DockerClient, container: str) -> int | None:
    """Blocking: a container's memory use as `docker stats` reads it (cgroup usage)."""
    one_shot = docker.utils.version_gte(client.api.api_version, "1.41")
    stats: dict[str, Any] = client.api.stats(
        container, stream=False, **({"one_shot": True} if one_shot else {})
    )
    usage = int((stats.get("memory_stats") or {}).get("usage", 0))
    return usage or None


def _tls_files() -> dict[str, Any]:
    where = Path(os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
    return {
        "ca_cert": str(where / "ca.pem"),
        "verify": True,
        "client_cert": (str(where / "cert.pem"), str(where / "key.pem")),
    }


def is_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, requests.exceptions.ConnectionError):
        return True
    text = str(exc)
    return isinstance(exc, docker.errors.DockerException) and (
        "Error while fetching server API version" in text
        or "Connection refused" in text
        or "No such file or directory" in text
    )


def explain(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return str(explanation or exc)
