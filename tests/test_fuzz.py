"""Fuzzed /send bodies and fuzzed client packets (hypothesis), against the real service on
both stores: never a 5xx, never a crash, nothing stored by a refused send, nothing stored twice,
and the other clients keep getting their messages."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socketio_webservice.sites import SiteConfig
from socketio_webservice.webservice.config import Config
from socketio_webservice.webservice.service import Service
from testkit.processes import free_port
from tests.harness import SiteStub, connect
from tests.test_hostile_input import send_frames

FUZZ_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class ThreadedService:
    """The service on an event loop of its own, in a thread: hypothesis's examples run one
    after another in the test's thread, each with its own real clients."""

    def __init__(self, store_kind: str, tmp_path: Path, redis_url: str | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stub: SiteStub = self.call(self._stub())
        sites = {
            "shop": SiteConfig("shop", f"{self.stub.url}/auth", "key", user_room_prefix="user_"),
            "news": SiteConfig("news", f"{self.stub.url}/auth", "key"),
        }
        self.stub.answers.update({"t1": ["user_1", "staff"], "t2": ["user_2"]})
        config = Config(
            sites=sites,
            port=free_port(),
            host="127.0.0.1",
            redis_url=redis_url or "",
            sqlite_path=str(tmp_path / "fuzz.sqlite3"),
            auth_timeout=2.0,
        )
        self.service = Service(config)
        self.call(self.service.start())
        self.port = config.port
        self.url = f"http://127.0.0.1:{config.port}"

    @staticmethod
    async def _stub() -> SiteStub:
        stub = SiteStub()
        await stub.start()
        return stub

    def call(self, work: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(30)

    def queue_length(self, user: str, device: str) -> int:
        return len(self.call(self.service.store.pending("shop", user, device)))

    def stop(self) -> None:
        self.call(self.service.stop())
        self.call(self.stub.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def post(self, path: str, body: bytes, content_type: str | None) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": content_type} if content_type else {}
        connection.request("POST", path, body=body, headers=headers)
        status = connection.getresponse().status
        connection.close()
        return status

    def healthy(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request("GET", "/healthcheck")
        ok = connection.getresponse().status == 200
        connection.close()
        return ok


@pytest.fixture
def threaded(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> Iterator[ThreadedService]:
    service = ThreadedService(store_kind, tmp_path, store_redis_url)
    # A device of user_1 that holds "staff", registered as a connect would.
    service.call(service.service.store.connect_device("shop", "user_1", "d1", ["staff"]))
    yield service
    service.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
rooms = st.one_of(
    st.sampled_from(["user_1", "USER_1", "staff", "Staff", "user_2", "nobody", "", "user_"]),
    st.text(max_size=30),
    json_values,
)
send_bodies = st.one_of(
    st.fixed_dictionaries(
        {
            "rooms": st.one_of(rooms, st.lists(rooms, max_size=5)),
            "event": st.one_of(
                st.sampled_from(["e", "_batch", "connect", "", "a\x00b", "x" * 200]),
                st.text(max_size=20),
                json_values,
            ),
        },
        optional={"args": json_values, "extra": json_values},
    ),
    json_values,
)


@FUZZ_SETTINGS
@given(
    site=st.sampled_from(["shop", "news"]),
    body=send_bodies,
    encoding=st.sampled_from(["json", "form", "raw"]),
    raw=st.binary(max_size=200),
    resync=st.sampled_from(["", "&resync=true", "&resync=perhaps"]),
)
def test_fuzzed_send_bodies(
    threaded: ThreadedService,
    site: str,
    body: Any,
    encoding: str,
    raw: bytes,
    resync: str,
) -> None:
    if encoding == "json":
        payload, content_type = json.dumps(body).encode(), "application/json"
    elif encoding == "form" and isinstance(body, dict):
        fields = [f"{quote(str(k))}={quote(json.dumps(v))}" for k, v in body.items()]
        payload, content_type = "&".join(fields).encode(), "application/x-www-form-urlencoded"
    else:
        payload, content_type = raw, "application/json"
    before = threaded.queue_length("user_1", "d1")
    status = threaded.post(f"/send?site={site}&apiKey=key{resync}", payload, content_type)
    assert status < 500
    grown = threaded.queue_length("user_1", "d1") - before
    assert grown in (0, 1), "stored twice"
    if grown:
        assert status == 200 and site == "shop", "a refused send stored something"


frame_starts = st.sampled_from(
    ["", "0", "1", "2", "3", "4", "5", "6", "40", "40/shop,", "41/shop,", "42/shop,", "43/shop,1"]
)
frames = st.lists(
    st.one_of(
        st.builds(lambda start, rest: start + rest, frame_starts, st.text(max_size=60)),
        st.binary(max_size=60),
    ),
    max_size=8,
)


async def connect_and_send(url: str, frames: list[str | bytes], join: bool) -> None:
    query = "EIO=4&transport=websocket&token=t2&deviceId=fuzz"
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url.replace("http", "ws", 1) + f"/socket.io/?{query}") as ws,
    ):
        await ws.receive(timeout=5)  # Engine.IO open
        await send_frames(ws, ["40/shop,", *frames] if join else frames)


@FUZZ_SETTINGS
@given(frames=frames, join=st.booleans())
def test_fuzzed_client_packets(
    threaded: ThreadedService, frames: list[str | bytes], join: bool
) -> None:
    asyncio.run(connect_and_send(threaded.url, frames, join))
    assert threaded.healthy()


def test_after_fuzzing_a_real_client_still_gets_its_messages(threaded: ThreadedService) -> None:
    async def bystander() -> list[int]:
        client = await connect(threaded.url, "shop", "t1", "d1")
        for _ in range(20):
            await connect_and_send(threaded.url, ["4zz", b"\x00", "42/shop,[", "40/nope,"], True)
        async with aiohttp.ClientSession() as http:
            await http.post(
                f"{threaded.url}/send?site=shop&apiKey=key",
                json={"rooms": ["staff"], "event": "n", "args": [5]},
            )
        received = await client.next()
        await client.disconnect()
        return received.numbers()

    assert asyncio.run(bystander()) == [5]
