"""What a benchmark run needs: a private redis-server, a stub site, the service as a process,
and the /proc readings (CPU-seconds, RSS) that make the figures."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.callgrind import Callgrind
from testkit.processes import RedisClusterSet, RedisServer, ServiceProcess, free_port, write_sites

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

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
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
    more_redis_pids: tuple[int, ...] = ()  # Redis Cluster: the other primaries
    callgrind: Callgrind | None = None  # counts the service's instructions, if it runs under it

    @property
    def redis_pids(self) -> tuple[int, ...]:
        return ((self.redis_pid,) if self.redis_pid else ()) + self.more_redis_pids


class Environment:
    """Starts everything for one store kind, or points at a running service."""

    def __init__(
        self,
        store: str,
        workdir: Path | None = None,
        sqlite_synchronous: str = "NORMAL",
        log_level: str = "warn",
        instructions: bool = False,
    ) -> None:
        self.store = store
        # The service's environment names no LOGNAME, USER or HOSTNAME, and HOST is its
        # listening address: the controller must see the same (see Callgrind).
        self.callgrind = (
            Callgrind({"PATH": os.environ.get("PATH", ""), "HOST": "127.0.0.1"})
            if instructions
            else None
        )
        self.sqlite_synchronous = sqlite_synchronous
        self.log_level = log_level
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="sws-bench-"))
        self.auth = AuthStub()
        self.redis: RedisServer | None = None
        self.cluster: RedisClusterSet | None = None
        self.service: ServiceProcess | None = None

    async def start(self) -> Target:
        await self.auth.start()
        env = {"DEVICE_TTL": "3600"}
        if self.store == "redis":
            self.redis = RedisServer(self.workdir / "redis")
            self.redis.start()
            env["REDIS_URL"] = self.redis.url
        elif self.store == "redis-cluster":  # three primaries, no replicas: their CPU only
            self.cluster = RedisClusterSet(self.workdir / "cluster", replicas=0)
            self.cluster.start()
            env["REDIS_URL"] = self.cluster.url
        else:
            env["SQLITE_PATH"] = str(self.workdir / "bench.sqlite3")
            env["SQLITE_SYNCHRONOUS"] = self.sqlite_synchronous
        (self.workdir / "config.yml").write_text(
            f"production:\n  winston:\n    console:\n      level: {self.log_level}\n"
        )
        sites = write_sites(self.workdir, self.auth.url)
        wrapper = self.callgrind.wrapper(self.workdir) if self.callgrind else ()
        self.service = ServiceProcess(self.workdir, sites, wrapper, **env)
        await self.service.start()
        assert self.service.process is not None
        redis_pid = self.redis.process.pid if self.redis and self.redis.process else None
        primaries = tuple(
            server.process.pid
            for server in (self.cluster.servers if self.cluster else [])
            if server.process is not None
        )
        if primaries:
            redis_pid, primaries = primaries[0], primaries[1:]
        return Target(
            self.service.url, self.service.process.pid, redis_pid, primaries, self.callgrind
        )

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.cluster is not None:
            self.cluster.stop()
        await self.auth.stop()


NODE_REFERENCE = Path(__file__).parent / "node_reference"


class NodeReference:
    """socket.io 4 on Node with the same contract and no store (``node_reference/``): what
    a plain site would run instead. ``unavailable`` says why it cannot run here, if so."""

    def __init__(self) -> None:
        self.auth = AuthStub()
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    @staticmethod
    def unavailable() -> str | None:
        if shutil.which("node") is None or shutil.which("npm") is None:
            return "Node.js is not installed: no socket.io 4 reference"
        if not (NODE_REFERENCE / "node_modules" / "socket.io").is_dir():
            result = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--silent"],
                cwd=NODE_REFERENCE,
                capture_output=True,
                check=False,
            )
            if result.returncode != 0:
                return f"npm ci failed in {NODE_REFERENCE}: {result.stderr.decode()[-300:]}"
        return None

    async def start(self) -> Target:
        await self.auth.start()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PORT": str(self.port),
            "AUTH_URL": self.auth.url,
            "API_KEY": "key",
            "SITES": "news",
        }
        self.process = await asyncio.create_subprocess_exec(
            "node",
            str(NODE_REFERENCE / "server.cjs"),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{self.port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"{url}/healthcheck") as answer:
                        if answer.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        return Target(url, self.process.pid, None)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        await self.auth.stop()
