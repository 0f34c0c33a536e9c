"""The OpenAPI description of the HTTP API a site's backend and a load balancer use, served at
``/openapi.json``. Built from the running configuration, so the limits it states are the ones
this service enforces (CI checks the real server against it with schemathesis)."""

from __future__ import annotations

from typing import Any

from ..transport.limits import Limits
from ..transport.send import FALSE_WORDS, RESERVED_EVENTS, TRUE_WORDS

TEXT = {"text/plain": {"schema": {"type": "string"}}}


BOOLEAN_WORDS = sorted(TRUE_WORDS | FALSE_WORDS - {""})


def _any_case(words: list[str]) -> str:
    """A pattern matching any of ``words`` in any case, or nothing, blanks around."""
    cased = ["".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in w) for w in words]
    return f"^\\s*(?:{'|'.join(cased)})?\\s*$"


# What /send and /presence take first: the site, and its apiKey.
SITE_AND_KEY = [
    {"name": name, "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}}
    for name in ("site", "apiKey")
]


def _answer(description: str) -> dict[str, Any]:
    return {"description": description, "content": TEXT}


def _json_answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}


def _admin_paths() -> dict[str, Any]:
    """The admin API's paths (served only with an admin key), behind that key."""
    name = {"type": "string", "minLength": 1}
    params = [
        {"name": "site", "in": "path", "required": True, "schema": name},
        {"name": "user", "in": "path", "required": True, "schema": name},
    ]
    refusals = {
        "400": _json_answer("The site has no userRoomPrefix", ERROR),
        "401": _json_answer("Admin key required", ERROR),
        "404": _json_answer("Unknown site (or device)", ERROR),
        "429": _json_answer("Too many wrong admin keys from this address", ERROR),
        "503": _json_answer("The store (or another node) is unavailable", ERROR),
    }
    device = {
        "type": "object",
        "properties": {
            "device": {"type": "string"},
            "connections": {"type": "integer"},
            "queued": {"type": "integer"},
            "expires_in": {"type": "number", "nullable": True},
            "nodes": {"type": "array", "items": {"type": "string"}},
        },
    }
    user = "/admin/sites/{site}/users/{user}"
    secured: dict[str, Any] = {"security": [{"adminKey": []}]}
    return {
        user: {
            "get": {
                **secured,
                "operationId": "adminUser",
                "summary": "A user's devices: connections, queue depth, expiry, nodes",
                "parameters": params,
                "responses": {
                    "200": _json_answer(
                        "The user",
                        {
                            "type": "object",
                            "properties": {
                                "site": {"type": "string"},
                                "user": {"type": "string"},
                                "online": {"type": "boolean"},
                                "devices": {"type": "array", "items": device},
                            },
                        },
                    ),
                    **refusals,
                },
            }
        },
        user + "/devices/{device}/queue": {
            "delete": {
                **secured,
                "operationId": "adminPurgeQueue",
                "summary": "Remove the device's queued messages; it gets _resync on its next "
                "connection",
                "parameters": [
                    *params,
                    {"name": "device", "in": "path", "required": True, "schema": name},
                ],
                "responses": {
                    "200": _json_answer(
                        "Purged",
                        {"type": "object", "properties": {"purged": {"type": "integer"}}},
                    ),
                    **refusals,
                },
            }
        },
        user + "/disconnect": {
            "post": {
                **secured,
                "operationId": "adminDisconnect",
                "summary": "Close the user's sockets on every node",
                "parameters": params,
                "responses": {
                    "200": _json_answer(
                        "Closed here, and signalled to the other nodes holding its sockets",
                        {
                            "type": "object",
                            "properties": {
                                "closed_here": {"type": "integer"},
                                "nodes": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                    ),
                    **refusals,
                },
            }
        },
    }


def openapi_document(limits: Limits, version: str, admin: bool = False) -> dict[str, Any]:
    room = {"type": "string", "minLength": 1, "maxLength": limits.max_room_length}
    event = {
        "type": "string",
        "minLength": 1,
        "maxLength": limits.max_event_length,
        "pattern": "^[^\\x00]+$",
        "not": {"enum": sorted(RESERVED_EVENTS)},
        "description": "The event the clients get; names with a meaning of their own to the "
        "clients or this service are refused.",
    }
    rooms = {
        "oneOf": [
            room,
            {"type": "array", "items": room, "maxItems": limits.max_rooms_per_send},
        ],
        "description": "A room, or a list of rooms: user rooms (userRoomPrefix), the public "
        "channel, or rooms the site's authUrl gave its users.",
    }
    send_body = {
        "type": "object",
        "required": ["rooms", "event"],
        "properties": {
            "rooms": rooms,
            "event": event,
            "args": {
                "type": "array",
                "description": f"The event's arguments, nested at most {limits.max_args_depth} "
                "levels deep.",
                "default": [],
            },
        },
        "example": {"rooms": ["user_42"], "event": "notification", "args": [{"id": 1}]},
    }
    form_body = {
        "type": "object",
        "required": ["rooms", "event"],
        "properties": {"rooms": room, "event": event},
        "description": "As Express's body-parser reads forms: rooms[]=a&rooms[]=b&event=e&"
        "args[0][id]=1 (only single values are described here).",
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "socketio-webservice",
            "version": version,
            "description": "Sites push events to their users' Socket.IO clients. Clients "
            "connect with Socket.IO to /<site>?token=&deviceId=; that part is not HTTP API.",
            "license": {"name": "MIT"},
        },
        "paths": {
            "/send": {
                "post": {
                    "operationId": "send",
                    "summary": "Send an event to rooms of a site",
                    "description": "On a site with userRoomPrefix the message is stored for "
                    "every target device before the answer is 200.",
                    "parameters": [
                        *SITE_AND_KEY,
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 200,
                                "pattern": "^[!-~]+$",
                            },
                            "description": "A repeat within idempotency_ttl gets the first "
                            "attempt's answer and stores nothing again: retry 503 and 504 "
                            "with it.",
                        },
                        {
                            "name": "resync",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "pattern": _any_case(BOOLEAN_WORDS)},
                            "description": "Offline devices keep only the newest message of "
                            "this event: the client acks it and gets _resync.",
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        send_body,
                                        {
                                            "type": "array",
                                            "items": send_body,
                                            "minItems": 1,
                                            "maxItems": limits.max_messages_per_send,
                                            "description": "A bulk send: stored in order, "
                                            "each message whole, in steps of store_step_ms; "
                                            "the answer is JSON, one result per message.",
                                        },
                                    ]
                                }
                            },
                            "application/x-www-form-urlencoded": {"schema": form_body},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Sent (and stored, on a site with user rooms): OK; "
                            "for a bulk send, what each message reached",
                            "content": {
                                **TEXT,
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["results"],
                                        "properties": {
                                            "results": {
                                                "type": "array",
                                                "items": {
                                                    "type": "object",
                                                    "properties": {
                                                        "stored": {"type": "integer"},
                                                        "sent": {"type": "boolean"},
                                                    },
                                                },
                                            }
                                        },
                                    }
                                },
                            },
                        },
                        "400": _answer("The request is malformed; the text says how"),
                        "401": _answer("Unknown site or wrong apiKey: ApiKey invalid."),
                        "408": _answer(
                            f"The body did not arrive within {limits.http_read_timeout} s"
                        ),
                        "413": _answer(f"The body is over {limits.max_send_body} bytes"),
                        "503": _answer(
                            "The store is unavailable: nothing stored, try again (a bulk send "
                            "stored in part: JSON, one result per message, stored: null for "
                            "those to retry)"
                        ),
                        "504": _answer(
                            "Outcome unknown: the store went away with the message in flight; "
                            "it may have been stored"
                        ),
                    },
                }
            },
            "/presence": {
                "get": {
                    "operationId": "presence",
                    "summary": "Which of these users are online now, on any node",
                    "parameters": [
                        *SITE_AND_KEY,
                        {
                            "name": "rooms",
                            "in": "query",
                            "required": True,
                            "style": "form",
                            "explode": False,
                            "schema": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": limits.max_rooms_per_send,
                                "items": {
                                    "type": "string",
                                    "minLength": 1,
                                    "maxLength": limits.max_room_length,
                                    "pattern": "^[^,]+$",
                                },
                            },
                            "description": "User rooms, comma-separated, at most "
                            f"{limits.max_rooms_per_send}; a name that is not a user room "
                            "is not online",
                        },
                    ],
                    "responses": {
                        "200": _json_answer(
                            "The online ones, in the order asked",
                            {
                                "type": "object",
                                "required": ["online"],
                                "properties": {
                                    "online": {"type": "array", "items": {"type": "string"}}
                                },
                            },
                        ),
                        "400": _answer("Malformed: the text says how"),
                        "401": _answer("Unknown site or wrong apiKey: ApiKey invalid."),
                        "503": _answer("The store is unavailable: try again"),
                    },
                }
            },
            "/healthcheck": {
                "get": {
                    "operationId": "healthcheck",
                    "summary": "For load balancers: 200 while this node can store and deliver",
                    "responses": {
                        "200": _answer("ok"),
                        "503": _answer("unhealthy: the store refuses writes, or shutting down"),
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness, as /healthcheck: 200 while this node can store and "
                    "deliver; 503 while the store refuses writes, the cross-node listener is "
                    "down, or the node is shutting down",
                    "responses": {
                        "200": _answer("ok"),
                        "503": _answer("unhealthy: the store refuses writes, or shutting down"),
                    },
                }
            },
            "/livez": {
                "get": {
                    "operationId": "livez",
                    "summary": "Liveness: 200 while the process and its event loop answer, "
                    "whatever the store",
                    "responses": {"200": _answer("ok")},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics of this node",
                    "responses": {"200": _answer("The Prometheus text format")},
                }
            },
            **(_admin_paths() if admin else {}),
        },
        "components": {
            "securitySchemes": {
                "adminKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin key (admin_key, ADMIN_KEY)",
                }
            }
        },
    }
