"""deploy/systemd/socketio-webservice.service as systemd reads it: ``systemd-analyze verify``
passes it (with ExecStart pointing at this checkout's command), its command line is one the
service accepts, and it gives the drain the time it takes."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from socketio_webservice.webservice.config import DEFAULT_DRAIN_GRACE, DEFAULT_DRAIN_SPREAD
from socketio_webservice.webservice.service import DRAIN_TIMEOUT
from testkit.processes import ROOT

UNIT = ROOT / "deploy" / "systemd" / "socketio-webservice.service"
COMMAND = "/opt/socketio-webservice/bin/socketio-webservice"


def settings() -> dict[str, list[str]]:
    joined = UNIT.read_text().replace("\\\n", " ")
    found: dict[str, list[str]] = {}
    for line in joined.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: ./dev test installs it (Debian's systemd)"
    command = Path(sys.executable).parent / "socketio-webservice"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(COMMAND, str(command)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and UNIT.name not in result.stderr, result.stderr


def test_its_command_line_is_one_the_service_accepts(tmp_path: Path) -> None:
    (start,) = settings()["ExecStart"]
    words = shlex.split(start)
    assert words[0] == COMMAND
    config, sites = tmp_path / "config.yml", tmp_path / "sites.yml"
    config.write_text((ROOT / "config.yml").read_text())
    sites.write_text("shop:\n  authUrl: http://shop.example/rooms\n  apiKey: k\n")
    arguments = [w.replace("/etc/socketio-webservice", str(tmp_path)) for w in words[1:]]
    environment = dict(e.split("=", 1) for e in settings()["Environment"])
    environment["SQLITE_PATH"] = str(tmp_path / "webservice.sqlite3")
    result = subprocess.run(
        [sys.executable, "-m", "socketio_webservice", *arguments, "--check-config"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **environment},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "shop:" in result.stdout and str(tmp_path / "webservice.sqlite3") in result.stdout


def test_it_waits_for_the_drain_and_reloads_with_sighup() -> None:
    unit = settings()
    (stop,) = unit["TimeoutStopSec"]
    assert int(stop) >= DEFAULT_DRAIN_GRACE + DEFAULT_DRAIN_SPREAD + DRAIN_TIMEOUT
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
