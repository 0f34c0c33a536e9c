"""Real parts for protocol tests: a site stub over HTTP, the service on a free port, clients."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from aiohttp import web
from socketio import packet

from socketio_webservice.sites import SiteConfig
from socketio_webservice.storage import Store
from socketio_webservice.transport.limits import Limits
from socketio_webservice.webservice.config import Config
from socketio_webservice.webservice.service import Service
from testkit.processes import free_port

WAIT = 5.0


class SiteStub:
    """The site's auth and user-update endpoints: the one thing outside the service."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.default_rooms: list[str] | None = None
        self.auth_requests: list[dict[str, str]] = []
        self.auth_arrivals: asyncio.Queue[str] = asyncio.Queue()  # tokens, as calls arrive
        self.updates: asyncio.Queue[tuple[str, Any, str]] = asyncio.Queue()
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        self.release_slow = asyncio.Event()
        self.sets_cookies = False  # answer each auth call with a session cookie of its token

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/auth", self._auth)
        app.router.add_put("/users/{id}", self._update)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release_slow.set()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _auth(self, request: web.Request) -> web.StreamResponse:
        self.auth_requests.append(dict(request.headers))
        token = request.headers.get("Authorization", "").partition(" ")[2]
        self.auth_arrivals.put_nowait(token)
        answer = self.answers.get(token, self.default_rooms)
        if answer is None:
            return web.json_response({"error": "who are you"}, status=401)
        if isinstance(answer, int):
            return web.json_response(["user_1"], status=answer)
        if answer == "slow":
            await self.release_slow.wait()
            return web.json_response(["user_1"])
        if isinstance(answer, bytes):
            return web.Response(body=answer, content_type="application/json")
        response = web.json_response(answer)
        if self.sets_cookies:
            response.set_cookie("session", token)
        return response

    async def _update(self, request: web.Request) -> web.Response:
        await self.updates.put(
            (
                request.match_info["id"],
                await request.json(),
                request.headers.get("Authorization", ""),
            )
        )
        return web.json_response({})


@dataclass
class Received:
    event: str
    args: list[Any]
    ack_id: int | None

    def numbers(self) -> list[int]:
        """The tests send event ``n`` with a number: those it carries, live or in a _batch."""
        if self.event == "n":
            return [self.args[0]]
        if self.event == "_batch":
            return [args[1] for args in self.args[0] if args[0] == "n"]
        return []


class Client(socketio.AsyncClient):  # type: ignore[misc]
    """python-socketio's own client; events are queued for the test, acks are the test's call.

    With ``auto_ack`` every event that asks for an ack is acked as it arrives, as a normal
    client app does; without it the test acks (or withholds) each one itself.
    """

    def __init__(self, auto_ack: bool = True) -> None:
        super().__init__(reconnection=False)
        self.auto_ack = auto_ack
        self.events: asyncio.Queue[Received] = asyncio.Queue()
        self.connect_errors: asyncio.Queue[Any] = asyncio.Queue()
        self.namespace = "/"
        self.settings: dict[str, Any] = {}

    async def _handle_event(self, namespace: str, id: int | None, data: list[Any]) -> None:
        received = Received(data[0], data[1:], id)
        if self.auto_ack and id is not None:
            await self.ack(received)
        await self.events.put(received)

    async def ack(self, received: Received, *args: Any) -> None:
        assert received.ack_id is not None, f"{received.event} asked for no ack"
        await self._send_packet(
            self.packet_class(
                packet.ACK, namespace=self.namespace, id=received.ack_id, data=list(args)
            )
        )

    async def next(self) -> Received:
        return await asyncio.wait_for(self.events.get(), WAIT)

    async def no_event_within(self, seconds: float) -> None:
        """For a negative check only: the service must stay silent for this long."""
        try:
            received = await asyncio.wait_for(self.events.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event {received.event} {received.args}")


async def connect(
    url: str,
    site: str,
    token: str,
    device: str | None = "dev",
    *,
    auto_ack: bool = True,
    meta: str | None = None,
    use_auth: bool = False,
) -> Client:
    """A connected client, after its ``_settings`` greeting: from then on sends arrive live."""
    client = Client(auto_ack=auto_ack)
    client.namespace = f"/{site}"
    params = {"token": token}
    if device is not None:
        params["deviceId"] = device
    if meta is not None:
        params["meta"] = meta
    query = "" if use_auth else "?" + "&".join(f"{k}={v}" for k, v in params.items())
    await client.connect(
        url + query,
        namespaces=[client.namespace],
        transports=["websocket"],
        auth=params if use_auth else None,
        wait_timeout=WAIT,
    )
    greeting = await client.next()
    assert greeting.event == "_settings", f"first event was {greeting.event}"
    client.settings = greeting.args[0]
    return client


async def connect_error(url: str, site: str, token: str, device: str = "dev") -> str:
    """The message of the connect error a refused client gets."""
    client = Client()
    errors: asyncio.Queue[Any] = asyncio.Queue()
    client.on("connect_error", errors.put, namespace=f"/{site}")
    try:
        await client.connect(
            f"{url}?token={token}&deviceId={device}",
            namespaces=[f"/{site}"],
            transports=["websocket"],
            wait_timeout=WAIT,
        )
    except socketio.exceptions.ConnectionError:
        pass
    else:
        raise AssertionError("connection was accepted")
    finally:
        await client.disconnect()
    data = await asyncio.wait_for(errors.get(), WAIT)
    return str(data["message"] if isinstance(data, dict) else data)


async def post_send(
    http: aiohttp.ClientSession,
    url: str,
    site: str,
    rooms: Any,
    event: str,
    *args: Any,
    resync: bool = False,
) -> tuple[int, str]:
    query = f"site={site}&apiKey=key" + ("&resync=true" if resync else "")
    body = {"rooms": rooms, "event": event, "args": list(args)}
    async with http.post(f"{url}/send?{query}", json=body) as response:
        return response.status, await response.text()


@dataclass
class Harness:
    store_kind: str
    tmp_path: Path
    redis_url: str | None
    stub: SiteStub
    device_ttl: int = 3600
    sites: dict[str, SiteConfig] = field(default_factory=dict)
    service: Service | None = None
    clients: list[Client] = field(default_factory=list)
    http: aiohttp.ClientSession | None = None
    socketio_options: dict[str, Any] = field(default_factory=dict)
    max_queue: int = 10_000
    limits: Limits = field(default_factory=Limits)
    admin_key: str = ""

    def config(self) -> Config:
        return Config(
            sites=self.sites,
            port=free_port(),
            host="127.0.0.1",
            device_ttl=self.device_ttl,
            redis_url=self.redis_url or "",
            sqlite_path=str(self.tmp_path / "service.sqlite3"),
            auth_timeout=1.0,
            socketio_options=self.socketio_options,
            max_queue=self.max_queue,
            limits=self.limits,
            admin_key=self.admin_key,
        )

    @property
    def url(self) -> str:
        assert self.service is not None
        return f"http://127.0.0.1:{self.service.config.port}"

    @property
    def store(self) -> Store:
        assert self.service is not None
        return self.service.store

    async def start(self, **changes: Any) -> Service:
        for name, value in changes.items():
            setattr(self, name, value)
        self.service = Service(self.config())
        await self.service.start()
        if self.http is None:
            self.http = aiohttp.ClientSession()
        return self.service

    async def restart(self) -> None:
        assert self.service is not None
        await self.service.stop()
        self.service = Service(dataclasses.replace(self.service.config, port=free_port()))
        await self.service.start()

    async def restart_with(self, **changes: Any) -> None:
        """Stop, then start again with these fields of the harness changed."""
        assert self.service is not None
        await self.service.stop()
        await self.start(**changes)

    async def stop(self) -> None:
        for client in self.clients:
            await client.disconnect()
        if self.service is not None:
            await self.service.stop()
        if self.http is not None:
            await self.http.close()

    async def connect(
        self,
        site: str,
        token: str,
        device: str | None = "dev",
        *,
        auto_ack: bool = True,
        meta: str | None = None,
        use_auth: bool = False,
    ) -> Client:
        client = await connect(
            self.url, site, token, device, auto_ack=auto_ack, meta=meta, use_auth=use_auth
        )
        self.clients.append(client)
        return client

    async def connect_error(self, site: str, token: str, device: str = "dev") -> str:
        return await connect_error(self.url, site, token, device)

    async def send(
        self,
        site: str,
        rooms: Any,
        event: str,
        *args: Any,
        resync: bool = False,
    ) -> tuple[int, str]:
        assert self.http is not None
        return await post_send(self.http, self.url, site, rooms, event, *args, resync=resync)

    async def post(self, query: str, **kwargs: Any) -> tuple[int, str]:
        assert self.http is not None
        async with self.http.post(f"{self.url}/send?{query}", **kwargs) as response:
            return response.status, await response.text()
