"""import-original, end to end: the Node original's Redis written exactly as it writes it, the
command run as an operator runs it (beside the running service, with its configuration), and
the official clients the original's users have (socket.io-client 2.x, and 4.x) getting what
was queued for them in one `_batch`, in send order, once."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from testkit.processes import RedisServer, run_cli
from tests.harness import Harness
from tests.test_delivery import wait_for_empty_queue
from tests.test_js_client import E2E, node_or_fail
from tests.test_store_contract import until

ORIGINAL_DB = 5  # the original's Redis: another database of the test redis-server


class FlakeIds:
    """flake-idgen's ids, as the original's genId makes them: 42 bits of milliseconds, 5 of
    datacenter, 5 of worker, 12 of sequence; written in decimal."""

    def __init__(self, datacenter: int = 0, worker: int = 0) -> None:
        self.machine = (datacenter << 17) | (worker << 12)
        self.last_ms = 0
        self.sequence = 0

    def next(self) -> int:
        now = int(time.time() * 1000)
        if now == self.last_ms:
            self.sequence += 1
        else:
            self.last_ms, self.sequence = now, 0
        return (now << 22) | self.machine | self.sequence


@dataclass
class Original:
    """The original's Redis: ``store.add`` pushes, ``expire`` on a device's disconnect."""

    client: redis.Redis
    ids: FlakeIds

    def add(self, site: str, room: str, device: str, event: str, *args: object) -> None:
        key = f"/{site}:socket.io:{room}:{device}:{event}"
        # as JSON.stringify writes it
        text = json.dumps([event, *args], ensure_ascii=False, separators=(",", ":"))
        self.client.rpush(key, f"{self.ids.next()}:{text}")

    def disconnected(self, site: str, room: str, device: str, ttl: int) -> None:
        for key in self.client.scan_iter(f"/{site}:socket.io:{room}:{device}:*"):
            self.client.expire(key, ttl)


@pytest.fixture
def original(redis_server: RedisServer) -> Iterator[Original]:
    client = redis.Redis(port=redis_server.port, db=ORIGINAL_DB)
    client.flushdb()
    yield Original(client, FlakeIds(datacenter=1, worker=3))
    client.close()


def fill(original: Original) -> dict[str, list[list[object]]]:
    """What the original holds at the switch; returns each device's messages in send order."""
    sent: dict[str, list[list[object]]] = {"user_1": [], "user_2": [], "user_3": []}
    events = itertools.cycle(["update_store", "notice", "update_store", "sync:done"])
    for n in range(12):  # three users' devices, several events each, interleaved in time
        user = f"user_{n % 3 + 1}"
        event = next(events)
        original.add("shop", user, f"{user}-device", event, {"n": n}, "zoë 🚀")
        sent[user].append([event, {"n": n}, "zoë 🚀"])
    original.disconnected("shop", "user_1", "user_1-device", 3600)
    original.disconnected("shop", "user_2", "user_2-device", 600)
    # user_3's device was connected when the original stopped: its lists have no TTL.
    original.add("shop", "user_1", "", "notice", "for a client without deviceId")
    original.add("oldsite", "user_9", "phone", "notice", 1)
    original.add("oldsite", "user_9", "phone", "notice", 2)
    original.client.rpush("/shop:socket.io:user_1:user_1-device:notice", "not an item")
    original.client.rpush("/shop:socket.io:user_1:user_1-device:notice", "123:{not json")
    original.client.set("/shop:socket.io:user_1:user_1-device:odd", "a string, not a list")
    return sent


def import_original(harness: Harness, original: Original, *args: str) -> str:
    sites = harness.tmp_path / "sites.yml"
    sites.write_text(
        f"shop:\n  authUrl: {harness.stub.url}/auth\n  apiKey: key\n  userRoomPrefix: user_\n"
    )
    store = (
        {"REDIS_URL": harness.redis_url}
        if harness.redis_url
        else {"SQLITE_PATH": str(harness.tmp_path / "service.sqlite3")}
    )
    port = original.client.connection_pool.connection_kwargs["port"]
    result = run_cli(
        "import-original",
        "--from",
        f"redis://127.0.0.1:{port}/{ORIGINAL_DB}",
        *args,
        cwd=harness.tmp_path,
        SITES_FILE=str(sites),
        DEVICE_TTL="3600",
        **store,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def batches_of(harness: Harness, version: str, user: str) -> list[list[list[object]]]:
    """The batches one connect of the official client gets (acked), then its marker acked."""
    harness.stub.answers[f"t-{user}"] = [user]
    process = await asyncio.create_subprocess_exec(
        node_or_fail(),
        str(E2E / "batch_once.cjs"),
        harness.url,
        version,
        f"t-{user}",
        f"{user}-device",
        user,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, f"{stdout.decode()}\n{stderr.decode()}"
    await wait_for_empty_queue(harness, user, f"{user}-device")  # the acks landed
    batches: list[list[list[object]]] = json.loads(stdout.decode().splitlines()[-1])["batches"]
    return batches


SUMMARY = (
    "imported: 1 sites, 3 devices, 12 messages (already imported: 0, queue full: 0); skipped: "
    "2 for unknown sites [oldsite (2)], 3 malformed, 1 without a deviceId, 0 not in a user room"
)


async def test_what_the_original_queued_reaches_its_devices_once_in_send_order(
    harness: Harness, original: Original
) -> None:
    await harness.start()  # the import runs beside the running service
    sent = fill(original)
    before = {key: original.client.dump(key) for key in original.client.scan_iter()}

    assert import_original(harness, original).splitlines()[-1] == SUMMARY

    assert await batches_of(harness, "v2", "user_1") == [sent["user_1"]]
    assert await batches_of(harness, "v4", "user_2") == [sent["user_2"]]
    # Run again (an operator's second try): nothing is added, nothing comes again.
    again = import_original(harness, original).splitlines()[-1]
    assert again.startswith("imported: 1 sites, 3 devices, 0 messages (already imported: 12,")
    assert await batches_of(harness, "v2", "user_1") == []
    assert await batches_of(harness, "v4", "user_3") == [sent["user_3"]]
    assert await batches_of(harness, "v4", "user_3") == []
    # The original's Redis is read, never changed.
    assert {key: original.client.dump(key) for key in original.client.scan_iter()} == before


async def test_imported_queues_keep_the_ttl_their_lists_had_left(
    harness: Harness, original: Original
) -> None:
    await harness.start()
    original.add("shop", "user_1", "phone", "notice", 1)
    original.disconnected("shop", "user_1", "phone", 1)
    original.add("shop", "user_2", "phone", "notice", 2)  # connected at the switch: no TTL
    import_original(harness, original)

    async def user_1_gone() -> bool:
        return not await harness.store.pending("shop", "user_1", "phone")

    await until(user_1_gone)  # a TTL of one second, counted by the store itself
    assert [m.args for m in await harness.store.pending("shop", "user_2", "phone")] == [[2]]


async def test_a_dry_run_says_what_it_would_import_and_stores_nothing(
    harness: Harness, original: Original
) -> None:
    await harness.start()
    fill(original)
    out = import_original(harness, original, "--dry-run").splitlines()
    assert out[0] == "  shop: 3 devices, 12 messages"
    assert out[-1].startswith("would import: 1 sites, 3 devices, 12 messages; skipped: 2 for")
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "user_1-device")
    assert (await harness.send("shop", ["user_1"], "marker"))[0] == 200
    assert (await client.next()).event == "marker"  # live, and no _batch before it


async def test_a_site_can_be_imported_alone(harness: Harness, original: Original) -> None:
    await harness.start()
    fill(original)
    out = import_original(harness, original, "--site", "shop").splitlines()[-1]
    assert out.startswith("imported: 1 sites, 3 devices, 12 messages")
    assert "skipped: 0 for unknown sites" in out  # oldsite's keys were not even scanned


def test_the_command_refuses_a_bad_url_and_an_unknown_site(tmp_path: Path) -> None:
    sites = tmp_path / "sites.yml"
    sites.write_text("shop:\n  authUrl: http://127.0.0.1:9/auth\n  apiKey: key\n")
    bad = run_cli("import-original", "--from", "nonsense", cwd=tmp_path, SITES_FILE=str(sites))
    assert bad.returncode == 2 and "--from: not a Redis URL" in bad.stderr
    unknown = run_cli(
        "import-original",
        "--from",
        "redis://127.0.0.1:9",
        "--site",
        "nope",
        cwd=tmp_path,
        SITES_FILE=str(sites),
    )
    assert unknown.returncode == 2 and "site 'nope' is not configured here" in unknown.stderr


def test_an_unreachable_original_fails_without_its_password(tmp_path: Path) -> None:
    sites = tmp_path / "sites.yml"
    sites.write_text("shop:\n  authUrl: http://127.0.0.1:9/auth\n  apiKey: key\n")
    result = run_cli(
        "import-original",
        "--from",
        "redis://:hunter2@127.0.0.1:9/0",
        "--dry-run",
        cwd=tmp_path,
        SITES_FILE=str(sites),
    )
    assert result.returncode == 1 and "import failed" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
