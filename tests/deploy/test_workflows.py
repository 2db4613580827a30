"""Offline proofs of the GitHub workflows and the supply-chain gates (`make security`).

One source of truth: every `run:` step is `make TARGET` for a Makefile target that exists, and
ci.yml calls exactly the targets `.ci/run` reaches; any other workflow target is marked [network]
in the Makefile. Each gate is shown once to fail on a broken copy: an unpinned action, an
injection-prone `run:`, an invalid workflow, a Bandit finding, an unused dependency, a forbidden
import, a license off the allow-list.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import ROOT, run, tool

WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))
# Targets ci.yml may call that `.ci/run` cannot (no Docker engine, no network there).
CI_ONLY = {"image"}
MAKE_LINE = re.compile(r"^make(?:\s+[A-Z_]+=\S+)*((?:\s+[a-z][\w-]*)+)$")
PINNED_USES = re.compile(r"^\s*(?:-\s+)?uses:\s*([^@\s]+)@([0-9a-f]{40})\s+#\s*v?\d[\w.]*\s*$")


def makefile_targets() -> dict[str, tuple[set[str], str]]:
    """Target -> (targets it runs: prerequisites and `$(MAKE) X`, its `##` help text)."""
    targets: dict[str, tuple[set[str], str]] = {}
    current: str | None = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([a-z][\w-]*):(?!=)\s*([^#]*?)\s*(?:##\s*(.*))?$", line)
        if match:
            current = match.group(1)
            prerequisites = {p for p in match.group(2).split() if re.fullmatch(r"[a-z][\w-]*", p)}
            targets[current] = (prerequisites, match.group(3) or "")
        elif current and line.startswith("\t"):
            for sub in re.findall(r"\$\(MAKE\)\s+([a-z][\w-]*)", line):
                targets[current][0].add(sub)
        elif line and not line.startswith("\t"):
            current = None
    return targets


def closure(roots: set[str], targets: dict[str, tuple[set[str], str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen and name in targets:
            seen.add(name)
            todo.extend(targets[name][0])
    return seen


def ci_run_targets() -> set[str]:
    text = (ROOT / ".ci/run").read_text()
    return set(re.findall(r"^\s*make\s+([a-z][\w-]*)", text, flags=re.MULTILINE))


def run_steps(workflow: dict[str, Any]) -> list[str]:
    return [
        step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step
    ]


def step_targets(script: str) -> list[str]:
    """The make targets a `run:` script invokes; ValueError when a line is anything else."""
    found: list[str] = []
    for line in script.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "${{" in line:
            raise ValueError(f"expression inside run: {line!r} (pass it through env:)")
        match = MAKE_LINE.match(line)
        if not match:
            raise ValueError(f"not a make call: {line!r}")
        found.extend(match.group(1).split())
    return found


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def workflow_targets(path: Path) -> set[str]:
    return {target for script in run_steps(load(path)) for target in step_targets(script)}


def test_every_run_step_is_a_make_target_that_exists() -> None:
    targets = makefile_targets()
    assert {"lint", "typecheck", "test", "security"} <= set(targets)
    for path in WORKFLOWS:
        for script in run_steps(load(path)):
            for target in step_targets(script):
                assert target in targets, f"{path.name}: make {target} is not in the Makefile"


def test_step_checker_rejects_a_broken_copy() -> None:
    assert step_targets("make lint\n") == ["lint"]
    for bad in [
        "pip install ruff",
        'echo "${{ github.event.issue.title }}"',
        "make lint && curl x",
    ]:
        with pytest.raises(ValueError, match=r"make call|expression"):
            step_targets(bad)


def test_ci_workflow_runs_what_ci_run_runs() -> None:
    targets = makefile_targets()
    local = ci_run_targets()
    assert "test" in local
    # `.ci/run` runs `make test` (whose prerequisites are the jobs of ci.yml) plus its own setup.
    expected = (local - {"test"}) | targets["test"][0]
    assert expected == {"browser", "lint", "typecheck", "security", "coverage"}
    assert workflow_targets(ROOT / ".github/workflows/ci.yml") - CI_ONLY == expected


def test_workflow_targets_outside_ci_run_are_marked_network() -> None:
    targets = makefile_targets()
    reached = closure(ci_run_targets(), targets)
    for path in WORKFLOWS:
        for target in workflow_targets(path) - reached:
            assert targets[target][1].startswith("[network]"), f"{path.name}: make {target}"


def test_actions_pinned_to_a_commit_with_a_version_comment() -> None:
    for path in [*WORKFLOWS, ROOT / ".github/dependabot.yml"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"^\s*(?:-\s+)?uses:", line):
                assert PINNED_USES.match(line), f"{path.name}:{number}: {line.strip()}"


def test_checkout_never_persists_credentials_and_permissions_are_explicit() -> None:
    for path in WORKFLOWS:
        workflow = load(path)
        assert workflow["permissions"] == {}, f"{path.name}: top-level permissions must be {{}}"
        for name, job in workflow["jobs"].items():
            assert "permissions" in job, f"{path.name}: job {name} declares no permissions"
            for step in job["steps"]:
                if str(step.get("uses", "")).startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False, f"{path.name}: {name}"


def test_release_smokes_every_deploy_and_rolls_back_on_failure() -> None:
    workflow = load(ROOT / ".github/workflows/release.yml")
    deploys = {name: job for name, job in workflow["jobs"].items() if name.startswith("deploy-")}
    assert set(deploys) == {"deploy-fly", "deploy-render", "deploy-railway"}
    for name, job in deploys.items():
        assert job["environment"]["name"].endswith("-production"), name
        runs = [(step.get("if"), step["run"].strip()) for step in job["steps"] if "run" in step]
        assert runs == [(None, "make deploy"), (None, "make smoke"), ("failure()", "make rollback")]
    assert "smoke" in makefile_targets()["rollback"][0], "rollback must smoke the old release"


def test_release_script_is_shellcheck_clean() -> None:
    result = run(tool("shellcheck"), ".github/scripts/release.sh")
    assert result.returncode == 0, result.stdout + result.stderr


# --- each gate fails on a broken copy ------------------------------------------------------------

BROKEN_WORKFLOW = """\
name: broken
on: [pull_request_target]
permissions: {}
jobs:
  build:
    runs-on: ubuntu-24.04
    permissions:
      contents: read
    steps:
      - uses: docker/login-action@v3
      - run: echo "${{ github.event.pull_request.title }}"
"""


@pytest.fixture
def broken_workflows(tmp_path: Path) -> Path:
    folder = tmp_path / ".github/workflows"
    folder.mkdir(parents=True)
    (folder / "broken.yml").write_text(BROKEN_WORKFLOW)
    return tmp_path


def test_zizmor_is_clean() -> None:
    result = run(
        tool("zizmor"), "--offline", "--min-severity", "medium", "--no-progress", ".github"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_rejects_unpinned_action_and_injection(broken_workflows: Path) -> None:
    result = run(
        tool("zizmor"), "--offline", "--min-severity", "medium", "--no-progress", ".github",
        cwd=broken_workflows,
    )  # fmt: skip
    assert result.returncode != 0
    assert "unpinned-uses" in result.stdout
    assert "template-injection" in result.stdout


def test_workflow_schema_rejects_a_broken_copy(broken_workflows: Path) -> None:
    path = broken_workflows / ".github/workflows/broken.yml"
    path.write_text(BROKEN_WORKFLOW.replace("runs-on: ubuntu-24.04", "runs_on: ubuntu-24.04"))
    schema = ("--builtin-schema", "vendor.github-workflows")
    assert run(tool("check-jsonschema"), *schema, str(path)).returncode != 0
    good = [str(p) for p in WORKFLOWS]
    result = run(tool("check-jsonschema"), *schema, *good)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bandit_rejects_a_broken_copy(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("import subprocess\n\nsubprocess.call(input(), shell=True)\n")
    assert run(tool("bandit"), "-ll", "-q", "-r", str(tmp_path)).returncode != 0


def test_every_nosec_carries_its_reason() -> None:
    for path in (ROOT / "src").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "nosec" in line:
                assert re.search(r"nosec(?: B\d+)*\s+-\s+\S", line), f"{path}:{number}"


def copy_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    return project


def test_deptry_rejects_an_unused_dependency(tmp_path: Path) -> None:
    project = copy_project(tmp_path)
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(
        text.replace('    "jinja2>=3.1",\n', '    "jinja2>=3.1",\n    "pyyaml",\n')
    )
    result = run(tool("deptry"), "src", cwd=project)
    assert result.returncode != 0
    assert "DEP002" in result.stdout + result.stderr
    assert "pyyaml" in result.stdout + result.stderr


def test_import_linter_rejects_a_forbidden_import(tmp_path: Path) -> None:
    project = copy_project(tmp_path)
    lifecycle = project / "src/handoffrail_server/packets/lifecycle.py"
    lifecycle.write_text(lifecycle.read_text() + "\nimport sqlalchemy  # noqa: E402, F401\n")
    env = {"PATH": str(Path(tool("lint-imports")).parent), "PYTHONPATH": str(project / "src")}
    result = run(tool("lint-imports"), "--no-cache", cwd=project, env=env)
    assert result.returncode != 0
    assert "handoffrail_server.packets.lifecycle -> sqlalchemy" in result.stdout


def test_license_gate_rejects_a_license_off_the_list(tmp_path: Path) -> None:
    script = ROOT / ".github/scripts/check_licenses.py"
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("fastapi==0.1\nuvloop==0.1 ; sys_platform == 'win32'\n")
    allow = tmp_path / "allowed.txt"
    allow.write_text((ROOT / ".licenses-allowed.txt").read_text())
    python = str(Path(tool("python")))
    ok = run(python, str(script), "uv", str(allow), str(requirements))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    allow.write_text("Apache-2.0\n")
    result = run(python, str(script), "uv", str(allow), str(requirements))
    assert result.returncode == 1
    assert "fastapi" in result.stderr


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("MIT", True),
        ("GPL-3.0", False),
        ("MIT OR GPL-3.0", True),
        ("MIT AND GPL-3.0", False),
        ("MPL-2.0 AND (Apache-2.0 OR MIT)", True),
        ("MPL-2.0 AND (GPL-3.0 OR LGPL-3.0)", False),
        ("(GPL-3.0 OR MIT) AND (BSD-3-Clause OR GPL-2.0)", True),
        ("Mozilla Public License 2.0 (MPL 2.0)", True),  # parentheses inside a name
        ("MIT; GPL-3.0", True),
    ],
)
def test_license_expressions_are_evaluated_with_groups(expression: str, expected: bool) -> None:
    spec = importlib.util.spec_from_file_location(
        "check_licenses", ROOT / ".github/scripts/check_licenses.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    allow = {"MIT", "MPL-2.0", "BSD-3-Clause", "Mozilla Public License 2.0 (MPL 2.0)"}
    assert module.allowed(expression, allow) is expected
