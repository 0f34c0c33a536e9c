"""``python -m bench.redis_cost``: what one acked fan-out delivery costs Redis, read from Redis.

The store alone (no sockets): ``--users`` users with one connected device each, all in one
shared room; ``--sends`` sends to the room, each delivery then acked as a client's ack is.
Reported per delivery: the microseconds Redis spent in the scripts (``INFO commandstats``,
EVALSHA and EVAL) and its process CPU (``used_cpu_sys + used_cpu_user``), on a private
redis-server, or a Redis Cluster of three primaries (``--cluster``: summed over them).

Seconds of CPU on a shared machine move by a quarter from run to run; ``--instructions``
runs the Redis under valgrind's callgrind instead and counts the instructions it executes
for the sends and acks alone (``bench/callgrind.py``).

    python -m bench.redis_cost                  # single Redis, 1,000 users, 20 sends
    python -m bench.redis_cost --cluster
    python -m bench.redis_cost --instructions
    python -m bench.redis_cost --instructions --keep /tmp/cg   # then callgrind_annotate
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections import Counter
from pathlib import Path

import redis

from bench.callgrind import Callgrind
from socketio_webservice.storage import Message, make_store
from testkit.processes import RedisClusterSet, RedisServer

_SCRIPT_COMMANDS = ("cmdstat_evalsha", "cmdstat_eval")


def redis_cost(ports: list[int]) -> tuple[float, float, Counter[str]]:
    """Microseconds in scripts, CPU seconds, and the commands run inside scripts (by name),
    summed over the servers."""
    scripts_us = cpu = 0.0
    commands: Counter[str] = Counter()
    for port in ports:
        with redis.Redis(port=port) as client:
            stats = client.info("commandstats")
            scripts_us += sum(stats.get(name, {}).get("usec", 0) for name in _SCRIPT_COMMANDS)
            for name, stat in stats.items():
                if name not in _SCRIPT_COMMANDS and name != "cmdstat_info":
                    commands[name.removeprefix("cmdstat_").upper()] += stat["calls"]
            info = client.info("cpu")
            cpu += info["used_cpu_sys"] + info["used_cpu_user"]
    return scripts_us, cpu, commands


async def measure(
    url: str, ports: list[int], users: int, sends: int, callgrind: Callgrind | None = None
) -> tuple[float, float, dict[str, float]]:
    store = make_store(redis_url=url, device_ttl=3600, node_id="bench")
    await store.open()
    try:
        for first in range(0, users, 250):  # a few at a time: under valgrind Redis is slow
            await asyncio.gather(
                *(
                    store.connect_device("shop", f"user_{n}", "phone", ["staff"])
                    for n in range(first, min(users, first + 250))
                )
            )
        # One send first: each Redis then knows the scripts (the first call of a script on a
        # Redis sends its body, and Redis hashes it: a cost of the first send, not of each).
        warm = await store.enqueue("shop", [], ["staff"], Message("n", [-1]))
        await asyncio.gather(*(store.ack("shop", d.user, d.device, [(d.seq, "n")]) for d in warm))
        for port in ports:
            with redis.Redis(port=port) as client:
                client.config_resetstat()
        before_us, before_cpu, before_commands = redis_cost(ports)
        if callgrind:
            callgrind.start()
        delivered = 0
        for n in range(sends):
            deliveries = await store.enqueue("shop", [], ["staff"], Message("n", [n]))
            delivered += len(deliveries)
            await asyncio.gather(
                *(store.ack("shop", d.user, d.device, [(d.seq, "n")]) for d in deliveries)
            )
        if callgrind:
            callgrind.stop()
        after_us, after_cpu, after_commands = redis_cost(ports)
    finally:
        await store.close()
    commands = {name: n / delivered for name, n in (after_commands - before_commands).most_common()}
    return (after_us - before_us) / delivered, (after_cpu - before_cpu) * 1e6 / delivered, commands


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_cost", description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--sends", type=int, default=20)
    parser.add_argument("--cluster", action="store_true", help="three primaries, no replicas")
    parser.add_argument(
        "--instructions", action="store_true", help="count Redis's instructions (callgrind)"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="with --instructions: keep callgrind's files in DIR (for callgrind_annotate)",
    )
    args = parser.parse_args()
    if args.keep and not args.instructions:
        parser.error("--keep needs --instructions")
    callgrind = Callgrind() if args.instructions else None
    with tempfile.TemporaryDirectory() as scratch:
        if args.cluster:
            cluster = RedisClusterSet(
                Path(scratch), replicas=0, wrap=callgrind.wrapper if callgrind else None
            )
            cluster.start()
            url, ports, stop = cluster.url, [s.port for s in cluster.servers], cluster.stop
        else:
            wrapper = callgrind.wrapper(Path(scratch)) if callgrind else ()
            server = RedisServer(Path(scratch), wrapper=wrapper)
            server.start()
            url, ports, stop = server.url, [server.port], server.stop
        try:
            scripts_us, cpu_us, commands = asyncio.run(
                measure(url, ports, args.users, args.sends, callgrind)
            )
        finally:
            stop()
        delivered = args.users * args.sends
        counted = f", {callgrind.instructions() / delivered:,.0f} instructions" if callgrind else ""
        if callgrind and args.keep:
            kept = callgrind.keep(args.keep)
            print("callgrind's files: " + ", ".join(str(path) for path in kept))
    kind = "Redis Cluster (3 primaries)" if args.cluster else "one Redis"
    print(
        f"{kind}: per acked fan-out delivery ({args.users} users, {args.sends} sends): "
        f"{scripts_us:.2f} us in scripts, {cpu_us:.2f} us of Redis CPU{counted}"
    )
    print(
        f"commands per delivery: {sum(commands.values()):.2f} ("
        + ", ".join(f"{name} {n:.2f}" for name, n in commands.items() if n >= 0.005)
        + ")"
    )


if __name__ == "__main__":
    main()
