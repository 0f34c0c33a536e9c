"""orjson, in the shape of the ``json`` module that python-socketio and python-engineio take
(``AsyncServer(json=...)``): their packet decoding on every incoming ack is JSON-bound."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(obj: Any, **_options: Any) -> str:
    return orjson.dumps(obj).decode()


def loads(text: str | bytes, **_options: Any) -> Any:
    return orjson.loads(text)
