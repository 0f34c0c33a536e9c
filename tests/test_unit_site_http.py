"""``transport.site_http.SiteHttp`` against real servers that answer with the exact bytes a
test gives: how answers are framed, connections reused, redirects followed, limits kept."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import uvloop

from socketio_webservice.transport.site_http import MAX_HEAD, SiteCallError, SiteHttp
from testkit.processes import self_signed_certificate

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
HANG = b""  # an answer that never comes
CLOSE = b"close"  # close the connection instead of answering
THEN_CLOSE = b"\0close"  # at the end of an answer: close the connection after it


# pytest-asyncio 1.x would have a hook instead; 0.23, the lowest we support, has only this.
pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Each test on asyncio's loop and on uvloop's, which the service runs on."""
    if request.param == "uvloop":
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


class RawSite:
    """A TCP server answering its requests, in order, with ``answers``."""

    def __init__(self, answers: list[bytes], tls: ssl.SSLContext | None = None) -> None:
        self.answers = answers
        self.tls = tls
        self.requests: list[bytes] = []
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if answer == HANG:
                    await asyncio.Event().wait()
                if answer == CLOSE:
                    break
                writer.write(answer.removesuffix(THEN_CLOSE))
                await writer.drain()
                if answer.endswith(THEN_CLOSE):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


@pytest.fixture
async def site() -> AsyncIterator[Callable[..., RawSite]]:
    started: list[RawSite] = []

    def make(*answers: bytes, tls: ssl.SSLContext | None = None) -> RawSite:
        raw = RawSite(list(answers), tls)
        started.append(raw)
        return raw

    yield make
    for raw in started:
        if raw.server is not None:
            raw.server.close()


@pytest.fixture
async def http() -> AsyncIterator[SiteHttp]:
    client = SiteHttp(max_answer=1000)
    yield client
    await client.close()


async def started(raw: RawSite) -> RawSite:
    await raw.start()
    return raw


async def test_calls_reuse_one_connection_and_send_the_headers(
    site: Callable[..., RawSite], http: SiteHttp
) -> None:
    raw = await started(site(OK, OK))
    for token in ("t1", "t2"):
        answer = await http.request("GET", f"{raw.url}/auth?x=1", {"Authorization": f"T {token}"})
        assert (answer.status, answer.body) == (200, b"ok")
    assert raw.connections == 1
    first = raw.requests[0].decode()
    assert first.startswith("GET /auth?x=1 HTTP/1.1\r\n")
    assert f"\r\nHost: {raw.url[7:]}\r\n" in first and "\r\nAuthorization: T t1\r\n" in first


async def test_a_put_sends_its_body(site: Callable[..., RawSite], http: SiteHttp) -> None:
    raw = await started(site(b"HTTP/1.1 204 No Content\r\n\r\n"))
    answer = await http.request("PUT", f"{raw.url}/users/1", {}, b'{"id":"1"}')
    assert (answer.status, answer.body) == (204, b"")
    assert raw.requests[0].endswith(b'Content-Length: 10\r\n\r\n{"id":"1"}')


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (
            CHUNKED + b'2\r\n["\r\n3;x=y\r\na"]\r\n0\r\n\r\n',
            b'["a"]',
        ),
        (
            CHUNKED + b"1\r\n[\r\n1\r\n]\r\n0\r\nX-T: 1\r\n\r\n",
            b"[]",
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK,
            b"ok",
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", b""),
    ],
)
async def test_answers_framed_every_way_http_allows(
    site: Callable[..., RawSite], http: SiteHttp, answer: bytes, body: bytes
) -> None:
    raw = await started(site(answer, OK))
    assert (await http.request("GET", raw.url, {})).body == body
    assert (await http.request("GET", raw.url, {})).body == b"ok"
    assert raw.connections == 1  # each answer ended where its framing said


async def test_an_answer_ended_by_the_connection_is_read_whole(http: SiteHttp) -> None:
    connections = 0

    async def answer_then_close(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        w.write(b'HTTP/1.0 200 OK\r\n\r\n["a", "b"]')
        w.close()

    server = await asyncio.start_server(answer_then_close, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    try:
        for _ in range(2):
            assert (await http.request("GET", url, {})).body == b'["a", "b"]'
    finally:
        server.close()
    assert connections == 2


async def test_answers_written_a_byte_at_a_time_read_the_same(http: SiteHttp) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for byte in answer:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)
        await reader.read()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert (await http.request("GET", f"http://127.0.0.1:{port}/", {})).body == b"abcde"
    finally:
        server.close()


async def test_redirects_are_followed_and_authorization_stays_on_its_origin(
    site: Callable[..., RawSite], http: SiteHttp
) -> None:
    other = await started(site(OK))
    raw = await started(
        site(
            b"HTTP/1.1 302 Found\r\nLocation: /moved\r\nContent-Length: 0\r\n\r\n",
            (
                f"HTTP/1.1 307 Temporary\r\nLocation: {other.url}/x\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
        )
    )
    answer = await http.request("GET", f"{raw.url}/auth", {"Authorization": "T t1", "X-META": "m"})
    assert (answer.status, answer.body) == (200, b"ok")
    assert raw.requests[1].startswith(b"GET /moved ") and b"Authorization: T t1" in raw.requests[1]
    assert b"Authorization" not in other.requests[0] and b"X-META: m" in other.requests[0]


async def test_a_303_turns_a_put_into_a_get_and_a_loop_ends(
    site: Callable[..., RawSite], http: SiteHttp
) -> None:
    raw = await started(
        site(b"HTTP/1.1 303 See Other\r\nLocation: /r\r\nContent-Length: 0\r\n\r\n", OK)
    )
    assert (await http.request("PUT", raw.url, {}, b"{}")).status == 200
    assert raw.requests[1].startswith(b"GET /r ") and not raw.requests[1].endswith(b"{}")
    loop = b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n"
    looping = await started(site(*[loop] * 12))
    with pytest.raises(SiteCallError, match="more than 10 redirects"):
        await http.request("GET", looping.url, {})


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n", "a body over 1000 bytes"),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 1001, "a body over 1000 bytes"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n", "a body over 1000"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD, f"headers over {MAX_HEAD} bytes"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "status line 'SSH-2.0-OpenSSH_9.2'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length '-1'"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size b'zz'"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab" + THEN_CLOSE,
            "closed the connection mid",
        ),
    ],
)
async def test_answers_past_a_limit_or_not_http_fail_with_a_reason(
    site: Callable[..., RawSite], http: SiteHttp, answer: bytes, error: str
) -> None:
    raw = await started(site(answer, CLOSE))
    with pytest.raises(SiteCallError, match=error.replace("(", r"\(")):
        await http.request("GET", raw.url, {})


async def test_a_connection_the_site_closed_while_idle_is_replaced(
    site: Callable[..., RawSite], http: SiteHttp
) -> None:
    raw = await started(site(OK, CLOSE, OK))  # the second request finds its connection closed
    assert (await http.request("GET", raw.url, {})).body == b"ok"
    assert (await http.request("GET", raw.url, {})).body == b"ok"
    assert raw.connections == 2


async def test_no_answer_in_time_is_a_timeout_and_the_connection_is_not_reused(
    site: Callable[..., RawSite], http: SiteHttp
) -> None:
    raw = await started(site(HANG, OK))
    with pytest.raises(TimeoutError):
        await http.request("GET", raw.url, {}, timeout=0.2)
    assert (await http.request("GET", raw.url, {})).body == b"ok"
    assert raw.connections == 2


async def test_at_most_the_configured_connections_to_one_site(
    site: Callable[..., RawSite],
) -> None:
    slow = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    raw = await started(site(*[slow] * 6))
    client = SiteHttp(connections_per_origin=2)
    try:
        answers = await asyncio.gather(*(client.request("GET", raw.url, {}) for _ in range(6)))
    finally:
        await client.close()
    assert [a.body for a in answers] == [b"ok"] * 6 and raw.most_open <= 2


async def test_unreachable_sites_and_unsendable_headers_are_errors(http: SiteHttp) -> None:
    with pytest.raises(OSError):
        await http.request("GET", "http://127.0.0.1:1/auth", {})
    with pytest.raises(ValueError, match="control character"):
        await http.request("GET", "http://127.0.0.1:1/auth", {"Authorization": "T a\r\nX: 1"})
    with pytest.raises(SiteCallError, match="not an http"):
        await http.request("GET", "ftp://127.0.0.1/auth", {})


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path)


async def test_https_checks_the_sites_certificate(
    site: Callable[..., RawSite], certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    key, cert = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    raw = await started(site(OK, OK, tls=tls))
    untrusting = SiteHttp()
    with pytest.raises(ssl.SSLCertVerificationError):
        await untrusting.request("GET", raw.url, {})
    await untrusting.close()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # as an operator with a private CA does
    trusting = SiteHttp()
    try:
        assert (await trusting.request("GET", f"{raw.url}/auth", {})).body == b"ok"
    finally:
        await trusting.close()


async def test_a_site_redirecting_to_ever_new_hosts_keeps_a_bounded_state(
    site: Callable[..., RawSite], monkeypatch: pytest.MonkeyPatch
) -> None:
    from socketio_webservice.transport import site_http

    monkeypatch.setattr(site_http, "MAX_ORIGINS", 3)
    client = SiteHttp()
    try:
        for _ in range(5):  # each a server of its own: an origin of its own
            raw = await started(site(OK))
            assert (await client.request("GET", raw.url, {})).body == b"ok"
            assert len(client._slots) <= 3 and len(client._idle) <= 3
    finally:
        await client.close()
