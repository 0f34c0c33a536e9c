"""``POST /send``: a site's backend pushes an event to rooms.

For reliable sites the message is stored for every target device before the answer is 200
(delivery invariant 1); the live emit is then the user's actor's decision.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson
from aiohttp import web
from loguru import logger

from ..actors import service_events
from ..event_log import events
from ..log_throttle import LogThrottle
from ..storage import (
    Message,
    OutcomeUnknown,
    PartlyStored,
    Store,
    StoreUnavailable,
    stored_count,
)
from .dispatch import Dispatcher
from .form_body import FormError, parse_form
from .limits import Limits
from .site_namespace import SiteNamespace
from .stats import TransportStats

# Names a client library or this service gives a meaning of its own: a site sending one would
# forge a batch or a resync, or break the official client ("parse error").
RESERVED_EVENTS = service_events.NAMES | frozenset(
    {
        "connect",
        "connect_error",
        "connect_timeout",
        "connecting",
        "disconnect",
        "disconnecting",
        "error",
        "message",
        "newListener",
        "removeListener",
        "ping",
        "pong",
        "reconnect",
        "reconnect_attempt",
        "reconnect_error",
        "reconnect_failed",
        "reconnecting",
    }
)
TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off", ""}


class BadRequest(Exception):
    pass


class SendRequest(NamedTuple):
    rooms: list[str]
    event: str
    args: list[Any]


def parse_bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise BadRequest(f"Query param '{name}' must be true or false, not {value!r}.")


async def read_body(request: web.Request, timeout: float) -> Any:
    if request.content.is_eof():  # the body came with the headers, as a small one does
        raw = await request.read()
    else:
        try:
            async with asyncio.timeout(timeout):  # a timer, not a task as wait_for would make
                raw = await request.read()
        except TimeoutError:
            raise web.HTTPRequestTimeout(text=f"Body not received within {timeout:g}s.") from None
    content_type = request.content_type
    if content_type == "application/json" or content_type.endswith("+json"):
        if not raw.strip():
            return {}
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"Body is not valid JSON: {exc}") from None
    if content_type == "application/x-www-form-urlencoded":
        try:
            return parse_form(raw.decode("utf-8"))
        except (UnicodeDecodeError, FormError, ValueError) as exc:
            raise BadRequest(f"Body is not a valid form: {exc}") from None
    raise BadRequest(
        f"Unsupported Content-Type {content_type!r}: "
        "use application/json or application/x-www-form-urlencoded."
    )


def nesting_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether lists and objects in ``value`` nest deeper than ``limit``; stops at the limit,
    so a hostile body costs no more than an accepted one."""
    level: list[Any] = [value]
    for _ in range(limit + 1):
        children: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                children.extend(item.values())
            elif isinstance(item, list):
                children.extend(item)
        if not children:
            return False
        level = children
    return True


def validate(body: Any, limits: Limits) -> SendRequest:
    if not isinstance(body, dict):
        raise BadRequest("Body must be an object with 'rooms', 'event' and 'args'.")
    rooms = body.get("rooms")
    if rooms is None:
        raise BadRequest("Field 'rooms' is missing.")
    if type(rooms) is str and rooms:  # one room, the common case: nothing to count or dedupe
        rooms = [rooms]
    else:
        rooms = _room_list(rooms, limits)
    if any(len(room) > limits.max_room_length for room in rooms):
        raise BadRequest(
            f"Field 'rooms': a room name is longer than {limits.max_room_length} characters."
        )
    event = body.get("event")
    if event is None:
        raise BadRequest("Field 'event' is missing.")
    if not isinstance(event, str) or not event or "\0" in event:
        raise BadRequest("Field 'event' must be a non-empty string.")
    if len(event) > limits.max_event_length:
        raise BadRequest(f"Field 'event' is longer than {limits.max_event_length} characters.")
    if event in RESERVED_EVENTS:
        raise BadRequest(
            f"Field 'event': {event!r} is a reserved name "
            f"(reserved: {', '.join(sorted(RESERVED_EVENTS))})."
        )
    args = body.get("args", [])
    if not isinstance(args, list):
        raise BadRequest("Field 'args' must be a list.")
    if _has_containers(args) and nesting_depth_exceeds(args, limits.max_args_depth):
        raise BadRequest(f"Field 'args' nests deeper than {limits.max_args_depth} levels.")
    return SendRequest(rooms, event, args)


def _room_list(rooms: Any, limits: Limits) -> list[str]:
    """Rooms not given as one name: each a non-empty name, at most so many, each once."""
    if isinstance(rooms, str):
        rooms = [rooms]
    if not isinstance(rooms, list) or not all(isinstance(r, str) and r for r in rooms):
        raise BadRequest("Field 'rooms' must be a room name or a list of room names.")
    if len(rooms) > limits.max_rooms_per_send:
        raise BadRequest(
            f"Field 'rooms' holds {len(rooms)} rooms; at most {limits.max_rooms_per_send}."
        )
    return list(dict.fromkeys(rooms))


def _has_containers(args: list[Any]) -> bool:
    for arg in args:
        if isinstance(arg, (list, dict)):
            return True
    return False


def validate_all(body: Any, limits: Limits) -> list[SendRequest]:
    """One message (an object), or a bulk send (a JSON array of them): all valid, or a 400
    naming the first that is not; nothing is sent then."""
    if not isinstance(body, list):
        return [validate(body, limits)]
    if not body:
        raise BadRequest("Body is an empty list: give at least one message.")
    if len(body) > limits.max_messages_per_send:
        raise BadRequest(
            f"Body holds {len(body)} messages; at most {limits.max_messages_per_send}."
        )
    sends = []
    for index, item in enumerate(body):
        try:
            sends.append(validate(item, limits))
        except BadRequest as exc:
            raise BadRequest(f"Message {index}: {exc}") from None
    return sends


REJECTIONS_SAID_EVERY = 60.0  # seconds between two log lines of one site's rejected sends
IDEMPOTENCY_KEY = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 200


def idempotency_key(value: str | None) -> str:
    """The header's key: printable ASCII, at most ``MAX_IDEMPOTENCY_KEY`` characters."""
    if value is None:
        return ""
    if not 0 < len(value) <= MAX_IDEMPOTENCY_KEY or not all(" " < char <= "~" for char in value):
        raise BadRequest(
            f"Header '{IDEMPOTENCY_KEY}' must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII "
            "characters without spaces."
        )
    return value


OUTCOME_UNKNOWN = (
    "Outcome unknown: the store went away while storing; the message may have been stored"
)


def site_for_key(
    namespaces: Mapping[str, SiteNamespace], site: str | None, api_key: str | None
) -> SiteNamespace | None:
    """The site whose apiKey this is, compared in constant time; None for any mismatch."""
    namespace = namespaces.get(site or "")
    if namespace is None or not hmac.compare_digest(
        namespace.site.api_key.encode(), (api_key or "").encode()
    ):
        return None
    return namespace


class SendHandler:
    def __init__(
        self,
        namespaces: dict[str, SiteNamespace],
        store: Store,
        dispatcher: Dispatcher,
        limits: Limits,
        stats: TransportStats,
    ) -> None:
        self.limits = limits
        self.stats = stats
        self.namespaces = namespaces
        self.store = store
        self.dispatcher = dispatcher
        # by (site, or "" for none of ours; status)
        self._rejections_said = LogThrottle(REJECTIONS_SAID_EVERY)

    async def __call__(self, request: web.Request) -> web.Response:
        started, accepted_at = time.perf_counter(), time.time()
        site_name, api_key = request.query.get("site"), request.query.get("apiKey")
        if not site_name or not api_key:
            return self._reject(400, "Missing query param 'site' or 'apiKey'.", site_name)
        namespace = site_for_key(self.namespaces, site_name, api_key)
        if namespace is None:
            return self._reject(401, "ApiKey invalid.", site_name)
        try:
            resync = parse_bool(request.query.get("resync"), "resync")
            key = idempotency_key(request.headers.get(IDEMPOTENCY_KEY))
            body = await read_body(request, self.limits.http_read_timeout)
            sends = validate_all(body, self.limits)
        except BadRequest as exc:
            return self._reject(400, str(exc), site_name)
        stored: list[int] = []
        if not namespace.site.reliable:
            for send in sends:
                await self.dispatcher.broadcast(site_name, send.rooms, send.event, send.args)
        else:
            try:
                stored = await self._store_and_deliver(namespace, sends, resync, key, accepted_at)
            except PartlyStored as exc:
                return self._partly_stored(site_name, sends, exc)
            except OutcomeUnknown as exc:
                logger.error("site={} send in doubt: {}", site_name, exc)
                self.stats.sends[site_name, 504] += 1
                return web.Response(status=504, text=f"{OUTCOME_UNKNOWN}: {exc}")
            except StoreUnavailable as exc:
                logger.error("site={} send not stored: {}", site_name, exc)
                self.stats.sends[site_name, 503] += 1
                return web.Response(status=503, text=f"Message not stored, try again: {exc}")
            self.stats.stored[site_name] += sum(stored)
            if resync:
                self.stats.resync_sends[site_name] += 1
        self.stats.sends[site_name, 200] += 1
        self.stats.send_time[site_name].observe(time.perf_counter() - started)
        events.info(
            __name__,
            "send site={site} event={event} messages={messages} rooms={rooms} stored={stored} "
            "ms={ms}",
            site=site_name,
            event=sends[0].event,
            messages=len(sends),
            rooms=sum(len(send.rooms) for send in sends),
            stored=sum(stored),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        if isinstance(body, list):  # a bulk send: what each message reached
            results = [{"stored": count} for count in stored] or [{"sent": True} for _ in sends]
            return web.json_response(
                {"results": results}, dumps=lambda data: orjson.dumps(data).decode()
            )
        return web.Response(text="OK")

    async def _store_and_deliver(
        self,
        namespace: SiteNamespace,
        sends: list[SendRequest],
        resync: bool,
        key: str,
        accepted_at: float,
    ) -> list[int]:
        """Store every message, then hand each to its devices; returns how many device queues
        each message was stored in (by the first attempt, for a repeated Idempotency-Key)."""
        site = namespace.site
        messages = [
            Message(
                event=send.event,
                args=send.args,
                resync=resync,
                idempotency_id=f"{key}#{index}" if key else "",
                accepted_at=accepted_at,
            )
            for index, send in enumerate(sends)
        ]
        items = [
            (
                site.name,
                [room for room in send.rooms if site.is_user_room(room)],
                # The public channel is a user of its own and also a room signed-in users hold.
                [room for room in send.rooms if not room.startswith(site.user_room_prefix)],
                message,
            )
            for send, message in zip(sends, messages, strict=True)
        ]
        if len(items) == 1:  # coalesced with other sends of the same moment
            stored = [await self.store.enqueue(*items[0])]
        else:
            try:
                stored = await self.store.enqueue_all(items)
            except PartlyStored as exc:  # what was stored is delivered all the same
                done = zip(messages[: len(exc.stored)], exc.stored, strict=True)
                await self.dispatcher.dispatch(site.name, list(done))
                raise
        await self.dispatcher.dispatch(site.name, list(zip(messages, stored, strict=True)))
        return [stored_count(deliveries) for deliveries in stored]

    def _partly_stored(
        self, site: str, sends: list[SendRequest], exc: PartlyStored
    ) -> web.Response:
        """A bulk send that failed after its first messages were stored (it is stored in
        steps): which ones were, so that the site retries only the rest. 504 if the step that
        failed may have been stored too (its messages say ``unknown``), else 503."""
        unknown = isinstance(exc.cause, OutcomeUnknown)
        status = 504 if unknown else 503
        logger.error(
            "site={} bulk send stored {} of {} messages: {}",
            site,
            len(exc.stored),
            len(sends),
            exc.cause,
        )
        self.stats.sends[site, status] += 1
        self.stats.stored[site] += sum(stored_count(deliveries) for deliveries in exc.stored)
        rest: dict[str, Any] = {"stored": None, "unknown": True} if unknown else {"stored": None}
        results: list[dict[str, Any]] = [{"stored": stored_count(d)} for d in exc.stored]
        results += [rest] * (len(sends) - len(exc.stored))
        return web.json_response(
            {"error": str(exc.cause), "results": results},
            status=status,
            dumps=lambda data: orjson.dumps(data).decode(),
        )

    def _reject(self, status: int, text: str, site: str | None) -> web.Response:
        # Counted under the site only if it is one: a flood of made-up names adds no labels.
        known = site if site in self.namespaces else ""
        self.stats.sends[known, status] += 1
        # A backend in a loop of bad requests costs a line a minute, not a line a request.
        unsaid = self._rejections_said.due((known, status))
        if unsaid is not None:
            more = f" (and {unsaid} more rejected since)" if unsaid else ""
            logger.info("send rejected ({}) site={}: {}{}", status, site, text, more)
        return web.Response(status=status, text=text)
