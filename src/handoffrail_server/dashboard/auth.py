"""Dashboard sessions: a signed cookie that references a key (never the key itself) plus CSRF.

The session token is `base64url(json payload).base64url(HMAC-SHA256)` signed with
HR_SECRET_KEY. It names the key id and tenant; every request re-reads the key row, so a revoked
key (or a deleted tenant) ends the session at once. The CSRF token lives in the signed payload and
must come back in a hidden form field on every POST.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.api.roles import Role, allows
from handoffrail_server.keys import repository as keys_repository
from handoffrail_server.tenants import service as tenants

SESSION_COOKIE = "hr_dashboard"
LOGIN_COOKIE = "hr_dashboard_login"
#: where the dashboard lives below the app's root path (its cookies are scoped to it)
PATH = "/dashboard"
SESSION_MAX_AGE = 12 * 3600
LOGIN_MAX_AGE = 3600
_SESSION_PURPOSE = b"handoffrail.dashboard.session.v1|"
_LOGIN_PURPOSE = b"handoffrail.dashboard.login.v1|"


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is signed in: resolved from the session cookie on every request."""

    key_id: str
    key_name: str
    key_prefix: str
    tenant_id: str
    role: Role
    csrf_token: str

    @property
    def can_act(self) -> bool:
        """Agent role or stronger may approve, reject and edit."""
        return allows(self.role, Role.AGENT)

    @property
    def responder(self) -> str:
        """`responded_by` of this viewer's HITL decisions: the key's name (or id)."""
        return (self.key_name or self.key_id)[:256]


def _same(left: str, right: str) -> bool:
    """Constant-time equality of two strings (any characters; compare_digest wants bytes)."""
    return hmac.compare_digest(left.encode("utf-8"), right.encode("utf-8"))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, purpose: bytes, body: str) -> str:
    digest = hmac.new(secret.encode(), purpose + body.encode("ascii"), hashlib.sha256).digest()
    return _b64(digest)


def _sign(secret: str, purpose: bytes, payload: dict[str, Any]) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_mac(secret, purpose, body)}"


def _verify(secret: str, purpose: bytes, token: str | None, now: datetime, max_age: int) -> Any:
    """The payload of a well-signed, unexpired token, or None."""
    if not token or token.count(".") != 1 or len(token) > 2048:
        return None
    body, mac = token.split(".")
    if not body.isascii():
        return None
    if not _same(mac, _mac(secret, purpose, body)):
        return None
    try:
        payload = json.loads(_unb64(body))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(payload, dict):
        return None
    issued = payload.get("iat")
    if not isinstance(issued, int) or not 0 <= now.timestamp() - issued <= max_age:
        return None
    return payload


def new_login_token(secret: str, now: datetime) -> tuple[str, str]:
    """(cookie value, form value) of the sign-in form's double-submit CSRF token."""
    nonce = secrets.token_urlsafe(24)
    return _sign(secret, _LOGIN_PURPOSE, {"n": nonce, "iat": int(now.timestamp())}), nonce


def login_token_ok(secret: str, cookie: str | None, form_value: str, now: datetime) -> bool:
    """True when the sign-in form's CSRF field matches its signed cookie."""
    payload = _verify(secret, _LOGIN_PURPOSE, cookie, now, LOGIN_MAX_AGE)
    nonce = payload.get("n") if payload else None
    return isinstance(nonce, str) and bool(form_value) and _same(nonce, form_value)


def new_session_token(secret: str, *, key_id: str, tenant_id: str, now: datetime) -> str:
    """A signed session token naming the key id and tenant, with a fresh CSRF token."""
    payload = {
        "kid": key_id,
        "tid": tenant_id,
        "csrf": secrets.token_urlsafe(32),
        "iat": int(now.timestamp()),
    }
    return _sign(secret, _SESSION_PURPOSE, payload)


async def viewer_from_token(
    session: AsyncSession, secret: str, token: str | None, now: datetime
) -> Viewer | None:
    """The signed-in viewer, or None when the token is bad, expired, or its key is revoked."""
    payload = _verify(secret, _SESSION_PURPOSE, token, now, SESSION_MAX_AGE)
    if payload is None:
        return None
    key_id, tenant_id, csrf = payload.get("kid"), payload.get("tid"), payload.get("csrf")
    if not all(isinstance(value, str) and value for value in (key_id, tenant_id, csrf)):
        return None
    key = await keys_repository.by_id(session, str(key_id))
    if key is None or key.revoked_at is not None or key.tenant_id != tenant_id:
        return None
    if await tenants.get_active(session, key.tenant_id) is None:
        return None
    return Viewer(
        key_id=key.id,
        key_name=key.name,
        key_prefix=key.key_prefix,
        tenant_id=key.tenant_id,
        role=Role(key.role),
        csrf_token=str(csrf),
    )


def csrf_ok(viewer: Viewer, form_value: str) -> bool:
    """True when a POST carries this session's CSRF token."""
    return bool(form_value) and _same(viewer.csrf_token, form_value)
