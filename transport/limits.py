"""Every bound on what a site or a client may send, in one place.

Each one is configurable (``limits:`` in config.yml, or the upper-case environment variable of
the same name) and documented in docs/limits.md with its default. Reaching one gets a clear answer:
a 400 naming the field, a connect error, or the socket closed with one log line.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..storage.store import DEFAULT_MAX_DEVICES, DEFAULT_STEP_MS


@dataclass(frozen=True, slots=True)
class Limits:
    # POST /send
    max_send_body: int = 1_048_576
    """Bytes in one /send body (413 past it)."""
    max_rooms_per_send: int = 1_000
    max_messages_per_send: int = 1_000
    """Messages in one bulk /send (a JSON array of messages)."""
    max_room_length: int = 200
    """Characters in a room name, in /send and in an auth answer."""
    max_event_length: int = 100
    max_args_depth: int = 32
    """Nesting of lists and objects in ``args``; anything accepted can be encoded."""
    # Connecting clients
    max_token_length: int = 4_096
    max_device_id_length: int = 128
    max_meta_length: int = 1_024
    max_devices_per_user: int = DEFAULT_MAX_DEVICES
    """Devices one user keeps (a deviceId each; a connection without one counts while it
    lasts). A new one past it retires the least recently seen offline device (its queue is
    dropped); if every one is connected, the connect is refused: ``Auth error: too many
    devices``. Every send to the user costs one copy per device: this bounds it."""
    max_packets_before_join: int = 16
    """Socket.IO packets a connection may send before it has joined a site's namespace."""
    max_unjoined_sessions: int = 10_000
    """Engine.IO sessions open on the node that have not joined a site's namespace (yet: a
    connect waiting on the auth call counts). A polling handshake opens one without keeping
    a connection, about 3 KB each; past the limit a handshake is answered 503."""
    join_timeout: int = 45
    """Seconds a session has to join a site's namespace before it is closed (socket.io's
    own connectTimeout)."""
    auth_concurrency: int = 64
    """authUrl calls in flight per site; further connects wait their turn (up to the auth
    timeout, then ``Auth error: busy``)."""
    auth_failure_cache: int = 10
    """Seconds a token the site refused (401) is refused again without asking; 0: never."""
    # Calls to sites (authUrl, updateUserUrl)
    max_site_answer: int = 1_048_576
    """Bytes of a site's answer read; a longer one fails the call (a connect error
    ``Auth error: the site's answer is not HTTP/1.1: a body over ...``)."""
    site_connections: int = 100
    """Connections open to one site's host at once; further calls wait for one."""
    # The store
    store_step_ms: int = DEFAULT_STEP_MS
    """Milliseconds a send's Redis script or SQLite transaction may run before the rest of
    its messages go in the next one, so other users' connects and acks run between. A
    message is never split: its work is bounded by its rooms times max_devices_per_user."""
    # Sockets and HTTP
    max_outgoing_queue: int = 1_000
    """Packets waiting for one socket; a client that stops reading is disconnected past it
    (its device keeps its stored queue)."""
    write_timeout: int = 30
    """Seconds one write to a socket may stay blocked before the socket is dropped."""
    http_read_timeout: int = 60
    """Seconds to receive a connection's first request headers, and a request's body (nginx's
    client_header_timeout and client_body_timeout)."""
    keepalive_timeout: int = 75
    """Seconds an idle keep-alive HTTP connection is kept open."""
    max_connections: int = 0
    """Open TCP connections to the service; past it new ones are refused (HTTP 503 and
    closed). 0: as many as the open-files limit allows, less 200 for everything else."""
    listen_backlog: int = 1024
    """Connections the kernel holds until the service accepts them. When a reconnect storm
    (a node restarted, a network blip) overflows it, the kernel drops the connection
    attempt and the client's retry comes a second later; the kernel caps it at
    net.core.somaxconn."""


LIMIT_NAMES = tuple(f.name for f in fields(Limits))
