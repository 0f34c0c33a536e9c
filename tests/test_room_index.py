"""The manager's room index agrees with python-socketio's own room map."""

from __future__ import annotations

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
