"""The manager's room index agrees with python-socketio's own room map."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import socketio

from socketio_webservice.transport.socketio_adapter import IndexedManager

NS = "/news"


def connect(manager: IndexedManager, sid: str, eio_sid: str, *rooms: str) -> None:
    manager.basic_enter_room(sid, NS, None, eio_sid=eio_sid)
    manager.basic_enter_room(sid, NS, sid, eio_sid=eio_sid)
    for room in rooms:
        manager.basic_enter_room(sid, NS, room)


def test_disconnect_leaves_exactly_the_sockets_rooms() -> None:
    manager = IndexedManager()
    connect(manager, "a", "ea", "weather", "sports")
    connect(manager, "b", "eb", "weather")
    assert sorted(manager.get_rooms("a", NS)) == ["a", "sports", "weather"]
    manager.basic_leave_room("a", NS, "sports")
    assert "sports" not in manager.rooms[NS]
    manager.basic_disconnect("a", NS)
    assert manager.get_rooms("a", NS) == []
    assert [sid for sid, _ in manager.get_participants(NS, "weather")] == ["b"]
    assert "a" not in manager.rooms[NS] and "a" not in manager.rooms[NS][None]
    manager.basic_disconnect("b", NS)
    assert NS not in manager.rooms


class CountedSid(str):
    """A sid that counts the comparisons by value made with it."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        CountedSid.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


@pytest.mark.skipif(
    not hasattr(socketio.AsyncManager, "pre_connect"),
    reason="python-socketio before 5.18 registers a socket once its connect handler is done",
)
async def test_connects_waiting_at_once_are_each_found_without_a_search() -> None:
    # Between its two steps a connect waits (its handler runs: the auth call, the store);
    # python-socketio searched a list of every waiting socket at each step: n² / 2
    # comparisons for n connects waiting at once.
    manager = IndexedManager()
    made = iter(range(1_000_000))
    eio = SimpleNamespace(generate_id=lambda: CountedSid(f"sid{next(made)}"))
    manager.server = SimpleNamespace(eio=eio)
    sids = [await manager.pre_connect(f"eio{i}", NS) for i in range(1_000)]
    assert not manager.is_connected(sids[0], NS)
    CountedSid.compared = 0
    refused = sids.pop(500)
    await manager.disconnect(refused, NS, ignore_queue=True)
    for sid in reversed(sids):
        await manager.connect(sid, NS)
    assert CountedSid.compared < 100
    assert manager.is_connected(sids[0], NS) and not manager.is_connected(refused, NS)
    assert [sid for sid, _ in manager.get_participants(NS, None)] == sids
    assert not manager.pending_connect


async def test_disconnects_waiting_at_once_are_each_found_without_a_search() -> None:
    # Between its two steps a disconnect waits (its handler runs); python-socketio kept those
    # in a list too.
    manager = IndexedManager()
    sids = [CountedSid(f"sid{i}") for i in range(1_000)]
    for i, sid in enumerate(sids):
        connect(manager, sid, f"eio{i}")
    for sid in sids:
        manager.pre_disconnect(sid, NS)
    assert not manager.is_connected(sids[0], NS)
    CountedSid.compared = 0
    for sid in reversed(sids):
        await manager.disconnect(sid, NS, ignore_queue=True)
    assert CountedSid.compared < 100
    assert not manager.pending_disconnect and NS not in manager.rooms
