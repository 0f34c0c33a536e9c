"""Reads ``application/x-www-form-urlencoded`` bodies as Express's body-parser (``extended``,
the ``qs`` library) does, so sites that post forms to the original keep working:

    rooms[]=a&rooms[]=b&event=e&args[0][id]=1&args[1]=x
    -> {"rooms": ["a", "b"], "event": "e", "args": [{"id": "1"}, "x"]}
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

MAX_DEPTH = 5
MAX_INDEX = 20  # qs turns a[21]=x into an object key, not a 22-element array
_PART = re.compile(r"\[([^\[\]]*)\]")


class FormError(ValueError):
    pass


class _Node(dict[str, Any]):
    """An object being built, counting its index keys so that ``a[]`` appends in O(1)."""

    __slots__ = ("indexes",)

    def __init__(self) -> None:
        super().__init__()
        self.indexes = 0


def _key_path(key: str) -> list[str]:
    head, bracket, rest = key.partition("[")
    if not bracket or not head:
        return [key]
    parts = _PART.findall("[" + rest)
    if "[" + rest != "".join(f"[{p}]" for p in parts) or len(parts) > MAX_DEPTH:
        return [key]  # not a well-formed path: qs keeps such keys as they are
    return [head, *parts]


def _insert(node: _Node, path: list[str], value: str) -> None:
    key, rest = path[0], path[1:]
    if key == "":
        key = str(node.indexes)
    if key not in node and key.isdigit():
        node.indexes += 1
    if not rest:
        if key in node:
            existing = node[key]
            if isinstance(existing, list):
                existing.append(value)
            else:
                node[key] = [existing, value]
        else:
            node[key] = value
        return
    child = node.setdefault(key, _Node())
    if not isinstance(child, _Node):
        raise FormError(f"field {key!r} is given both as a value and as an object")
    _insert(child, rest, value)


def _arrays(node: Any) -> Any:
    """Turn objects whose keys are all small indexes into lists, in index order."""
    if not isinstance(node, dict):
        return node
    converted = {key: _arrays(value) for key, value in node.items()}
    if converted and all(k.isdigit() and int(k) <= MAX_INDEX for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def parse_form(body: str) -> dict[str, Any]:
    root = _Node()
    for key, value in parse_qsl(body, keep_blank_values=True, max_num_fields=10_000):
        _insert(root, _key_path(key), value)
    result = _arrays(root)
    return result if isinstance(result, dict) else {}
