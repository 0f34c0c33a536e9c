"""The Dockerfile and compose.yml, checked without Docker (CI cannot run containers).

hadolint lints the Dockerfile. Then the image's layout is built by hand from the Dockerfile's
own instructions: the files its build stage copies, a wheel built from them alone, installed
into a fresh virtualenv; its runtime stage's files, ENV and WORKDIR. Two nodes start from its
ENTRYPOINT with compose.yml's environment (Redis), its HEALTHCHECK command runs as written, and
a send made on one node reaches a client on the other. What is not run: Docker itself, the
base image, nginx (its upstreams are checked against compose.yml's services).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from testkit.processes import ROOT, free_port
from tests.harness import SiteStub, connect

HADOLINT = Path(sys.executable).parent / "hadolint"


@dataclass
class Stage:
    copies: list[tuple[list[str], str]] = field(default_factory=list)  # (sources, destination)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    healthcheck: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    copied_from_stage: bool = False
    run: str = ""  # the stage's RUN instructions, joined


def dockerfile_stages(text: str) -> list[Stage]:
    """The instructions this test needs, per stage (continuation lines joined)."""
    stages: list[Stage] = []
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append(Stage())
            continue
        stage = stages[-1]
        if instruction == "COPY":
            words = shlex.split(rest)
            if any(word.startswith("--from") for word in words):
                stage.copied_from_stage = True
                continue
            stage.copies.append((words[:-1], words[-1]))
        elif instruction == "ENV":
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                stage.env[key] = value
        elif instruction == "WORKDIR":
            stage.workdir = rest
        elif instruction == "HEALTHCHECK":
            stage.healthcheck = json.loads(rest[rest.index("CMD") + 3 :].strip())
        elif instruction == "RUN":
            stage.run += rest + "\n"
        elif instruction == "ENTRYPOINT":
            stage.entrypoint = json.loads(rest)
    return stages


def compose_environment(values: dict[str, str]) -> dict[str, str]:
    """The service nodes' environment in compose.yml, ``${VAR:-default}`` filled from
    ``values`` as Compose fills it from the shell."""
    compose = yaml.safe_load((ROOT / "compose.yml").read_text())
    node = compose["services"]["node1"]
    assert node == compose["services"]["node2"]

    def fill(match: re.Match[str]) -> str:
        name, operator, default = match.group(1), match.group(2), match.group(3)
        if name in values:
            return values[name]
        assert operator != ":?", f"compose.yml requires {name}"
        return default or ""

    pattern = re.compile(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}")
    return {key: pattern.sub(fill, str(value)) for key, value in node["environment"].items()}


def test_hadolint_passes_the_dockerfile() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_nginx_sends_to_the_nodes_compose_starts() -> None:
    compose = yaml.safe_load((ROOT / "compose.yml").read_text())
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    upstreams = re.findall(r"^\s*server (\w+):(\d+)", nginx, re.MULTILINE)
    nodes = {name for name in compose["services"] if name.startswith("node")}
    assert {name for name, _ in upstreams} == nodes
    assert {port for _, port in upstreams} == {compose_environment(REQUIRED)["PORT"]}
    assert "ip_hash;" in nginx  # polling needs every request of a session on one node
    assert "./deploy/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in str(
        compose["services"]["nginx"]["volumes"]
    )


REQUIRED = {"SITE_NAME": "shop", "AUTH_URL": "http://unused", "API_KEY": "key"}


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!")
        if any(fnmatch.fnmatchcase(prefix, glob) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_more() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = []
    for stage in dockerfile_stages((ROOT / "Dockerfile").read_text()):
        for sources, _ in stage.copies:
            for name in sources:
                found = ROOT / name
                files = [p for p in found.rglob("*") if p.is_file()] if found.is_dir() else [found]
                copied += [str(p.relative_to(ROOT)) for p in files if "__pycache__" not in p.parts]
    assert len(copied) > 20
    assert [path for path in copied if dockerignored(path, patterns)] == []
    for kept_out in [
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        "sites.yml",
        ".env",
        "data/webservice.sqlite3",
        "bench/results/x.json",
        "actors/__pycache__/a.pyc",
    ]:
        assert dockerignored(kept_out, patterns), kept_out


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's file system as the Dockerfile builds it: /venv and /app, under a folder."""
    root = tmp_path_factory.mktemp("image")
    build, runtime = dockerfile_stages((ROOT / "Dockerfile").read_text())
    source = root / "src"
    for sources, _destination in build.copies:
        for name in sources:
            target = source / name
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / name, target)
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(source)],
        check=True,
        timeout=300,
    )
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    venv_pip = [str(root / "venv/bin/python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    # As the build stage's RUN: the lock file alone, every file checked against its hash; then
    # the wheel without dependencies; then pip check, which fails if the lock misses one.
    assert "--require-hashes --no-deps -r requirements.lock" in build.run
    lock = source / "requirements.lock"
    subprocess.run(
        [*venv_pip, "install", "--require-hashes", "--no-deps", "-r", str(lock)],
        check=True,
        timeout=600,
    )
    subprocess.run(
        [*venv_pip, "install", "--no-deps", *map(str, wheels.glob("*.whl"))],
        check=True,
        timeout=300,
    )
    subprocess.run([*venv_pip[:-1], "check"], check=True, timeout=120)
    app = root / runtime.workdir.lstrip("/")
    for sources, destination in runtime.copies:
        for name in sources:
            target = root / destination.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, target)
    (app / "data").mkdir(parents=True, exist_ok=True)
    assert runtime.copied_from_stage  # the runtime stage takes /venv from the build stage
    return root


@pytest.fixture
async def nodes(
    image: Path, stub: SiteStub, redis_url: str
) -> AsyncIterator[list[tuple[int, asyncio.subprocess.Process]]]:
    _, runtime = dockerfile_stages((ROOT / "Dockerfile").read_text())
    # The container's own variables, its PATH pointing at the virtualenv as /venv/bin does.
    image_env = {
        key: value.replace("/venv/", f"{image}/venv/").replace("/app/", f"{image}/app/")
        for key, value in runtime.env.items()
    }
    image_env["PATH"] = f"{image}/venv/bin:{os.environ.get('PATH', '')}"
    compose_env = compose_environment(
        {
            "SITE_NAME": "shop",
            "AUTH_URL": f"{stub.url}/auth",
            "API_KEY": "key",
            "USER_ROOM_PREFIX": "user_",
        }
    )
    assert compose_env["REDIS_URL"] == "redis://redis:6379/0"  # the compose service's name
    compose_env["REDIS_URL"] = redis_url
    started = []
    for _ in range(2):
        port = free_port()
        env = {**image_env, **compose_env, "PORT": str(port), "HOST": "127.0.0.1"}
        process = await asyncio.create_subprocess_exec(
            *runtime.entrypoint,
            cwd=image / runtime.workdir.lstrip("/"),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        started.append((port, process))
    yield started
    for _, process in started:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 15)


async def healthcheck(image: Path, port: int) -> int:
    """The Dockerfile's HEALTHCHECK command, as Docker would run it in the container."""
    _, runtime = dockerfile_stages((ROOT / "Dockerfile").read_text())
    command = [
        str(image / "venv/bin/python")
        if runtime.healthcheck[0] == "python"
        else runtime.healthcheck[0],
        *runtime.healthcheck[1:],
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        env={"PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


async def test_two_nodes_from_the_image_layout_with_composes_environment(
    image: Path, nodes: list[tuple[int, asyncio.subprocess.Process]], stub: SiteStub
) -> None:
    """The image's layout, started as compose.yml starts it; as Docker polls the HEALTHCHECK."""
    for port, process in nodes:
        deadline = asyncio.get_running_loop().time() + 30
        while await healthcheck(image, port) != 0:
            if process.returncode is not None:
                assert process.stderr is not None
                raise AssertionError((await process.stderr.read()).decode()[-3000:])
            assert asyncio.get_running_loop().time() < deadline, "never healthy"
            await asyncio.sleep(0.2)
    (port_a, node_a), (port_b, _) = nodes
    stub.answers["alice"] = ["user_alice"]
    client = await connect(f"http://127.0.0.1:{port_b}", "shop", "alice", "phone")
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port_a}/send?site=shop&apiKey=key",
            json={"rooms": "user_alice", "event": "n", "args": [1]},
        ) as answer,
    ):
        assert answer.status == 200
    assert (await client.next()).args == [1]
    await client.disconnect()
    # JSON logs by default in compose.yml: the node's stderr is one object per line.
    node_a.terminate()
    assert await asyncio.wait_for(node_a.wait(), 15) == 0
    assert node_a.stderr is not None
    lines = (await node_a.stderr.read()).decode().splitlines()
    assert lines and all(json.loads(line)["message"] for line in lines)


def test_the_wheel_installs_one_package_with_its_client_bundles_and_pages(image: Path) -> None:
    site_packages = next((image / "venv/lib").glob("python3*/site-packages"))
    record = next(site_packages.glob("socketio_webservice-*.dist-info")) / "RECORD"
    tops = {
        line.split("/")[0]
        for line in record.read_text().splitlines()
        if not line.startswith("..") and ".dist-info/" not in line
    }
    assert tops == {"socketio_webservice"}  # no bench, no test helpers, no generic names
    static = site_packages / "socketio_webservice" / "webservice" / "static"
    for name in ("socket.io.js", "socket.io-4.min.js", "status.html", "demo.html"):
        assert (static / name).is_file(), name
    python = str(image / "venv/bin/python")
    listed = subprocess.run(
        [
            python,
            "-c",
            "import socketio_webservice, pkgutil; "
            "print(sorted(m.name for m in pkgutil.iter_modules(socketio_webservice.__path__)))",
        ],
        capture_output=True,
        text=True,
        cwd=image,
        check=True,
    )
    assert (
        listed.stdout.strip()
        == "['__main__', 'actors', 'event_log', 'histogram', 'log_throttle', 'sites', 'storage', "
        "'transport', 'webservice']"
    )
    for generic in ("actors", "transport", "storage", "webservice", "bench"):
        found = subprocess.run(
            [python, "-c", f"import {generic}"], capture_output=True, cwd=image, check=False
        )
        assert found.returncode != 0, f"{generic} is importable from the wheel"
