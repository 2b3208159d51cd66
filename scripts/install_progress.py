"""Run an install command and show that it is alive: what it is collecting and building,
the compile's progress (CMake's `[ 45%]` and Ninja's `[12/120]` steps) and, when nothing new
comes for a while, the time so far. The whole output goes to a log file, whose tail is
printed if the command fails. Standard library only: it runs before the venv exists.

    python3 scripts/install_progress.py --log .venv/setup.log -- pip install ...
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

STEP = re.compile(r"^\s*\[\s*(\d+)%\]|^\s*\[(\d+)/(\d+)\]")
# pip's own lines worth showing, shortened (verbose mode prints much more); "Collecting"
# lines are only counted.
PIP = re.compile(r"^(Building wheel for \S+|Created wheel for \S+|Successfully installed)")
COLLECTING = re.compile(r"^Collecting (\S+)")
HEARTBEAT = 30.0


def elapsed(seconds: float) -> str:
    """Seconds as people read them.

    >>> elapsed(5.2)
    '5s'
    >>> elapsed(431)
    '7m11s'
    """
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def progress(line: str) -> int | None:
    """The percentage a build step line shows, if it is one.

    >>> progress("[ 45%] Building CXX object src/CMakeFiles/llama.dir/llama.cpp.o")
    45
    >>> progress("  [12/120] Building C object ggml/src/ggml.c.o")
    10
    >>> progress("Collecting numpy") is None
    True
    """
    found = STEP.match(line)
    if found is None:
        return None
    if found.group(1) is not None:
        return int(found.group(1))
    return int(found.group(2)) * 100 // max(int(found.group(3)), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    # Only the separator before the command goes: a "--" inside the command is its own.
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    began = time.monotonic()
    last_shown = [began]
    shown_percent = -5
    collected = 0
    args.log.parent.mkdir(parents=True, exist_ok=True)
    done = threading.Event()

    def say(text: str) -> None:
        print(f"  [{elapsed(time.monotonic() - began):>6}] {text}", flush=True)
        last_shown[0] = time.monotonic()

    def heartbeat() -> None:
        while not done.wait(5):
            if time.monotonic() - last_shown[0] >= HEARTBEAT:
                say("still working (full output in " + str(args.log) + ")")

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    with (
        args.log.open("w") as log,
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            text = line.strip()
            percent = progress(text)
            if percent is not None:
                if percent >= shown_percent + 5:
                    shown_percent = percent
                    say(f"compiling: {text[:90]}")
            elif COLLECTING.match(text):
                collected += 1
                if collected % 20 == 0:
                    say(f"collected {collected} packages")
            elif PIP.match(text):
                say(text[:100])
        code = proc.wait()
    done.set()
    if code != 0:
        print(
            f"install failed (exit {code}) after {elapsed(time.monotonic() - began)}; "
            f"the end of {args.log}:",
            file=sys.stderr,
        )
        sys.stderr.writelines(args.log.read_text().splitlines(keepends=True)[-40:])
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
