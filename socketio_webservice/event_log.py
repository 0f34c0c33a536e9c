"""The lines said once per connect, per disconnect and per accepted send.

They are most of what the service logs, and at the default level, info, loguru made each
cost as much as a tenth of a connect: it builds a record (the caller's frame, the thread,
the process, an aware time, a dict of thirteen fields) before a sink sees it. Measured with
callgrind over the official client (``bench``), each line cost about 150,000 instructions:
a fifth of a direct send's work. Here a line is formatted once and handed to the same sinks
loguru writes to, in the same format (``webservice/log_setup.py`` sets both up); where no
sink was set up (the service embedded, the in-process tests), the line goes through loguru.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from loguru import logger

# What a sink is handed: (time, logger name, message, the message's fields).
LineWriter = Callable[[float, str, str, dict[str, Any]], None]


class EventLog:
    """Where event lines go: the writers of the sinks that take info lines."""

    def __init__(self) -> None:
        self._writers: list[LineWriter] | None = None

    def route(self, writers: list[LineWriter]) -> None:
        """From now on, each info line goes to each of ``writers`` (none: the sinks are
        above info), not through loguru."""
        self._writers = list(writers)

    def through_loguru(self) -> None:
        self._writers = None

    def info(self, name: str, template: str, **fields: Any) -> None:
        """``template`` formatted with ``fields``, said at info by the module ``name``."""
        writers = self._writers
        if writers is None:
            logger.bind(logger=name).opt(depth=1).info(template, **fields)
            return
        if writers:
            now, message = time.time(), template.format(**fields)
            for write in writers:
                write(now, name, message, fields)


events = EventLog()


class ClockText:
    """A time as loguru writes it, local: the date and seconds part built once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = self._iso = self._offset = ""

    def _at(self, second: int) -> None:
        moment = datetime.fromtimestamp(second).astimezone()
        self._second = second
        self._text = moment.strftime("%Y-%m-%d %H:%M:%S")
        self._iso = moment.strftime("%Y-%m-%dT%H:%M:%S")
        self._offset = moment.isoformat()[19:]

    def text(self, now: float) -> str:
        """``YYYY-MM-DD HH:mm:ss.SSS``, loguru's ``{time:YYYY-MM-DD HH:mm:ss.SSS}``."""
        second = int(now)
        if second != self._second:
            self._at(second)
        return f"{self._text}.{int((now - second) * 1000):03d}"

    def iso(self, now: float) -> str:
        """As ``datetime.isoformat()`` of an aware local time, microseconds included."""
        second = int(now)
        if second != self._second:
            self._at(second)
        return f"{self._iso}.{int((now - second) * 1_000_000):06d}{self._offset}"
