"""End to end with the official JS client (socket.io-client v4 under Node), on both stores."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.harness import Harness
from tests.test_delivery import wait_for_empty_queue

E2E = Path(__file__).parent / "e2e"


async def test_official_js_client_connect_live_batch_resync_and_errors(harness: Harness) -> None:
    node = shutil.which("node")
    if node is None or not (E2E / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("node and tests/e2e/node_modules are needed: run `npm ci` in tests/e2e")
    await harness.start(device_ttl=600)
    harness.stub.answers["t1"] = ["user_1", "staff"]
    process = await asyncio.create_subprocess_exec(
        node,
        str(E2E / "scenario.mjs"),
        harness.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    assert process.returncode == 0, f"{lines}\n{stderr.decode()}"
    steps = {line["step"]: line for line in lines}
    assert steps["settings"]["settings"] == {"device_ttl": 600}
    assert steps["live"] == {"step": "live", "entityType": "user", "entity": {"id": 1, "age": 5}}
    assert steps["batch"]["events"] == [["update_store", "offer", {"id": 2}], ["notice", "hello"]]
    assert steps["resync"]["received"] == [1, 2]
    assert steps["connect_error"]["message"] == "Authentication failed"
    # The batch and the live message were acked; the resync cleared "sync".
    await wait_for_empty_queue(harness, "user_1", "js-device")
