"""Command line: serve, demo, check, schema, and ps/start/stop/restart/logs on a live server."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated, Any

import typer

from modelberth.config import ConfigError, config_path, json_schema, load_config
from modelberth.telemetry.logs import LogFormat, setup_logging

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="One OpenAI-compatible endpoint in front of many local model servers.",
)

ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "-c", "--config", help="Config file (default: $MODELBERTH_CONFIG or ./modelberth.yaml)."
    ),
]
FormatOpt = Annotated[str, typer.Option("--log-format", help="auto | rich | json | plain")]
LevelOpt = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING...")]
UrlOpt = Annotated[str, typer.Option("--url", envvar="MODELBERTH_URL", help="The running server.")]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="MODELBERTH_ADMIN_KEY", help="Admin key, if the server has one."),
]
DEFAULT_URL = "http://127.0.0.1:8080"


def _print_version(value: bool) -> None:
    if value:
        from modelberth import __version__

        typer.echo(f"modelberth {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """One OpenAI-compatible endpoint in front of many local model servers."""


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
        typer.echo(
            f"\nmodelberth demo is ready at {url}  (model 'tiny', Ctrl-C to stop)\n"
            f"Dashboard:       {url}/ui\nOpenAI base URL: {url}/v1\n\n"
            f"Try:\n{curl_example(url)}\n",
            err=True,
        )

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
        typer.echo(
            f"{m['name']:<24} {m['state']:<9} {m['port'] or '-':>6} "
            f"{m['runtime_id'] or '-':>9} {m['in_flight']:>9} {memory:>9}"
        )


class _StartWatch:
    """While a start is awaited, its progress on stderr, from /api/events (the model's
    `start_progress` and `state` events), read in a thread of its own. Best effort: with an
    old server, a broken stream or no events it prints nothing, and the command's answer
    and exit code are the POST's alone."""

    _SUBSCRIBE_WAIT = 2.0  # for the stream to open, so a start's first events are seen
    _LAST_WAIT = 1.0  # after the answer, for the start's last event (it races the answer)
    _READ_TIMEOUT = 60.0  # the stream says something every 15 s

    def __init__(self, url: str, key: str | None, name: str) -> None:
        self._url, self._key, self._names = url.rstrip("/"), key, {name}
        self._tty = sys.stderr.isatty()
        self._lock = threading.Lock()  # the watcher's lines never cross the final answer
        self._done = False
        self._drawn = False  # a line drawn in place on a terminal, to be cleared
        self._opened = threading.Event()
        self._seen = False  # an event of this model came
        self._ended = threading.Event()  # and then the state its start ended in
        threading.Thread(target=self._read, daemon=True).start()  # ends with the command
        self._opened.wait(self._SUBSCRIBE_WAIT)

    def _get(self, path: str, accept: str = "application/json") -> Any:
        request = urllib.request.Request(self._url + path, headers={"Accept": accept})
        if self._key:
            request.add_header("Authorization", f"Bearer {self._key}")
        return urllib.request.urlopen(request, timeout=self._READ_TIMEOUT)

    def _read(self) -> None:
        try:
            with self._get(f"/api/models/{urllib.parse.quote(next(iter(self._names)))}") as resp:
                self._names.add(json.loads(resp.read())["name"])  # an alias's model
            with self._get("/api/events", "text/event-stream") as stream:
                kind = ""
                for raw in stream:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if line.startswith(": connected"):
                        self._opened.set()
                    elif line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        self._show(kind, json.loads(line[6:]))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no progress to show; the POST still answers
        finally:
            self._opened.set()

    def _show(self, kind: str, event: dict[str, Any]) -> None:
        if event.get("model") not in self._names:
            return
        self._seen = True
        if kind == "state":
            text, in_place = f"{event['model']}: {event.get('from')} -> {event.get('to')}", False
        elif kind == "start_progress" and event.get("phase") == "ready":
            elapsed = float(event.get("elapsed_seconds") or 0)
            text, in_place = f"{event['model']}: ready after {elapsed:.1f}s", False
        elif kind == "start_progress":
            text, in_place = f"{event['model']}: starting {_progress_text(event)}", True
        else:
            return
        with self._lock:
            if self._done:
                return
            if self._tty and (in_place or self._drawn):
                sys.stderr.write("\r\x1b[K")  # over the last progress line
            sys.stderr.write(text if self._tty and in_place else text + "\n")
            sys.stderr.flush()
            self._drawn = self._tty and in_place
        if event.get("phase") == "ready" or event.get("to") in ("failed", "retired"):
            self._ended.set()  # once shown: the start's last event

    def close(self) -> None:
        if self._seen:
            self._ended.wait(self._LAST_WAIT)
        with self._lock:
            self._done = True
            if self._drawn:
                sys.stderr.write("\n")
                sys.stderr.flush()


def _progress_text(event: dict[str, Any]) -> str:
    """ "3.2s 45% eta 4s (loading tensors)": what a start_progress event knows."""
    parts = [f"{float(event.get('elapsed_seconds') or 0):.1f}s"]
    if event.get("percent") is not None:
        parts.append(f"{event['percent']}%")
    if event.get("eta_seconds") is not None and event.get("percent") != 100:
        parts.append(f"eta {math.ceil(float(event['eta_seconds']))}s")
    if event.get("phase") and event["phase"] != "starting":
        parts.append(f"({event['phase']})")
    return " ".join(parts)


def _action(action: str, name: str, url: str, key: str | None, watch: bool = False) -> None:
    watcher = _StartWatch(url, key, name) if watch else None
    try:
        status = _call(url, key, "POST", f"/api/models/{name}/{action}")
    finally:
        if watcher is not None:
            watcher.close()
    typer.echo(f"{status['name']}: {status['state']}")


@app.command()
def start(name: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Start a model and wait until it is ready, showing its progress on stderr."""
    _action("start", name, url, key, watch=True)


@app.command()
def stop(name: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Stop a model (after its in-flight requests finish)."""
    _action("stop", name, url, key)


@app.command()
def restart(name: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Stop and start a model, showing the start's progress on stderr."""
    _action("restart", name, url, key, watch=True)


@app.command()
def reload(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Make the server re-read its config file."""
    result = _call(url, key, "POST", "/api/reload")
    changes = {k: v for k, v in result.items() if v}
    typer.echo(json.dumps(changes, indent=2) if changes else "no changes")


@app.command()
def logs(
    name: str,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing new lines.")
    ] = False,
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
