"""RFC 9457 problem documents that the SDK also understands (`detail` string, optional `field`).

One `detail` is an object, as the original server sent it: a 409 claim conflict's
`{"message", "claimed_by"}` (CONTRACT.md §2; RFC 9457 consumers ignore a non-string `detail`).

Every error body is JSON: the SDK retries blindly on a non-JSON error body (CONTRACT.md §9).
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from handoffrail_server.errors import DomainError
from handoffrail_server.observability.metrics import DB_ERRORS

PROBLEM_TYPE_BASE = "https://handoffrail.dev/problems/"
MEDIA_TYPE = "application/problem+json"

log = structlog.get_logger(__name__)

_HTTP_CODES = {
    400: ("request.bad", "Bad request"),
    401: ("auth.missing_key", "Unauthorized"),
    403: ("auth.forbidden", "Forbidden"),
    404: ("route.not_found", "Not found"),
    405: ("route.method_not_allowed", "Method not allowed"),
    406: ("request.not_acceptable", "Not acceptable"),
    413: ("request.too_large", "Content too large"),
    415: ("request.unsupported_media_type", "Unsupported media type"),
    422: ("request.validation_failed", "Unprocessable content"),
    429: ("rate_limit.exceeded", "Too many requests"),
}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str | dict[str, Any],
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """Build a problem+json response."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code.replace(".", "/"),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    body.update({key: value for key, value in extra.items() if value is not None})
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


async def _domain_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    extra = {key: _jsonable(value) for key, value in exc.extra.items()}
    return problem(
        exc.status,
        exc.code,
        exc.title,
        _jsonable(exc.wire_detail()),
        headers=exc.headers or None,
        **extra,
    )


def _release_frames(exc: BaseException) -> None:
    """Drop the tracebacks of an answered error and of its causes.

    FastAPI raises a body it could not decode as JSON from a local variable of its request
    handler, so that frame and the error's traceback refer to each other: a cycle that holds
    the request's body (bytes and decoded text) until the collector's next pass. Without the
    tracebacks the finished frames are freed at once. Nothing reads them after this answer."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        error.__traceback__ = None
        pending += [error.__cause__, error.__context__]


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    _release_frames(exc)
    errors = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        errors.append(
            {"loc": location, "msg": str(error.get("msg", "")), "type": error.get("type")}
        )
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(part for part in first["loc"] if part not in {"body", "query", "path"})
    detail = f"{where}: {first['msg']}" if where else str(first["msg"])
    field = where or None
    return problem(
        422,
        "request.validation_failed",
        "Unprocessable content",
        detail,
        errors=errors,
        field=field,
    )


#: FastAPI's wording when reading or decoding the body raised something other than a JSON error
_BODY_PARSE_FAILED = "There was an error parsing the body"


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _BODY_PARSE_FAILED and exc.__cause__ is not None:
        # Non-UTF-8 bytes or absurd nesting: a malformed body, 422 like any other bad JSON.
        if isinstance(exc.__cause__, RecursionError):
            return await _recursion_error(_request, exc.__cause__)
        return problem(
            422,
            "request.validation_failed",
            "Unprocessable content",
            "Request body is not valid UTF-8 JSON",
            field="body",
        )
    code, title = _HTTP_CODES.get(exc.status_code, ("http.error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    headers = dict(exc.headers) if exc.headers else None
    return problem(exc.status_code, code, title, detail, headers=headers)


async def _recursion_error(_request: Request, _exc: Exception) -> Response:
    return problem(
        422, "request.too_deep", "Unprocessable content", "JSON body is nested too deeply"
    )


def _database_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError | OSError):
        return True
    if isinstance(exc, TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    if _database_unavailable(exc):
        DB_ERRORS.inc()
        log.warning("database.unavailable", path=request.url.path, error=type(exc).__name__)
        return problem(
            503,
            "service.database_unavailable",
            "Service unavailable",
            "The database is unavailable; retry shortly",
            headers={"Retry-After": "5"},
        )
    log.error(
        "request.failed", path=request.url.path, method=request.method, error=type(exc).__name__
    )
    return problem(500, "server.internal", "Internal server error", "An internal error occurred")


async def _database_error(request: Request, exc: Exception) -> Response:
    # Handled here (inside Starlette's ExceptionMiddleware) a database outage is answered and
    # done; the catch-all `Exception` handler below would answer too, but Starlette re-raises
    # after it, so every request during an outage would also log a full, unredacted traceback.
    if not _database_unavailable(exc):
        raise exc
    return await _unexpected_error(request, exc)


def install_problem_handlers(app: FastAPI) -> None:
    """Register the one error handler family on `app`."""
    for kind in (OperationalError, InterfaceError, PoolTimeoutError, DBAPIError, OSError):
        app.add_exception_handler(kind, _database_error)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RecursionError, _recursion_error)
    app.add_exception_handler(Exception, _unexpected_error)
