"""How far one start has come, told honestly: a percent, an ETA and a short phase.

What it goes by: the upstream's own output lines (read from the model's LogBuffer by count,
so nothing is missed between two polls), the health answers while it starts, the time since
the launch, and how long the model's previous starts took. The lines are matched against
the stages llama.cpp's llama-server and vLLM really print (see `_STAGES`); every stage sets
a floor, and the two progress bars that say how far they are (vLLM's checkpoint shards and
CUDA graph capture) move within their stage's range.

The formula:

    phase%   = the highest floor the lines reached (e.g. llama.cpp: loading model 5, tensors
               10, context 80, warming up 90, model loaded 97, listening 98; vLLM: engine 5,
               shards 10..60 by the bar's own percent, weights loaded 60, KV cache 75, CUDA
               graphs 75..95, API server 97, startup complete 99), or 5 once the health path
               answers something other than 200 (llama-server's 503 "Loading model": up and
               loading); unknown until one of them happens.
    expected = the median of the previous start durations (none: unknown).
    time%    = min(95, 100 * elapsed / expected)
    percent  = max(phase%, time%), at most 99 until the health path answers 200 and 100
               then; never lower than a percent already shown; None when both are unknown
               (a first start of an upstream that prints nothing we know).
    eta      = min(expected - elapsed, expected * (100 - percent) / 100) while elapsed <
               expected (a stage further on than the clock shortens it), else None (the
               start is slower than the ones before: the history says nothing more); None
               without history: the stages say where a start is, not how long the rest takes.

Time alone claims 95 at most, so a start slower than usual waits short of done instead of
claiming it; only a stage or the health path says more.

`moved_at` is when something last moved: the runtime's launch done, a new output line
(modelberth's own lines in the buffer do not count) or a change in the health answer. The
stall timeout goes by it (a clock ticking is not movement: an upstream that prints nothing
and answers the same for stall_timeout seconds is stuck, whatever the history says). A
line counts once it ends: a bar redrawn with carriage returns only, or llama.cpp's dots,
counts when its line is done (the runtimes read whole lines).
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modelberth.runtimes.logbuffer import LogBuffer

_TIME_CAP = 95.0  # the most the clock alone may claim
_HEALTH_FLOOR = 5.0  # the health path answers, not yet 200: the server is up and loading
_ETA_DIGITS = 1


@dataclass(frozen=True, slots=True)
class _Stage:
    pattern: re.Pattern[str]
    phase: str
    floor: float
    ceiling: float | None = None  # a bar: its group 1 percent moves floor..ceiling
    counted: bool = False  # groups 2 and 3 are done/total, shown in the phase


def _stage(
    pattern: str, phase: str, floor: float, ceiling: float | None = None, counted: bool = False
) -> _Stage:
    return _Stage(re.compile(pattern), phase, floor, ceiling, counted)


# Searched anywhere in the line: llama.cpp's newer builds prefix a timestamp and a level
# ("0.00.011.238 I llama_model_loader: ..."), vLLM a process tag and its logger's head
# ("(EngineCore_DP0 pid=441) INFO 11-24 11:43:54 [gpu_model_runner.py:3341] ...").
_STAGES = (
    # llama.cpp's llama-server, old builds ("main: ...") and new ("llama_server: ...")
    _stage(r"\bloading model\b", "loading model", 5),
    _stage(r"llama_model_loader: loaded meta data", "reading metadata", 6),
    _stage(r"\b(?:llm_)?load_tensors:", "loading tensors", 10),
    _stage(r"^\s*\.{8,}\s*$", "tensors loaded", 75),  # the progress dots, once their line ends
    _stage(
        r"\bllama_(?:new_context_with_model|init_from_model|context|kv_cache)\w*:",
        "creating context",
        80,
    ),
    _stage(r"warming up the model", "warming up", 90),
    _stage(r"initializing slots|load_model: initializing", "initializing slots", 93),
    _stage(r"\bmodel loaded\b", "model loaded", 97),
    _stage(r"listening on http", "listening", 98),
    # vLLM
    _stage(r"vLLM API server version|non-default args:", "starting vLLM", 2),
    _stage(r"Initializing an? (?:V\d )?LLM engine", "initializing engine", 5),
    _stage(r"Starting to load model", "loading model", 8),
    _stage(r"Using model weights format", "loading weights", 9),
    _stage(
        r"Loading (?:safetensors|pt) checkpoint shards:\s*(\d+)% Completed \| (\d+)/(\d+)",
        "loading weights",
        10,
        60,
        counted=True,
    ),
    _stage(
        r"Loading weights took|Model loading took|Loading model weights took", "weights loaded", 60
    ),
    _stage(r"Dynamo bytecode transform|torch\.compile take|Compiling a graph", "compiling", 65),
    _stage(r"Memory profiling takes|Initial profiling/warmup run", "profiling memory", 70),
    _stage(
        r"Available KV cache memory|GPU KV cache size|# (?:GPU|cuda) blocks",
        "allocating KV cache",
        75,
    ),
    _stage(r"Capturing (?:the model for )?CUDA graph", "capturing CUDA graphs", 75),
    _stage(r"Capturing CUDA graph(?:s| shapes)[^:%]*:\s*(\d+)%", "capturing CUDA graphs", 75, 95),
    _stage(r"Graph capturing finished|init engine \(profile", "engine ready", 95),
    _stage(r"Starting vLLM API server", "starting API server", 97),
    _stage(r"Application startup complete", "startup complete", 99),
)


@dataclass(frozen=True, slots=True)
class Progress:
    """What is published about a start: in `start_progress` events, a model's status and
    the loading messages to waiting clients."""

    elapsed_seconds: float
    percent: int | None  # 0..100; None when nothing honest is known
    eta_seconds: float | None
    phase: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "elapsed_seconds": self.elapsed_seconds,
            "percent": self.percent,
            "eta_seconds": self.eta_seconds,
            "phase": self.phase,
        }

    def brief(self) -> str:
        """ "45% eta 4s (loading tensors)", or as much of it as is known."""
        parts = []
        if self.percent is not None:
            parts.append(f"{self.percent}%")
        if self.eta_seconds is not None and self.percent != 100:
            parts.append(f"eta {format_eta(self.eta_seconds)}")
        if self.phase != "starting":
            parts.append(f"({self.phase})")
        return " ".join(parts)


def format_eta(seconds: float) -> str:
    whole = max(0, math.ceil(seconds))
    return f"{whole}s" if whole < 120 else f"{whole // 60}m{whole % 60:02d}s"


class StartProgress:
    """One start's progress; made at the launch, polled by the health wait (`observe`),
    read by whoever shows it (`snapshot`). Everything runs on the event loop."""

    def __init__(
        self,
        logs: LogBuffer,
        previous: Sequence[float] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logs = logs
        self._seen = logs.count  # lines before the launch belong to earlier starts
        durations = [d for d in previous if d > 0]
        self.expected: float | None = statistics.median(durations) if durations else None
        self._clock = clock
        self.began = self.moved_at = clock()
        self._floor: float | None = None  # the stages' percent, once one is known
        self._phase = "starting"
        self._health: tuple[int | None, str] | None = None
        self._shown: int | None = None  # never go back below a percent once shown
        self._healthy = False

    # --- inputs ------------------------------------------------------------------------

    def read_logs(self) -> None:
        """Take the lines the upstream printed since the last call."""
        if self._logs.count == self._seen:
            return
        lines = self._logs.since(self._seen)
        self._seen = self._logs.count
        for line in lines:
            if line.stream != "modelberth":
                self.moved_at = self._clock()
                self.feed(line.text)

    def feed(self, text: str) -> None:
        """One output line. A bar redrawn with carriage returns arrives as one line: its
        pieces are read in order, so the last drawing wins."""
        for piece in text.split("\r"):
            if piece:
                self._match(piece)

    def _match(self, text: str) -> None:
        for stage in _STAGES:
            found = stage.pattern.search(text)
            if found is None:
                continue
            floor, phase = stage.floor, stage.phase
            if stage.ceiling is not None:
                share = min(100, int(found.group(1))) / 100
                floor += share * (stage.ceiling - stage.floor)
                phase = (
                    f"{phase} {found.group(2)}/{found.group(3)}"
                    if stage.counted
                    else f"{phase} {found.group(1)}%"
                )
            if self._floor is None or floor >= self._floor:
                self._floor, self._phase = floor, phase

    def saw_health(self, status: int | None, message: str) -> None:
        """A health answer that was not 200 (status None: none came)."""
        answer = (status, message)
        if self._health is not None and answer != self._health:
            self.moved_at = self._clock()
        self._health = answer
        if status is not None and (self._floor is None or self._floor < _HEALTH_FLOOR):
            self._floor = _HEALTH_FLOOR
            self._phase = f"loading (health {status})"

    def launched(self) -> None:
        """The runtime has started the upstream (a container's creation, an image pull, may
        take a while): that moved too."""
        self.moved_at = self._clock()

    def observe(self, status: int | None, message: str) -> None:
        """The health wait's poll: the new lines, then the answer it got."""
        self.read_logs()
        self.saw_health(status, message)

    def healthy(self) -> None:
        self.read_logs()
        self._healthy = True

    # --- outputs -----------------------------------------------------------------------

    @property
    def health(self) -> tuple[int | None, str] | None:
        """The last health answer that was not 200: (status or None, what it said)."""
        return self._health

    def quiet_for(self) -> float:
        """Seconds since anything moved (see the module docstring)."""
        return self._clock() - self.moved_at

    def stalled(self, limit: float) -> bool:
        """Whether nothing moved for `limit` seconds (0: never stalled)."""
        return limit > 0 and self.quiet_for() >= limit

    def snapshot(self) -> Progress:
        self.read_logs()
        elapsed = self._clock() - self.began
        if self._healthy:
            return Progress(round(elapsed, 1), 100, 0.0, "ready")
        estimates = [] if self._floor is None else [self._floor]
        expected = self.expected
        if expected is not None:
            estimates.append(min(_TIME_CAP, 100 * elapsed / expected))
        percent = min(99, int(max(estimates))) if estimates else None
        if percent is not None and self._shown is not None:
            percent = max(percent, self._shown)
        self._shown = percent
        eta = None
        if expected is not None and percent is not None and elapsed < expected:
            eta = round(min(expected - elapsed, expected * (100 - percent) / 100), _ETA_DIGITS)
        return Progress(round(elapsed, 1), percent, eta, self._phase)
