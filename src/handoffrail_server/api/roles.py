"""Role-based access rules (PURE): which minimum role each method + path needs.

First match wins, as in the original server's RBAC table (CONTRACT.md §1); anything unmatched
needs `admin` (default deny).
"""

from __future__ import annotations

import re
from enum import StrEnum


class Role(StrEnum):
    """API key roles, weakest to strongest."""

    READER = "reader"  #: read packets, history and audit
    AGENT = "agent"  #: reader + claim, update, respond
    WRITER = "writer"  #: agent + create, batch, chain, delete, schemas, webhooks
    ADMIN = "admin"  #: writer + keys and tenant settings


RANK: dict[Role, int] = {Role.READER: 1, Role.AGENT: 2, Role.WRITER: 3, Role.ADMIN: 4}

_ANY = None
_P = "/api/v1"
_ID = r"[^/]+"

#: (path regex, methods or None for any, minimum role) — first match wins
RULES: tuple[tuple[re.Pattern[str], frozenset[str] | None, Role], ...] = tuple(
    (re.compile(pattern), methods, role)
    for pattern, methods, role in (
        (rf"^{_P}/(keys|tenants|system)(/.*)?$", _ANY, Role.ADMIN),
        (rf"^{_P}/packets/(search|awaiting)$", frozenset({"GET", "HEAD"}), Role.READER),
        (rf"^{_P}/packets/{_ID}/history$", frozenset({"GET", "HEAD"}), Role.READER),
        (rf"^{_P}/packets(/{_ID})?$", frozenset({"GET", "HEAD"}), Role.READER),
        (rf"^{_P}/packets/claim-next$", frozenset({"POST"}), Role.AGENT),
        (rf"^{_P}/packets/{_ID}/(claim|respond)$", frozenset({"POST"}), Role.AGENT),
        (rf"^{_P}/packets/{_ID}$", frozenset({"PATCH"}), Role.AGENT),
        (rf"^{_P}/packets(/.*)?$", _ANY, Role.WRITER),
        (rf"^{_P}/hooks/dlq(/.*)?$", _ANY, Role.ADMIN),
        (rf"^{_P}/(schemas|hooks)(/.*)?$", _ANY, Role.WRITER),
        (rf"^{_P}/audit$", frozenset({"GET", "HEAD"}), Role.READER),
        (rf"^{_P}/audit(/.*)?$", _ANY, Role.WRITER),
        (rf"^{_P}/agents(/.*)?$", frozenset({"GET", "HEAD"}), Role.READER),
        (rf"^{_P}/usage$", frozenset({"GET", "HEAD"}), Role.READER),
        (rf"^{_P}/dashboard(/.*)?$", _ANY, Role.READER),
    )
)


def required_role(method: str, path: str) -> Role:
    """Minimum role for `method` on `path` (a path under /api/v1); admin when nothing matches."""
    method = method.upper()
    for pattern, methods, role in RULES:
        if pattern.match(path) and (methods is None or method in methods):
            return role
    return Role.ADMIN


def allows(held: Role, needed: Role) -> bool:
    """True when a key holding `held` may do what needs `needed`."""
    return RANK[held] >= RANK[needed]
