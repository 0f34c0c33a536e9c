"""``socketio-webservice backup FILE``: copy the SQLite store while the service runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..storage.sqlite_backup import BackupError, backup
from .config import add_file_options, load_for_command


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="socketio-webservice backup",
        description="Write a consistent copy of the SQLite store (SQLITE_PATH) to FILE, "
        "online: the running service goes on meanwhile. Start a node from it by pointing "
        "SQLITE_PATH at it. (Redis: use Redis's own RDB or AOF files.)",
    )
    parser.add_argument("file", type=Path, help="the copy to write (must not exist)")
    add_file_options(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    config = load_for_command(args)
    if config is None:
        return 2
    if config.redis_url:
        print("backup copies the SQLite store; this configuration uses Redis", file=sys.stderr)
        return 2
    try:
        summary = backup(Path(config.sqlite_path), args.file)
    except BackupError as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"backup of {config.sqlite_path} written to {args.file}: {summary.devices} devices, "
        f"{summary.messages} queued messages, {summary.size / 1e6:.1f} MB"
    )
    return 0
