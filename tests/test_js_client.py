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


async def test_official_js_client_that_acks_and_disconnects_at_once_never_gets_it_again(
    harness: Harness,
) -> None:
    """Invariant 5 under churn: 20 users, 15 rounds each, alternating polling-with-upgrade and
    websocket; each round acks a live message and disconnects in the same tick, while a shared
    room gets a message every 5 ms. No acked message may come back in a later _batch."""
    node = shutil.which("node")
    if node is None or not (E2E / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("node and tests/e2e/node_modules are needed: run `npm ci` in tests/e2e")
    await harness.start()
    for i in range(20):
        harness.stub.answers[f"t{i}"] = [f"user_{i}", "staff"]
    process = await asyncio.create_subprocess_exec(
        node,
        str(E2E / "ack_disconnect.mjs"),
        harness.url,
        "20",
        "15",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, f"{stdout.decode()}\n{stderr.decode()}"
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    assert result["rounds"] == 300 and result["received"] >= 300
    assert result["duplicates"] == 0, result
