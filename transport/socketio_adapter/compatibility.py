"""What this adapter uses of python-socketio's and python-engineio's insides, checked once at
start-up: a version that lacks any of it stops the service with one line, instead of failing
on the first connection. Keep this list in step with ``server`` and ``legacy``."""

from __future__ import annotations

import logging
from importlib.metadata import version

import engineio
import socketio
from engineio import async_socket
from engineio.async_drivers import aiohttp as aiohttp_driver

REQUIRED: dict[str, tuple[object, tuple[str, ...]]] = {
    "engineio.AsyncServer": (
        engineio.AsyncServer,
        (
            "_handle_connect",
            "_ok",
            "_upgrades",
            "_unauthorized",
            "_bad_request",
            "_service_task",
            "_trigger_event",
            "generate_id",
            "handle_request",
            "create_queue",
            "reason",  # the close reasons our Socket's websocket handler gives
        ),
    ),
    "engineio AsyncSocket": (
        async_socket.AsyncSocket,
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
    "engineio aiohttp driver": (aiohttp_driver, ("WebSocket", "translate_request")),
    "socketio.AsyncServer": (
        socketio.AsyncServer,
        (
            "_handle_eio_message",
            "_handle_eio_disconnect",
            "_handle_connect",
            "_handle_event",
            "_handle_ack",
            "_send_packet",
            "_engineio_server_class",
        ),
    ),
    "socketio.AsyncManager": (
        socketio.AsyncManager,
        (
            "_generate_ack_id",
            "eio_sid_from_sid",
            "sid_from_eio_sid",
            "basic_enter_room",
            "basic_leave_room",
            "basic_disconnect",
            "is_connected",
        ),
    ),
}
INSTANCE_ATTRIBUTES = (
    "closing",
    "closed",
    "queue",
    "last_ping",
    "upgraded",
    "upgrading",
    "connected",
)


class IncompatibleVersion(Exception):
    """The installed python-socketio / python-engineio lacks something the adapter uses."""


def check_compatible() -> None:
    missing = [
        f"{where}.{name}"
        for where, (owner, names) in REQUIRED.items()
        for name in names
        if not hasattr(owner, name)
    ]
    # Given a logger, the probe server adds no stderr handler of its own to engineio's logger.
    server = engineio.AsyncServer(async_mode="aiohttp", logger=logging.getLogger("engineio.server"))
    probe = async_socket.AsyncSocket(server, "probe")
    missing += [f"AsyncSocket().{n}" for n in INSTANCE_ATTRIBUTES if not hasattr(probe, n)]
    if not isinstance(getattr(server, "handlers", None), dict):  # Socket reads "message" there
        missing.append("engineio.AsyncServer().handlers")
    if missing:
        raise IncompatibleVersion(
            f"python-socketio {version('python-socketio')} / python-engineio "
            f"{version('python-engineio')} lack {', '.join(missing)}: install the versions "
            "pyproject.toml allows"
        )
