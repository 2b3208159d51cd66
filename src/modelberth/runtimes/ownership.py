"""Which containers are whose: the labels modelberth puts on its containers and Swarm
services, the instance id that scopes them when several modelberths share one Docker engine
or swarm, and their names."""

from __future__ import annotations

import hashlib
import re
import socket

from modelberth.config import ServerConfig

LABEL_MANAGED = "modelberth.managed"
LABEL_MODEL = "modelberth.model"
LABEL_CONFIG = "modelberth.config"
LABEL_PORT = "modelberth.port"
LABEL_INSTANCE = "modelberth.instance"
LABEL_GPUS = "modelberth.gpus"  # the indexes the scheduler placed the container on
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")  # what Docker does not allow in names


def instance_id(server: ServerConfig) -> str:
    """Who owns which containers on a shared engine: `server.instance_id` if set, else
    `<host name>-<server.port>` (the host name lower-cased, characters Docker does not allow
    in names replaced by `-`, cut so the id stays within 63 characters).

    The default is stable across restarts of the same server on the same host, so a
    modelberth that crashed adopts its containers when it comes back. Set `instance_id`
    when that is not enough: two instances on one host that both listen on port 0, or a
    modelberth whose host name changes between runs (in a container without a fixed
    hostname). Containers of an id no longer in use are left alone: remove them by hand.
    """
    if server.instance_id:
        return server.instance_id
    return default_instance_id(socket.gethostname(), server.port)


def default_instance_id(host: str, port: int) -> str:
    suffix = f"-{port}"
    name = _UNSAFE.sub("-", host.lower()).strip("-._")[: 63 - len(suffix)].rstrip("-._")
    return f"{name or 'host'}{suffix}"


def container_name(instance: str, model: str) -> str:
    """`modelberth-<instance>-<model>`; a model name with characters Docker does not allow
    (`:`, `@`, `+`) has them replaced and a short hash of the real name appended."""
    safe = _UNSAFE.sub("_", model)
    if safe != model:
        safe += "-" + hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"modelberth-{instance}-{safe}"


def service_name(instance: str, model: str) -> str:
    """A Swarm service's name: `modelberth-<model>-<hash>`. Swarm allows only letters,
    digits, `-` and `_` there, and at most 63 characters: the model name is cut and cleaned
    to fit, and a short hash of the instance and the real model name keeps it unique."""
    slug = _NOT_IN_SERVICES.sub("-", model).strip("-_")[:30].rstrip("-_") or "model"
    digest = hashlib.sha256(f"{instance}\0{model}".encode()).hexdigest()[:10]
    return f"modelberth-{slug}-{digest}"


_NOT_IN_SERVICES = re.compile(r"[^A-Za-z0-9_-]+")
