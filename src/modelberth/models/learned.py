"""Learned footprints: what each model was measured to need (RAM and VRAM peaks) and how long
its starts took, kept across restarts of modelberth in a small JSON file, so the next
placement plans with measurements instead of estimates.

Entries are keyed by model name and config hash: a model whose command, image or GPUs changed
starts from the estimate again. A file that cannot be read or parsed, an entry of the wrong
shape, or one written by another format version is ignored with a warning, never an error:
the file is an optimisation, and losing it only costs a more cautious first placement.
Written atomically (a temporary file, then a rename) and only when something changed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

FORMAT = 1
STATE_DIR_ENV = "MODELBERTH_STATE_DIR"
_KEPT_STARTS = 5


@dataclass(frozen=True, slots=True)
class Learned:
    config_hash: str
    peak_memory_bytes: int | None = None
    peak_vram_bytes: int | None = None
    start_seconds: tuple[float, ...] = ()  # the last few successful starts, oldest first
    updated_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "config_hash": self.config_hash,
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_vram_bytes": self.peak_vram_bytes,
            "start_seconds": list(self.start_seconds),
            "updated_at": self.updated_at,
        }


def default_path(instance: str) -> Path:
    """footprints-<instance>.json in $MODELBERTH_STATE_DIR, else ~/.cache/modelberth: one file
    per instance, so two modelberths on one machine never mix their models."""
    base = os.environ.get(STATE_DIR_ENV)
    directory = Path(base) if base else Path.home() / ".cache" / "modelberth"
    return directory / f"footprints-{instance}.json"


def _entry(name: str, raw: Any) -> Learned | None:
    def size(value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        raise ValueError(f"not a size: {value!r}")

    try:
        if not isinstance(raw, dict) or not isinstance(raw.get("config_hash"), str):
            raise ValueError("no config_hash")
        starts = raw.get("start_seconds", [])
        if not isinstance(starts, list) or not all(
            isinstance(s, int | float) and not isinstance(s, bool) and s >= 0 for s in starts
        ):
            raise ValueError("start_seconds is not a list of seconds")
        return Learned(
            raw["config_hash"],
            size(raw.get("peak_memory_bytes")),
            size(raw.get("peak_vram_bytes")),
            tuple(float(s) for s in starts[-_KEPT_STARTS:]),
            float(raw.get("updated_at", 0)),
        )
    except (ValueError, TypeError) as exc:
        logger.warning("learned footprints: ignoring the entry for {}: {}", name, exc)
        return None


class LearnedFootprints:
    """Owned by the resource Monitor, which remembers each model's peaks after sampling and
    saves; read once at boot, when each model is created (`recall`)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, Learned] = {}
        self._dirty = False
        self._lock = asyncio.Lock()  # one write at a time

    def load(self) -> None:
        """Read the file (blocking: at boot, before serving; it is a few kilobytes)."""
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning(
                "learned footprints: ignoring {} ({}); models start from their estimates",
                self.path,
                exc,
            )
            return
        if (
            not isinstance(data, dict)
            or data.get("format") != FORMAT
            or not isinstance(data.get("models"), dict)
        ):
            logger.warning("learned footprints: ignoring {} (not format {})", self.path, FORMAT)
            return
        for name, raw in data["models"].items():
            entry = _entry(str(name), raw)
            if entry is not None:
                self._entries[str(name)] = entry

    def recall(self, name: str, config_hash: str) -> Learned | None:
        entry = self._entries.get(name)
        if entry is None:
            return None
        if entry.config_hash != config_hash:
            logger.info(
                "learned footprints: {} was measured with another config ({}); "
                "planning from its estimate",
                name,
                entry.config_hash,
            )
            return None
        return entry

    def remember(
        self,
        name: str,
        config_hash: str,
        memory: int | None,
        vram: int | None,
        start_seconds: tuple[float, ...],
    ) -> None:
        """Keep what was measured; a figure not known now keeps the one learned before."""
        old = self._entries.get(name)
        if old is None or old.config_hash != config_hash:
            old = Learned(config_hash, updated_at=0)
        peaks = (
            memory or old.peak_memory_bytes,
            vram or old.peak_vram_bytes,
            start_seconds[-_KEPT_STARTS:] or old.start_seconds,
        )
        if peaks == (old.peak_memory_bytes, old.peak_vram_bytes, old.start_seconds):
            return
        self._entries[name] = Learned(config_hash, *peaks)
        self._dirty = True

    async def save(self) -> None:
        """Write the file if anything changed; a failure is logged and retried next time."""
        if self.path is None or not self._dirty:
            return
        async with self._lock:
            self._dirty = False
            blob = json.dumps(
                {
                    "format": FORMAT,
                    "models": {
                        name: entry.as_dict() for name, entry in sorted(self._entries.items())
                    },
                },
                indent=1,
            )
            try:
                await asyncio.to_thread(_write_atomically, self.path, blob)
            except OSError as exc:
                self._dirty = True
                logger.warning("learned footprints: cannot write {}: {}", self.path, exc)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
