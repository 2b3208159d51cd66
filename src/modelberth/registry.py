"""The configured models: lookup by name or alias, boot clean-up, preload and shutdown."""

from __future__ import annotations

import asyncio

import aiohttp
from loguru import logger

from modelberth.config import Config
from modelberth.events import EventBus
from modelberth.lifecycle import Model
from modelberth.runtimes.base import Runtime
from modelberth.runtimes.docker import DockerRuntime
from modelberth.runtimes.process import ProcessRuntime
from modelberth.types import ModelState, StateEvent, model_not_found


class Registry:
    def __init__(self, config: Config, events: EventBus | None = None) -> None:
        self.config = config
        self.events = events or EventBus()
        self.events.add_listener(_log_event)
        self.runtimes: dict[str, Runtime] = {
            "process": ProcessRuntime(),
            "docker": DockerRuntime(config.docker.url),
        }
        self.models: dict[str, Model] = {}
        self._by_name: dict[str, Model] = {}
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("Registry.boot() has not run")
        return self._http

    def get(self, name: str) -> Model | None:
        return self._by_name.get(name)

    def require(self, name: str) -> Model:
        model = self._by_name.get(name)
        if model is None:
            raise model_not_found(name)
        return model

    async def boot(self) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        specs = self.config.specs()
        for name, spec in specs.items():
            model = Model(spec, self.runtimes[spec.runtime], self.events, self._http)
            self.models[name] = model
            for key in (name, *spec.aliases):
                self._by_name[key] = model
        for runtime_name in self.runtimes_in_use() | {"process"}:
            found = await self.runtimes[runtime_name].recover(specs)
            for name, (upstream, port) in found.items():
                if await self.models[name].adopt(upstream, port):
                    logger.info("{}: adopted running upstream {} on port {}", name,
                                upstream.runtime_id, port)
        for model in self.models.values():
            if model.spec.preload and not model.ready:
                model.start_soon()

    def runtimes_in_use(self) -> set[str]:
        return {model.spec.runtime for model in self.models.values()}

    async def runtime_health(self) -> dict[str, str]:
        health = {}
        for name in sorted(self.runtimes_in_use()):
            runtime = self.runtimes[name]
            health[name] = "ok" if await runtime.healthy() else f"degraded: {runtime.error}"
        return health

    async def shutdown(self) -> None:
        await asyncio.gather(*(m.stop("shutdown") for m in self.models.values()),
                             return_exceptions=True)
        for runtime in self.runtimes.values():
            await runtime.close()
        if self._http is not None:
            await self._http.close()
            self._http = None


def _log_event(event: StateEvent) -> None:
    log = logger.bind(model=event.model)
    text = "{} -> {} ({})"
    if event.new is ModelState.FAILED:
        log.error(text + "\n{}", event.old, event.new, event.reason,
                  event.detail.get("error", ""))
    else:
        log.info(text, event.old, event.new, event.reason)
