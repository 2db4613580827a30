"""License gate: every runtime dependency in uv.lock has a license on .licenses-allowed.txt.

Usage: check_licenses.py UV [ALLOWED_FILE] [REQUIREMENTS_FILE]. The runtime set is `uv export
--no-dev` (markers evaluated for this platform); licenses come from pip-licenses (metadata first,
then classifiers). Exits 1 and names each offender; unknown licenses count as offenders.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

BIN = Path(sys.executable).parent


def runtime_packages(uv: str, requirements: Path | None) -> list[str]:
    """Names of the locked runtime dependencies that apply to this platform."""
    if requirements is not None:
        text = requirements.read_text()
    else:
        export = [uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes"]
        text = subprocess.run(  # noqa: S603 - our own uv binary, fixed arguments
            [*export, "--no-annotate", "--no-header"], check=True, capture_output=True, text=True
        ).stdout
    names = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():
            names.append(requirement.name)
    return names


#: a parenthesised sub-expression (names may hold parentheses too: "... (MPL 2.0)" is a name)
_GROUP = re.compile(r"\(([^()]*\s(?:OR|AND)\s[^()]*)\)")
_SATISFIED, _REFUSED = "LicenseRef-satisfied", "LicenseRef-refused"


def allowed(expression: str, allow: set[str]) -> bool:
    """True when a license expression is satisfied by the allow-list (OR: any; AND: all;
    parenthesised groups first, e.g. "MPL-2.0 AND (Apache-2.0 OR MIT)")."""
    expression = expression.strip()
    if expression in allow:
        return True
    while match := _GROUP.search(expression):
        value = _SATISFIED if allowed(match.group(1), allow) else _REFUSED
        expression = expression[: match.start()] + value + expression[match.end() :]
    allow = allow | {_SATISFIED}
    alternatives = re.split(r";\s*|\s+OR\s+", expression)
    return any(
        all(part.strip() in allow for part in re.split(r"\s+AND\s+", alternative))
        for alternative in alternatives
    )


def main(argv: list[str]) -> int:
    uv = argv[1] if len(argv) > 1 else "uv"
    allow_file = Path(argv[2] if len(argv) > 2 else ".licenses-allowed.txt")
    requirements = Path(argv[3]) if len(argv) > 3 else None
    allow = {
        line.strip()
        for line in allow_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    names = runtime_packages(uv, requirements)
    report = subprocess.run(  # noqa: S603 - the venv's pip-licenses, fixed arguments
        [str(BIN / "pip-licenses"), "--from=mixed", "--format=json", "--packages", *names],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = {entry["Name"].lower().replace("_", "-"): entry for entry in json.loads(report)}
    missing = sorted({name.lower() for name in names} - set(found))
    offenders = [
        f"{entry['Name']} {entry['Version']}: {entry['License']}"
        for entry in found.values()
        if not allowed(entry["License"], allow)
    ]
    for name in missing:
        offenders.append(f"{name}: not installed, license unknown (run `make install`)")
    if offenders:
        sys.stderr.write(f"licenses: {len(offenders)} not on {allow_file}:\n")
        for offender in offenders:
            sys.stderr.write(f"  {offender}\n")
        return 1
    sys.stdout.write(f"licenses: {len(found)} runtime packages, all on {allow_file}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
