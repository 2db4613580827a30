"""Fast lanes: the hottest routes served without FastAPI's per-request machinery (issue 10).

A create, read, claim, claim-next or PATCH is a handful of microseconds of work in our code and
several hundred in FastAPI's request handling around it: dependency solving with its exit
stacks and cancel scopes, the generic body reader, response validation. A lane is a route
placed before FastAPI's own that serves the *ordinary* request of one endpoint by calling the
very same endpoint function with the very same dependencies, done by hand:

1. the body is read, parsed (`json.loads`, as FastAPI) and validated against the endpoint's
   body model; the path parameters against their types (a `TypeAdapter`, as FastAPI);
2. the request's unit of work and principal come from `request_session` and
   `resolve_principal`, the functions behind the `Session` and `Caller` dependencies;
3. the endpoint function runs; the unit of work commits (shielded from cancellation, as FastAPI
   shields a dependency's exit) before a byte is sent;
4. the answer is serialised by the response model's `TypeAdapter` (`by_alias`, as FastAPI).

Anything unusual — a query string, a content type other than plain `application/json`, an
empty, unparseable or invalid body or path parameter, a body on a GET — is handed, untouched, to
FastAPI's route (the buffered body replayed), so every error is the one FastAPI answers, byte
for byte. Errors raised once the lane has taken the request (authentication, limits, domain
errors) propagate to the same exception handlers as from FastAPI's route. Lanes are not in the
OpenAPI document: FastAPI's routes, which they shadow, are. With FastAPI's native telemetry on,
a lane-served request records none of FastAPI's per-endpoint operations (dependencies, endpoint,
serialisation); our metrics and access log are the same. `HR_FAST_LANES=false` brings them back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from fastapi import FastAPI
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette._utils import get_route_path
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, compile_path
from starlette.types import Message, Receive, Scope, Send

from handoffrail_server.api.deps import app_state, request_session, resolve_principal
from handoffrail_server.db.fast import load_json

#: scope key set when a lane hands a request to FastAPI's routing (lanes then do not match)
HANDED_OVER = "handoffrail.lane_handed_over"

Endpoint = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class LaneSpec:
    """One endpoint served by a lane: its FastAPI path template and function."""

    method: str
    path: str
    endpoint: Endpoint
    body: type[BaseModel] | None  #: None: the endpoint takes no body (a GET)
    response: type[BaseModel]
    status_code: int = 200
    path_types: tuple[tuple[str, Any], ...] = ()


def _replay(body: bytes, receive: Receive) -> Receive:
    """The already-read body once, then the connection's own `receive` (its disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _plain_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bytes(value).strip().lower() == b"application/json"
    return False


class Lane(BaseRoute):
    """A route serving the ordinary requests of one endpoint; see the module docstring."""

    def __init__(self, spec: LaneSpec) -> None:
        self.spec = spec
        self.path = spec.path
        self.path_regex, self.path_format, self.param_convertors = compile_path(spec.path)
        self.name = f"lane:{spec.endpoint.__name__}"
        self._body = TypeAdapter(spec.body) if spec.body is not None else None
        self._response = TypeAdapter(spec.response)
        self._path_types = tuple((name, TypeAdapter(kind)) for name, kind in spec.path_types)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] != self.spec.method or HANDED_OVER in scope:
            return Match.NONE, {}
        found = self.path_regex.match(get_route_path(scope))
        if found is None:
            return Match.NONE, {}
        params = dict(scope.get("path_params", {}))
        params.update(found.groupdict())
        return Match.FULL, {"route": self, "endpoint": self.spec.endpoint, "path_params": params}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            body = await request.body()
        except HTTPException:
            raise  # the body cap's 413
        except Exception as error:  # as FastAPI answers a body it could not read
            raise HTTPException(400, "There was an error parsing the body") from error
        arguments = self._arguments(scope, body)
        if arguments is None:
            await self._hand_over(scope, _replay(body, receive), send)
            return
        # As FastAPI's `scope="function"` dependencies: the commit (or rollback) at the end of
        # the unit of work is shielded from cancellation, and done before the answer is sent.
        cleanup = anyio.CancelScope()
        with cleanup:
            async with request_session(app_state(request)) as session:
                try:
                    caller = await resolve_principal(request, session)
                    result = await self.spec.endpoint(
                        request=request, session=session, caller=caller, **arguments
                    )
                finally:
                    cleanup.shield = True
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancel held off by the shield
        if isinstance(result, Response):
            response = result
        else:
            content = self._response.dump_json(result, by_alias=True)
            response = Response(
                content, status_code=self.spec.status_code, media_type="application/json"
            )
        await response(scope, receive, send)

    def _arguments(self, scope: Scope, body: bytes) -> dict[str, Any] | None:
        """The endpoint's body and path arguments, or None when FastAPI should answer."""
        if scope.get("query_string"):
            return None
        if self._body is None:
            if body:
                return None
        elif not body or not _plain_json(scope):
            return None
        try:
            arguments: dict[str, Any] = {}
            if self._body is not None:
                # `json.loads`'s value (orjson where it reads the same), validated as FastAPI does
                arguments["body"] = self._body.validate_python(load_json(body))
            params = scope["path_params"]
            for name, adapter in self._path_types:
                arguments[name] = adapter.validate_python(params[name])
        except (ValueError, ValidationError, RecursionError):  # JSONDecodeError: a ValueError
            return None
        return arguments

    async def _hand_over(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[HANDED_OVER] = True
        for key in ("route", "endpoint"):
            scope.pop(key, None)
        app: FastAPI = scope["app"]
        await app.router(scope, receive, send)


def install_lanes(app: FastAPI, specs: tuple[LaneSpec, ...]) -> None:
    """Put a lane for each spec in front of the app's routes."""
    app.router.routes[0:0] = [Lane(spec) for spec in specs]
