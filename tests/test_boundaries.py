"""One owned boundary per library whose insides we use: python-socketio / python-engineio in
``transport/socketio_adapter/``, redis-py in ``storage/redis_wire.py``, aiosqlite in
``storage/sqlite_store.py``.

- Every name of theirs the adapter reads, calls or overrides on their objects is in the
  start-up check's one list (``compatibility.REQUIRED``), derived here from the adapter's
  source; removing any one of them makes start-up refuse, with its name.
- Nothing outside a boundary touches that library's private attributes (or, for Socket.IO,
  the server's ``eio`` and ``manager``).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import aiosqlite
import engineio
import pytest
import redis
import socketio
from engineio import async_socket
from engineio.async_drivers import aiohttp as aiohttp_driver

from socketio_webservice.transport.socketio_adapter import compatibility, legacy, server, socket
from testkit.processes import ROOT

ADAPTER_MODULES = [server, legacy, socket]
# the adapter's classes, by the library class they extend, and the probe of that class
LIBRARY_BASES: list[tuple[type, str]] = [
    (socketio.AsyncServer, "socketio.AsyncServer()"),
    (engineio.AsyncServer, "engineio.AsyncServer()"),
    (async_socket.AsyncSocket, "engineio AsyncSocket()"),
    (socketio.AsyncManager, "socketio.AsyncManager()"),
    (aiohttp_driver.WebSocket, "engineio aiohttp driver"),
]


def required_names() -> set[str]:
    return {name for _, names in compatibility.REQUIRED.values() for name in names}


def optional_names() -> set[str]:
    return {name for names in compatibility.OPTIONAL.values() for name in names}


def library_names_used() -> set[str]:
    """Names the adapter uses on python-socketio / python-engineio objects: what its classes
    read on ``self`` or ``super()`` or override, that the library object has; and what any
    of its code reads through ``.manager`` or ``.eio``."""
    found: set[str] = set()
    probes = {where: probe() for where, (probe, _) in compatibility.REQUIRED.items()}
    for module in ADAPTER_MODULES:
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            cls = getattr(module, node.name)
            # a mixin takes the library class of the adapter classes it is mixed into
            users = [c for c in vars(module).values() if isinstance(c, type) and cls in c.__mro__]
            bases = [
                (base, where)
                for base, where in LIBRARY_BASES
                if any(issubclass(user, base) for user in users)
            ]
            if not bases:
                continue
            library_class, where = bases[0]
            library = probes.get(where, library_class)
            ours = {
                name
                for klass in cls.__mro__
                if klass.__module__.startswith("socketio_webservice")
                for name in vars(klass)
            }
            for inner in ast.walk(node):
                if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if hasattr(library_class, inner.name) and not inner.name.startswith("__"):
                        found.add(inner.name)  # an override: a rename would skip it silently
                if isinstance(inner, ast.Attribute) and isinstance(inner.ctx, ast.Load):
                    on_self = isinstance(inner.value, ast.Name) and inner.value.id == "self"
                    on_super = (
                        isinstance(inner.value, ast.Call)
                        and isinstance(inner.value.func, ast.Name)
                        and inner.value.func.id == "super"
                    )
                    name = inner.attr
                    if (on_self or on_super) and not name.startswith("__"):
                        if name not in ours and hasattr(library, name):
                            found.add(name)
        for inner in ast.walk(tree):
            if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Attribute):
                holder = inner.value.attr
                if holder in ("manager", "eio") and not inner.attr.startswith("__"):
                    probe = socketio.AsyncManager if holder == "manager" else engineio.AsyncServer
                    if hasattr(probe, inner.attr):
                        found.add(inner.attr)
    return found


def test_the_start_up_check_lists_everything_the_adapter_uses_of_the_libraries() -> None:
    used = library_names_used()
    assert {"_handle_eio_message", "_binary_packet", "namespace_handlers", "callbacks"} <= used
    assert sorted(used - required_names() - optional_names()) == []
    assert not optional_names() & required_names()


class Without:
    """An object as it would be in a version that lacks ``name``."""

    def __init__(self, wrapped: Any, name: str) -> None:
        self._wrapped, self._name = wrapped, name

    def __getattr__(self, attribute: str) -> Any:
        if attribute == self._name:
            raise AttributeError(attribute)
        return getattr(self._wrapped, attribute)


def test_each_name_missing_makes_start_up_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    compatibility.check_compatible()  # the installed versions have all of it
    for where, (probe, names) in compatibility.REQUIRED.items():
        for name in names:
            with monkeypatch.context() as patch:
                lacking = (lambda probe=probe, name=name: Without(probe(), name), names)
                patch.setitem(compatibility.REQUIRED, where, lacking)
                refused = re.escape(f"lack {where}.{name}:")
                with pytest.raises(compatibility.IncompatibleVersion, match=refused):
                    compatibility.check_compatible()


async def test_a_service_refuses_to_start_on_a_version_that_lacks_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from socketio_webservice.webservice.config import Config
    from socketio_webservice.webservice.service import Service, StartupError

    probe, names = compatibility.REQUIRED["socketio.AsyncManager()"]
    monkeypatch.setitem(
        compatibility.REQUIRED,
        "socketio.AsyncManager()",
        (lambda: Without(probe(), "rooms"), names),
    )
    service = Service(Config(sites={}, sqlite_path=str(tmp_path / "db.sqlite3")))
    with pytest.raises(StartupError, match=r"lack socketio\.AsyncManager\(\)\.rooms"):
        await service.start()
    await service.stop()


def private_names_used(path: Path) -> set[str]:
    """``._name`` attributes a module reads that it does not define itself."""
    tree = ast.parse(path.read_text())
    defined, used = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Attribute):
            (defined if isinstance(node.ctx, ast.Store) else used).add(node.attr)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
        ):
            used.add(str(node.args[1].value))  # getattr(owner, "_writer", None)
    return {n for n in used - defined if n.startswith("_") and not n.startswith("__")}


BOUNDARIES = {
    "python-socketio/engineio": (
        ROOT / "transport" / "socketio_adapter",
        {n for n in required_names() if n.startswith("_")} | {"eio", "manager"},
    ),
    "redis-py": (
        ROOT / "storage" / "redis_wire.py",
        private_names_used(ROOT / "storage" / "redis_wire.py"),
    ),
    "aiosqlite": (
        ROOT / "storage" / "sqlite_store.py",
        private_names_used(ROOT / "storage" / "sqlite_store.py"),
    ),
}


def test_no_private_attribute_of_a_library_is_touched_outside_its_boundary() -> None:
    assert {"_conn", "_execute"} <= BOUNDARIES["aiosqlite"][1]
    assert "_writer" in BOUNDARIES["redis-py"][1]
    assert all(
        hasattr(aiosqlite.Connection, n) for n in BOUNDARIES["aiosqlite"][1] if n == "_execute"
    )
    assert redis.__name__ and socketio.__name__  # imported: the names above are theirs
    trespasses = []
    for folder in ("actors", "transport", "storage", "webservice", "socketio_webservice"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
            attributes |= {
                str(n.args[1].value)
                for n in ast.walk(tree)
                if isinstance(n, ast.Call)
                and isinstance(n.func, ast.Name)
                and n.func.id == "getattr"
                and len(n.args) > 1
                and isinstance(n.args[1], ast.Constant)
            }
            for library, (inside, forbidden) in BOUNDARIES.items():
                if path == inside or inside in path.parents:
                    continue
                for name in sorted(attributes & forbidden):
                    trespasses.append(f"{path.relative_to(ROOT)}: .{name} ({library})")
    assert trespasses == []
