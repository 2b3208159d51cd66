"""The `server` section of the config: where modelberth listens, its keys, and the limits on
its clients."""

from __future__ import annotations

import functools

from pydantic import Field, field_validator

from modelberth.config.sections import Strict
from modelberth.config.types import PositiveSeconds, Seconds, parse_network


class ServerConfig(Strict):
    host: str = Field("127.0.0.1", description="Address to listen on (loopback by default).")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    ollama_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Also listen here (e.g. 11434, Ollama's port) for "
        "clients that assume Ollama's address; the same API is served on both ports.",
    )
    api_keys: list[str] = Field(default_factory=list, description="Bearer keys for /v1/*.")
    admin_keys: list[str] = Field(
        default_factory=list, description="Bearer keys for /api/*; empty = same as api_keys."
    )
    max_body_mb: float = Field(32, gt=0, description="Largest request body accepted (413 above).")
    stream_keepalive: Seconds = Field(
        0,
        description="While a model loads, send a waiting streaming request its SSE headers "
        "and a ': loading <model> 3.2s' comment every this many seconds; 0 = off.",
    )
    protect_health: bool = Field(
        False, description="Require a key (api or admin) for /health and /metrics too."
    )
    header_timeout: PositiveSeconds = Field(
        10,
        description="A request head not complete within this many seconds closes the "
        "connection (slowloris).",
    )
    body_timeout: PositiveSeconds = Field(
        30,
        description="A request body that sends nothing for this many seconds closes the "
        "connection.",
    )
    keepalive_timeout: PositiveSeconds = Field(
        5, description="An idle keep-alive client connection is closed after this long."
    )
    max_connections: int | None = Field(
        None,
        gt=0,
        description="Open client connections before new requests get 503; "
        "default: the file descriptor limit less a reserve for upstreams and logs.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of proxies in front of modelberth whose "
        "X-Forwarded-For / X-Forwarded-Proto / X-Forwarded-Host are believed; from anyone "
        "else they are replaced by what modelberth sees.",
    )
    instance_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="Names this modelberth's containers and processes, so that several "
        "instances share one Docker engine without touching each other's; default: derived "
        "from the host name and port.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        if isinstance(value, str):
            raise TypeError("trusted_proxies must be a list")
        for entry in value:
            parse_network(entry)  # raises ValueError naming the bad entry
        return value

    @functools.cached_property
    def inference_keys(self) -> list[str]:
        """Keys accepted on /v1/*: the api keys and the admin keys (an operator's key may do
        what a user's may); empty when api_keys is, as then /v1/* is open."""
        return [*self.api_keys, *self.admin_keys] if self.api_keys else []
