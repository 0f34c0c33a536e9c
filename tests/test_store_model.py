"""Both stores against a small model of the delivery invariants (docs/delivery-invariants.md),
driven by hypothesis through random sequences of connects, sends, acks, resync acks and reads.

The model is the specification in a few lines: each device has a dense seq and a queue; a send
stores once per device of every targeted user (by user room or by shared room of their latest
auth answer), unless the queue is full, which flags the device; an ack removes exactly what it
names; a resync ack removes its message if it is its event's oldest, else clears the event.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from socketio_webservice.storage import Message, Store
from socketio_webservice.storage.redis_store import RedisStore
from socketio_webservice.storage.sqlite_store import SQLiteStore
from testkit.processes import RedisClusterSet, RedisServer, SentinelSet

SITE = "s"
USERS = ["u1", "u2", "u3"]
DEVICES = ["phone", "laptop"]
ROOMS = ["staff", "Buyers"]
EVENTS = ["a", "b"]
MAX_QUEUE = 4


@dataclass
class DeviceModel:
    seq: int = 0
    conns: int = 0
    overflow: bool = False
    queue: dict[int, tuple[str, list[Any]]] = field(default_factory=dict)


class StoreModel:
    def __init__(self) -> None:
        self.devices: dict[tuple[str, str], DeviceModel] = {}
        self.rooms: dict[str, set[str]] = {}  # user -> shared rooms (lower case)

    def connect(self, user: str, device: str, rooms: list[str]) -> tuple[bool, bool]:
        first = sum(d.conns for (u, _), d in self.devices.items() if u == user) == 0
        model = self.devices.setdefault((user, device), DeviceModel())
        model.conns += 1
        overflowed, model.overflow = model.overflow, False
        self.rooms[user] = {room.lower() for room in rooms}
        return first, overflowed

    def enqueue(self, users: list[str], rooms: list[str], event: str, args: list[Any]) -> set[Any]:
        wanted = {room.lower() for room in rooms}
        targets = set(users) | {u for u, held in self.rooms.items() if held & wanted}
        stored = set()
        for (user, device), model in self.devices.items():
            if user not in targets:
                continue
            if len(model.queue) >= MAX_QUEUE:
                model.overflow = True
                continue
            model.seq += 1
            model.queue[model.seq] = (event, args)
            stored.add((user, device, model.seq))
        return stored


async def awaited(call: Any, *args: Any) -> Any:
    """``Store.ack`` hands back a future: it needs a running loop to be called from."""
    return await call(*args)


class StoreMachine(RuleBasedStateMachine):
    """One fresh store per run; ``make_store`` is set by the test below."""

    make_store: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store: Store = self.run(self.make_store())
        self.model = StoreModel()
        self.sent = 0

    def run(self, work: Any) -> Any:
        return self.loop.run_until_complete(work)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    @rule(
        user=st.sampled_from(USERS),
        device=st.sampled_from(DEVICES),
        rooms=st.lists(st.sampled_from(ROOMS), unique=True),
    )
    def connect(self, user: str, device: str, rooms: list[str]) -> None:
        connected = self.run(self.store.connect_device(SITE, user, device, rooms))
        assert (connected.first, connected.overflowed) == self.model.connect(user, device, rooms)

    @precondition(lambda self: any(d.conns for d in self.model.devices.values()))
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        online = sorted(key for key, d in self.model.devices.items() if d.conns)
        user, device = data.draw(st.sampled_from(online))
        self.model.devices[(user, device)].conns -= 1
        last = self.run(self.store.disconnect_device(SITE, user, device, forget=False))
        left = sum(d.conns for (u, _), d in self.model.devices.items() if u == user)
        assert last == (left == 0)

    @rule(
        users=st.lists(st.sampled_from([*USERS, "nobody"]), unique=True, max_size=2),
        rooms=st.lists(st.sampled_from([*ROOMS, "STAFF", "elsewhere"]), unique=True, max_size=2),
        event=st.sampled_from(EVENTS),
    )
    def send(self, users: list[str], rooms: list[str], event: str) -> None:
        self.sent += 1
        args = [self.sent, {"n": self.sent}]
        deliveries = self.run(self.store.enqueue(SITE, users, rooms, Message(event, args)))
        stored = {(d.user, d.device, d.seq) for d in deliveries}
        assert stored == self.model.enqueue(users, rooms, event, args)

    @precondition(lambda self: any(d.queue for d in self.model.devices.values()))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        holding = sorted(key for key, d in self.model.devices.items() if d.queue)
        user, device = data.draw(st.sampled_from(holding))
        model = self.model.devices[(user, device)]
        seqs = data.draw(st.lists(st.sampled_from(sorted(model.queue)), unique=True, min_size=1))
        # Also an ack of something already gone, which must change nothing.
        acked = [(seq, model.queue[seq][0]) for seq in seqs] + [(model.seq + 5, "a")]
        removed = self.run(awaited(self.store.ack, SITE, user, device, acked))
        assert removed == len(seqs)
        for seq in seqs:
            del model.queue[seq]

    @precondition(lambda self: any(d.queue for d in self.model.devices.values()))
    @rule(data=st.data())
    def resync_ack(self, data: st.DataObject) -> None:
        holding = sorted(key for key, d in self.model.devices.items() if d.queue)
        user, device = data.draw(st.sampled_from(holding))
        model = self.model.devices[(user, device)]
        seq = data.draw(st.sampled_from(sorted(model.queue)))
        event = model.queue[seq][0]
        outcome = self.run(self.store.ack_head(SITE, user, device, seq, event))
        same_event = sorted(s for s, (e, _) in model.queue.items() if e == event)
        if same_event[0] == seq:
            assert not outcome.cleared
            del model.queue[seq]
        else:
            assert outcome.cleared and outcome.cleared_through == model.seq
            for s in same_event:
                del model.queue[s]

    @invariant()
    def every_queue_is_what_the_model_says(self) -> None:
        for (user, device), model in self.model.devices.items():
            backlog = self.run(self.store.read_queue(SITE, user, device))
            assert backlog.last_seq == model.seq
            got = [(m.seq, m.event, m.args) for m in backlog.messages]
            assert got == [(seq, e, a) for seq, (e, a) in sorted(model.queue.items())]


MODEL_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("kind", ["sqlite", "redis", "sentinel", "cluster"])
def test_store_keeps_the_delivery_model(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async def make_store() -> Store:
        store: Store
        if kind == "sqlite":
            path = tmp_path / f"model-{uuid.uuid4().hex}.sqlite3"
            store = SQLiteStore(path, device_ttl=3600, max_queue=MAX_QUEUE)
        elif kind == "redis":
            server: RedisServer = request.getfixturevalue("redis_server")
            client = redis.Redis.from_url(server.url)
            client.flushall()
            client.close()
            store = RedisStore(server.url, device_ttl=3600, node_id="model", max_queue=MAX_QUEUE)
        elif kind == "cluster":
            cluster: RedisClusterSet = request.getfixturevalue("redis_cluster")
            cluster.flush()
            store = RedisStore(cluster.url, device_ttl=3600, node_id="model", max_queue=MAX_QUEUE)
        else:  # behind Sentinel
            sentinels: SentinelSet = request.getfixturevalue("sentinel_set")
            client = redis.Redis(port=sentinels.primary_port())
            client.flushall()
            client.close()
            store = RedisStore(sentinels.url, device_ttl=3600, node_id="model", max_queue=MAX_QUEUE)
        await store.open()
        return store

    machine = type(
        f"{kind.title()}StoreMachine", (StoreMachine,), {"make_store": staticmethod(make_store)}
    )
    run_state_machine_as_test(machine, settings=MODEL_SETTINGS)
