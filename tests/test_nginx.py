"""The shipped proxy (deploy/nginx.conf), run by a real nginx in front of a real node: its
access log keeps no apiKey and no token, and the operators' pages are not served through it."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from testkit.processes import ROOT, ServiceProcess, free_port, write_sites
from tests.harness import SiteStub, connect, post_send


@pytest.fixture
async def proxied(tmp_path: Path, stub: SiteStub) -> AsyncIterator[tuple[str, Path]]:
    """A node behind nginx with deploy/nginx.conf, its upstreams and log moved to here."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        pytest.fail("nginx is needed (Debian: nginx-light; ./dev installs it)")
    node = ServiceProcess(tmp_path, write_sites(tmp_path, f"{stub.url}/auth"))
    await node.start()
    port = free_port()
    access_log = tmp_path / "access.log"
    site = (
        (ROOT / "deploy" / "nginx.conf")
        .read_text()
        .replace("node1:1337", f"127.0.0.1:{node.port}")
        .replace("node2:1337", f"127.0.0.1:{node.port}")
        .replace("listen 80;", f"listen 127.0.0.1:{port};")
        .replace("/var/log/nginx/access.log", str(access_log))
    )
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"user root; worker_processes 1; daemon off; pid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\nevents {{}}\nhttp {{\n"
        + "".join(
            f"  {kind}_temp_path {tmp_path}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"  include {tmp_path}/site.conf;\n}}\n"
    )
    process = await asyncio.create_subprocess_exec(
        nginx, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                assert process.returncode is None, (tmp_path / "error.log").read_text()
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}", access_log
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        await node.stop()


async def test_the_proxy_logs_no_secret_and_keeps_the_operator_pages_inside(
    proxied: tuple[str, Path], stub: SiteStub
) -> None:
    url, access_log = proxied
    stub.answers["secret-token-123"] = ["user_1"]
    client = await connect(url, "shop", "secret-token-123", "phone")
    async with aiohttp.ClientSession() as http:
        assert await post_send(http, url, "shop", "user_1", "n", 1) == (200, "OK")
        assert (await client.next()).numbers() == [1]
        for page in ("/metrics", "/status", "/status.json", "/openapi.json"):
            async with http.get(url + page) as response:
                assert response.status == 404, page
    await client.disconnect()
    # nginx logs a WebSocket request once the connection has closed: wait for that line.
    deadline = asyncio.get_running_loop().time() + 10
    while "/socket.io/" not in access_log.read_text():
        assert asyncio.get_running_loop().time() < deadline, access_log.read_text()
        await asyncio.sleep(0.05)
    lines = access_log.read_text().splitlines()
    assert any('"POST /send HTTP/1.1" 200' in line for line in lines), lines
    assert any("/socket.io/" in line for line in lines), lines
    assert not [line for line in lines if "secret-token" in line or "apiKey" in line], lines
