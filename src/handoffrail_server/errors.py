"""Domain errors: every expected failure is a `DomainError` with a stable wire `code`.

Services raise these; `api.problems` renders them as RFC 9457 problem documents, and the CLI
and worker catch them by class.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every expected failure; `code` is stable and documented (`feature.reason`)."""

    code: str = "error"
    status: int = 400
    title: str = "Bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        #: extra response headers (e.g. Retry-After)
        self.headers: dict[str, str] = {}

    def wire_detail(self) -> str | dict[str, Any]:
        """The problem document's `detail`: the message, unless the original server's clients
        expect an object here (CONTRACT.md §2)."""
        return self.detail


class NotFound(DomainError):
    """The resource does not exist in the caller's tenant."""

    code = "resource.not_found"
    status = 404
    title = "Not found"


class Conflict(DomainError):
    """The request conflicts with the current state of the resource."""

    code = "resource.conflict"
    status = 409
    title = "Conflict"


class InvalidInput(DomainError):
    """The request is well-formed JSON but semantically invalid."""

    code = "request.invalid"
    status = 400
    title = "Invalid request"


class Unprocessable(DomainError):
    """The body fails validation against a schema."""

    code = "request.unprocessable"
    status = 422
    title = "Unprocessable content"


class AuthenticationFailed(DomainError):
    """No usable credentials."""

    code = "auth.invalid_key"
    status = 401
    title = "Unauthorized"


class PermissionDenied(DomainError):
    """Credentials are valid but not allowed to do this."""

    code = "auth.forbidden"
    status = 403
    title = "Forbidden"
