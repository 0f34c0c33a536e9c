"""/openapi.json describes the real server: schemathesis sends what the document allows (and
what it does not) to a running service and checks every answer against the document."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.harness import Harness

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is a test extra")
async def test_the_server_answers_as_its_openapi_document_says(
    harness: Harness, tmp_path: Path
) -> None:
    await harness.start()
    harness.stub.answers["alice"] = ["user_alice"]
    await harness.connect("shop", "alice", "phone")  # sends to user_alice reach a device
    assert harness.http is not None
    async with harness.http.get(f"{harness.url}/openapi.json") as answer:
        assert answer.status == 200
        document = await answer.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["version"][0].isdigit()
    assert {"/send", "/healthcheck"} <= document["paths"].keys()

    # A valid site and key, so that schemathesis also reaches past the key check.
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        '[parameters]\n"query.site" = "shop"\n"query.apiKey" = "key"\n'
        "[generation]\nmax-examples = 60\n"
    )
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        f"{harness.url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "ignored_auth,use_after_free,ensure_resource_availability",
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "1",
        "--no-color",
        "--workers",
        "1",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 240)
    report = output.decode(errors="replace")
    assert process.returncode == 0, report[-6000:]
    assert "No issues found" in report
    assert json.dumps(document)  # the document itself is JSON, as served
    shutil.rmtree(tmp_path / "schemathesis-report", ignore_errors=True)
