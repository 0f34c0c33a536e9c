"""deploy/grafana's dashboard asks only for what the service exports: every metric an
expression names is one /metrics serves (a renamed metric would leave a panel empty)."""

from __future__ import annotations

import json
import re

from prometheus_client.parser import text_string_to_metric_families

from testkit.processes import ROOT
from tests.harness import Harness

DASHBOARD = ROOT / "deploy" / "grafana" / "socketio-webservice.json"
SUFFIXES = {
    "counter": ["_total"],
    "histogram": ["_bucket", "_count", "_sum"],
    "summary": ["_count", "_sum"],
}
NAME = re.compile(r"\b((?:socketio_webservice|process)_[a-z_]+)\b")


def expressions(dashboard: dict[str, object]) -> list[str]:
    found = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]  # type: ignore[attr-defined]
    found += [v["query"] for v in dashboard["templating"]["list"] if "query" in v]  # type: ignore[index]
    return found


async def test_every_expression_names_an_exported_metric(harness: Harness) -> None:
    await harness.start()
    assert harness.http is not None
    async with harness.http.get(f"{harness.url}/metrics") as answer:
        text = await answer.text()
    exported = set()
    for family in text_string_to_metric_families(text):
        exported.add(family.name)
        exported.update(family.name + suffix for suffix in SUFFIXES.get(family.type, []))
    dashboard = json.loads(DASHBOARD.read_text())
    named = {name for expr in expressions(dashboard) for name in NAME.findall(expr)}
    assert len(named) > 15
    assert sorted(named - exported) == []
