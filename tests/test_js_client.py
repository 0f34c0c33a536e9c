"""End to end with the official JS clients under Node (socket.io-client 1.7, 2.5 and 4.8), on
both stores, over websocket, polling, and polling upgraded to websocket."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.harness import Harness
from tests.test_delivery import wait_for_empty_queue

E2E = Path(__file__).parent / "e2e"


async def test_official_js_client_that_acks_and_disconnects_at_once_never_gets_it_again(
    harness: Harness,
) -> None:
    """Invariant 5 under churn: 20 users, 15 rounds each, alternating polling-with-upgrade and
    websocket; each round acks a live message and disconnects in the same tick, while a shared
    room gets a message every 5 ms. No acked message may come back in a later _batch."""
    node = node_or_fail()
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


CLIENTS = [(v, m) for v in ("v1", "v2", "v4") for m in ("websocket", "polling", "upgrade")]


def node_or_fail() -> str:
    node = shutil.which("node")
    if node is None or not (E2E / "node_modules" / "socket.io-client-v1").is_dir():
        pytest.fail("node and tests/e2e/node_modules are needed: run `npm ci` in tests/e2e")
    return node


async def run_scenario(*args: str) -> dict[str, dict[str, object]]:
    process = await asyncio.create_subprocess_exec(
        node_or_fail(),
        str(E2E / "scenario.cjs"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    assert process.returncode == 0, f"{lines}\n{stderr.decode()}"
    return {str(line["step"]): line for line in lines}


def assert_original_behaviour(steps: dict[str, dict[str, object]], mode: str) -> None:
    assert steps["settings"]["settings"] == {"device_ttl": 3600}
    assert steps["transport"]["name"] == ("polling" if mode == "polling" else "websocket")
    assert steps["live"]["entity"] == {"id": 1, "age": 5, "name": "Zoë 🚀"}
    assert steps["batch"]["events"] == [["update_store", "offer", {"id": 2}], ["notice", "hello"]]
    assert steps["resync"]["received"] == [1, 2]
    # What the client raises (v1/v2: the "error" event; v4: connect_error) has the original's
    # text, so that `reason.indexOf("Auth") === 0` still sends the user to log in.
    assert steps["error"] == {"step": "error", "reason": "Authentication failed", "goToLogin": True}


@pytest.mark.parametrize(("version", "mode"), CLIENTS)
async def test_every_client_version_works_unchanged(
    harness: Harness, version: str, mode: str
) -> None:
    """socket.io-client 1.7.4 and 2.5.0 (Engine.IO v3) as deployed against the original, and
    4.8 (Engine.IO v4): connect, live with ack, _batch, _resync, a refused connect."""
    await harness.start()
    harness.stub.answers["t1"] = ["user_1", "staff"]
    steps = await run_scenario(harness.url, version, mode)
    assert_original_behaviour(steps, mode)
    await wait_for_empty_queue(harness, "user_1", f"legacy-{version}-{mode}")
    assert harness.stub.auth_requests[0]["X-META"] == "appName:stock"


class LegacyListener:
    """One device with the original's client (``legacy_listen.cjs``), greeted and listening."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, url: str, version: str, mode: str, *args: str) -> LegacyListener:
        process = await asyncio.create_subprocess_exec(
            node_or_fail(),
            str(E2E / "legacy_listen.cjs"),
            url,
            version,
            mode,
            *args,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        assert json.loads(await asyncio.wait_for(process.stdout.readline(), 10)) == {"ready": True}
        return cls(process)

    async def received(self) -> list[list[object]]:
        """The args of each event it got, once it has got them all and exited."""
        assert self.process.stdout is not None
        lines = (await self.process.stdout.read()).decode().splitlines()
        assert await self.process.wait() == 0, lines
        return [json.loads(line)["args"] for line in lines]


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_a_user_with_a_legacy_device_and_a_current_one_gets_everything_on_both(
    harness: Harness, version: str
) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1", "staff"]
    current = await harness.connect("shop", "t1", "v4-phone")
    legacy = await LegacyListener.start(harness.url, version, "upgrade", "t1", "laptop", "6")
    for n in range(6):
        rooms = ["user_1"] if n % 2 else ["staff"]
        assert (await harness.send("shop", rooms, "n", n))[0] == 200
        assert (await current.next()).numbers() == [n]
    assert await legacy.received() == [[n] for n in range(6)]


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_legacy_clients_on_a_plain_site_get_its_broadcasts(
    harness: Harness, version: str
) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1", "staff"]
    legacy = await LegacyListener.start(harness.url, version, "polling", "t1", "d", "3", "news")
    for n in range(3):
        assert await harness.send("news", ["staff"], "n", n) == (200, "OK")
    assert await legacy.received() == [[0], [1], [2]]
