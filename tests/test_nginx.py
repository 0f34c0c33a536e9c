"""The shipped proxy (deploy/nginx.conf), run by a real nginx in front of a real node: its
access log keeps no apiKey and no token, and the operators' pages are not served through it."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from testkit.processes import ROOT, ServiceProcess, free_port, self_signed_certificate, write_sites
from tests.harness import SiteStub, connect, post_send


@pytest.fixture
async def proxied(tmp_path: Path, stub: SiteStub) -> AsyncIterator[tuple[str, Path, str]]:
    """A node behind nginx with deploy/nginx.conf, its upstreams and log moved to here."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        pytest.fail("nginx is needed (Debian: nginx-light; ./dev installs it)")
    node = ServiceProcess(tmp_path, write_sites(tmp_path, f"{stub.url}/auth"))
    await node.start()
    port, tls_port = free_port(), free_port()
    access_log = tmp_path / "access.log"
    site = (
        (ROOT / "deploy" / "nginx.conf")
        .read_text()
        .replace("node1:1337", f"127.0.0.1:{node.port}")
        .replace("node2:1337", f"127.0.0.1:{node.port}")
        .replace("listen 80;", f"listen 127.0.0.1:{port};")
        .replace("/var/log/nginx/access.log", str(access_log))
        .replace("/etc/nginx/sws/", f"{tmp_path}/sws/")
    )
    (tmp_path / "site.conf").write_text(site)
    # deploy/nginx-tls.conf as an operator installs it, with a self-signed certificate
    (tmp_path / "sws" / "tls").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "nginx-locations.conf", tmp_path / "sws" / "locations.conf")
    await asyncio.to_thread(self_signed_certificate, tmp_path)
    tls = (
        (ROOT / "deploy" / "nginx-tls.conf")
        .read_text()
        .replace("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;")
        .replace("/etc/nginx/tls/fullchain.pem", str(tmp_path / "cert.pem"))
        .replace("/etc/nginx/tls/privkey.pem", str(tmp_path / "key.pem"))
        .replace("/var/log/nginx/access.log", str(access_log))
        .replace("/etc/nginx/sws/", f"{tmp_path}/sws/")
    )
    (tmp_path / "sws" / "tls" / "tls.conf").write_text(tls)
    (tmp_path / "nginx.conf").write_text(
        f"user root; worker_processes 1; daemon off; pid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\nevents {{}}\nhttp {{\n"
        + "".join(
            f"  {kind}_temp_path {tmp_path}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"  include {tmp_path}/site.conf;\n}}\n"
    )
    checked = await asyncio.to_thread(
        subprocess.run,
        [nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr  # nginx -t: the shipped files as installed
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
        yield f"http://127.0.0.1:{port}", access_log, f"https://127.0.0.1:{tls_port}"
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        await node.stop()


async def test_the_proxy_logs_no_secret_and_keeps_the_operator_pages_inside(
    proxied: tuple[str, Path, str], stub: SiteStub
) -> None:
    url, access_log, _ = proxied
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


async def test_the_tls_server_serves_the_same_and_logs_no_secret(
    proxied: tuple[str, Path, str], stub: SiteStub
) -> None:
    _, access_log, tls_url = proxied
    unverified = aiohttp.TCPConnector(ssl=False)  # the test's own self-signed certificate
    async with aiohttp.ClientSession(connector=unverified) as http:
        stub.answers["secret-token-456"] = ["user_2"]
        async with http.post(
            f"{tls_url}/send?site=shop&apiKey=key",
            json={"rooms": "user_2", "event": "n", "args": [1]},
        ) as response:
            assert (response.status, await response.text()) == (200, "OK")
        async with http.get(f"{tls_url}/metrics") as response:
            assert response.status == 404
        async with http.get(
            f"{tls_url}/socket.io/?EIO=4&transport=polling&token=secret-token-456"
        ) as response:
            assert response.status == 200
    lines = access_log.read_text().splitlines()
    assert any('"POST /send HTTP/1.1" 200' in line for line in lines), lines
    assert not [line for line in lines if "secret-token" in line or "apiKey" in line], lines
