"""HTTP/1.1 calls to sites' endpoints (authUrl, updateUserUrl) on kept-alive connections.

Every connect asks the site's authUrl, so this call is on the hottest path a client has.
aiohttp's client did it in about a fifth of the service's CPU per reconnect; this one, which
does only what those calls need, takes a reconnect from 2.08M to 1.79M instructions (callgrind,
`python -m bench --client node4`, 500 clients). What it does, as aiohttp's client and the
original's fetch did:

- ``http`` and ``https`` (certificates checked against the system's authorities, or
  ``SSL_CERT_FILE``); no proxy, no cookies;
- answers with ``Content-Length``, ``chunked``, or delimited by the connection's end; interim
  ``1xx`` answers skipped;
- redirects followed (at most ``MAX_REDIRECTS``); ``Authorization`` is not sent on to another
  origin;
- connections kept alive and reused, at most ``site_connections`` open to one origin; an idle
  one is not reused past ``IDLE_REUSE`` seconds (servers close theirs after 5 s or more), and a
  call whose reused connection turns out closed before any answer byte is tried again once on
  a new one (GET and PUT may be repeated);
- an answer's headers over ``MAX_HEAD`` bytes or body over ``max_site_answer`` fail the call.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from typing import NamedTuple, cast
from urllib.parse import urljoin, urlsplit

MAX_HEAD = 65_536  # bytes of an answer's status line and headers
MAX_REDIRECTS = 10
IDLE_REUSE = 4.0  # seconds
MAX_IDLE = 100  # idle connections kept per origin
MAX_ORIGINS = 1_000  # origins remembered (sites' hosts, and where they redirect to)
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTROL = frozenset(chr(c) for c in range(32)) - {"\t"} | {"\x7f"}

Origin = tuple[str, str, int]  # scheme, host, port


class SiteAnswer(NamedTuple):
    status: int
    body: bytes
    location: str | None = None


class SiteCallError(Exception):
    """The site could not be asked, or answered something that is not HTTP/1.1. Its text is
    the reason, fit for a log line or a client's connect error."""


class _BadAnswer(Exception):
    pass


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection, and the parser of the answers read from it."""

    def __init__(self, origin: Origin, max_body: int) -> None:
        self.origin = origin
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[SiteAnswer] | None = None
        self.idle_since = 0.0
        self.reused = False
        self._buffer = bytearray()
        self._state = "head"
        self._status = 0
        self._location: str | None = None
        self._keep_alive = False
        self._remaining = 0  # bytes still to come of the body, or of the current chunk
        self._body = bytearray()
        self._no_body = False

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.answer is None or self.answer.done():  # bytes no request asked for
            self.close()
            return
        self._buffer += data
        try:
            self._parse()
        except _BadAnswer as exc:
            self._fail(SiteCallError(f"the site's answer is not HTTP/1.1: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == "eof" and self.answer is not None and not self.answer.done():
            self._finish()  # the end of the connection was the end of the body
        if self.answer is not None and not self.answer.done():
            if self._state == "head" and not self._buffer:
                error: Exception = ConnectionResetError("the site closed the connection")
            else:
                error = SiteCallError("the site closed the connection mid-answer")
            self.answer.set_exception(error)
        self.transport = None

    # --- use ---

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def request(self, data: bytes, no_body: bool) -> asyncio.Future[SiteAnswer]:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        self._body.clear()
        self._state, self._no_body, self._location = "head", no_body, None
        self.transport.write(data)
        return self.answer

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # --- parsing ---

    def _parse(self) -> None:
        while self._state != "done":
            if self._state == "eof":
                self._body += self._buffer
                self._buffer.clear()
                self._check_size(0)
                return
            state = self._state
            if state == "head":
                progressed = self._head()
            elif state == "length":
                progressed = self._length()
            elif state == "chunk-size":
                progressed = self._chunk_size()
            elif state == "chunk-data":
                progressed = self._chunk_data()
            else:
                progressed = self._trailers()
            if not progressed:
                return

    def _head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or end > MAX_HEAD:
            if len(self._buffer) > MAX_HEAD:
                raise _BadAnswer(f"headers over {MAX_HEAD} bytes")
            return False
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if version not in ("HTTP/1.1", "HTTP/1.0") or not code.isdigit():
            raise _BadAnswer(f"status line {lines[0][:80]!r}")
        status = int(code)
        if 100 <= status < 200:  # interim (100 Continue, 103 Early Hints): the answer follows
            return True
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise _BadAnswer(f"header line {line[:80]!r}")
            name, value = name.lower(), value.strip()
            if headers.get(name, value) != value and name in ("content-length", "location"):
                raise _BadAnswer(f"two different {name} headers")
            headers[name] = value
        self._status = status
        self._location = headers.get("location")
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            self._keep_alive = "close" not in connection
        else:
            self._keep_alive = "keep-alive" in connection
        if self._no_body or status in (204, 304):
            self._finish()
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = "chunk-size"
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit():
                raise _BadAnswer(f"Content-Length {length[:20]!r}")
            self._remaining = int(length)
            self._check_size(self._remaining)
            self._state = "length"
        else:
            self._keep_alive = False  # the body ends with the connection
            self._state = "eof"
        return True

    def _length(self) -> bool:
        take = min(self._remaining, len(self._buffer))
        self._body += self._buffer[:take]
        del self._buffer[:take]
        self._remaining -= take
        if self._remaining:
            return False
        self._finish()
        return True

    def _chunk_size(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > 1024:
                raise _BadAnswer("a chunk size line over 1024 bytes")
            return False
        size = bytes(self._buffer[:end]).split(b";", 1)[0].strip()
        if not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
            raise _BadAnswer(f"chunk size {size[:20]!r}")
        del self._buffer[: end + 2]
        self._remaining = int(size, 16)
        self._check_size(self._remaining)
        self._state = "chunk-data" if self._remaining else "trailers"
        return True

    def _chunk_data(self) -> bool:
        if len(self._buffer) < self._remaining + 2:
            return False
        if self._buffer[self._remaining : self._remaining + 2] != b"\r\n":
            raise _BadAnswer("a chunk not followed by CRLF")
        self._body += self._buffer[: self._remaining]
        del self._buffer[: self._remaining + 2]
        self._state = "chunk-size"
        return True

    def _trailers(self) -> bool:
        if self._buffer[:2] == b"\r\n":
            del self._buffer[:2]
        else:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    raise _BadAnswer(f"trailers over {MAX_HEAD} bytes")
                return False
            del self._buffer[: end + 4]
        self._finish()
        return True

    def _check_size(self, more: int) -> None:
        if len(self._body) + more > self.max_body:
            raise _BadAnswer(f"a body over {self.max_body} bytes (max_site_answer)")

    def _finish(self) -> None:
        self._state = "done"
        if not self._keep_alive or self._buffer:  # more than the answer: not ours to reuse
            self.close()
        assert self.answer is not None
        if not self.answer.done():
            self.answer.set_result(SiteAnswer(self._status, bytes(self._body), self._location))

    def _fail(self, exc: Exception) -> None:
        self._state = "done"
        self.close()
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)


class SiteHttp:
    """The service's HTTP client for sites' endpoints: one for every site."""

    def __init__(self, max_answer: int = 1_048_576, connections_per_origin: int = 100) -> None:
        self.max_answer = max_answer
        self.connections_per_origin = connections_per_origin
        self._idle: dict[Origin, list[_Connection]] = {}
        self._slots: dict[Origin, asyncio.Semaphore] = {}
        self._calls: dict[Origin, int] = {}  # calls in flight
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float = 10.0,
    ) -> SiteAnswer:
        """The answer to ``method url``, redirects followed, all within ``timeout`` seconds
        (else :class:`TimeoutError`). :class:`ValueError` if a header cannot be sent (a
        control character), :class:`OSError` if the site cannot be reached,
        :class:`SiteCallError` if its answer cannot be read."""
        for name, value in headers.items():
            if not _CONTROL.isdisjoint(name) or not _CONTROL.isdisjoint(value):
                raise ValueError(f"header {name[:40]!r} holds a control character")
        async with asyncio.timeout(timeout):
            headers = dict(headers)
            for _ in range(MAX_REDIRECTS + 1):
                origin, target = _split(url)
                answer = await self._exchange(origin, method, target, headers, body)
                if answer.status not in REDIRECTS or not answer.location:
                    return answer
                following = urljoin(url, answer.location)
                if _split(following)[0] != origin:
                    headers.pop("Authorization", None)
                if answer.status == 303 or (answer.status in (301, 302) and method == "POST"):
                    method, body = "GET", None
                url = following
            raise SiteCallError(f"more than {MAX_REDIRECTS} redirects")

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()

    async def _exchange(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> SiteAnswer:
        scheme, host, port = origin
        default_port = 443 if scheme == "https" else 80
        head = [
            f"{method} {target} HTTP/1.1",
            f"Host: {_host(host)}" + ("" if port == default_port else f":{port}"),
            "User-Agent: socketio-webservice",
            "Accept: */*",
        ]
        head += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            head.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
        slots = self._slots.get(origin)
        if slots is None:
            if len(self._slots) >= MAX_ORIGINS:
                self._forget_unused_origins()
            slots = self._slots[origin] = asyncio.Semaphore(self.connections_per_origin)
        self._calls[origin] = self._calls.get(origin, 0) + 1
        try:
            async with slots:
                return await self._call(origin, data, method == "HEAD")
        finally:
            self._calls[origin] -= 1

    async def _call(self, origin: Origin, data: bytes, no_body: bool) -> SiteAnswer:
        for attempt in range(2):
            connection = await self._connection(origin)
            try:
                if not connection.usable:  # closed by the site before the request
                    raise ConnectionResetError("the site closed the connection")
                result = await connection.request(data, no_body)
            except ConnectionResetError:
                connection.close()
                if connection.reused and attempt == 0:  # closed by the site while idle
                    continue
                raise
            except BaseException:
                connection.close()  # a timeout or a bad answer: the connection is spent
                raise
            self._release(connection)
            return result
        raise AssertionError("unreachable")

    async def _connection(self, origin: Origin) -> _Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.usable and now - connection.idle_since < IDLE_REUSE:
                connection.reused = True
                return connection
            connection.close()
        scheme, host, port = origin
        tls = self._tls_context() if scheme == "https" else None
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            lambda: _Connection(origin, self.max_answer),
            host,
            port,
            ssl=tls,
            server_hostname=host if tls else None,
        )
        return connection

    def _forget_unused_origins(self) -> None:
        """A site redirecting to ever new hosts must not grow what is kept for each."""
        for origin in [o for o, calls in self._calls.items() if not calls]:
            del self._calls[origin], self._slots[origin]
            for connection in self._idle.pop(origin, []):
                connection.close()

    def _release(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.origin, [])
        if self._closed or not connection.usable or len(idle) >= MAX_IDLE:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls


def _split(url: str) -> tuple[Origin, str]:
    split = _SPLIT.get(url)
    if split is None:
        if len(_SPLIT) >= 1024:  # updateUserUrl names a user: many URLs, none for long
            _SPLIT.clear()
        split = _SPLIT[url] = _split_url(url)
    return split


_SPLIT: dict[str, tuple[Origin, str]] = {}


def _split_url(url: str) -> tuple[Origin, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise SiteCallError(f"not an http(s) URL: {url[:100]}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise SiteCallError(f"a bad port in {url[:100]}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, parts.hostname, port), target


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
