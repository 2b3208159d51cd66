"""The running config as it may be shown (GET /api/config, the dashboard): keys (the
server's and remote endpoints'), secret environment values, credentials in URLs and the
values of secret command-line flags are replaced by `***`. The shape stays, so a reader
still sees *that* a key is set."""

from __future__ import annotations

import re
from typing import Any

from modelberth.config.schema import Config

HIDDEN = "***"
# Environment variable names and command-line flags that carry secrets: HF_TOKEN,
# OPENAI_API_KEY, --api-key, --hf-token; not --tokenizer or MAX_TOKENS.
_SECRET_NAME = re.compile(
    r"(?:^|[-_])(?:key|token|secret|passwd|credentials?)$|password", re.IGNORECASE
)
_URL_USERINFO = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@]+@", re.IGNORECASE)


def redacted(config: Config) -> dict[str, Any]:
    """The config as JSON data with its secrets hidden."""
    data: dict[str, Any] = config.model_dump(mode="json")
    server = data.get("server", {})
    for field in ("api_keys", "admin_keys"):
        server[field] = [HIDDEN for _ in server.get(field) or []]
    docker = data.get("docker") or {}
    if isinstance(docker.get("url"), str):
        docker["url"] = hide_url_credentials(docker["url"])
    for model in (data.get("models") or {}).values():
        _redact_model(model)
    _redact_model(data.get("defaults") or {})
    return data


def _redact_model(model: dict[str, Any]) -> None:
    if model.get("api_key"):  # a remote endpoint's key
        model["api_key"] = HIDDEN
    if isinstance(model.get("base_url"), str):
        model["base_url"] = hide_url_credentials(model["base_url"])
    env = model.get("env")
    if isinstance(env, dict):
        model["env"] = {
            name: HIDDEN if _SECRET_NAME.search(name) else value for name, value in env.items()
        }
    for field in ("command", "entrypoint"):
        argv = model.get(field)
        if isinstance(argv, list):
            model[field] = hide_secret_flags(argv)


def hide_secret_flags(argv: list[Any]) -> list[Any]:
    """Hide the value of flags such as `--api-key X` or `--hf-token=X`.

    >>> hide_secret_flags(["llama-server", "--api-key", "s3cret", "--port", "8080"])
    ['llama-server', '--api-key', '***', '--port', '8080']
    >>> hide_secret_flags(["vllm", "--hf-token=abc", "--tokenizer", "t"])
    ['vllm', '--hf-token=***', '--tokenizer', 't']
    """
    shown: list[Any] = []
    hide_next = False
    for arg in argv:
        text = str(arg)
        if hide_next:
            shown.append(HIDDEN)
            hide_next = False
        elif text.startswith("-") and _SECRET_NAME.search(text.partition("=")[0]):
            flag, eq, _ = text.partition("=")
            shown.append(f"{flag}={HIDDEN}" if eq else arg)
            hide_next = not eq
        else:
            shown.append(arg)
    return shown


def hide_url_credentials(url: str) -> str:
    """
    >>> hide_url_credentials("tcp://admin:pw@10.0.0.5:2376")
    'tcp://***@10.0.0.5:2376'
    >>> hide_url_credentials("unix:///var/run/docker.sock")
    'unix:///var/run/docker.sock'
    """
    return _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{HIDDEN}@", url)
