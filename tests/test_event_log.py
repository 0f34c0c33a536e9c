"""Event lines (a connect, a disconnect, a send) reach the configured sinks as loguru's would."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from loguru import logger

from socketio_webservice.event_log import ClockText, events
from socketio_webservice.webservice.config import LogConfig
from socketio_webservice.webservice.log_setup import WAITING_LINES, RedactingSink, setup_logging

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| (\w+) +\| ([\w.]+) - (.*)$")


@pytest.fixture
def configured() -> Iterator[None]:
    """setup_logging changes the process's logging: put it back as the other tests have it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    events.through_loguru()
    logger.remove()
    logger.add(sys.stderr)
    root.handlers[:], root.level = handlers, level


def test_an_event_line_is_written_as_loguru_writes_a_line_on_one_line_and_redacted(
    tmp_path: Path, configured: None
) -> None:
    path = tmp_path / "log.txt"
    setup_logging(LogConfig(console_level="ERROR", file_path=str(path)), secrets=["s3cr3tkey"])
    logger.info("before")
    events.info(
        "socketio_webservice.transport.x",
        "connect device={device} key={key}",
        device="phone\n2026-01-01 forged",
        key="s3cr3tkey",
    )
    logger.info("after")
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    parsed = [TEXT_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [m[1] for m in parsed if m] == ["INFO", "INFO", "INFO"]
    assert parsed[1] is not None and parsed[2] is not None
    assert parsed[1][2] == "socketio_webservice.transport.x"
    assert parsed[1][3] == "connect device=phone\\n2026-01-01 forged key=***"
    assert parsed[2][2] == "tests.test_event_log" and parsed[2][3] == "after"
    assert lines[0][:19] <= lines[1][:19] <= lines[2][:19]  # the same clock


def test_in_json_an_event_line_carries_its_fields(tmp_path: Path, configured: None) -> None:
    path = tmp_path / "log.json"
    config = LogConfig(console_level="ERROR", file_path=str(path), format="json")
    setup_logging(config, secrets=["s3cr3tkey"])
    logger.info("loguru {n}", n=1)
    events.info(
        "socketio_webservice.transport.send",
        "send site={site} ms={ms}",
        site="shop",
        ms=1.5,
        key="s3cr3tkey",
    )
    ours, event = (json.loads(line) for line in path.read_text().splitlines())
    assert event["level"] == "INFO" and event["logger"] == "socketio_webservice.transport.send"
    assert event["message"] == "send site=shop ms=1.5"
    assert event["site"] == "shop" and event["ms"] == 1.5 and event["key"] == "***"
    assert datetime.fromisoformat(event["time"]) >= datetime.fromisoformat(ours["time"])
    assert len(event["time"]) == len(ours["time"])  # microseconds and offset, as loguru's


def test_a_sink_above_info_gets_no_event_line(tmp_path: Path, configured: None) -> None:
    path = tmp_path / "log.txt"
    setup_logging(LogConfig(console_level="ERROR", file_level="WARN", file_path=str(path)))
    events.info("socketio_webservice.transport.x", "connect device={device}", device="phone")
    logger.warning("said")
    (line,) = path.read_text().splitlines()
    assert line.endswith(" | WARNING  | tests.test_event_log - said")


def test_with_no_sink_set_up_an_event_line_goes_through_loguru(logs: list[str]) -> None:
    events.info("socketio_webservice.transport.x", "disconnect sid={sid}", sid="abc")
    assert [line.strip() for line in logs] == ["INFO disconnect sid=abc"]


def test_the_clock_writes_what_datetime_writes() -> None:
    clock = ClockText()
    for moment in (1_780_000_000.25, 1_780_000_000.999, 1_780_000_001.0, 1_790_000_000.5):
        local = datetime.fromtimestamp(moment).astimezone()
        assert clock.text(moment) == local.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        assert clock.iso(moment) == local.isoformat(timespec="microseconds")


async def test_event_lines_leave_together_soon_and_any_other_line_at_once_after_them(
    tmp_path: Path, configured: None
) -> None:
    path = tmp_path / "log.txt"
    setup_logging(LogConfig(console_level="ERROR", file_path=str(path)))

    def said() -> list[str]:
        return [TEXT_LINE.findall(line)[0][2] for line in path.read_text().splitlines()]

    events.info("socketio_webservice.transport.x", "one")
    events.info("socketio_webservice.transport.x", "two {n}", n=2)
    assert said() == []  # waiting for the event lines that follow
    logger.info("three")
    assert said() == ["one", "two 2", "three"]
    events.info("socketio_webservice.transport.x", "four")
    await asyncio.to_thread(events.info, "socketio_webservice.transport.x", "five")
    assert said() == ["one", "two 2", "three", "four", "five"]  # another thread's: at once
    events.info("socketio_webservice.transport.x", "six")
    async with asyncio.timeout(5):
        while len(said()) < 6:  # noqa: ASYNC110  (a file growing: nothing to await)
            await asyncio.sleep(0.01)
    assert said()[-1] == "six"


def test_an_output_that_fails_costs_its_lines_not_the_caller(tmp_path: Path) -> None:
    stream = (tmp_path / "log.txt").open("w")
    sink = RedactingSink(stream, [])
    stream.close()  # as a full disk or a closed file would fail every write
    sink.write_event(1_780_000_000.0, "socketio_webservice.transport.x", "connect", {})
    sink.write("a loguru line\n")
    assert sink.failed


async def test_no_more_than_a_thousand_event_lines_wait(tmp_path: Path, configured: None) -> None:
    path = tmp_path / "log.txt"
    setup_logging(LogConfig(console_level="ERROR", file_path=str(path)))
    for n in range(WAITING_LINES):
        events.info("socketio_webservice.transport.x", "send {n}", n=n)
    assert len(path.read_text().splitlines()) == WAITING_LINES
