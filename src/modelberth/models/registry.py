"""The configured models: lookup by name or alias, boot clean-up, preload, reload, shutdown.

A model removed by a reload, and every model at shutdown, is retired (`Model.retire`): it
drains, stops and ends RETIRED, never to start again. Until then it stays visible to the
scheduler (its memory is still in use) but not to lookups by name, so a model of the same
name added meanwhile is a new, separate entry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from loguru import logger
from opentelemetry.trace import Tracer

from modelberth.config import Config, ConfigError, ConfigIssue, ModelSpec, load_config
from modelberth.errors import APIError, model_not_found
from modelberth.models.events import EventBus
from modelberth.models.learned import LearnedFootprints, default_path
from modelberth.models.model import Model
from modelberth.models.resources import Monitor
from modelberth.models.scheduler import Scheduler
from modelberth.models.state import ModelState, RetireReason, StateEvent
from modelberth.runtimes.base import Runtime
from modelberth.runtimes.docker import DockerRuntime
from modelberth.runtimes.hosts import DockerHostsRuntime
from modelberth.runtimes.process import ProcessRuntime
from modelberth.runtimes.remote import RemoteRuntime
from modelberth.runtimes.swarm import SwarmRuntime


@dataclass
class ReloadResult:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ReloadOutcome:
    """The last reload asked for (API, SIGHUP or --watch), for GET /api/config."""

    at: float
    ok: bool
    result: ReloadResult | None = None
    message: str | None = None
    issues: list[ConfigIssue] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "ok": self.ok,
            "result": asdict(self.result) if self.result else None,
            "message": self.message,
            "issues": [asdict(i) for i in self.issues],
        }


# Settings the listening socket or the Docker runtime took at start (server.py, __init__).
_FIXED_AT_START = (
    "header_timeout",
    "body_timeout",
    "keepalive_timeout",
    "max_connections",
    "instance_id",
    "ollama_port",
)


class Registry:
    def __init__(
        self,
        config: Config,
        events: EventBus | None = None,
        config_path: Path | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.config = config
        self._tracer = tracer
        self.config_path = config_path
        self._retiring: dict[Model, asyncio.Task[None]] = {}  # removed, not yet stopped
        self._closing = False
        self._closed = False
        self._reload_lock = asyncio.Lock()
        self.events = events or EventBus()
        self.events.add_listener(_log_event)
        instance = DockerRuntime.instance_for(config.server)
        self.runtimes: dict[str, Runtime] = {
            "process": ProcessRuntime(),
            "docker": DockerHostsRuntime(config.docker.hosts, instance=instance)
            if config.docker.hosts
            else DockerRuntime(config.docker.url, instance=instance),
            "swarm": SwarmRuntime(
                config.swarm.url or config.docker.url,
                instance=instance,
                refresh_seconds=config.swarm.refresh_seconds,
            ),
            "remote": RemoteRuntime(),
        }
        self.models: dict[str, Model] = {}
        learned = (
            Path(config.resources.state_file)
            if config.resources.state_file
            else default_path(DockerRuntime.instance_for(config.server))
        )
        self.monitor = Monitor(config.resources, learned=LearnedFootprints(learned))
        self.scheduler = Scheduler(
            self.monitor,
            self._scheduled,
            self.events,
            lambda spec: self.runtimes[spec.runtime].nodes(),
        )
        self._by_name: dict[str, Model] = {}
        self._http: aiohttp.ClientSession | None = None
        self.last_reload: ReloadOutcome | None = None
        self._reload_listeners: list[Callable[[Config], None]] = []

    def add_reload_listener(self, listener: Callable[[Config], None]) -> None:
        """Told the new config after every reload that took effect."""
        self._reload_listeners.append(listener)

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("Registry.boot() has not run")
        return self._http

    def _scheduled(self) -> list[Model]:
        """What the scheduler plans with: the configured models and the retiring ones."""
        return [*self.models.values(), *self._retiring]

    def get(self, name: str) -> Model | None:
        return self._by_name.get(name)

    def require(self, name: str) -> Model:
        model = self._by_name.get(name)
        if model is None:
            raise model_not_found(name)
        return model

    async def boot(self) -> None:
        self._http = aiohttp.ClientSession(  # health probes
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        )
        specs = self.config.specs()
        await asyncio.to_thread(self.monitor.learned.load)
        for name, spec in specs.items():
            self.models[name] = self._new_model(spec)
        self._index()
        self.monitor.start(self.models.values)
        for runtime_name in self.runtimes_in_use() | {"process"}:
            found = await self.runtimes[runtime_name].recover(
                specs, {name: model.logs for name, model in self.models.items()}
            )
            for name, (upstream, port) in found.items():
                if await self.models[name].adopt(upstream, port):
                    logger.info(
                        "{}: adopted running upstream {} on port {}",
                        name,
                        upstream.runtime_id,
                        port,
                    )
        for model in self.models.values():
            # A remote endpoint is ready from the start: nothing runs here to wait for.
            if (model.spec.preload or model.spec.remote) and not model.ready:
                model.start_soon()

    def _new_model(self, spec: ModelSpec) -> Model:
        model = Model(spec, self.runtimes[spec.runtime], self.events, self.http, self._tracer)
        learned = self.monitor.learned.recall(spec.name, spec.config_hash())
        if learned is not None:
            model.learn(learned.peak_memory_bytes, learned.peak_vram_bytes, learned.start_seconds)
        self.scheduler.attach(model)
        return model

    def _index(self) -> None:
        self._by_name = {
            key: model
            for model in self.models.values()
            for key in (model.name, *model.spec.aliases)
        }

    async def reload_from_file(self) -> ReloadResult:
        """Re-read the config file; on any error keep the running config and raise."""
        if self.config_path is None:
            raise APIError(
                409, "This server was not started from a config file.", code="no_config_file"
            )
        try:
            config = await asyncio.to_thread(load_config, self.config_path)
            result = await self.reload(config)
        except ConfigError as exc:
            self.last_reload = ReloadOutcome(
                time.time(), False, message=exc.render(), issues=exc.issues
            )
            raise
        except APIError as exc:
            self.last_reload = ReloadOutcome(time.time(), False, message=exc.message)
            raise
        self.last_reload = ReloadOutcome(time.time(), True, result)
        return result

    async def reload(self, config: Config) -> ReloadResult:
        """Apply a new config without dropping a request: unchanged models keep running,
        changed ones restart once their in-flight requests finish, removed ones stop then."""
        async with self._reload_lock:
            if self._closing:
                raise APIError(
                    503, "modelberth is shutting down.", type="server_error", code="shutting_down"
                )
            result = ReloadResult()
            old_server = self.config.server
            if (config.server.host, config.server.port) != (old_server.host, old_server.port):
                result.warnings.append("server.host/port changes need a restart")
            fixed = [
                key
                for key in _FIXED_AT_START
                if getattr(config.server, key) != getattr(old_server, key)
            ]
            if fixed:
                result.warnings.append(f"server.{', server.'.join(fixed)} changes need a restart")
            for section in ("docker", "swarm"):  # the runtimes took them at start
                if getattr(config, section) != getattr(self.config, section):
                    result.warnings.append(f"{section} changes need a restart")
                    config = config.model_copy(update={section: getattr(self.config, section)})
            self.monitor.config = config.resources
            new_specs = config.specs()
            for name in list(self.models):
                if name not in new_specs:
                    self._retire(self.models.pop(name), RetireReason.REMOVED)
                    result.removed.append(name)
            for name, spec in new_specs.items():
                model = self.models.get(name)
                if model is None:
                    model = self.models[name] = self._new_model(spec)
                    if spec.remote:
                        model.start_soon()  # ready at once, as at boot
                    result.added.append(name)
                elif model.spec == spec:
                    result.unchanged.append(name)
                elif model.spec.runs_like(spec):
                    model.update_settings(spec)
                    result.updated.append(name)
                elif model.reconfigure(spec, self.runtimes[spec.runtime]):
                    result.restarted.append(name)
                else:
                    result.updated.append(name)
                    if spec.remote:
                        model.start_soon()  # a stopped local model that became remote
            self.config = config
            self._index()
            for listener in self._reload_listeners:
                listener(config)
            logger.info("config reloaded: {}", {k: v for k, v in vars(result).items() if v})
            return result

    def _retire(self, model: Model, reason: RetireReason) -> None:
        task = asyncio.create_task(model.retire(reason))
        self._retiring[model] = task
        task.add_done_callback(lambda done: self._forget_retired(model, done))

    def _forget_retired(self, model: Model, task: asyncio.Task[None]) -> None:
        if self._retiring.get(model) is task:
            del self._retiring[model]
        if not task.cancelled() and task.exception() is not None:
            logger.opt(exception=task.exception()).error("{}: retiring failed", model.name)

    def model_status(self, model: Model) -> dict[str, Any]:
        """A model's status with what the scheduler estimates it needs, and what it plans
        its next start with (measured or learned peaks first, then config, then estimate)."""
        memory, vram = self.scheduler.estimates(model)
        plan = self.scheduler.need(model)
        return {
            **model.status(),
            "estimate_memory_bytes": memory,
            "estimate_vram_bytes": vram,
            "plan_memory_bytes": plan.memory,
            "plan_vram_bytes": plan.vram if plan.on_gpu else None,
            "start_seconds": list(model.start_seconds),
        }

    async def resources(self) -> dict[str, Any]:
        """Host RAM and CPU, every GPU, each model's RAM/VRAM, measured and estimated, and
        the nodes of the multi-node runtimes in use."""
        models = list(self.models.values())
        estimates = {m.name: self.scheduler.estimates(m) for m in models}
        report = self.monitor.report(models, estimates)
        report["nodes"] = await self._nodes_report()
        return report

    async def _nodes_report(self) -> list[dict[str, Any]]:
        """Every node with its budgets and what the scheduler counts there now."""
        report = []
        counted = {m: self.scheduler.cost(m) for m in self.scheduler.admitted()}
        for name in sorted(self.runtimes_in_use()):
            for node in await self.runtimes[name].nodes() or ():
                here = {
                    m: c for m, c in counted.items() if c.node == node.id and m.spec.runtime == name
                }
                report.append(
                    {
                        **node.as_dict(),
                        "models": sorted(m.name for m in here),
                        "model_memory_bytes": {m.name: c.memory or 0 for m, c in here.items()},
                        "counted_memory_bytes": sum(c.memory or 0 for c in here.values()),
                        "counted_vram_bytes": {
                            str(gpu): sum(c.vram.get(gpu) or 0 for c in here.values())
                            for gpu in sorted(node.vram)
                        },
                    }
                )
        return report

    def runtimes_in_use(self) -> set[str]:
        return {model.spec.runtime for model in self.models.values()}

    async def runtime_health(self) -> dict[str, str]:
        health = {}
        for name in sorted(self.runtimes_in_use()):
            runtime = self.runtimes[name]
            health[name] = "ok" if await runtime.healthy() else f"degraded: {runtime.error}"
        return health

    async def shutdown(self) -> None:
        """Retire every model (each answers its waiters 503 at once, drains, stops), wait
        for the removed ones still stopping, then close everything. Idempotent."""
        if self._closed:
            return
        async with self._reload_lock:  # no reload adds a model behind the shutdown
            self._closing = True
        for model in self.models.values():
            if model not in self._retiring:
                self._retire(model, RetireReason.SHUTDOWN)
        results = await asyncio.gather(*self._retiring.values(), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                logger.opt(exception=result).error("retiring a model failed")
        if self._closed:
            return
        self._closed = True
        await self.monitor.stop(self.models.values())
        for runtime in self.runtimes.values():
            await runtime.close()
        if self._http is not None:
            await self._http.close()
            self._http = None


def _log_event(event: StateEvent) -> None:
    log = logger.bind(model=event.model)
    text = "{} -> {} ({})"
    if event.new is ModelState.FAILED:
        log.error(text + "\n{}", event.old, event.new, event.reason, event.detail.get("error", ""))
    else:
        log.info(text, event.old, event.new, event.reason)
