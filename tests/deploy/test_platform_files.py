"""Static proofs of the platform files (Railway, Render, Fly, Kubernetes, YAML): schemas,
cross-checks against the code (commands, health paths, settings, cron jobs), each shown failing on a
broken copy. Split from test_static.py; `make deploy-check` runs both."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from croniter import croniter
from typer.testing import CliRunner

from handoffrail_server.cli.app import app as cli_app
from handoffrail_server.db import migrations
from handoffrail_server.main import create_app
from handoffrail_server.settings import PRIVATE_NETWORKS, Settings
from handoffrail_server.worker.jobs import JOBS
from tests.conftest import make_settings
from tests.deploy.helpers import ROOT, prod_config, run, tool, write_broken

ENTRYPOINT = "/app/deploy/entrypoint.sh"
# HR_* variables read by the entrypoint and gunicorn.conf.py rather than by Settings.
NON_SETTINGS_VARS = {"HR_SKIP_MIGRATIONS", "HR_BIND_HOST"}
#: a container's exporter must listen beyond its own loopback for Prometheus to scrape it
ALL_INTERFACES = "0.0.0.0"  # noqa: S104
CADDY_VARS = {"HR_SITE_ADDRESS", "HR_UPSTREAM"}
K8S_FILES = sorted((ROOT / "deploy/k8s").glob("*.yaml"))
YAML_FILES = ["compose.yaml", "compose.prod.yaml", "render.yaml", ".yamllint.yaml", "deploy/k8s"]


# --------------------------------------------------------------------------- platform files


SCHEMA_TARGETS = [
    ("railway.schema.json", "railway.json"),
    ("railway.schema.json", "deploy/railway.worker.json"),
    ("render.schema.json", "render.yaml"),
    ("fly.schema.json", "fly.toml"),
]


@pytest.mark.parametrize(("schema", "target"), SCHEMA_TARGETS)
def test_platform_files_match_their_schemas(schema: str, target: str) -> None:
    result = run(tool("check-jsonschema"), "--schemafile", f"deploy/schemas/{schema}", target)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("schema", "target", "old", "new"),
    [
        # Railway parses numbers written as strings as an error at deploy time.
        ("railway.schema.json", "railway.json", '"numReplicas": 2', '"numReplicas": "2"'),
        ("render.schema.json", "render.yaml", '    schedule: "17 * * * *"\n', ""),
        ("render.schema.json", "render.yaml", 'MajorVersion: "16"', "MajorVersion: 16"),
        ("fly.schema.json", "fly.toml", 'interval = "15s"', "interval = 15"),
    ],
)  # fmt: skip
def test_platform_schemas_reject_broken_copies(
    tmp_path: Path, schema: str, target: str, old: str, new: str
) -> None:
    broken = write_broken(tmp_path, target, old, new)
    result = run(tool("check-jsonschema"), "--schemafile", f"deploy/schemas/{schema}", str(broken))
    assert result.returncode != 0, result.stdout


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in K8S_FILES for doc in load_yaml_documents(path)]


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for doc in k8s_documents():
        kind = doc["kind"]
        if kind == "Deployment" or kind == "Job":
            specs.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
        elif kind == "CronJob":
            spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            specs.append((doc["metadata"]["name"], spec))
    return specs


def platform_commands() -> list[tuple[str, str]]:
    """(where, command line) for every command a platform file runs in our image."""
    commands: list[tuple[str, str]] = []
    for name in ("railway.json", "deploy/railway.worker.json"):
        deploy = json.loads((ROOT / name).read_text())["deploy"]
        commands.append((name, deploy["startCommand"]))
        commands += [(name, command) for command in deploy.get("preDeployCommand", [])]
    render = yaml.safe_load((ROOT / "render.yaml").read_text())
    for service in render["services"]:
        for key in ("dockerCommand", "preDeployCommand"):
            if key in service:
                commands.append((f"render:{service['name']}", service[key]))
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    commands.append(("fly:release", fly["deploy"]["release_command"]))
    commands += [(f"fly:{name}", command) for name, command in fly["processes"].items()]
    for name, spec in pod_specs():
        for container in spec["containers"]:
            commands.append((f"k8s:{name}", shlex.join(container["args"])))
    return commands


def check_command(command: str) -> str | None:
    """None when `command` is a real entrypoint/CLI command, else what is wrong."""
    words = shlex.split(command)
    if words[:1] == [ENTRYPOINT]:
        words = words[1:] or ["api"]
    if words[:1] == ["api"]:
        return None if len(words) == 1 else f"unexpected gunicorn options in {command!r}"
    if words[:1] == ["handoffrail"]:
        words = words[1:]
    if words[:2] == ["jobs", "run"]:
        if len(words) != 3 or words[2] not in JOBS:
            return f"unknown job in {command!r} (known: {sorted(JOBS)})"
        return None
    result = CliRunner().invoke(cli_app, [*words, "--help"])
    if result.exit_code != 0:
        return f"{command!r} is not a handoffrail command: {result.output.strip()[-200:]}"
    return None


def test_platform_commands_are_real_commands() -> None:
    commands = platform_commands()
    assert len(commands) >= 15
    problems = [f"{where}: {problem}" for where, cmd in commands if (problem := check_command(cmd))]
    assert not problems, problems


def test_command_cross_check_rejects_a_wrong_command() -> None:
    assert check_command(f"{ENTRYPOINT} jobs run expire-everything") is not None
    assert check_command(f"{ENTRYPOINT} worker --no-such-flag") is not None
    assert check_command("handoffrail migrate sideways") is not None
    assert check_command(f"{ENTRYPOINT} worker --no-schedule") is None


def answering_paths(paths: set[str], tmp_path: Path) -> set[str]:
    """The paths the real app answers with something other than 404 (a migrated SQLite file)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'routes.db'}"
    migrations.upgrade(url)
    app = create_app(make_settings(url))

    async def probe() -> set[str]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://app") as client,
        ):
            return {path for path in paths if (await client.get(path)).status_code != 404}

    return asyncio.run(probe())


def health_paths() -> list[tuple[str, str]]:
    paths = [
        (
            "railway.json",
            json.loads((ROOT / "railway.json").read_text())["deploy"]["healthcheckPath"],
        )
    ]
    render = yaml.safe_load((ROOT / "render.yaml").read_text())
    paths += [
        (f"render:{service['name']}", service["healthCheckPath"])
        for service in render["services"]
        if "healthCheckPath" in service
    ]
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    paths += [("fly:http_service", check["path"]) for check in fly["http_service"]["checks"]]
    paths += [(f"fly:{name}", check["path"]) for name, check in fly.get("checks", {}).items()]
    for name, spec in pod_specs():
        for container in spec["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    paths.append((f"k8s:{name}:{probe}", container[probe]["httpGet"]["path"]))
    return paths  # fmt: skip


def test_health_paths_are_app_routes(tmp_path: Path) -> None:
    paths = health_paths()
    assert len(paths) >= 6
    wanted = {path for _where, path in paths} | {"/metrics", "/no-such-probe"}
    answering = answering_paths(wanted, tmp_path)
    assert {"/health", "/ready", "/metrics"} <= answering
    assert "/no-such-probe" not in answering
    wrong = [(where, path) for where, path in paths if path not in answering]
    assert not wrong, wrong


def env_entries() -> list[tuple[str, str, str | None]]:
    """(where, variable, value) for every variable the platform files give our processes (the
    value None where the platform fills it in: a database's connection string, a secret)."""
    entries: list[tuple[str, str, str | None]] = []
    render = yaml.safe_load((ROOT / "render.yaml").read_text())
    for owner in [*render["envVarGroups"], *render["services"]]:
        entries += [
            (f"render:{owner['name']}", var["key"], var.get("value"))
            for var in owner.get("envVars", [])
            if "key" in var
        ]
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    entries += [("fly.toml", name, value) for name, value in fly["env"].items()]
    for doc in k8s_documents():
        if doc["kind"] == "ConfigMap":
            where = f"k8s:{doc['metadata']['name']}"
            entries += [(where, name, value) for name, value in doc["data"].items()]
        if doc["kind"] == "Secret":
            entries += [
                (f"k8s:{doc['metadata']['name']}", name, None) for name in doc["stringData"]
            ]
    for name, spec in pod_specs():
        for container in spec["containers"]:
            entries += [
                (f"k8s:{name}", var["name"], var.get("value")) for var in container.get("env", [])
            ]
    for example in sorted((ROOT / "deploy/env").glob("*.env.example")):
        for line in example.read_text().splitlines():
            if line and not line.startswith("#") and "=" in line:
                name, value = line.split("=", 1)
                entries.append((example.name, name, value))
    return entries


def env_names() -> list[tuple[str, str]]:
    """(where, variable) for every variable the platform files give our processes."""
    return [(where, name) for where, name, _value in env_entries()]


def unknown_settings(names: list[tuple[str, str]]) -> list[tuple[str, str]]:
    fields = set(Settings.model_fields)
    allowed = NON_SETTINGS_VARS | CADDY_VARS
    return [
        (where, name)
        for where, name in names
        if name.startswith("HR_") and name not in allowed and name[3:].lower() not in fields
    ]


def test_env_vars_are_settings_fields(tmp_path: Path) -> None:
    names = env_names()
    assert len(names) >= 30
    assert unknown_settings(names) == []
    services = prod_config(tmp_path)["services"]
    compose_names = [
        (f"compose:{name}", var)
        for name in ("api", "worker")
        for var in services[name]["environment"]
    ]
    assert unknown_settings(compose_names) == []
    assert unknown_settings([("typo", "HR_DATABASE_URI")]) == [("typo", "HR_DATABASE_URI")]


def forwarded_allow_ips(tmp_path: Path) -> dict[str, str | None]:
    """Where each platform file sets HR_FORWARDED_ALLOW_IPS, its value."""
    found = {
        where: value for where, name, value in env_entries() if name == "HR_FORWARDED_ALLOW_IPS"
    }
    api = prod_config(tmp_path)["services"]["api"]["environment"]
    found["compose.prod.yaml"] = api.get("HR_FORWARDED_ALLOW_IPS", "")
    return found


def test_platforms_trust_forwarded_headers_from_private_networks_only(tmp_path: Path) -> None:
    """With `*` the client IP would be the leftmost X-Forwarded-For entry, which any client
    writes (the per-IP failed-key throttle could be dodged); tests/integration/test_cli.py
    shows the private networks make it the entry the platform's proxy appended."""
    found = forwarded_allow_ips(tmp_path)
    assert {"fly.toml", "compose.prod.yaml", "k8s:handoffrail-config"} <= set(found), found
    assert any(where.startswith("render:") for where in found), found
    assert {where: value for where, value in found.items() if value != PRIVATE_NETWORKS} == {}


def test_development_env_example_loads_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for line in (ROOT / "deploy/env/development.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.is_development
    assert settings.is_sqlite


def cron_schedules() -> list[tuple[str, str, str]]:
    """(where, schedule, job) for every scheduled job on Render and Kubernetes."""
    found: list[tuple[str, str, str]] = []
    render = yaml.safe_load((ROOT / "render.yaml").read_text())
    for service in render["services"]:
        if service["type"] == "cron":
            found.append(("render", service["schedule"], shlex.split(service["dockerCommand"])[-1]))
    for doc in k8s_documents():
        if doc["kind"] == "CronJob":
            spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            found.append(("k8s", doc["spec"]["schedule"], spec["containers"][0]["args"][-1]))
    return found


def test_cron_schedules_parse_and_cover_every_job() -> None:
    schedules = cron_schedules()
    for where, schedule, job in schedules:
        assert croniter.is_valid(schedule), (where, schedule)
        assert job in JOBS, (where, job)
    for platform in ("render", "k8s"):
        assert {job for where, _s, job in schedules if where == platform} == set(JOBS), platform
    assert not croniter.is_valid("61 * * * *")


# --------------------------------------------------------------------------- Kubernetes


def test_kubernetes_manifests_validate_strictly() -> None:
    assert len(K8S_FILES) >= 9
    result = run(tool("kubernetes-validate"), "--strict", *map(str, K8S_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_rejects_a_broken_copy(tmp_path: Path) -> None:
    broken = write_broken(
        tmp_path,
        "deployment-api.yaml",
        "terminationGracePeriodSeconds: 45",
        "terminationGracePeriod: 45",
        "deploy/k8s/deployment-api.yaml",
    )
    result = run(tool("kubernetes-validate"), "--strict", str(broken))
    assert result.returncode != 0


def test_kubernetes_policy() -> None:
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for doc in k8s_documents()}
    kinds = {kind for kind, _name in docs}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Job",
        "CronJob",
    } <= kinds
    api = docs[("Deployment", "handoffrail-api")]["spec"]["template"]["spec"]
    container = api["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    graceful = int(
        next(var["value"] for var in container["env"] if var["name"] == "GUNICORN_GRACEFUL_TIMEOUT")
    )
    assert sleep + graceful < api["terminationGracePeriodSeconds"]
    dockerfile_uid = int(
        re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)[1]  # type: ignore[index]
    )
    for name, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == dockerfile_uid, name
        for item in spec["containers"]:
            assert item["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert item["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert item["resources"]["requests"], name
            assert item["resources"]["limits"], name
    migrate = docs[("Job", "handoffrail-migrate")]["spec"]["template"]["spec"]
    assert migrate["containers"][0]["args"] == ["migrate", "up"]


# --------------------------------------------------------------------------- YAML


def test_yamllint_is_clean() -> None:
    result = run(tool("yamllint"), "--strict", *YAML_FILES)
    assert result.returncode == 0, result.stdout


def test_yamllint_rejects_a_broken_copy(tmp_path: Path) -> None:
    broken = write_broken(tmp_path, "render.yaml", "  - type: worker", "  -  type: worker")
    config = str(ROOT / ".yamllint.yaml")
    result = run(tool("yamllint"), "--strict", "-c", config, str(broken))
    assert result.returncode != 0


def test_the_workers_own_counters_are_served_where_prometheus_can_reach_them(
    tmp_path: Path,
) -> None:
    """Deliveries and job runs are counted in the worker's process only (README, Webhooks)."""
    worker = prod_config(tmp_path)["services"]["worker"]
    port = worker["environment"]["HR_WORKER_METRICS_PORT"]
    assert worker["environment"]["HR_WORKER_METRICS_HOST"] == ALL_INTERFACES
    assert port in [str(exposed) for exposed in worker["expose"]]
    [(_, spec)] = [(name, spec) for name, spec in pod_specs() if name == "handoffrail-worker"]
    [container] = spec["containers"]
    env = {var["name"]: var.get("value") for var in container.get("env", [])}
    assert env["HR_WORKER_METRICS_HOST"] == ALL_INTERFACES
    ports = {entry["name"]: entry["containerPort"] for entry in container.get("ports", [])}
    assert str(ports["metrics"]) == env["HR_WORKER_METRICS_PORT"]
