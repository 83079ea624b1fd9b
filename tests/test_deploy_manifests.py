"""deploy/'s Containerfile, compose file and Kubernetes manifests, checked offline.

No image can be built or pulled here, so each file is checked by the tool its
format has: ``kubernetes-validate --strict`` (bundled OpenAPI schemas, unknown
fields refused), ``podman-compose config`` (how compose reads the file),
``hadolint`` (the Containerfile's lint). On top, what those tools cannot know:
every cityid command in them parses with cityid's own argument parser, every
workload has resource requests, probes on ``/healthz`` where it serves HTTP and
a PodDisruptionBudget, and compose dependencies name real services.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cityid.cli import build_parser

yaml = pytest.importorskip("yaml")  # comes with kubernetes-validate (the test extra)

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
COMPOSE = DEPLOY / "compose" / "compose.yaml"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"


def tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return str(path)


def documents() -> list[dict[str, Any]]:
    return [d for m in MANIFESTS for d in yaml.safe_load_all(m.read_text()) if d]


def workloads() -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] in ("Deployment", "StatefulSet")]


def cityid_commands() -> list[list[str]]:
    """The argument lists of every container running the cityid image, in both files."""
    out = []
    for w in workloads():
        for c in w["spec"]["template"]["spec"]["containers"]:
            if "cityid" in c["image"]:
                out.append([str(a) for a in c["args"]])
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    out += [[str(a) for a in s["command"]] for s in services.values() if "cityid" in s["image"]]
    return out


def test_manifests_pass_kubernetes_validate_strict() -> None:
    assert {m.name for m in MANIFESTS} >= {"valkey.yaml", "resolver.yaml", "registrar.yaml"}
    out = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, *map(str, MANIFESTS)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("passed") == len(documents())


def test_every_cityid_command_parses() -> None:
    parser = build_parser()
    commands = cityid_commands()
    roles = {tuple(c[:2]) for c in commands}
    assert {("registrar", "serve"), ("resolver", "serve"), ("resolver", "dns"),
            ("ledger", "witness")} <= roles  # fmt: skip
    for args in commands:
        ns = parser.parse_args(args)  # exits (SystemExit) on an unknown flag or command
        assert callable(ns.func), args


def test_workloads_have_requests_probes_and_budgets() -> None:
    docs = documents()
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for w in workloads():
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert any(
            b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets
        ), f"no PodDisruptionBudget covers {w['metadata']['name']}"
        for c in w["spec"]["template"]["spec"]["containers"]:
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
            assert "readinessProbe" in c and "livenessProbe" in c, c["name"]
            ports = {p["name"] for p in c.get("ports", [])}
            if "cityid" in c["image"] and "http" in ports:
                assert c["readinessProbe"]["httpGet"]["path"] == "/healthz", c["name"]
    by_name = {w["metadata"]["name"]: w for w in workloads()}
    assert by_name["resolver"]["kind"] == "Deployment"
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "resolver"
    registrars = [w for n, w in by_name.items() if n.startswith("registrar-")]
    assert registrars and all(
        w["kind"] == "StatefulSet"
        and w["spec"]["replicas"] == 1
        and w["spec"]["volumeClaimTemplates"]
        for w in registrars
    )  # one writer per log, each with its own volume
    assert by_name["valkey"]["kind"] == "StatefulSet" and by_name["valkey"]["spec"]["replicas"] == 6


def test_compose_file_reads_and_holds_the_topology() -> None:
    out = subprocess.run(
        [tool("podman-compose"), "--dry-run", "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, timeout=60, check=False, cwd=COMPOSE.parent,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert {f"valkey-{n}" for n in range(1, 7)} <= services.keys()
    assert {"w1", "w2", "w3", "root", "sjz", "ts", "res1", "res2", "res1-dns"} <= services.keys()
    for name, s in services.items():
        for dep in s.get("depends_on", {}):
            assert dep in services, f"{name} depends on {dep}, which is not a service"


def test_containerfile_passes_hadolint() -> None:
    out = subprocess.run(
        [tool("hadolint"), str(DEPLOY / "Containerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
