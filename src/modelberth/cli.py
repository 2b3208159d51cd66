"""Command line: serve, demo, check, schema, and ps/start/stop/restart/logs on a live server."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer

from modelberth.config import ConfigError, config_path, json_schema, load_config
from modelberth.telemetry.logs import LogFormat, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="One OpenAI-compatible endpoint in front of many local model servers.")

ConfigOpt = Annotated[str | None, typer.Option("-c", "--config", help="Config file "
                      "(default: $MODELBERTH_CONFIG or ./modelberth.yaml).")]
FormatOpt = Annotated[str, typer.Option("--log-format", help="auto | rich | json | plain")]
LevelOpt = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING...")]
UrlOpt = Annotated[str, typer.Option("--url", envvar="MODELBERTH_URL",
                   help="The running server.")]
KeyOpt = Annotated[str | None, typer.Option("--key", envvar="MODELBERTH_ADMIN_KEY",
                   help="Admin key, if the server has one.")]
DEFAULT_URL = "http://127.0.0.1:8080"


def _log_format(value: str) -> LogFormat:
    if value not in ("auto", "rich", "json", "plain"):
        raise typer.BadParameter("use auto, rich, json or plain", param_hint="--log-format")
    return value  # type: ignore[return-value]


def _load(config: str | None) -> Any:
    try:
        return load_config(config)
    except ConfigError as exc:
        typer.echo(exc.render(), err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port.")] = None,
    log_format: FormatOpt = "auto",
    log_level: LevelOpt = "INFO",
    access_log: Annotated[bool, typer.Option(help="Log every HTTP request.")] = False,
    watch: Annotated[bool, typer.Option(help="Reload when the config file changes.")] = False,
) -> None:
    """Run the server. SIGHUP or POST /api/reload re-read the config."""
    from modelberth.server import serve as run

    setup_logging(_log_format(log_format), log_level.upper())
    cfg = _load(config)
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if overrides:
        cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update=overrides)})
    run(cfg, config_path=config_path(config), watch=watch, access_log=access_log)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    log_format: FormatOpt = "auto",
    log_level: LevelOpt = "INFO",
) -> None:
    """Serve a tiny generated model through a real llama-server: no Docker, no GPU."""
    from modelberth.demo import DemoUnavailable, curl_example, demo_config
    from modelberth.server import serve as run

    setup_logging(_log_format(log_format), log_level.upper())
    try:
        cfg = demo_config(port)
    except DemoUnavailable as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None

    def ready(url: str) -> None:
        typer.echo(f"\nmodelberth demo is ready at {url}  (model 'tiny', Ctrl-C to stop)\n"
                   f"Dashboard:       {url}/ui\nOpenAI base URL: {url}/v1\n\n"
                   f"Try:\n{curl_example(url)}\n", err=True)

    run(cfg, on_ready=ready)


@app.command()
def check(config: ConfigOpt = None) -> None:
    """Validate a config file and print every error with its line."""
    cfg = _load(config)
    path = config_path(config)
    typer.echo(f"{path}: OK, {len(cfg.models)} model(s): {', '.join(cfg.models) or '-'}")


@app.command()
def schema() -> None:
    """Print the config's JSON Schema (for editors)."""
    typer.echo(json.dumps(json_schema(), indent=2))


def _call(url: str, key: str | None, method: str, path: str) -> Any:
    request = urllib.request.Request(url.rstrip("/") + path, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=600) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body
        typer.echo(f"error {exc.code}: {message}", err=True)
        raise typer.Exit(1) from None
    except urllib.error.URLError as exc:
        typer.echo(f"cannot reach modelberth at {url}: {exc.reason}", err=True)
        raise typer.Exit(1) from None


@app.command()
def ps(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """List models and their state."""
    models = _call(url, key, "GET", "/api/models")["models"]
    typer.echo(f"{'MODEL':<24} {'STATE':<9} {'PORT':>6} {'ID':>9} {'IN-FLIGHT':>9} {'MEMORY':>9}")
    for m in models:
        memory = f"{m['memory_bytes'] / 2**20:.0f}MiB" if m["memory_bytes"] else "-"
        typer.echo(f"{m['name']:<24} {m['state']:<9} {m['port'] or '-':>6} "
                   f"{m['runtime_id'] or '-':>9} {m['in_flight']:>9} {memory:>9}")


def _action(action: str, name: str, url: str, key: str | None) -> None:
    status = _call(url, key, "POST", f"/api/models/{name}/{action}")
    typer.echo(f"{status['name']}: {status['state']}")


@app.command()
def start(name: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Start a model and wait until it is ready."""
    _action("start", name, url, key)


@app.command()
def stop(name: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Stop a model (after its in-flight requests finish)."""
    _action("stop", name, url, key)


@app.command()
def restart(name: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Stop and start a model."""
    _action("restart", name, url, key)


@app.command()
def reload(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Make the server re-read its config file."""
    result = _call(url, key, "POST", "/api/reload")
    changes = {k: v for k, v in result.items() if v}
    typer.echo(json.dumps(changes, indent=2) if changes else "no changes")


@app.command()
def logs(
    name: str,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines.")]
    = False,
    tail: Annotated[int, typer.Option("-n", "--tail", help="Lines of backlog.")] = 200,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Print a model's upstream output."""
    query = f"?tail={tail}&follow={'true' if follow else 'false'}"
    request = urllib.request.Request(f"{url.rstrip('/')}/api/models/{name}/logs{query}")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request) as resp:
            for raw in resp:
                sys.stdout.write(raw.decode("utf-8", "replace"))
                sys.stdout.flush()
    except urllib.error.HTTPError as exc:
        typer.echo(f"error {exc.code}: {exc.read().decode('utf-8', 'replace')}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
