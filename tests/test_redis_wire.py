"""The Redis store's own connection (storage/redis_wire.py): what it must do that redis-py's
pool did for it, against a private redis-server each (one test stops its process)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from socketio_webservice.storage import Message, OutcomeUnknown, StoreUnavailable
from socketio_webservice.storage.redis_store import RedisStore
from socketio_webservice.storage.redis_wire import RedisWire, Script
from testkit.processes import RedisServer, free_port

SITE = "shop"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    instance = RedisServer(tmp_path / "redis")
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
async def store(server: RedisServer) -> AsyncIterator[RedisStore]:
    instance = RedisStore(server.url, device_ttl=3600, node_id="node-a", timeout=0.5)
    await instance.open()
    yield instance
    await instance.close()


async def test_a_send_redis_stalls_on_fails_within_the_timeout_and_is_never_stored_later(
    server: RedisServer, store: RedisStore
) -> None:
    """A frozen Redis thaws and reads the send that waited in its socket: the caller was told
    it failed, so the store must not hold it now (a retry would deliver it twice)."""
    await store.connect_device(SITE, "user_1", "phone", [])
    await store.enqueue(SITE, ["user_1"], [], Message(event="n", args=[0]))  # Redis has the script
    with server.frozen():
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown, match=r"No reply from Redis within 0\.5 s"):
            await store.enqueue(SITE, ["user_1"], [], Message(event="n", args=[1]))
        waited = time.monotonic() - started
    assert 0.5 <= waited < 2.0
    deliveries = await store.enqueue(SITE, ["user_1"], [], Message(event="n", args=[2]))
    assert [d.device for d in deliveries] == ["phone"]
    backlog = await store.read_queue(SITE, "user_1", "phone")
    assert [m.args for m in backlog.messages] == [[0], [2]]


async def test_a_disconnect_redis_stalls_on_is_counted_once_when_it_is_retried(
    server: RedisServer, store: RedisStore
) -> None:
    """The actor retries a disconnect the store failed; the one that waited in the frozen
    Redis's socket must not count too, or a device still connected would look gone."""
    for _ in range(2):  # one device, two connections (two tabs)
        await store.connect_device(SITE, "user_1", "phone", [])
    assert not await store.disconnect_device(SITE, "user_1", "phone", forget=False)
    await store.connect_device(SITE, "user_1", "phone", [])
    with server.frozen(), pytest.raises(StoreUnavailable):
        await store.disconnect_device(SITE, "user_1", "phone", forget=False)
    last_gone = await store.disconnect_device(SITE, "user_1", "phone", forget=False)
    assert not last_gone  # the other tab is still connected
    assert await store.disconnect_device(SITE, "user_1", "phone", forget=False)


async def test_scripts_flushed_from_redis_run_again_by_their_body(
    server: RedisServer, store: RedisStore
) -> None:
    await store.connect_device(SITE, "user_1", "phone", [])
    client = redis.Redis.from_url(server.url)
    try:
        client.script_flush()
    finally:
        client.close()
    first = await store.connect_device(SITE, "user_2", "phone", ["staff"])
    assert first.first
    deliveries = await store.enqueue(SITE, ["user_1"], ["staff"], Message(event="n", args=[2]))
    assert sorted((d.user, d.seq) for d in deliveries) == [("user_1", 1), ("user_2", 1)]


async def test_scripts_then_commands_run_a_known_script_once_when_another_was_unknown(
    store: RedisStore,
) -> None:
    """Of the scripts written with commands behind them, only those Redis did not know run
    again (by body); the commands, which must bear it, are sent again after them."""
    known = Script("return redis.call('INCR', KEYS[1])")
    unknown = Script("return redis.call('INCRBY', KEYS[1], 10)")
    wire = store.wire
    assert isinstance(wire, RedisWire)
    await wire.run_script(known, ["known"], [])
    replies = await wire.run_scripts_then(
        [(known, ["known"], []), (unknown, ["unknown"], [])], [(b"INCR", "after")]
    )
    assert replies == [2, 10]
    assert await wire.command(b"GET", "after") == b"2"


async def test_a_cancelled_call_leaves_every_other_caller_its_own_reply(store: RedisStore) -> None:
    """A caller cancelled while its command is on the wire (a client gone mid-request) must
    not shift the replies: Redis answers in order, and the cancelled call's answer is dropped."""
    calls = [asyncio.create_task(store.wire.command(b"ECHO", str(i))) for i in range(200)]
    await asyncio.sleep(0)  # every call has written its command; no reply is read yet
    for call in calls[::2]:
        call.cancel()
    answers = await asyncio.gather(*calls[1::2])
    assert answers == [str(i).encode() for i in range(1, 200, 2)]
    assert await store.wire.command(b"ECHO", "after") == b"after"


async def test_redis_going_away_fails_the_call_and_the_next_call_after_it_is_back_succeeds(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis", persistent=True)
    server.start()
    store = RedisStore(server.url, device_ttl=3600, node_id="node-a", timeout=0.5)
    try:
        await store.open()
        await store.connect_device(SITE, "user_1", "phone", [])
        server.stop()
        with pytest.raises(StoreUnavailable, match=r"Redis (unavailable|went away)"):
            await store.ping()
        server.start()
        await store.ping()
        deliveries = await store.enqueue(SITE, ["user_1"], [], Message(event="n", args=[1]))
        assert [(d.user, d.device) for d in deliveries] == [("user_1", "phone")]
    finally:
        await store.close()
        server.stop()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server that speaks TLS only, with a certificate made for the test: its port
    and the certificate, which is its own authority."""
    openssl, redis_server = shutil.which("openssl"), shutil.which("redis-server")
    assert openssl and redis_server, "the test needs openssl and redis-server"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject,
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_port()
    tls = ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    process = subprocess.Popen(
        [redis_server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", *tls,
         "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    yield port, cert
    process.terminate()
    process.wait(timeout=10)


async def test_a_rediss_url_is_served_over_tls(tls_redis: tuple[int, Path]) -> None:
    """``rediss://``: redis-py opens the TLS connection, the store's own protocol reads it."""
    port, cert = tls_redis
    url = f"rediss://localhost:{port}/0?ssl_ca_certs={cert}"
    store = RedisStore(url, device_ttl=3600, node_id="node-a", timeout=2)
    try:
        deadline = time.monotonic() + 10
        while True:  # until redis-server listens
            try:
                await store.open()
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "redis-server with TLS did not start"
                await asyncio.sleep(0.05)
        await store.connect_device(SITE, "user_1", "phone", ["staff"])
        deliveries = await store.enqueue(SITE, [], ["staff"], Message(event="n", args=[1]))
        assert [(d.user, d.seq) for d in deliveries] == [("user_1", 1)]
        backlog = await store.read_queue(SITE, "user_1", "phone")
        assert [m.args for m in backlog.messages] == [[1]]
    finally:
        await store.close()
