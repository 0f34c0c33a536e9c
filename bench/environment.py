"""What a benchmark run needs: a private redis-server, a stub site, the service as a process,
and the /proc readings (CPU-seconds, RSS) that make the figures."""

from __future__ import annotations

import os
import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from testkit.processes import RedisServer, ServiceProcess, free_port, write_sites

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def raise_fd_limit() -> int:
    """Thousands of sockets need thousands of descriptors; children inherit the limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class AuthStub:
    """The site: token ``u7`` is user ``user_u7``, and every user is in ``staff``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/auth", self._auth)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, backlog=4096).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _auth(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").partition(" ")[2]
        return web.json_response([f"user_{token}", "staff"])


@dataclass
class Target:
    url: str
    service_pid: int | None
    redis_pid: int | None


class Environment:
    """Starts everything for one store kind, or points at a running service."""

    def __init__(
        self, store: str, workdir: Path | None = None, sqlite_synchronous: str = "NORMAL"
    ) -> None:
        self.store = store
        self.sqlite_synchronous = sqlite_synchronous
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="sws-bench-"))
        self.auth = AuthStub()
        self.redis: RedisServer | None = None
        self.service: ServiceProcess | None = None

    async def start(self) -> Target:
        await self.auth.start()
        env = {"DEVICE_TTL": "3600"}
        if self.store == "redis":
            self.redis = RedisServer(self.workdir / "redis")
            self.redis.start()
            env["REDIS_URL"] = self.redis.url
        else:
            env["SQLITE_PATH"] = str(self.workdir / "bench.sqlite3")
            env["SQLITE_SYNCHRONOUS"] = self.sqlite_synchronous
        (self.workdir / "config.yml").write_text(
            "production:\n  winston:\n    console:\n      level: warn\n"
        )
        sites = write_sites(self.workdir, self.auth.url)
        self.service = ServiceProcess(self.workdir, sites, **env)
        await self.service.start()
        assert self.service.process is not None
        redis_pid = self.redis.process.pid if self.redis and self.redis.process else None
        return Target(self.service.url, self.service.process.pid, redis_pid)

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self.redis is not None:
            self.redis.stop()
        await self.auth.stop()
