"""Reading config.yml and sites.yml with bounds, so a small file cannot cost a large process.

PyYAML's safe loader builds a shared object for each alias, which is cheap; what costs is
everything that later walks the result (validation, an error message that prints a value):
400 bytes of nested aliases stand for tens of millions of values. So the composed document
is measured as if every alias were written out, and refused past ``MAX_EXPANDED_NODES``;
the file itself past ``MAX_FILE_BYTES``. A key given twice in one mapping (a site defined
twice) is refused too: PyYAML would keep the last one silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_EXPANDED_NODES = 1_000_000  # 20,000 sites of six keys are about 260,000
SHOWN_CHARACTERS = 80


class YamlRefused(Exception):
    """The document is over a bound or ambiguous; the message says which, in one line."""


def shown(value: Any) -> str:
    """A value as an error message shows it: its repr, cut short."""
    return cut(repr(value) if not isinstance(value, (dict, list)) else type(value).__name__)


def cut(text: str) -> str:
    """A key or a name as an error message shows it: cut short."""
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 3] + "..."


class _BoundedLoader(yaml.SafeLoader):
    def construct_document(self, node: yaml.Node) -> Any:
        expanded = _expanded_size(node, {})
        if expanded > MAX_EXPANDED_NODES:
            raise YamlRefused(
                f"its aliases expand to more than {MAX_EXPANDED_NODES:,} values "
                f"({expanded:,}): write the values out, or use fewer aliases"
            )
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    line = key_node.start_mark.line + 1
                    raise YamlRefused(f"line {line}: key {shown(key_node.value)} is given twice")
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """The number of nodes ``node`` stands for once every alias is written out; each node is
    visited once (``sizes``), so this costs the size of the file, not of its expansion."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # a node that contains itself (a recursive alias) counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(
            _expanded_size(key, sizes) + _expanded_size(value, sizes) for key, value in node.value
        )
    else:
        size = 1
    sizes[id(node)] = size
    return size


def load_yaml(path: Path) -> Any:
    """The document in ``path``; raises ``OSError``, ``yaml.YAMLError`` or ``YamlRefused``."""
    with path.open("rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise YamlRefused(f"larger than {MAX_FILE_BYTES:,} bytes")
    try:
        return yaml.load(data, Loader=_BoundedLoader)  # a SafeLoader
    except RecursionError:
        raise YamlRefused("nested too deeply") from None
