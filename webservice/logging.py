"""Logging on loguru, configured from the original's ``winston`` keys.

The libraries we build on (engineio, socketio, aiohttp) log through the standard library;
their records are routed into loguru so there is one stream and one format. Every line, a
traceback's included, passes through :func:`redact` on its way out: no apiKey, token, meta or
Authorization value reaches a log, whoever wrote the line. Tracebacks never show variable
values (loguru's ``diagnose`` is off): a request's headers are variables too.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from loguru import logger

from webservice.config import LogConfig

WINSTON_LEVELS = {"SILLY": "TRACE", "VERBOSE": "DEBUG", "WARN": "WARNING"}
MASK = "***"
# key=value in query strings and form bodies; Authorization headers however they are printed.
_QUERY_SECRET = re.compile(r"(?i)\b(apiKey|api_key|token|meta|auth)=([^&\s'\"]+)")
_HEADER_SECRET = re.compile(r"(?i)\b(authorization|x-meta)(['\"]?\s*[:=]\s*['\"]?)([^'\"\r\n,}]+)")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    text = _QUERY_SECRET.sub(rf"\1={MASK}", text)
    text = _HEADER_SECRET.sub(rf"\1\2{MASK}", text)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class RedactingSink:
    """A text stream that masks secrets in every line written to it."""

    def __init__(self, stream: TextIO, secrets: Iterable[str]) -> None:
        self.stream = stream
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def write(self, message: str) -> None:
        self.stream.write(redact(message, self.secrets))
        self.stream.flush()


class _InterceptHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def setup_logging(config: LogConfig, secrets: Iterable[str] = ()) -> None:
    """``secrets``: values to mask wherever they appear (the sites' api keys)."""
    secrets = list(secrets)

    def add(stream: TextIO, level: str) -> None:
        sink = RedactingSink(stream, secrets)
        logger.add(sink, level=WINSTON_LEVELS.get(level, level), diagnose=False, backtrace=False)

    logger.remove()
    add(sys.stderr, config.console_level)
    if config.file_path:
        path = Path(config.file_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        add(path.open("a", encoding="utf-8"), config.file_level)  # open as long as the process
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
