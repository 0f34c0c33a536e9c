"""The Socket.IO namespace ``/<site>``: turns socket events into actor messages and back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import unquote_plus

import socketio
from loguru import logger

from ..actors import service_events
from ..actors.messages import Detach, Register, TooManyDevices
from ..actors.registry import ActorRegistry
from ..event_log import events
from ..sites import SiteConfig
from ..storage import Store
from .auth import AuthGate, AuthRejected
from .limits import Limits
from .presence import PresenceNotifier
from .site_http import SiteHttp
from .socketio_adapter import client_protocol
from .stats import TransportStats

REGISTER_TIMEOUT = 10.0
QUERY_NAMES = frozenset({"token", "deviceId", "meta", "transport"})
# One info line per connect and per disconnect; in JSON logs each {field} is a field too.
CONNECTED = (
    "connect site={site} user={user} device={device} node={node} transport={transport} "
    "client={client} sid={sid}"
)
DISCONNECTED = (
    "disconnect site={site} user={user} device={device} node={node} sid={sid} reason={reason}"
)


def connect_params(environ: dict[str, Any], auth: Any) -> dict[str, str]:
    """token, deviceId and meta (and the transport, for the log) from the query string, or
    from the v4 client's ``auth``. Read as ``parse_qs`` would (the last of a repeated name,
    blank values kept), only the names wanted, and unquoted only where escaped."""
    params: dict[str, str] = {}
    for pair in environ.get("QUERY_STRING", "").split("&"):
        name, _, value = pair.partition("=")
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        if name in QUERY_NAMES:
            params[name] = unquote_plus(value) if "%" in value or "+" in value else value
    if isinstance(auth, dict):
        for key in ("token", "deviceId", "meta"):
            if isinstance(auth.get(key), (str, int)) and not isinstance(auth.get(key), bool):
                params[key] = str(auth[key])
    return params


def _time_out(reply: asyncio.Future[bool]) -> None:
    if not reply.done():
        reply.set_exception(TimeoutError())


class SiteNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(
        self,
        site: SiteConfig,
        store: Store,
        http: SiteHttp,
        device_ttl: int,
        auth_timeout: float,
        limits: Limits,
        node_id: str,
        stats: TransportStats,
    ) -> None:
        super().__init__(f"/{site.name}")
        self.site = site
        self.node_id = node_id
        self.device_ttl = device_ttl
        self.limits = limits
        self.auth = AuthGate(http, site, limits, auth_timeout, stats)
        self.presence = PresenceNotifier(http, site)
        self.registry = ActorRegistry(site.name, store, self)
        # sid -> (user room, device): a reliable site's user is detached at the disconnect;
        # every site's client is named in the disconnect's log line.
        self.clients: dict[str, tuple[str, str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closing = False  # the site is being removed (sites.yml reloaded)

    def update_site(self, site: SiteConfig) -> None:
        """New URLs or keys for the same site (sites.yml reloaded): used from the next
        connect, send or presence call."""
        self.site = self.auth.site = self.presence.site = site

    # --- Outbox, for the actors -------------------------------------------------------------

    def send(self, sid: str, payload: str, on_ack: Callable[..., Any] | None = None) -> None:
        self.server.queue_event(sid, self.namespace, payload, on_ack)

    def send_to_rooms(self, rooms: Sequence[str], payload: str) -> None:
        """A plain site's send, to the sockets here in any of ``rooms``, once each."""
        self.server.queue_to_rooms(self.namespace, rooms, payload)

    async def disconnect(self, sid: str) -> None:
        await self.server.disconnect(sid, namespace=self.namespace, ignore_queue=True)

    async def disconnect_user(self, user: str) -> int:
        """Close every socket of ``user`` on this node; how many."""
        sids = [sid for sid, (room, _) in list(self.clients.items()) if room == user]
        for sid in sids:
            await self.disconnect(sid)
        if sids:
            logger.info(
                "site={} user={}: {} sockets closed by an operator", self.site.name, user, len(sids)
            )
        return len(sids)

    def is_connected(self, sid: str) -> bool:
        alive = self.server.socket_alive(sid, self.namespace)
        if isinstance(alive, bool):
            return alive
        self._background(alive)  # it left during the handshake: take it out of the rooms
        return False

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def presence_changed(self, user: str, authorization: str, connected: bool) -> None:
        self.presence.notify(user, authorization, connected)

    # --- Socket.IO events --------------------------------------------------------------------

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Connects and disconnects are the only events that reach a namespace here (clients
        only receive: the adapter ignores what they emit), so they go straight to their
        handlers, without python-socketio's lookup and coroutine check for each."""
        if event == "connect":
            return await self.on_connect(*args)
        if event == "disconnect":
            return await self.on_disconnect(*args)
        return None

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        if self.closing:  # refused as python-socketio refuses any unknown namespace
            raise socketio.exceptions.ConnectionRefusedError("Unable to connect")
        params = connect_params(environ, auth)
        token, meta = params.get("token", ""), params.get("meta", "")
        device = params.get("deviceId", "")
        try:
            if len(device) > self.limits.max_device_id_length:
                raise AuthRejected(
                    f"Invalid deviceId: longer than {self.limits.max_device_id_length} characters"
                )
            rooms = await self.auth.rooms(token, meta)
        except AuthRejected as exc:
            logger.debug("site={} connect refused: {}", self.site.name, exc)
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        if not self.site.reliable:
            for room in rooms:
                await self.enter_room(sid, room)
            # Runs only after this handler returns and the CONNECT packet is queued.
            settings = service_events.settings(self.device_ttl)
            asyncio.get_running_loop().call_soon(self.send, sid, settings)
            user = ""
        else:
            user = await self._register(sid, params, rooms, f"{self.site.auth_scheme} {token}")
        self._log_connect(sid, environ, params, user)
        return True

    def _log_connect(
        self, sid: str, environ: dict[str, Any], params: dict[str, str], user: str
    ) -> None:
        device = params.get("deviceId", "")
        self.clients[sid] = (user, device)
        events.info(
            __name__,
            CONNECTED,
            site=self.site.name,
            user=user or "-",
            device=device or "-",
            node=self.node_id,
            transport="websocket" if params.get("transport") == "websocket" else "polling",
            client=client_protocol(environ),
            sid=sid,
        )

    async def _register(
        self, sid: str, params: dict[str, str], rooms: list[str], authorization: str
    ) -> str:
        """Registers the socket with its user's actor; returns the user."""
        prefix = self.site.user_room_prefix
        private = [room for room in rooms if room.startswith(prefix)]
        public = self.site.public_channel if self.site.public_channel in rooms else ""
        if not private and not public:
            logger.info("site={} connect refused: no private room in {}", self.site.name, rooms)
            raise socketio.exceptions.ConnectionRefusedError("User is missing a private room")
        user = private[0] if private else public
        shared = [room for room in rooms if not room.startswith(prefix) and room != user]
        device = params.get("deviceId", "")
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bool] = loop.create_future()
        self.registry.tell(
            user,
            Register(
                sid,
                device or f"~{sid}",
                shared,
                authorization,
                forget_on_disconnect=not device,
                reply=reply,
            ),
        )
        # Not shielded: a connect handler cancelled here cancels the reply, and the actor
        # then takes the device back offline rather than keep it for a socket never used; so
        # does a reply that timed out (a timer on the reply: asyncio.timeout costs more).
        timer = loop.call_later(REGISTER_TIMEOUT, _time_out, reply)
        try:
            await reply
        except TooManyDevices:
            logger.info(
                "site={} connect refused: {} devices, all connected",
                self.site.name,
                self.limits.max_devices_per_user,
            )
            raise socketio.exceptions.ConnectionRefusedError(
                "Auth error: too many devices connected for this user "
                f"(at most {self.limits.max_devices_per_user})"
            ) from None
        except Exception as exc:
            reply.cancel()
            why = str(exc) or type(exc).__name__  # a timeout's text is empty
            logger.warning("site={} connect refused, store unavailable: {}", self.site.name, why)
            refused = f"Service unavailable: {why}"
            raise socketio.exceptions.ConnectionRefusedError(refused) from None
        finally:
            timer.cancel()
        # Run once this handler has returned and the CONNECT packet is queued: _settings and
        # _batch reach the client after its connect.
        loop.call_soon(self.registry.attach, user, sid)
        return user

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        client = self.clients.pop(sid, None)
        if client is None:
            return
        user, device = client
        if user:
            self.registry.tell(user, Detach(sid))
        events.info(
            __name__,
            DISCONNECTED,
            site=self.site.name,
            user=user or "-",
            device=device or "-",
            node=self.node_id,
            sid=sid,
            reason=str(reason or "-"),
        )

    async def close(self, timeout: float) -> None:
        await self.registry.drain(timeout)
        await self.presence.drain(timeout)
