"""The Redis URLs the service takes, read once: one grammar for the config check, the store,
the node bus and python-socketio's manager.

    redis://[user:password@]host[:port][/db]        rediss:// for TLS
    unix://[user:password@]/path/to/socket[?db=N]
    redis+sentinel://[user:password@]host[:port],host[:port],.../service[/db]
                                                     rediss+sentinel:// for TLS; port 26379
    redis+cluster://[user:password@]host[:port],host[:port],...
                                                     rediss+cluster:// for TLS; any node of
                                                     the cluster is enough to start

With Sentinel the credentials and TLS are the primary's (and its replicas'); the sentinels
are asked without. python-socketio's own order, ``.../db/service``, is read too.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

PLAIN = ("redis", "rediss", "unix")
SENTINEL = ("redis+sentinel", "rediss+sentinel")
CLUSTER = ("redis+cluster", "rediss+cluster")
SENTINEL_PORT = 26379
CLUSTER_PORT = 6379


@dataclass(frozen=True, slots=True)
class RedisAddress:
    url: str
    sentinels: tuple[tuple[str, int], ...] = ()  # none: a plain URL, given to redis-py whole
    cluster_nodes: tuple[tuple[str, int], ...] = ()  # Redis Cluster: the nodes to start from
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    @property
    def is_cluster(self) -> bool:
        return bool(self.cluster_nodes)


def parse(url: str) -> RedisAddress:
    """Raises ``ValueError`` saying what is wrong (without the URL: the caller masks it)."""
    if "://" not in url:
        raise ValueError(
            "not a Redis URL: write redis://host:port/db (rediss:// for TLS, unix:///path for a "
            "socket, redis+sentinel://host:26379,host:26379/service for Sentinel)"
        )
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in SENTINEL:
        return _sentinel(url)
    if scheme in CLUSTER:
        return _cluster(url)
    if scheme not in PLAIN:
        known = ", ".join(PLAIN + SENTINEL + CLUSTER)
        raise ValueError(f"unknown scheme {scheme!r} (known: {known})")
    if scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path")
        return RedisAddress(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError("no host")
    if port == 0:
        raise ValueError("the port is not a number from 1 to 65535")
    database = unquote(parts.path.lstrip("/"))
    if database and not database.isdigit():
        raise ValueError(f"the database {database!r} is not a number")
    return RedisAddress(url, db=int(database or 0), tls=scheme == "rediss")


def _hosts(hosts: str, default_port: int, what: str) -> list[tuple[str, int]]:
    found = []
    for entry in hosts.split(","):
        host, colon, port = entry.rpartition(":") if ":" in entry else (entry, "", "")
        if not host:
            raise ValueError(f"no host in the {what} {entry!r}")
        if colon and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"the {what} {entry!r} has no valid port")
        found.append((host, int(port) if colon else default_port))
    return found


def _cluster(url: str) -> RedisAddress:
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    auth, _, hosts = netloc.rpartition("@")
    if path.strip("/") not in ("", "0"):
        raise ValueError("Redis Cluster has one database: no /db in a redis+cluster:// URL")
    user, _, password = auth.partition(":")
    return RedisAddress(
        url,
        cluster_nodes=tuple(_hosts(hosts, CLUSTER_PORT, "cluster node")),
        username=unquote(user) or None,
        password=unquote(password) or None,
        tls=scheme == "rediss+cluster",
    )


def _sentinel(url: str) -> RedisAddress:
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    auth, _, hosts = netloc.rpartition("@")
    sentinels = _hosts(hosts, SENTINEL_PORT, "sentinel")
    segments = [unquote(segment) for segment in path.split("/") if segment]
    if len(segments) == 2 and segments[0].isdigit() and not segments[1].isdigit():
        segments.reverse()  # python-socketio's order: db, then service
    if not segments or len(segments) > 2:
        raise ValueError("a Sentinel URL names its service: redis+sentinel://h1,h2/service[/db]")
    service = segments[0]
    if len(segments) == 2 and not segments[1].isdigit():
        raise ValueError(f"the database {segments[1]!r} is not a number")
    user, _, password = auth.partition(":")
    return RedisAddress(
        url,
        sentinels=tuple(sentinels),
        service=service,
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=unquote(user) or None,
        password=unquote(password) or None,
        tls=scheme == "rediss+sentinel",
    )
