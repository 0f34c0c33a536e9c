"""What an operator sees: log lines (text and JSON), the command line, and SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from testkit.processes import ServiceProcess, run_cli, write_sites
from tests.harness import SiteStub, connect, connect_error, post_send

TOKEN = "tok-Secret-4711"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def start_node(tmp_path: Path, stub: SiteStub, **env: str) -> ServiceProcess:
    """The service as a process on SQLite, with the stub's shop and news sites."""
    node = ServiceProcess(
        tmp_path,
        write_sites(tmp_path, f"{stub.url}/auth"),
        SQLITE_PATH=str(tmp_path / "db.sqlite3"),
        **env,
    )
    await node.start()
    return node


async def test_json_logs_one_object_per_line_with_fields_and_no_secret(
    tmp_path: Path, stub: SiteStub, http: aiohttp.ClientSession
) -> None:
    stub.answers[TOKEN] = ["user_alice", "staff"]
    node = await start_node(tmp_path, stub, LOG_FORMAT="json")
    try:
        client = await connect(node.url, "shop", TOKEN, "phone")
        assert await post_send(http, node.url, "shop", "user_alice", "n", 1) == (200, "OK")
        assert (await client.next()).args == [1]
        await client.disconnect()
        # python-engineio's own line (an unknown session), routed through our sink
        async with http.get(f"{node.url}/socket.io/?EIO=4&transport=polling&sid=nope") as answer:
            assert answer.status == 400
        async with http.post(f"{node.url}/send?site=shop&apiKey=key&token={TOKEN}") as answer:
            assert answer.status == 400
    finally:
        await node.stop()
    lines = node.log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line, the libraries' too
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    connects = [e for e in entries if e["message"].startswith("connect ")]
    assert len(connects) == 1
    assert connects[0]["site"] == "shop" and connects[0]["user"] == "user_alice"
    assert connects[0]["device"] == "phone" and connects[0]["client"] == "EIO4"
    assert connects[0]["transport"] == "websocket" and connects[0]["node"]
    sends = [e for e in entries if e["message"].startswith("send site=shop")]
    assert len(sends) == 1 and sends[0]["stored"] == 1 and sends[0]["rooms"] == 1
    assert sends[0]["ms"] >= 0
    disconnects = [e for e in entries if e["message"].startswith("disconnect ")]
    assert len(disconnects) == 1 and disconnects[0]["device"] == "phone"
    engineio = [e for e in entries if e["logger"] == "engineio.server"]
    assert any("Invalid session" in e["message"] for e in engineio)
    text = node.log.read_text()
    assert TOKEN not in text
    assert "apiKey=key" not in text


async def test_text_logs_name_connects_and_sends_once_each(
    tmp_path: Path, stub: SiteStub, http: aiohttp.ClientSession
) -> None:
    stub.answers[TOKEN] = ["user_alice"]
    node = await start_node(tmp_path, stub)
    try:
        client = await connect(node.url, "shop", TOKEN, "phone")
        for i in range(3):
            assert await post_send(http, node.url, "shop", "user_alice", "n", i) == (200, "OK")
        for i in range(3):
            assert (await client.next()).args == [i]
        await client.disconnect()
    finally:
        await node.stop()
    text = node.log.read_text()
    assert text.count(" - connect site=shop user=user_alice device=phone") == 1
    assert text.count(" - disconnect site=shop user=user_alice device=phone") == 1
    assert text.count("send site=shop event=n messages=1 rooms=1 stored=1") == 3
    assert "deliver" not in text.lower().replace("delivery", "")  # nothing per delivery
    assert TOKEN not in text


async def test_a_device_id_with_a_newline_cannot_write_a_line_of_its_own(
    tmp_path: Path, stub: SiteStub, http: aiohttp.ClientSession
) -> None:
    stub.answers[TOKEN] = ["user_alice"]
    node = await start_node(tmp_path, stub)
    forged = "2026-01-01 00:00:00.000 | INFO     | forged - admin logged in"
    try:
        client = await connect(node.url, "shop", TOKEN, f"phone\n{forged}\r\x1b[2K", use_auth=True)
        await client.disconnect()
        query = "EIO=4&transport=polling&transport=x%0Aforged"  # a second transport value
        async with http.get(f"{node.url}/socket.io/?{query}") as answer:
            assert answer.status == 200
    finally:
        await node.stop()
    lines = node.log.read_text().splitlines()
    assert not [line for line in lines if line.startswith(forged[:10]) or "\x1b" in line]
    connect_line = next(line for line in lines if " - connect site=shop" in line)
    assert "device=phone\\n2026-01-01" in connect_line and "\\x1b[2K" in connect_line
    assert "transport=websocket" in connect_line


def test_version_and_help_are_plain_text(tmp_path: Path) -> None:
    version = run_cli("--version", cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout.startswith("socketio-webservice ")
    assert version.stdout.split()[1][0].isdigit()
    helped = run_cli("--help", cwd=tmp_path)
    assert helped.returncode == 0
    assert "``" not in helped.stdout and ":class:" not in helped.stdout
    for variable in ("REDIS_URL", "SITE_NAME", "API_KEY", "LOG_FORMAT", "ADMIN_KEY", "SIGHUP"):
        assert variable in helped.stdout


def test_check_config_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    (tmp_path / "config.yml").write_text(
        "production:\n  port: 8080\n  admin_key: admin-Secret-1\n  prot: 1\n  servers: [a]\n"
        "  redis:\n    url: redis://user:redis-Secret-2@127.0.0.1:6390/0\n"
    )
    result = run_cli(
        "--check-config",
        cwd=tmp_path,
        SITE_NAME="shop",
        AUTH_URL="https://shop.example/auth",
        API_KEY="api-Secret-3",
        MAX_QUEUE="50",
    )
    assert result.returncode == 0, result.stderr
    for secret in ("admin-Secret-1", "redis-Secret-2", "api-Secret-3"):
        assert secret not in result.stdout + result.stderr
    assert "port: 8080" in result.stdout
    assert "max_queue: 50" in result.stdout
    assert "redis://user:***@127.0.0.1:6390/0" in result.stdout
    assert "authUrl: https://shop.example/auth" in result.stdout
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1  # `prot` (a typo of port), not the original's `servers`
    assert "prot: unknown key" in warnings[0]


def test_check_config_refuses_a_mistake_with_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_cli(
        "--check-config", cwd=tmp_path, SITE_NAME="shop", AUTH_URL="ftp://x", API_KEY="k"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config error: SITE_NAME=shop.authUrl: must be an http(s) URL, not 'ftp://x'"
    ]


async def test_sighup_reloads_sites_and_keeps_the_other_connections(
    tmp_path: Path, stub: SiteStub, http: aiohttp.ClientSession
) -> None:
    stub.answers.update(alice=["user_alice"], bob=["room"])
    auth = f"{stub.url}/auth"
    sites = tmp_path / "sites.yml"
    sites.write_text(
        f"shop:\n  authUrl: {auth}\n  apiKey: key\n  userRoomPrefix: user_\n"
        f"news:\n  authUrl: {auth}\n  apiKey: key\n"
        f"blog:\n  authUrl: {auth}\n  apiKey: key\n"
    )
    node = ServiceProcess(tmp_path, sites, SQLITE_PATH=str(tmp_path / "db.sqlite3"))
    await node.start()
    try:
        alice = await connect(node.url, "shop", "alice", "phone")
        reader = await connect(node.url, "news", "bob")
        closed = asyncio.Event()
        reader.on("disconnect", closed.set, namespace="/news")
        blogger = await connect(node.url, "blog", "bob")
        # shop's key changes, news is removed, forum is added, blog stays as it was
        sites.write_text(
            f"shop:\n  authUrl: {auth}\n  apiKey: new-key\n  userRoomPrefix: user_\n"
            f"blog:\n  authUrl: {auth}\n  apiKey: key\n"
            f"forum:\n  authUrl: {auth}\n  apiKey: key\n"
        )
        node.signal(signal.SIGHUP)
        await asyncio.wait_for(closed.wait(), 10)  # news's socket was closed
        assert await post_send(http, node.url, "shop", "user_alice", "n", 1) == (
            401,
            "ApiKey invalid.",
        )
        async with http.post(
            f"{node.url}/send?site=shop&apiKey=new-key",
            json={"rooms": "user_alice", "event": "n", "args": [2]},
        ) as answer:
            assert answer.status == 200
        assert (await alice.next()).args == [2]  # the same socket, still connected
        assert await post_send(http, node.url, "blog", "room", "post") == (200, "OK")
        assert (await blogger.next()).event == "post"
        assert await post_send(http, node.url, "news", "room", "x") == (401, "ApiKey invalid.")
        assert await connect_error(node.url, "news", "bob") == "Unable to connect"  # as if never
        forum = await connect(node.url, "forum", "bob")
        await forum.disconnect()
        await alice.disconnect()
        await blogger.disconnect()
        assert node.process is not None and node.process.returncode is None
    finally:
        await node.stop()
    assert "reloaded: 3 sites" in node.logs()


def yaml_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{n}: &a{n} [{','.join([f'*a{n - 1}'] * 9)}]" for n in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "broken",
    ["shop: [not, a, mapping", yaml_bomb(9), "shop: {}\n" * 2],
    ids=["not-yaml", "yaml-bomb", "site-twice"],
)
async def test_sighup_with_a_broken_sites_file_keeps_the_running_sites(
    tmp_path: Path, stub: SiteStub, http: aiohttp.ClientSession, broken: str
) -> None:
    stub.answers["alice"] = ["user_alice"]
    sites = write_sites(tmp_path, f"{stub.url}/auth")
    node = ServiceProcess(tmp_path, sites, SQLITE_PATH=str(tmp_path / "db.sqlite3"))
    await node.start()
    try:
        alice = await connect(node.url, "shop", "alice", "phone")
        sites.write_text(broken)
        node.signal(signal.SIGHUP)
        deadline = asyncio.get_running_loop().time() + 10
        while "configuration not reloaded" not in node.logs():
            assert asyncio.get_running_loop().time() < deadline, node.logs()
            await asyncio.sleep(0.05)
        assert await post_send(http, node.url, "shop", "user_alice", "n", 1) == (200, "OK")
        assert (await alice.next()).args == [1]
        await alice.disconnect()
    finally:
        await node.stop()
    refusals = [line for line in node.logs().splitlines() if "not reloaded" in line]
    assert len(refusals) == 1 and len(refusals[0]) < 700, refusals


async def test_malformed_http_requests_are_one_line_a_minute_without_a_traceback(
    tmp_path: Path, stub: SiteStub
) -> None:
    node = await start_node(tmp_path, stub)
    try:
        for _ in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
            writer.write(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\nX-Bad: \x00\r\n\r\n")
            status = await reader.readline()
            assert status.split()[1] == b"400", status
            writer.close()
        assert await node.health() == 200
    finally:
        await node.stop()
    logs = node.logs()
    assert logs.count("malformed HTTP request refused (400)") == 1
    assert "Traceback" not in logs


async def test_a_failure_while_serving_ends_serve_with_status_1(
    tmp_path: Path, stub: SiteStub, http: aiohttp.ClientSession
) -> None:
    """The serve loop never dies leaving a process that holds its port and ignores SIGTERM."""
    from socketio_webservice.sites import SiteConfig
    from socketio_webservice.webservice.cli import serve
    from socketio_webservice.webservice.config import Config
    from socketio_webservice.webservice.service import Service
    from testkit.processes import free_port

    site = SiteConfig(name="shop", auth_url=f"{stub.url}/auth", api_key="key")
    config = Config(
        sites={"shop": site},
        port=free_port(),
        host="127.0.0.1",
        sqlite_path=str(tmp_path / "db.sqlite3"),
    )

    def reload() -> Config | None:
        raise RuntimeError("a bug in reloading")

    serving = asyncio.create_task(serve(Service(config), reload))
    url = f"http://127.0.0.1:{config.port}/healthcheck"
    deadline = asyncio.get_running_loop().time() + 10
    while True:  # until it listens
        try:
            async with http.get(url) as answer:
                if answer.status == 200:
                    break
        except aiohttp.ClientConnectionError:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGHUP)
    assert await asyncio.wait_for(serving, 30) == 1
    with pytest.raises(aiohttp.ClientConnectionError):  # and the port is let go
        async with http.get(url):
            pass
