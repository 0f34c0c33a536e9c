"""Start-up fails fast and says why in one line: never a traceback, never a hang."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.processes import free_port

ROOT = Path(__file__).parents[1]
API_KEY = "start-up-secret-key"


def start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": "",
        "PYTHONPATH": str(ROOT),
        "SITE_NAME": "s",
        "AUTH_URL": "http://127.0.0.1:9/auth",
        "API_KEY": API_KEY,
        "SQLITE_PATH": str(tmp_path / "db.sqlite3"),
        "HOST": "127.0.0.1",
    }
    return subprocess.run(
        [sys.executable, "-m", "webservice"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **env},
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert API_KEY not in result.stderr
    return lines[0]


def test_a_port_in_use(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        result = start(tmp_path, PORT=str(taken.getsockname()[1]))
    finally:
        taken.close()
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1:" in one_line(result)
    assert "address already in use" in result.stderr


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"SQLITE_PATH": "/etc/passwd/db.sqlite3"}, "SQLite /etc/passwd/db.sqlite3"),
        ({"REDIS_URL": "redis://127.0.0.1:1"}, "Redis unavailable"),
        ({"HOST": "no-such-host.invalid"}, "cannot listen on no-such-host.invalid"),
    ],
)
def test_a_store_or_address_that_cannot_be_used(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    result = start(tmp_path, PORT=str(free_port()), **env)
    assert result.returncode == 1
    line = one_line(result)
    assert "cannot start: " in line and says in line


def test_an_installed_library_missing_what_the_adapter_uses_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engineio import async_socket

    from socketio_webservice.transport.socketio_adapter import IncompatibleVersion, check_compatible

    check_compatible()  # the installed versions have everything
    monkeypatch.delattr(async_socket.AsyncSocket, "schedule_ping")
    with pytest.raises(IncompatibleVersion) as error:
        check_compatible()
    message = str(error.value)
    assert "AsyncSocket.schedule_ping" in message and "\n" not in message
    assert "python-engineio" in message
