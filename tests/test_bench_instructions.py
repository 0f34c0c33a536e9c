"""``python -m bench --instructions``: the service runs under valgrind's callgrind and the
instructions it executes are counted for each scenario's window alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.__main__ import run_one
from bench.environment import Environment


async def test_the_bench_counts_the_services_instructions_for_each_scenario(
    tmp_path: Path,
) -> None:
    environment = Environment("sqlite", workdir=tmp_path, instructions=True)
    target = await environment.start()
    try:
        results = await run_one(target, "sqlite", 20, ["connect", "direct"])
    finally:
        await environment.stop()
    assert environment.callgrind is not None
    kept = environment.callgrind.keep(tmp_path / "kept")
    connect, direct = (result.figures() for result in results)
    per_connect = connect["service_instructions_per_unit"]
    assert (connect["unit"], direct["unit"]) == ("connects", "deliveries")
    assert connect["lost"] == direct["lost"] == 0
    # A connect costs the service about a million instructions, a delivery less than half
    # as much: each window counted alone, not the ones before it.
    assert 300_000 < per_connect < 10_000_000
    assert 50_000 < direct["service_instructions_per_unit"] < per_connect

    # What was counted is kept for a look inside: the process's whole run and each window,
    # in files callgrind_annotate reads.
    assert [path.name for path in kept] == [
        "process0.callgrind.out",
        "process0.callgrind.out.1",
        "process0.callgrind.out.2",
    ]
    annotate = await asyncio.create_subprocess_exec(
        "callgrind_annotate", str(kept[1]), stdout=asyncio.subprocess.PIPE
    )
    annotated, _ = await annotate.communicate()
    assert annotate.returncode == 0
    assert b"PROGRAM TOTALS" in annotated
