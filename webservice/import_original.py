"""``socketio-webservice import-original``: carry over what the Node original had queued.

Run with the service's own configuration (the same environment, config.yml and sites.yml): it
reads the original's queue lists from ``--from`` (never changing them) and appends each
device's messages, in the original's send order, to that device's queue in the configured
store, so that the device gets them in its first ``_batch``. It can run while the service
runs, and again: a device's messages already imported are skipped (docs/switching.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from loguru import logger
from tqdm import tqdm

from ..sites import SiteConfig
from ..storage import Store, StoreUnavailable, redis_url
from ..storage.original_queues import (
    DeviceQueue,
    OriginalRedis,
    QueueKey,
    Skipped,
    UserRooms,
    by_user,
    device_queues,
)
from .config import Config, add_file_options, load_for_command
from .service import store_for

READ_KEYS = 500  # the original's lists read per round trip (a few users' worth)
CONCURRENT_DEVICES = 64  # devices written to the store at once
NODE_ID = "import-original"


@dataclass
class Summary:
    sites: set[str] = field(default_factory=set)
    devices: int = 0
    messages: int = 0
    known: int = 0
    full: int = 0
    skipped: Skipped = field(default_factory=Skipped)
    messages_per_site: Counter[str] = field(default_factory=Counter)
    devices_per_site: Counter[str] = field(default_factory=Counter)

    def site_lines(self) -> Iterator[str]:
        for site in sorted(self.sites):
            yield (
                f"  {site}: {self.devices_per_site[site]} devices, "
                f"{self.messages_per_site[site]} messages"
            )

    def line(self, dry_run: bool) -> str:
        verb = "would import" if dry_run else "imported"
        skipped = self.skipped
        unknown = ", ".join(
            f"{site} ({count})" for site, count in sorted(skipped.unknown_sites.items())
        )
        return (
            f"{verb}: {len(self.sites)} sites, {self.devices} devices, {self.messages} messages"
            + ("" if dry_run else f" (already imported: {self.known}, queue full: {self.full})")
            + f"; skipped: {sum(skipped.unknown_sites.values())} for unknown sites"
            + (f" [{unknown}]" if unknown else "")
            + f", {skipped.malformed} malformed, {skipped.no_device} without a deviceId, "
            f"{skipped.not_user_room} not in a user room"
        )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="socketio-webservice import-original",
        description="Import the messages the Node original queued for offline devices (from "
        "its Redis, which is not changed) into this service's configured store.",
    )
    parser.add_argument(
        "--from", dest="source", required=True, help="the original's Redis URL (redis://...)"
    )
    parser.add_argument("--site", help="import this site only")
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be imported; store nothing"
    )
    add_file_options(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    config = load_for_command(args)
    if config is None:
        return 2
    try:
        password = redis_url.parse(args.source).password or ""
    except ValueError as exc:
        print(f"--from: {exc}", file=sys.stderr)
        return 2
    if args.site and args.site not in config.sites:
        print(f"site {args.site!r} is not configured here", file=sys.stderr)
        return 2
    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{level}: {message}")
    try:
        summary = asyncio.run(run(config, args.source, args.site, args.dry_run))
    except (StoreUnavailable, OSError, ConnectionError) as exc:
        reason = str(exc).replace(password, "***") if password else str(exc)
        print(f"import failed: {reason}", file=sys.stderr)
        return 1
    for line in summary.site_lines():
        print(line)
    print(summary.line(args.dry_run))
    return 0


async def run(config: Config, source_url: str, only: str | None, dry_run: bool) -> Summary:
    source = OriginalRedis(source_url)
    store = store_for(config, NODE_ID)
    try:
        if not dry_run:
            await store.attach()
        return await import_all(config.sites, source, store, only, dry_run)
    finally:
        await source.close()
        if not dry_run:
            await store.close()


async def import_all(
    sites: dict[str, SiteConfig],
    source: OriginalRedis,
    store: Store,
    only: str | None,
    dry_run: bool,
) -> Summary:
    summary = Summary()
    keys = await source.scan(only)
    rooms = {
        name: UserRooms(site.user_room_prefix, site.public_channel)
        for name, site in sites.items()
        if site.reliable
    }
    unknown = [key for key in keys if key.site not in rooms]
    for site in {key.site for key in unknown}:
        of_site = [key for key in unknown if key.site == site]
        summary.skipped.unknown_sites[site] = await source.lengths(of_site)
    known = [key for key in keys if key.site in rooms]
    with tqdm(
        total=len(known), unit="list", file=sys.stderr, disable=not sys.stderr.isatty()
    ) as bar:
        for chunk in _chunks(list(by_user(known, rooms).values())):
            read = await source.read(chunk, store.max_queue)
            queues: list[DeviceQueue] = []
            for site_keys, site_read in _by_site(chunk, read):
                site = site_keys[0].site
                queues += device_queues(site_keys, site_read, rooms[site], summary.skipped)
            await _store(queues, store, summary, dry_run)
            bar.update(len(chunk))
    return summary


def _chunks(groups: list[list[QueueKey]]) -> Iterator[list[QueueKey]]:
    """Whole users' keys, about ``READ_KEYS`` at a time."""
    chunk: list[QueueKey] = []
    for group in groups:
        chunk += group
        if len(chunk) >= READ_KEYS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _by_site(
    keys: list[QueueKey], read: list[tuple[int, list[bytes]]]
) -> Iterator[tuple[list[QueueKey], list[tuple[int, list[bytes]]]]]:
    sites: dict[str, tuple[list[QueueKey], list[tuple[int, list[bytes]]]]] = {}
    for key, items in zip(keys, read, strict=True):
        site_keys, site_read = sites.setdefault(key.site, ([], []))
        site_keys.append(key)
        site_read.append(items)
    yield from sites.values()


async def _store(queues: list[DeviceQueue], store: Store, summary: Summary, dry_run: bool) -> None:
    for queue in queues:
        summary.sites.add(queue.site)
        summary.devices_per_site[queue.site] += 1
    summary.devices += len(queues)
    if dry_run:
        for queue in queues:
            summary.messages += len(queue.messages)
            summary.messages_per_site[queue.site] += len(queue.messages)
        return
    for start in range(0, len(queues), CONCURRENT_DEVICES):
        batch = queues[start : start + CONCURRENT_DEVICES]
        results = await asyncio.gather(
            *(store.import_queue(q.site, q.user, q.device, q.messages, q.ttl) for q in batch)
        )
        for queue, result in zip(batch, results, strict=True):
            summary.messages += result.stored
            summary.messages_per_site[queue.site] += result.stored
            summary.known += result.known
            summary.full += result.full
