"""Logging on loguru, configured from the original's ``winston`` keys.

The libraries we build on (engineio, socketio, aiohttp) log through the standard library;
their records are routed into loguru so there is one stream and one format. Every line, a
traceback's included, passes through :func:`redact` on its way out: no apiKey, token, meta or
Authorization value reaches a log, whoever wrote the line. Tracebacks never show variable
values (loguru's ``diagnose`` is off): a request's headers are variables too.

``LOG_FORMAT=json`` (or ``log_format: json``) writes every line as one JSON object: time,
level, logger, message, the line's own fields (``site``, ``user``, ``ms``, ...) and the
exception, if any, as text; for a log shipper that parses nothing.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import re
import sys
import threading
import traceback
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import orjson
from aiohttp.http_exceptions import HttpProcessingError
from loguru import logger

from ..event_log import ClockText, LineWriter, events
from ..log_throttle import LogThrottle
from .config import LogConfig

WAIT_AT_MOST = 0.1  # seconds an event line may wait to leave with others (RedactingSink)
WAITING_LINES = 1_000  # ... and how many may wait: the next leaves with them at once
_sinks: weakref.WeakSet[RedactingSink] = weakref.WeakSet()


@atexit.register
def _flush_sinks() -> None:
    for sink in list(_sinks):
        sink.send_waiting()


WINSTON_LEVELS = {"SILLY": "TRACE", "VERBOSE": "DEBUG", "WARN": "WARNING"}
MASK = "***"
# key=value in query strings and form bodies; Authorization headers however they are printed.
_QUERY_SECRET = re.compile(r"(?i)\b(apiKey|api_key|key|token|meta|auth)=([^&\s'\"]+)")
_HEADER_SECRET = re.compile(r"(?i)\b(authorization|x-meta)(['\"]?\s*[:=]\s*['\"]?)([^'\"\r\n,}]+)")


# What the two patterns need to find anything: most lines hold none, and skip the regexes.
_HINTS = ("key=", "token=", "meta", "auth")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    lowered = text.lower()
    if any(hint in lowered for hint in _HINTS):
        text = _QUERY_SECRET.sub(rf"\1={MASK}", text)
        text = _HEADER_SECRET.sub(rf"\1\2{MASK}", text)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class Secrets:
    """The values to mask in every line (the sites' api keys). A few are looked for one by
    one; past ``FEW``, a line's every substring of each length a secret has is looked up in
    a set, which costs the line's length, not the number of sites (20,000 sites made each
    line cost 0.9 ms the first way)."""

    FEW = 32

    def __init__(self, values: Iterable[str]) -> None:
        self.values = sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)
        self._set = frozenset(self.values)
        self._lengths = sorted({len(v) for v in self.values}, reverse=True)

    def found_in(self, text: str) -> list[str]:
        if len(self.values) <= self.FEW:
            return [value for value in self.values if value in text]
        found = {
            text[at : at + length]
            for length in self._lengths
            for at in range(len(text) - length + 1)
            if text[at : at + length] in self._set
        }
        return sorted(found, key=len, reverse=True)


class RedactingSink:
    """A text stream that masks secrets in every line written to it. It takes loguru's
    formatted lines (``write``) and the event lines (``write_event``, see event_log.py),
    one whole line at a time, whichever thread writes.

    Event lines (a connect's, a disconnect's, a send's) written on the event loop's thread
    wait up to ``WAIT_AT_MOST`` seconds (``WAITING_LINES`` at most) and leave together: a
    write and a flush for each (a system call each) cost more than formatting it. Any other
    line leaves at once, after every line waiting; so does an event line written with no
    loop running or from another thread, and whatever waits when the process exits. A
    process killed outright loses at most that much of its event lines. An output that
    fails (a full disk) loses its lines, said once on stderr, and never fails the caller."""

    def __init__(self, stream: TextIO, secrets: Iterable[str]) -> None:
        self.stream = stream
        self.secrets = Secrets(secrets)
        self.clock = ClockText()
        self._lock = threading.Lock()
        self._waiting: list[str] = []
        self.failed = False  # said once, on stderr
        _sinks.add(self)

    def write(self, message: str) -> None:
        self._write(message, can_wait=False)

    def _write(self, line: str, can_wait: bool) -> None:
        line = redact(line, self.secrets.found_in(line))
        loop: asyncio.AbstractEventLoop | None = None
        if can_wait:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
        with self._lock:
            self._waiting.append(line)
            if loop is None or len(self._waiting) >= WAITING_LINES:
                self._write_waiting()
            elif len(self._waiting) == 1:
                loop.call_later(WAIT_AT_MOST, self.send_waiting)

    def send_waiting(self) -> None:
        """Not ``flush``: loguru would call it after each line."""
        with self._lock:
            self._write_waiting()

    def _write_waiting(self) -> None:
        if not self._waiting:
            return
        text = "".join(self._waiting)
        self._waiting.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError) as exc:  # a full disk, a closed file: never the caller's
            if not self.failed:
                self.failed = True
                with contextlib.suppress(OSError, ValueError):
                    print(f"log output failed, lines are lost: {exc}", file=sys.__stderr__)

    def write_event(self, now: float, name: str, message: str, fields: dict[str, Any]) -> None:
        """An info line as ``TEXT_FORMAT`` writes it, ``message`` on one line (``_one_line``)."""
        if not message.isprintable():
            message = _CONTROL.sub(_escape, message)
        self._write(f"{self.clock.text(now)} | INFO     | {name} - {message}\n", can_wait=True)


class JsonSink(RedactingSink):
    """One JSON object per line, built from the record rather than from formatted text."""

    def write(self, message: str) -> None:
        record = message.record  # type: ignore[attr-defined]
        extra = dict(record["extra"])
        entry: dict[str, Any] = {
            "time": record["time"].isoformat(),
            "level": record["level"].name,
            "logger": extra.pop("logger", None) or record["name"],
            "message": record["message"],
            **extra,
        }
        if record["exception"] is not None:
            kind, value, tb = record["exception"]
            entry["exception"] = "".join(traceback.format_exception(kind, value, tb)).rstrip()
        self._write_entry(entry)

    def write_event(self, now: float, name: str, message: str, fields: dict[str, Any]) -> None:
        entry = {"time": self.clock.iso(now), "level": "INFO", "logger": name, "message": message}
        self._write_entry({**entry, **fields}, can_wait=True)

    def _write_entry(self, entry: dict[str, Any], can_wait: bool = False) -> None:
        self._write(orjson.dumps(entry, default=str).decode() + "\n", can_wait)


class _InterceptHandler(logging.Handler):
    """Routes the standard library's records (aiohttp, engineio, socketio, redis) into loguru."""

    def __init__(self) -> None:
        super().__init__()
        self._malformed = LogThrottle(BAD_HTTP_EVERY)

    def emit(self, record: logging.LogRecord) -> None:
        if _is_malformed_http(record):
            # aiohttp logs each malformed request with a traceback: a client's mistake, said
            # in one line at most once a minute, whatever a flood sends.
            if self._malformed.due() is None:
                return
            assert record.exc_info is not None
            logger.bind(logger=record.name).warning(
                "malformed HTTP request refused (400): {} (said once a minute)",
                str(record.exc_info[1]).splitlines()[0][:200],
            )
            return
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.bind(logger=record.name).opt(depth=6, exception=record.exc_info).log(
            level, record.getMessage()
        )


BAD_HTTP_EVERY = 60.0


def _is_malformed_http(record: logging.LogRecord) -> bool:
    return (
        record.name == "aiohttp.server"
        and record.exc_info is not None
        and isinstance(record.exc_info[1], HttpProcessingError)
    )


LOG_FORMATS = ("text", "json")
TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "<cyan>{extra[logger]}</cyan> - <level>{message}</level>"
)


def setup_logging(config: LogConfig, secrets: Iterable[str] = ()) -> None:
    """``secrets``: values to mask wherever they appear (the sites' api keys)."""
    secrets = list(secrets)
    json_lines = config.format == "json"

    def add(stream: TextIO, level: str) -> None:
        sink = (JsonSink if json_lines else RedactingSink)(stream, secrets)
        level = WINSTON_LEVELS.get(level, level)
        if logger.level(level).no <= logger.level("INFO").no:
            event_writers.append(sink.write_event)
        logger.add(
            sink,
            level=level,
            format="{message}" if json_lines else TEXT_FORMAT,
            colorize=False,
            diagnose=False,
            backtrace=False,
        )

    event_writers: list[LineWriter] = []
    logger.remove()
    logger.configure(patcher=_name_the_logger if json_lines else _one_line)
    add(sys.stderr, config.console_level)
    if config.file_path:
        path = Path(config.file_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        add(path.open("a", encoding="utf-8"), config.file_level)  # open as long as the process
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
    events.route(event_writers)


def _name_the_logger(record: Any) -> None:
    """Our own lines name their module; the libraries' name their logger (see above)."""
    record["extra"].setdefault("logger", record["name"])


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


def _one_line(record: Any) -> None:
    """Text lines: a message is one line whatever a client put in it (a deviceId with a
    newline would otherwise write a line of its choosing); control characters are written
    as their escapes. A traceback, which is not part of the message, keeps its lines."""
    _name_the_logger(record)
    message = record["message"]
    if not message.isprintable():
        record["message"] = _CONTROL.sub(_escape, message)
