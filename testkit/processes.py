"""Processes that tests and the benchmark start for themselves: a private redis-server on a
free port (never the machine's own), and the service as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import redis
import redis.crc

ROOT = Path(__file__).parents[1]


def write_sites(directory: Path, auth_url: str) -> Path:
    """Two sites: ``shop`` delivers reliably (user rooms ``user_*``), ``news`` broadcasts."""
    path = directory / "sites.yml"
    path.write_text(
        f"shop:\n  authUrl: {auth_url}\n  apiKey: key\n  userRoomPrefix: user_\n"
        f"news:\n  authUrl: {auth_url}\n  apiKey: key\n"
    )
    return path


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1 (``openssl req -x509``), valid for a day:
    ``directory``/key.pem and cert.pem."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return key, cert


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (each ``free_port`` alone may return one twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        persistent: bool = False,
        options: tuple[str, ...] = (),
        wrapper: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.persistent = persistent  # AOF fsynced on every write: a restart keeps everything
        self.options = options  # more redis-server arguments: ("--maxmemory-policy", "...")
        self.wrapper = wrapper  # a command that runs redis-server: ("valgrind", "...")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        """Its unix socket (it listens there too)."""
        return self.workdir / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; the tests need a real Redis")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                *self.wrapper,
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
                "--unixsocket",
                str(self.socket_path),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + (60 if self.wrapper else 10)
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # up, maybe locked
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def wait_replicating(self) -> None:
        """For a replica: until its link to its primary is up (its first sync done)."""
        _wait_for(lambda: "master_link_status:up" in _info(self.port, "replication"))

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server stops (SIGSTOP) for the block, and goes on (SIGCONT) after it: a Redis
        that keeps its connections open and answers nothing, as a hung host would."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60 if self.wrapper else 10)
            self.process = None


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m webservice`` run to its end in ``cwd``, with only these environment
    variables (the configuration errors and ``--check-config`` tests)."""
    return subprocess.run(
        [sys.executable, "-m", "webservice", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "", "PYTHONPATH": str(ROOT), **env},
    )


class ServiceProcess:
    """``python -m socketio_webservice`` with the given environment, on a free port."""

    def __init__(
        self, workdir: Path, sites: Path, wrapper: tuple[str, ...] = (), **env: str
    ) -> None:
        self.workdir = workdir
        self.sites = sites
        self.port = free_port()
        self.wrapper = wrapper  # a command it runs under (valgrind, say)
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.log = workdir / f"service-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "NODE_TIMEOUT": "2",
            "DRAIN_GRACE": "0",  # tests that drain set their own
            "DRAIN_SPREAD": "0",
            **self.env,
        }
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.wrapper,
                sys.executable,
                "-m",
                "socketio_webservice",
                "--sites",
                str(self.sites),
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=log,
            )
        await self.wait_health(200, timeout=180 if self.wrapper else 20)

    async def health(self) -> int:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"{self.url}/healthcheck", timeout=aiohttp.ClientTimeout(total=3)
                ) as response,
            ):
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return 0

    async def wait_health(self, status: int, timeout: float = 20) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while await self.health() != status:
            assert self.process is not None and self.process.returncode is None, self.logs()
            assert asyncio.get_running_loop().time() < deadline, f"never {status}\n{self.logs()}"
            await asyncio.sleep(0.05)

    async def wait_healthy(self) -> None:
        await self.wait_health(200)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    async def wait(self, timeout: float = 15) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


class SentinelSet:
    """A primary, replicas of it, and three sentinels watching them as ``service``: the
    smallest Sentinel deployment that fails over, as real redis-server processes."""

    def __init__(self, workdir: Path, service: str = "mymaster", replicas: int = 1) -> None:
        self.workdir = workdir
        self.service = service
        self.primary = RedisServer(workdir / "primary")
        self.replicas = [
            RedisServer(
                workdir / f"replica-{n}",
                options=("--replicaof", "127.0.0.1", str(self.primary.port)),
            )
            for n in range(replicas)
        ]
        self.replica = self.replicas[0]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self) -> None:
        self.primary.start()
        for replica in self.replicas:
            replica.start()
            replica.wait_replicating()
        binary = shutil.which("redis-server")
        assert binary is not None
        for number, port in enumerate(self.sentinel_ports):
            config = self.workdir / f"sentinel-{number}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 10000\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [binary, str(config), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.sentinel_ports:  # each knows the replica: it can fail over to it
            _wait_for(functools.partial(self._sentinel_knows_the_replica, port))

    def _sentinel_knows_the_replica(self, port: int) -> bool:
        return f"'slaves': {len(self.replicas)}, 'sentinels': 3" in _info(port, "sentinel")

    def _sentinel(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[0], socket_timeout=2)

    def primary_port(self) -> int:
        """Which server is the primary now, as the sentinels say."""
        with self._sentinel() as sentinel:
            _, port = sentinel.sentinel_get_master_addr_by_name(self.service)
        return int(port)

    def failover(self) -> None:
        """A planned failover (SENTINEL FAILOVER); returns once the sentinels name the new
        primary and it takes writes."""
        before = self.primary_port()
        with self._sentinel() as sentinel:
            sentinel.execute_command("SENTINEL FAILOVER", self.service)
        _wait_for(lambda: self.primary_port() != before, timeout=30)
        _wait_for(lambda: "role:master" in _info(self.primary_port(), "replication"), timeout=30)

    def wait_promoted(self) -> None:
        """After the primary was killed: until the sentinels name a replica, it takes writes,
        and (with more than one) another replicates it."""
        ports = {replica.port for replica in self.replicas}
        _wait_for(lambda: self.primary_port() in ports, timeout=60)
        new = self.primary_port()
        _wait_for(lambda: "role:master" in _info(new, "replication"), timeout=30)
        if len(self.replicas) > 1:
            _wait_for(lambda: "connected_slaves:1" in _info(new, "replication"), timeout=60)

    def stop(self) -> None:
        for process in self.sentinels:
            process.terminate()
            process.wait(timeout=10)
        self.sentinels = []
        for replica in self.replicas:
            replica.stop()
        self.primary.stop()


def _info(port: int, section: str) -> str:
    try:
        with redis.Redis(port=port, socket_timeout=2) as client:
            return "\n".join(f"{k}:{v}" for k, v in client.info(section).items())
    except redis.RedisError:
        return ""


def _wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the Redis processes did not get ready in time")
        time.sleep(0.05)


class RedisClusterSet:
    """A Redis Cluster of real redis-server processes: ``masters`` primaries, each with
    ``replicas`` replicas, made with ``redis-cli --cluster create``."""

    def __init__(
        self,
        workdir: Path,
        masters: int = 3,
        replicas: int = 1,
        wrap: Callable[[Path], tuple[str, ...]] | None = None,
    ) -> None:
        """``wrap``: the command that runs each server, from its directory (a profiler)."""
        self.workdir = workdir
        self.replicas_each = replicas
        count = masters * (1 + replicas)
        ports = free_ports(2 * count)  # a client port and a cluster bus port each
        self.servers = [
            RedisServer(
                workdir / f"node-{n}",
                port=ports[2 * n],
                options=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",  # not port + 10000: a free port may be above 55535
                    str(ports[2 * n + 1]),
                ),
                wrapper=wrap(workdir / f"node-{n}") if wrap else (),
            )
            for n in range(count)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}"

    def start(self) -> None:
        for server in self.servers:
            server.start()
        self.cli(
            "--cluster",
            "create",
            *(f"127.0.0.1:{server.port}" for server in self.servers),
            "--cluster-replicas",
            str(self.replicas_each),
            "--cluster-yes",
        )
        _wait_for(self._settled, timeout=30)

    def _settled(self) -> bool:
        """Every node sees the cluster ok, and every replica replicates."""
        for server in self.alive():
            if "cluster_state:ok" not in self.cli("-p", str(server.port), "cluster", "info"):
                return False
            replication = _info(server.port, "replication")
            if "role:slave" in replication and "master_link_status:up" not in replication:
                return False
        return True

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            ["redis-cli", *(("-h", "127.0.0.1") if "--cluster" not in args else ()), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)}: {result.stderr}{result.stdout}")
        return result.stdout

    def primaries(self) -> list[RedisServer]:
        return [s for s in self.alive() if "role:master" in _info(s.port, "replication")]

    def alive(self) -> list[RedisServer]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def _nodes(self) -> list[list[str]]:
        """CLUSTER NODES, as a live node sees it: one list of words per node."""
        text = self.cli("-p", str(self.alive()[0].port), "cluster", "nodes")
        return [line.split() for line in text.splitlines() if line.strip()]

    def primary_of(self, key: str) -> RedisServer:
        """The server whose slots hold ``key`` now."""
        slot = redis.crc.key_slot(key.encode())
        for words in self._nodes():
            if "master" not in words[2] or "fail" in words[2]:
                continue
            for ranges in words[8:]:
                low, _, high = ranges.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    port = int(words[1].split("@")[0].rpartition(":")[2])
                    return next(s for s in self.servers if s.port == port)
        raise RuntimeError(f"no primary serves slot {slot}")

    def replica_of(self, primary: RedisServer) -> RedisServer:
        ids = {int(w[1].split("@")[0].rpartition(":")[2]): w[0] for w in self._nodes()}
        for words in self._nodes():
            if "slave" in words[2] and words[3] == ids[primary.port]:
                port = int(words[1].split("@")[0].rpartition(":")[2])
                return next(s for s in self.servers if s.port == port)
        raise RuntimeError(f"{primary.port} has no replica")

    def failover(self, key: str) -> None:
        """A planned failover (CLUSTER FAILOVER on its replica) of the primary of ``key``;
        returns once the replica serves the slot and the cluster is ok."""
        replica = self.replica_of(self.primary_of(key))
        self.cli("-p", str(replica.port), "cluster", "failover")
        _wait_for(lambda: self._serves(replica, key), timeout=30)

    def move_slot_of(self, key: str) -> None:
        """``redis-cli --cluster reshard`` of the primary's slots up to ``key``'s (its lowest
        ones first) to another primary; returns once the other serves ``key``."""
        source = self.primary_of(key)
        target = next(s for s in self.primaries() if s is not source)
        words = {int(w[1].split("@")[0].rpartition(":")[2]): w for w in self._nodes()}
        slot = redis.crc.key_slot(key.encode())
        first = min(
            int(ranges.partition("-")[0])
            for ranges in words[source.port][8:]
            if ranges[0].isdigit() and int(ranges.partition("-")[0]) <= slot
        )
        self.cli(
            "--cluster",
            "reshard",
            f"127.0.0.1:{source.port}",
            "--cluster-from",
            words[source.port][0],
            "--cluster-to",
            words[target.port][0],
            "--cluster-slots",
            str(slot - first + 1),
            "--cluster-yes",
        )
        _wait_for(lambda: self._serves(target, key), timeout=60)

    def kill_primary_of(self, key: str) -> None:
        """SIGKILL of the primary of ``key``; returns once its replica took over."""
        primary = self.primary_of(key)
        replica = self.replica_of(primary)
        assert primary.process is not None
        primary.process.kill()
        primary.process.wait()
        _wait_for(lambda: self._serves(replica, key), timeout=60)

    def _serves(self, server: RedisServer, key: str) -> bool:
        try:
            return self.primary_of(key) is server and self._ok()
        except RuntimeError:  # mid-failover: no node serves the slot yet
            return False

    def _ok(self) -> bool:
        return all(
            "cluster_state:ok" in self.cli("-p", str(s.port), "cluster", "info")
            for s in self.alive()
        )

    def flush(self) -> None:
        for server in self.primaries():
            self.cli("-p", str(server.port), "flushall")

    def stop(self) -> None:
        for server in self.servers:
            if server.process is not None and server.process.poll() is None:
                server.stop()
