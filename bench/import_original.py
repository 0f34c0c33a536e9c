"""``python -m bench.import_original``: how long import-original takes, and its peak memory.

Fills a private redis-server the way the Node original fills its Redis (``--messages`` items
for ``--devices`` devices, over four events, each device offline with its TTL), then runs the
command as an operator does, into a fresh SQLite file and into a second private Redis, and
reports the wall time and the command's peak RSS (the largest resident size of the process).

    python -m bench.import_original                      # 100,000 messages, 10,000 devices
    python -m bench.import_original --messages 20000 --devices 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from testkit.processes import ROOT, RedisServer

EVENTS = ("update_store", "notice", "sync", "chat:message")


def fill(client: redis.Redis, messages: int, devices: int) -> None:
    """Items as the original pushes them: ``<flake id>:<JSON [event, *args]>``, one list per
    device and event; ids made as flake-idgen makes them (ms << 22 | worker bits | sequence)."""
    start_ms = int(time.time() * 1000) - messages
    pipe = client.pipeline(transaction=False)
    for n in range(messages):
        device = n % devices
        event = EVENTS[n % len(EVENTS)]
        original_id = ((start_ms + n) << 22) | (1 << 12)
        payload = json.dumps([event, "offer", {"id": n, "name": "Zoë"}], ensure_ascii=False)
        pipe.rpush(
            f"/shop:socket.io:user_{device}:device-{device}:{event}", f"{original_id}:{payload}"
        )
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()
    for key in client.scan_iter("/shop:socket.io:*", count=1000):
        pipe.expire(key, 3600)
    pipe.execute()


def run_import(source: str, env: dict[str, str], workdir: Path) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and the summary line of one run of the command."""
    out = workdir / "summary.txt"
    started = time.perf_counter()
    with out.open("w") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "webservice", "import-original", "--from", source],
            cwd=workdir,
            stdout=stdout,
            env={"PATH": "", "PYTHONPATH": str(ROOT), **env},
        )
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, not the largest
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"import-original failed ({status})")
    return seconds, usage.ru_maxrss * 1024, out.read_text().strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.import_original", description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        (workdir / "sites.yml").write_text(
            "shop:\n  authUrl: http://127.0.0.1:9/auth\n  apiKey: key\n  userRoomPrefix: user_\n"
        )
        original = RedisServer(workdir / "original")
        target = RedisServer(workdir / "target")
        original.start()
        target.start()
        try:
            fill(redis.Redis.from_url(original.url), args.messages, args.devices)
            machine = platform.processor() or platform.machine()
            print(
                f"import-original: {args.messages:,} messages for {args.devices:,} devices "
                f"({machine}, Python {platform.python_version()})"
            )
            print("| store | seconds | messages/s | peak RSS (MB) |")
            print("| --- | ---: | ---: | ---: |")
            env = {"SITES_FILE": str(workdir / "sites.yml"), "DEVICE_TTL": "3600"}
            for name, store in (
                ("SQLite", {"SQLITE_PATH": str(workdir / "import.sqlite3")}),
                ("Redis", {"REDIS_URL": target.url}),
            ):
                seconds, peak, summary = run_import(original.url, {**env, **store}, workdir)
                rate = args.messages / seconds
                print(f"| {name} | {seconds:.1f} | {rate:,.0f} | {peak / 1e6:.0f} |")
                print(f"  {summary}", file=sys.stderr)
        finally:
            original.stop()
            target.stop()


if __name__ == "__main__":
    main()
