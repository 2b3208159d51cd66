"""Compare builds of modelberth side by side: wrk (c=64, or `--connections`) against each in
turn, rounds interleaved, medians and ratios to the first.

Each variant is a git revision (checked out into a temporary worktree; `.` is the working
tree) and optional environment variables; `SINK` in a value stands for the URL of an OTLP
sink (an nginx that discards what it gets). Every variant runs on core 0 with its own nginx
upstream on core 1, as in run.py; a variant's span export process is moved to core 1.

    python bench/ab.py --rounds 6 before=HEAD~1 after=.
    python bench/ab.py off=. \
        traced=.,OTEL_EXPORTER_OTLP_ENDPOINT=SINK,OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf

Differences of a few percent need this: the machine's speed drifts between runs by more
than that, but alike for builds measured in alternation.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from run import ROOT, ensure_tools, free_port, side_by_side, start_otlp_sink, table

Variant = tuple[str, str, dict[str, str]]  # label, revision, environment


def parse_variant(text: str) -> Variant:
    """`LABEL=REV[,NAME=VALUE...]`."""
    label, _, rest = text.partition("=")
    revision, *settings = rest.split(",")
    if not label or not revision or any("=" not in item for item in settings):
        raise argparse.ArgumentTypeError(f"not LABEL=REV[,NAME=VALUE...]: {text}")
    return label, revision, dict(item.split("=", 1) for item in settings)


@contextmanager
def source_tree(revision: str, work: Path) -> Iterator[Path]:
    """The source of `revision`: the working tree for `.`, else a temporary worktree."""
    if revision == ".":
        yield ROOT
        return
    tree = Path(tempfile.mkdtemp(prefix="ab-", dir=work))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(tree), revision],
        check=True,
        capture_output=True,
    )
    try:
        yield tree
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
            check=False,
            capture_output=True,
        )


def compare(variants: list[Variant], rounds: int, duration: float, connections: int = 64) -> str:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        sink_port = free_port()
        start_otlp_sink(stack, work, sink_port)
        sink = f"http://127.0.0.1:{sink_port}"
        envs = []
        for label, revision, settings in variants:
            tree = stack.enter_context(source_tree(revision, work))
            env = {name: value.replace("SINK", sink) for name, value in settings.items()}
            envs.append((label, {**env, "PYTHONPATH": str(tree / "src")}))
        results = side_by_side(stack, work, envs, duration, rounds, connections)
    first = results[variants[0][0]]["rps"]
    return table(
        [
            {"variant": label, **results[label], "x_first": results[label]["rps"] / first}
            for label, _, _ in variants
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "variants",
        nargs="+",
        type=parse_variant,
        help="LABEL=REV[,NAME=VALUE...]; REV `.` is the working tree",
    )
    parser.add_argument("--rounds", type=int, default=6, help="wrk runs per variant")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk's -c")
    args = parser.parse_args()
    ensure_tools()
    print(compare(args.variants, args.rounds, args.duration, args.connections))


if __name__ == "__main__":
    main()
