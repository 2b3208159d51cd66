"""Ollama's model catalog, built from plain data: /api/tags, /api/ps, /api/show,
/api/version, and how an Ollama model name finds a configured model.

Each model is a dict shaped like modelberth's model status (`Model.status()`): "name",
"state", "aliases", "memory_bytes", "vram_bytes", "idle_stop_at" and "started_at" (wall
clock seconds), "runtime"; plus, when the caller knows them (from the config and the GGUF
file; nothing here reads a file), "model_path", "size_bytes" (the file's size),
"modified_at" (its mtime), "format" ("gguf"), "family" / "architecture",
"parameter_size" ("8.0B"), "parameter_count", "quantization_level" ("Q4_K_M"),
"context_length", "embedding_length", "embedding" (True for an embedding model) and
"capabilities" (Ollama's words: "completion", "tools", "vision", "embedding", "thinking",
"insert"). What is missing gets a neutral value, never an invented one.

Names: a configured name is listed as it is ("qwen3-8b", or "qwen3:8b"); `resolve_name`
also takes "qwen3-8b:latest" for "qwen3-8b" (Ollama's clients add the default tag), and
differences of case, as Ollama's own lookups do. Aliases are not listed (one entry per
model, as in Ollama) but resolve if the caller passes them among the known names.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from typing import Any

from modelberth.proxy.dialects.ollama_answer import created_at

# The Ollama version /api/version reports. Clients gate features on it (tools, structured
# outputs, `think`, embed `dimensions` all predate 0.12; some editors refuse servers older
# than 0.6.4), so it must be recent; but not the newest, which would invite clients to try
# what modelberth does not translate (cloud models, web search, image generation).
VERSION = "0.12.0"

_LATEST = ":latest"
_FOREVER_NS = 2**63 - 1  # Go's longest duration: how Ollama says "never expires"


def version() -> dict[str, str]:
    return {"version": VERSION}


def resolve_name(requested: str, known_names: Iterable[str]) -> str | None:
    """The configured name (or alias) an Ollama client means, or None: exact, then with
    or without ":latest", then the same ignoring case when only one name matches."""
    known = list(known_names)
    wanted = [requested]
    if requested.endswith(_LATEST):
        wanted.append(requested.removesuffix(_LATEST))
    elif ":" not in requested:
        wanted.append(requested + _LATEST)
    for name in wanted:
        if name in known:
            return name
    for name in wanted:
        folded = [k for k in known if k.casefold() == name.casefold()]
        if len(folded) == 1:
            return folded[0]
    return None


def tags(models: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """/api/tags: every configured model, started or not."""
    return {
        "models": [
            {
                "name": m["name"],
                "model": m["name"],
                "modified_at": _stamp(m.get("modified_at") or m.get("started_at")),
                "size": _bytes(m.get("size_bytes")),
                "digest": _digest(m),
                "details": details(m),
            }
            for m in models
        ]
    }


def ps(models: Iterable[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    """/api/ps: the models that are up (state "ready"). `size` is all the memory the
    upstream holds (host RAM and GPU), `size_vram` the GPU's part; `expires_at` is when the
    idle timer will stop it, or now plus Go's longest duration (292 years) for a model with
    none or that is busy now: Ollama's way of saying "kept loaded"."""
    wall = time.time() if now is None else now
    entries = []
    for m in models:
        if m.get("state") != "ready":
            continue
        vram = _bytes(m.get("vram_bytes"))
        stop_at = m.get("idle_stop_at")
        expires = (
            _stamp(stop_at)
            if isinstance(stop_at, int | float)
            else created_at(int(wall * 1e9) + _FOREVER_NS)
        )
        entry: dict[str, Any] = {
            "name": m["name"],
            "model": m["name"],
            "size": _bytes(m.get("memory_bytes")) + vram,
            "digest": _digest(m),
            "details": details(m),
            "expires_at": expires,
            "size_vram": vram,
        }
        if isinstance(m.get("context_length"), int):
            entry["context_length"] = m["context_length"]
        entries.append(entry)
    return {"models": entries}


def show(model: dict[str, Any]) -> dict[str, Any]:
    """/api/show: enough for clients that read it (Open WebUI, Continue and the SDK look
    at details, model_info's context length and capabilities). The template is a neutral
    placeholder: the upstream applies its own chat template, which modelberth does not see."""
    name = model["name"]
    architecture = str(model.get("architecture") or model.get("family") or "")
    info: dict[str, Any] = {"general.architecture": architecture}
    if isinstance(model.get("parameter_count"), int):
        info["general.parameter_count"] = model["parameter_count"]
    for key in ("context_length", "embedding_length"):
        if isinstance(model.get(key), int) and architecture:
            info[f"{architecture}.{key}"] = model[key]
    source = model.get("model_path") or name
    return {
        "modelfile": f"# Modelfile generated by modelberth for {name}\nFROM {source}\n",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": details(model),
        "model_info": info,
        "capabilities": capabilities(model),
        "modified_at": _stamp(model.get("modified_at") or model.get("started_at")),
    }


def details(model: dict[str, Any]) -> dict[str, Any]:
    family = str(model.get("family") or model.get("architecture") or "")
    return {
        "parent_model": "",
        "format": str(model.get("format") or "gguf"),
        "family": family,
        "families": [family] if family else None,
        "parameter_size": str(model.get("parameter_size") or ""),
        "quantization_level": str(model.get("quantization_level") or ""),
    }


def capabilities(model: dict[str, Any]) -> list[str]:
    given = model.get("capabilities")
    if isinstance(given, list) and all(isinstance(c, str) for c in given):
        return list(given)
    return ["embedding"] if model.get("embedding") else ["completion"]


def _digest(model: dict[str, Any]) -> str:
    """A stable stand-in for Ollama's sha256 of the weights (modelberth does not hash
    multi-GB files): sha256 of the name, file, size and mtime, so it changes when they do."""
    key = "\0".join(
        str(model.get(k) or "") for k in ("name", "model_path", "size_bytes", "modified_at")
    )
    return hashlib.sha256(key.encode()).hexdigest()


def _stamp(unix_seconds: Any) -> str:
    """A wall clock time in seconds, to the microsecond (all a float of today's time
    holds: more digits would only be noise)."""
    seconds = unix_seconds if isinstance(unix_seconds, int | float) else 0
    whole = math.floor(seconds)
    return created_at(whole * 1_000_000_000 + round((seconds - whole) * 1e6) * 1000)


def _bytes(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
