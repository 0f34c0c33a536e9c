"""A consistent copy of the SQLite store, taken while the service runs.

SQLite's online backup copies every page inside one read transaction: the copy is the store
as it was at one moment (WAL mode lets the running node keep writing meanwhile). It is
written beside the target and renamed into place, so a target is never a half copy, and it
is a single self-contained file (rollback journal, not WAL): copy it anywhere, or point
``SQLITE_PATH`` at it to start a node from it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path


class BackupError(Exception):
    """The backup cannot be made; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class BackupSummary:
    devices: int
    messages: int
    size: int  # bytes


def backup(source: Path, target: Path) -> BackupSummary:
    if not source.is_file():
        raise BackupError(f"no SQLite store at {source}")
    if target.exists():
        raise BackupError(f"{target} exists: give a new file")
    partial = target.with_name(f".{target.name}.partial")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as db:
            with contextlib.closing(sqlite3.connect(partial)) as copy:
                db.backup(copy)  # every page in one step: one read transaction
                copy.execute("PRAGMA journal_mode=DELETE")
                (check,) = copy.execute("PRAGMA quick_check").fetchone()
                if check != "ok":
                    raise BackupError(f"the copy failed its check: {check}")
                (devices,) = copy.execute("SELECT COUNT(*) FROM devices").fetchone()
                (messages,) = copy.execute("SELECT COUNT(*) FROM messages").fetchone()
        os.replace(partial, target)
    except sqlite3.Error as exc:
        raise BackupError(f"{source}: {exc}") from None
    except OSError as exc:
        raise BackupError(f"{target}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return BackupSummary(devices=int(devices), messages=int(messages), size=target.stat().st_size)
