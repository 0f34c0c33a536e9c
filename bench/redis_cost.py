"""``python -m bench.redis_cost``: what one acked fan-out delivery costs Redis, read from Redis.

The store alone (no sockets): ``--users`` users with one connected device each, all in one
shared room; ``--sends`` sends to the room, each delivery then acked as a client's ack is.
Reported per delivery: the microseconds Redis spent in the scripts (``INFO commandstats``,
EVALSHA and EVAL) and its process CPU (``used_cpu_sys + used_cpu_user``), on a private
redis-server, or a Redis Cluster of three primaries (``--cluster``: summed over them).

    python -m bench.redis_cost                  # single Redis, 1,000 users, 20 sends
    python -m bench.redis_cost --cluster
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import redis

from socketio_webservice.storage import Message, make_store
from testkit.processes import RedisClusterSet, RedisServer


def redis_cost(ports: list[int]) -> tuple[float, float]:
    """Microseconds in scripts, and CPU seconds, summed over the servers."""
    scripts_us = cpu = 0.0
    for port in ports:
        with redis.Redis(port=port) as client:
            stats = client.info("commandstats")
            scripts_us += sum(
                stats.get(name, {}).get("usec", 0) for name in ("cmdstat_evalsha", "cmdstat_eval")
            )
            info = client.info("cpu")
            cpu += info["used_cpu_sys"] + info["used_cpu_user"]
    return scripts_us, cpu


async def measure(url: str, ports: list[int], users: int, sends: int) -> tuple[float, float]:
    store = make_store(redis_url=url, device_ttl=3600, node_id="bench")
    await store.open()
    try:
        await asyncio.gather(
            *(store.connect_device("shop", f"user_{n}", "phone", ["staff"]) for n in range(users))
        )
        for port in ports:
            with redis.Redis(port=port) as client:
                client.config_resetstat()
        before_us, before_cpu = redis_cost(ports)
        delivered = 0
        for n in range(sends):
            deliveries = await store.enqueue("shop", [], ["staff"], Message("n", [n]))
            delivered += len(deliveries)
            await asyncio.gather(
                *(store.ack("shop", d.user, d.device, [(d.seq, "n")]) for d in deliveries)
            )
        after_us, after_cpu = redis_cost(ports)
    finally:
        await store.close()
    return (after_us - before_us) / delivered, (after_cpu - before_cpu) * 1e6 / delivered


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_cost", description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--sends", type=int, default=20)
    parser.add_argument("--cluster", action="store_true", help="three primaries, no replicas")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if args.cluster:
            cluster = RedisClusterSet(Path(scratch), replicas=0)
            cluster.start()
            url, ports, stop = cluster.url, [s.port for s in cluster.servers], cluster.stop
        else:
            server = RedisServer(Path(scratch))
            server.start()
            url, ports, stop = server.url, [server.port], server.stop
        try:
            scripts_us, cpu_us = asyncio.run(measure(url, ports, args.users, args.sends))
        finally:
            stop()
    kind = "Redis Cluster (3 primaries)" if args.cluster else "one Redis"
    print(
        f"{kind}: per acked fan-out delivery ({args.users} users, {args.sends} sends): "
        f"{scripts_us:.2f} us in scripts, {cpu_us:.2f} us of Redis CPU"
    )


if __name__ == "__main__":
    main()
