"""API key use cases: authenticate, create, list, revoke, rotate, bootstrap.

A tenant admin manages its own tenant's keys; only an operator key (the bootstrap or CLI key on
the operator tenant) may act on other tenants (CONTRACT.md §10.5).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.api.roles import Role
from handoffrail_server.audit import service as audit
from handoffrail_server.clock import Clock
from handoffrail_server.db.models import ApiKey
from handoffrail_server.errors import AuthenticationFailed, Conflict, NotFound, PermissionDenied
from handoffrail_server.keys import repository, tokens
from handoffrail_server.keys.cache import PrincipalCache
from handoffrail_server.keys.schemas import ApiKeyRead
from handoffrail_server.limits import service as limits
from handoffrail_server.limits.service import TenantLimits
from handoffrail_server.limits.tiers import Quotas, effective_quotas
from handoffrail_server.tenants import service as tenants

DEFAULT_TENANT_ID = "default"


class MissingKey(AuthenticationFailed):
    """No X-API-Key header."""

    code = "auth.missing_key"


class InvalidKey(AuthenticationFailed):
    """The key is unknown."""

    code = "auth.invalid_key"


class KeyRevoked(PermissionDenied):
    """The key was revoked (403, as the original server answers)."""

    code = "auth.key_revoked"


class OperatorRequired(PermissionDenied):
    """Acting on another tenant needs the operator key."""

    code = "auth.operator_required"


class KeyNotFound(NotFound):
    """No such key in the caller's scope."""

    code = "key.not_found"


class KeyAlreadyRevoked(Conflict):
    """Revoking a key twice."""

    code = "key.already_revoked"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved from the API key on every request."""

    key_id: str
    key_prefix: str
    tenant_id: str
    role: Role
    is_operator: bool
    tier: str = "free"
    handoffs_per_day: int | None = None
    max_api_keys: int | None = None

    def can_manage(self, tenant_id: str) -> bool:
        """True when this caller may administer `tenant_id`."""
        return self.is_operator or tenant_id == self.tenant_id


def to_read(key: ApiKey, plain: str | None = None) -> ApiKeyRead:
    """Wire shape of a key row."""
    return ApiKeyRead(
        id=key.id,
        name=key.name,
        key_prefix=key.key_prefix,
        tenant_id=key.tenant_id,
        role=key.role,
        revoked=key.revoked_at is not None,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        key=plain,
    )


async def authenticate(
    session: AsyncSession, plain: str | None, cache: PrincipalCache | None = None
) -> Principal:
    """Resolve a plain key to its principal or raise 401/403.

    With `cache` (PostgreSQL, keys/cache.py) a key resolved moments ago needs no lookup."""
    if not plain:
        raise MissingKey("Missing X-API-Key header")
    plain = plain.strip()
    if not tokens.looks_like_key(plain):
        raise InvalidKey("Invalid API key")
    key_hash = tokens.hash_key(plain)
    generation = 0
    if cache is not None:
        cached: Principal | None = cache.get(key_hash)
        if cached is not None:
            return cached
        generation = cache.generation()
    row = await repository.principal_row(session, key_hash)
    if row is None:
        raise InvalidKey("Invalid API key")
    if row.revoked_at is not None:
        raise KeyRevoked("API key has been revoked")
    if row.deleted_at is not None:
        raise InvalidKey("Invalid API key")
    principal = Principal(
        key_id=row.id,
        key_prefix=row.key_prefix,
        tenant_id=row.tenant_id,
        role=Role(row.role),
        is_operator=bool(row.is_operator and row.tenant_is_operator),
        tier=row.tier,
        handoffs_per_day=row.handoffs_per_day,
        max_api_keys=row.max_api_keys,
    )
    if cache is not None:
        cache.put(key_hash, principal, generation)
    return principal


async def _insert(
    session: AsyncSession,
    clock: Clock,
    *,
    tenant_id: str,
    name: str,
    role: Role,
    plain: str | None = None,
    is_operator: bool = False,
) -> tuple[ApiKey, str]:
    plain = plain or tokens.generate_key()
    key = ApiKey(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        name=name,
        key_hash=tokens.hash_key(plain),
        key_prefix=tokens.display_prefix(plain),
        role=role.value,
        is_operator=is_operator,
        created_at=clock.now(),
    )
    await repository.add(session, key)
    return key, plain


async def create(
    session: AsyncSession,
    clock: Clock,
    principal: Principal,
    *,
    name: str,
    role: Role,
    tenant_id: str | None = None,
    tiers: dict[str, Quotas] | None = None,
) -> ApiKeyRead:
    """Create a key in the caller's tenant (or another tenant, for the operator)."""
    target = tenant_id or principal.tenant_id
    if not principal.can_manage(target):
        raise OperatorRequired("Creating keys for another tenant needs the operator key")
    tenant = await tenants.get_active(session, target)
    if tenant is None:
        raise tenants.TenantNotFound(f"Tenant {target} not found")
    if tiers is not None:
        quotas = effective_quotas(tiers, tenant.tier, max_api_keys=tenant.max_api_keys)
        await limits.check_api_key_quota(session, TenantLimits(tenant.id, tenant.tier, quotas))
    key, plain = await _insert(session, clock, tenant_id=target, name=name, role=role)
    await audit.record_admin(
        session,
        clock,
        tenant_id=target,
        actor=f"key:{principal.key_id}",
        action="api_key.created",
        resource_type="api_key",
        resource_id=key.id,
        details={"role": role.value, "key_prefix": key.key_prefix},
    )
    return to_read(key, plain)


async def list_for(session: AsyncSession, principal: Principal, tenant_id: str) -> list[ApiKeyRead]:
    """Keys of a tenant the caller may manage (no plain keys)."""
    if not principal.can_manage(tenant_id):
        raise tenants.TenantNotFound(f"Tenant {tenant_id} not found")
    if await tenants.get_active(session, tenant_id) is None:
        raise tenants.TenantNotFound(f"Tenant {tenant_id} not found")
    return [to_read(key) for key in await repository.list_for_tenant(session, tenant_id)]


async def _owned(session: AsyncSession, principal: Principal, key_id: str) -> ApiKey:
    key = await repository.by_id(session, key_id)
    if key is None or not principal.can_manage(key.tenant_id):
        raise KeyNotFound(f"API key {key_id} not found")
    return key


async def revoke(session: AsyncSession, clock: Clock, principal: Principal, key_id: str) -> None:
    """Revoke a key; revoking twice is a conflict."""
    key = await _owned(session, principal, key_id)
    if key.revoked_at is not None:
        raise KeyAlreadyRevoked(f"API key {key_id} is already revoked")
    key.revoked_at = clock.now()
    await session.flush()
    await audit.record_admin(
        session,
        clock,
        tenant_id=key.tenant_id,
        actor=f"key:{principal.key_id}",
        action="api_key.revoked",
        resource_type="api_key",
        resource_id=key.id,
        details={"key_prefix": key.key_prefix},
    )


async def rotate(
    session: AsyncSession, clock: Clock, principal: Principal, key_id: str
) -> ApiKeyRead:
    """Revoke a key and issue its replacement with the same tenant and role."""
    key = await _owned(session, principal, key_id)
    if key.revoked_at is not None:
        raise KeyAlreadyRevoked(f"API key {key_id} is already revoked")
    key.revoked_at = clock.now()
    new_key, plain = await _insert(
        session,
        clock,
        tenant_id=key.tenant_id,
        name=f"{key.name} (rotated)"[:256],
        role=Role(key.role),
        is_operator=key.is_operator,
    )
    await audit.record_admin(
        session,
        clock,
        tenant_id=key.tenant_id,
        actor=f"key:{principal.key_id}",
        action="api_key.rotated",
        resource_type="api_key",
        resource_id=key.id,
        details={"replacement_id": new_key.id, "key_prefix": new_key.key_prefix},
    )
    return to_read(new_key, plain)


async def create_for_tenant_name(
    session: AsyncSession, clock: Clock, *, tenant_name: str, name: str, role: Role, tier: str
) -> tuple[ApiKeyRead, bool]:
    """CLI: create a key for the tenant named `tenant_name` (created if missing).

    Returns the key and whether the tenant was created. A key for the default tenant made here
    is an operator key, like the bootstrap key.
    """
    tenant = await tenants.by_name(session, tenant_name)
    created = False
    if tenant is None:
        tenant = await tenants.create_row(session, clock, name=tenant_name, tier=tier)
        created = True
    key, plain = await _insert(
        session,
        clock,
        tenant_id=tenant.id,
        name=name,
        role=role,
        is_operator=tenant.is_operator and role is Role.ADMIN,
    )
    return to_read(key, plain), created


async def bootstrap(
    session: AsyncSession, clock: Clock, *, plain: str | None, tier: str
) -> str | None:
    """Make the first operator key when the database has none.

    With `plain` (HR_BOOTSTRAP_API_KEY) that key is stored; without it a new key is generated
    and returned so the caller can print it once. Returns None when keys already exist.
    Safe to run from several processes at once: the unique key hash decides.
    """
    if await repository.count_all(session) > 0:
        return None
    await tenants.ensure_default(session, clock, tier=tier)
    try:
        async with session.begin_nested():
            _key, stored = await _insert(
                session,
                clock,
                tenant_id=DEFAULT_TENANT_ID,
                name="bootstrap operator key",
                role=Role.ADMIN,
                plain=plain,
                is_operator=True,
            )
    except IntegrityError:
        return None
    return stored
