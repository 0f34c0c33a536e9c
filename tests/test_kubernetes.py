"""deploy/kubernetes/ as an operator applies it: valid against a current Kubernetes schema
(kubernetes-validate, strict), clean under checkov with every waiver giving its reason, and
in agreement with the service: its probes exist and mean what they say, its pods outlive the
drain, and its config.yml and sites.yml load as the service loads them.

The checkers live in .venv-tools (``./dev test`` makes it from .ci/tools.txt), apart from the
service's own dependencies."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from socketio_webservice.webservice.config import load_config
from socketio_webservice.webservice.service import DRAIN_TIMEOUT
from testkit.processes import ROOT

MANIFESTS = ROOT / "deploy" / "kubernetes"
TOOLS = ROOT / ".venv-tools" / "bin"
# --skip-download: checkov asks Prisma Cloud for guidelines otherwise (CI has no internet).
CHECKOV_OPTIONS = ["--compact", "--quiet", "--skip-download", "--output", "json"]


def tool(name: str) -> str:
    path = TOOLS / name
    assert path.exists(), f"{path} is missing: ./dev test installs it (.ci/tools.txt)"
    return str(path)


def manifest_files() -> list[Path]:
    return [p for p in sorted(MANIFESTS.glob("*.yaml")) if p.name != "kustomization.yaml"]


def documents() -> list[dict[str, Any]]:
    found = []
    for path in manifest_files():
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_every_manifest_is_valid_kubernetes() -> None:
    files = [str(p) for p in manifest_files()]
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]


@pytest.mark.parametrize(
    ("target", "framework"),
    [(["-d", str(MANIFESTS)], "kubernetes"), (["-f", str(ROOT / "Dockerfile")], "dockerfile")],
)
def test_checkov_finds_nothing(target: list[str], framework: str) -> None:
    result = subprocess.run(
        [tool("checkov"), *target, "--framework", framework, *CHECKOV_OPTIONS],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = yaml.safe_load(result.stdout)
    summary = report["summary"]
    assert summary["failed"] == 0 and summary["passed"] > 10, summary


def test_every_waiver_says_why() -> None:
    for doc in documents():
        for key, value in doc["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert check.startswith("CKV") and len(reason) > 20, (key, value)


def test_the_probes_are_the_services_and_the_pod_outlives_its_drain(tmp_path: Path) -> None:
    pod = one("Deployment", "socketio-webservice")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # Liveness must not follow the store (a Redis outage would restart every pod).
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    config = load_configmap(tmp_path)
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    needed = pre_stop + config.drain_grace + config.drain_spread + DRAIN_TIMEOUT
    assert pod["terminationGracePeriodSeconds"] >= needed
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert "USER 10001" in (ROOT / "Dockerfile").read_text()


def load_configmap(tmp_path: Path) -> Any:
    """The ConfigMap's files, read by the service's own loader, with the Secret's key files
    where the Deployment mounts them (moved under tmp_path)."""
    data = one("ConfigMap", "socketio-webservice")["data"]
    secret = one("Secret", "socketio-webservice")["stringData"]
    pod = one("Deployment", "socketio-webservice")["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "secrets"]
    secrets_dir = tmp_path / mount["mountPath"].lstrip("/")
    secrets_dir.mkdir(parents=True)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
    for item in volume["secret"]["items"]:
        (secrets_dir / item["path"]).write_text(secret[item["key"]] + "\n")
    sites = data["sites.yml"].replace(mount["mountPath"], str(secrets_dir))
    (tmp_path / "config.yml").write_text(data["config.yml"])
    (tmp_path / "sites.yml").write_text(sites)
    env = {"REDIS_URL": secret["redis-url"], "ADMIN_KEY": secret["admin-key"]}
    return load_config(env, str(tmp_path / "config.yml"), str(tmp_path / "sites.yml"))


def test_the_configmap_loads_as_the_service_loads_it(tmp_path: Path) -> None:
    config = load_configmap(tmp_path)
    assert (
        config.sites["shop"].api_key
        == one("Secret", "socketio-webservice")["stringData"]["shop-api-key"]
    )
    assert not config.warnings
