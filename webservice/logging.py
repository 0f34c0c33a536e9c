"""Logging on loguru, configured from the original's ``winston`` keys.

The libraries we build on (engineio, socketio, aiohttp) log through the standard library;
their records are routed into loguru so there is one stream and one format.
"""

from __future__ import annotations

import logging
import sys

from loguru import logger

from webservice.config import LogConfig

WINSTON_LEVELS = {"SILLY": "TRACE", "VERBOSE": "DEBUG", "WARN": "WARNING"}


class _InterceptHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def setup_logging(config: LogConfig) -> None:
    logger.remove()
    logger.add(sys.stderr, level=WINSTON_LEVELS.get(config.console_level, config.console_level))
    if config.file_path:
        logger.add(config.file_path, level=WINSTON_LEVELS.get(config.file_level, config.file_level))
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
