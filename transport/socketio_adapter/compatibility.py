"""What this adapter uses of python-socketio's and python-engineio's insides, checked once at
start-up: a version that lacks any of it stops the service with one line, instead of failing
on the first connection.

``REQUIRED`` is the one list: for each thing of theirs the adapter touches (a class, or an
instance of it made here as a probe), the names it reads, calls or overrides there;
``OPTIONAL``, the few it replaces only where a version has them.
``tests/test_boundaries.py`` derives from the adapter's source the names it uses of them and
fails if one is missing here, and removes each name here in turn to see start-up refuse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import engineio
import socketio
from engineio import async_socket
from engineio.async_drivers import aiohttp as aiohttp_driver


def _engineio_server() -> Any:
    # Given a logger, the probe server adds no stderr handler of its own to engineio's logger.
    return engineio.AsyncServer(async_mode="aiohttp", logger=logging.getLogger("engineio.server"))


def _socketio_server() -> Any:
    return socketio.AsyncServer(
        async_mode="aiohttp",
        logger=logging.getLogger("socketio.server"),
        engineio_logger=logging.getLogger("engineio.server"),
    )


# where -> (what to look in, the names the adapter needs there)
REQUIRED: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {
    "engineio.AsyncServer": (
        lambda: engineio.AsyncServer,
        (
            "_handle_connect",
            "_ok",
            "_upgrades",
            "_unauthorized",
            "_bad_request",
            "_service_task",
            "create_event",  # the service task's stop, set by shutdown
            "_trigger_event",
            "generate_id",
            "handle_request",
            "create_queue",
            "shutdown",
            "start_background_task",
            "reason",  # the close reasons our Socket's websocket handler gives
        ),
    ),
    "engineio.AsyncServer()": (
        _engineio_server,
        (
            "_async",  # the drivers: ours replaces the aiohttp websocket
            "start_service_task",
            "handlers",  # Socket reads "message" there
            "sockets",
            "max_http_buffer_size",
            "ping_interval",
            "ping_timeout",
            "sequence_number",  # generate_id's counter
        ),
    ),
    "engineio AsyncSocket": (
        lambda: async_socket.AsyncSocket,
        (
            "receive",
            "send",
            "schedule_ping",
            "check_ping_timeout",
            "handle_post_request",
            "handle_get_request",
            "_websocket_handler",
            "poll",
            "close",
        ),
    ),
    "engineio AsyncSocket()": (
        lambda: async_socket.AsyncSocket(_engineio_server(), "probe"),
        ("sid", "closing", "closed", "queue", "last_ping", "upgraded", "upgrading", "connected"),
    ),
    "engineio aiohttp driver": (lambda: aiohttp_driver, ("WebSocket",)),
    "socketio.AsyncServer": (
        lambda: socketio.AsyncServer,
        (
            "_handle_eio_message",
            "_handle_eio_disconnect",
            "_handle_connect",
            "_handle_event",
            "_handle_ack",
            "_send_packet",
            "_engineio_server_class",
            "disconnect",
        ),
    ),
    "socketio.AsyncServer()": (
        _socketio_server,
        ("namespace_handlers", "environ", "manager", "eio", "_binary_packet"),
    ),
    "socketio.AsyncManager": (
        lambda: socketio.AsyncManager,
        (
            "_generate_ack_id",
            "eio_sid_from_sid",
            "sid_from_eio_sid",
            "basic_enter_room",
            "basic_leave_room",
            "basic_disconnect",
            "is_connected",
            "disconnect",
            "get_rooms",
            "get_participants",
        ),
    ),
    "socketio.AsyncManager()": (
        lambda: socketio.AsyncManager(),
        ("rooms", "callbacks", "server", "pending_disconnect"),
    ),
}


# Names the adapter replaces where the installed version has them, and that versions it
# allows may lack: not checked at start-up.
OPTIONAL: dict[str, tuple[str, ...]] = {
    "socketio.AsyncManager()": ("pending_connect",),  # python-socketio 5.18 and later
}


class IncompatibleVersion(Exception):
    """The installed python-socketio / python-engineio lacks something the adapter uses."""


def missing_names() -> list[str]:
    missing = []
    for where, (probe, names) in REQUIRED.items():
        owner = probe()
        missing += [f"{where}.{name}" for name in names if not hasattr(owner, name)]
    return missing


def check_compatible() -> None:
    missing = missing_names()
    if missing:
        raise IncompatibleVersion(
            f"python-socketio {version('python-socketio')} / python-engineio "
            f"{version('python-engineio')} lack {', '.join(missing)}: install the versions "
            "pyproject.toml allows"
        )
