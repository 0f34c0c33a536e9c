"""``socketio-webservice backup FILE`` while the service runs and sends keep arriving: the copy
is the store at one moment (a prefix of the sends, never a torn one), and a node started
from it gives the offline device exactly that in its ``_batch``."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from testkit.processes import ROOT, ServiceProcess, write_sites
from tests.harness import SiteStub, connect, post_send


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def run_backup(target: Path, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "socketio_webservice",
        "backup",
        str(target),
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env},
        cwd=target.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_backup_taken_during_sends_restores_a_consistent_queue(
    tmp_path: Path, stub: SiteStub, http: aiohttp.ClientSession
) -> None:
    stub.answers["t1"] = ["user_1"]
    sites = write_sites(tmp_path, f"{stub.url}/auth")
    database = tmp_path / "live.sqlite3"
    node = ServiceProcess(tmp_path / "live", sites, SQLITE_PATH=str(database))
    await node.start()
    target = tmp_path / "copy.sqlite3"
    try:
        phone = await connect(node.url, "shop", "t1", "phone")
        await phone.disconnect()  # offline: what is sent now waits in its queue
        for n in range(50):
            assert await post_send(http, node.url, "shop", "user_1", "n", n) == (200, "OK")

        async def more() -> None:
            for n in range(50, 150):
                assert await post_send(http, node.url, "shop", "user_1", "n", n) == (200, "OK")

        sending = asyncio.create_task(more())
        status, out, err = await run_backup(target, SQLITE_PATH=str(database))
        await sending
        assert status == 0, err
        found = re.search(r"written to .*copy\.sqlite3: 1 devices, (\d+) queued messages", out)
        assert found, out
        copied = int(found.group(1))
        assert 50 <= copied <= 150
    finally:
        await node.stop()

    restored = ServiceProcess(tmp_path / "restored", sites, SQLITE_PATH=str(target))
    await restored.start()
    try:
        phone = await connect(restored.url, "shop", "t1", "phone")
        batch = await phone.next()
        assert batch.event == "_batch"
        assert batch.numbers() == list(range(copied))  # in order, none torn, none missing
        await phone.disconnect()
    finally:
        await restored.stop()


async def test_backup_refuses_what_it_cannot_do_in_one_line(tmp_path: Path) -> None:
    exists = tmp_path / "exists.sqlite3"
    exists.write_text("")
    missing = str(tmp_path / "missing.sqlite3")
    status, _, err = await run_backup(exists, SQLITE_PATH=missing)
    assert (status, err) == (1, f"backup failed: no SQLite store at {missing}\n")
    database = tmp_path / "db.sqlite3"
    database.write_bytes(b"")
    status, _, err = await run_backup(exists, SQLITE_PATH=str(database))
    assert (status, err) == (1, f"backup failed: {exists} exists: give a new file\n")
    status, _, err = await run_backup(tmp_path / "new.sqlite3", REDIS_URL="redis://127.0.0.1:1/0")
    assert status == 2 and "this configuration uses Redis" in err
