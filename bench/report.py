"""The figures as a terminal table, a JSON file, and a PNG chart for docs/benchmarks.md."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = [
    ("scenario", "scenario", 10),
    ("store", "store", 6),
    ("clients", "N", 6),
    ("throughput_per_s", "ops/s", 9),
    ("latency_p50_ms", "p50 ms", 7),
    ("latency_p95_ms", "p95 ms", 7),
    ("latency_p99_ms", "p99 ms", 7),
    ("service_cpu_per_1000", "cpu/1000", 9),
    ("redis_cpu_per_1000", "redis/1000", 10),
    ("rss_per_connection_kb", "KB/conn", 8),
    ("service_instructions_per_unit", "instr/unit", 11),
    ("lost", "lost", 5),
    ("doubled", "dup", 4),
    ("out_of_order", "order", 5),
]


def _columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """Every column, but the instructions only where counted (``--instructions``)."""
    counted = any(row.get("service_instructions_per_unit") is not None for row in rows)
    return [c for c in COLUMNS if counted or c[0] != "service_instructions_per_unit"]


def table(rows: Sequence[dict[str, Any]]) -> str:
    def cell(value: Any, width: int) -> str:
        text = "-" if value is None else str(value)
        return text.rjust(width)

    columns = _columns(rows)
    lines = [" ".join(title.rjust(width) for _, title, width in columns)]
    for row in rows:
        lines.append(" ".join(cell(row.get(key), width) for key, _, width in columns))
    return "\n".join(lines)


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    columns = _columns(rows)
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join(" --- " for _ in columns) + "|"
    body = [
        "| "
        + " | ".join("-" if row.get(k) is None else str(row.get(k)) for k, _, _ in columns)
        + " |"
        for row in rows
    ]
    return "\n".join([head, rule, *body])


def save_json(
    rows: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    path: Path,
    every_run: Sequence[dict[str, Any]] = (),
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "results": list(rows), "every_run": list(every_run)}
    path.write_text(json.dumps(document, indent=2))


def save_chart(rows: Sequence[dict[str, Any]], path: Path, scenario: str = "fanout") -> bool:
    """Throughput and p99 latency against N, one line per store. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    picked = [row for row in rows if row["scenario"] == scenario]
    if not picked:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for store in sorted({row["store"] for row in picked}):
        mine = sorted((row for row in picked if row["store"] == store), key=lambda r: r["clients"])
        clients = [row["clients"] for row in mine]
        left.plot(clients, [row["throughput_per_s"] for row in mine], marker="o", label=store)
        right.plot(clients, [row["latency_p99_ms"] for row in mine], marker="o", label=store)
    left.set(title=f"{scenario}: deliveries per second", xlabel="clients (N)")
    right.set(title=f"{scenario}: p99 latency (ms)", xlabel="clients (N)")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
