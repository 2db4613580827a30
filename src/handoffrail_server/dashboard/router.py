"""The HITL page: sign in with an API key, list packets awaiting a human, act on one, live updates.

Server-rendered (Jinja2, autoescape on) with one small static script; no build step. The API key
is POSTed once to /dashboard/session and never appears in a URL, a cookie or a log: the cookie
holds a signed token naming the key id (see `auth`). Every POST carries the session's CSRF token.
Reads and decisions go through the packet service, exactly as the REST API does.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import structlog
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from sse_starlette import ServerSentEvent

from handoffrail_server.api.deps import (
    AppState,
    Session,
    State,
    app_state,
    request_id,
    throttle_auth_failure,
)
from handoffrail_server.dashboard import auth
from handoffrail_server.dashboard.auth import Viewer
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.errors import DomainError, NotFound
from handoffrail_server.keys import service as keys_service
from handoffrail_server.limits.errors import RateLimited
from handoffrail_server.packets import updates
from handoffrail_server.packets.schemas import HitlRespond, PacketContext, PacketUpdate
from handoffrail_server.packets.service import PacketService, to_read
from handoffrail_server.realtime import service as streams
from handoffrail_server.realtime.slots import SlotResponse, reserve

router = APIRouter(prefix=auth.PATH, include_in_schema=False)
log = structlog.get_logger(__name__)

_HERE = Path(__file__).parent
_ENV = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
TEMPLATES = Jinja2Templates(env=_ENV)

#: no inline script or style; only this origin's static files and SSE
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_PAGE_HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store"}
_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
#: a packet's decisions; every action records a HITL response through the respond use case
_RESPONSES = {"approve": "approved", "reject": "rejected", "edit": "approved"}
INBOX_LIMIT = 200
MAX_COMMENT = 4000
MAX_SUMMARY = 20_000
#: concurrent dashboard streams per tenant (browser tabs); separate from the API's tier caps
MAX_STREAMS_PER_TENANT = 20
STREAM_BATCH = 200
#: how often an open stream re-checks that its key is still valid
STREAM_RECHECK_SECONDS = 15.0
_open_streams: dict[str, int] = defaultdict(int)


# -- helpers -------------------------------------------------------------------------------


def _secret(state: AppState) -> str:
    return state.settings.secret_key.get_secret_value()


def _base(request: Request) -> str:
    """The dashboard's own path as the browser sees it: below the app's root path (a proxy's
    prefix, `--root-path`), where links, redirects and cookies must point."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/") + auth.PATH


def _set_cookie(response: Response, request: Request, name: str, value: str, age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=age,
        path=_base(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _clear_cookie(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(
        name,
        path=_base(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _page(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    viewer: Viewer | None = None,
    status: int = 200,
) -> Response:
    values = {
        "viewer": viewer,
        "csrf_token": viewer.csrf_token if viewer else "",
        "base": _base(request),
        **context,
    }
    return TEMPLATES.TemplateResponse(
        request, name, values, status_code=status, headers=_PAGE_HEADERS
    )


def _error(
    request: Request, viewer: Viewer | None, status: int, title: str, message: str
) -> Response:
    context = {"title": title, "message": message, "status": status}
    return _page(request, "error.html", context, viewer=viewer, status=status)


def _redirect(request: Request, page: str = "") -> RedirectResponse:
    """303 to a dashboard page (`""` is the sign-in page, `"/inbox"` the inbox)."""
    return RedirectResponse(
        _base(request) + page, status_code=303, headers={"Cache-Control": "no-store"}
    )


def _to_signin(request: Request) -> Response:
    response = _redirect(request)
    if auth.SESSION_COOKIE in request.cookies:
        _clear_cookie(response, request, auth.SESSION_COOKIE)
    return response


async def _form(request: Request) -> dict[str, str]:
    """First value of each field of an urlencoded form (NULs dropped); {} for anything else."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return {}
    try:
        parsed = parse_qs(
            (await request.body()).decode("utf-8"), keep_blank_values=True, max_num_fields=16
        )
    except (UnicodeDecodeError, ValueError):
        return {}
    return {name: values[0].replace("\x00", "") for name, values in parsed.items() if values}


async def _viewer(request: Request, state: AppState, session: AsyncSession) -> Viewer | None:
    token = request.cookies.get(auth.SESSION_COOKIE)
    return await auth.viewer_from_token(session, _secret(state), token, state.clock.now())


def _service(
    request: Request, state: AppState, session: AsyncSession, viewer: Viewer
) -> PacketService:
    return PacketService(
        session,
        state.clock,
        viewer.tenant_id,
        key_id=viewer.key_id,
        request_id=request_id(request),
        ttl_seconds=state.settings.packet_ttl_seconds,
    )


def _packet_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _not_found(request: Request, viewer: Viewer) -> Response:
    return _error(request, viewer, 404, "Packet not found", "No such packet in your tenant.")


def _signin_page(
    request: Request, state: AppState, error: str | None, status: int = 200
) -> Response:
    cookie, nonce = auth.new_login_token(_secret(state), state.clock.now())
    response = _page(request, "signin.html", {"csrf_token": nonce, "error": error}, status=status)
    _set_cookie(response, request, auth.LOGIN_COOKIE, cookie, auth.LOGIN_MAX_AGE)
    return response


# -- sign in and out ----------------------------------------------------------------------


@router.get("")
async def signin_form(request: Request, state: State, session: Session) -> Response:
    """The sign-in form, or the inbox when already signed in."""
    if await _viewer(request, state, session) is not None:
        return _redirect(request, "/inbox")
    return _signin_page(request, state, None)


@router.post("/session")
async def sign_in(request: Request, state: State, session: Session) -> Response:
    """Check the posted API key once; on success set the signed session cookie."""
    form = await _form(request)
    secret, now = _secret(state), state.clock.now()
    cookie = request.cookies.get(auth.LOGIN_COOKIE)
    if not auth.login_token_ok(secret, cookie, form.get("csrf_token", ""), now):
        message = "The sign-in form expired or did not come from this page; reload it."
        return _error(request, None, 403, "Forbidden", message)
    try:
        principal = await keys_service.authenticate(session, form.get("api_key"))
    except DomainError:
        try:
            await throttle_auth_failure(request, state)
        except RateLimited:
            return _signin_page(request, state, "Too many failed sign-ins; wait a minute.", 429)
        return _signin_page(request, state, "That API key is not valid.", 401)
    token = auth.new_session_token(
        secret, key_id=principal.key_id, tenant_id=principal.tenant_id, now=now
    )
    response = _redirect(request, "/inbox")
    _set_cookie(response, request, auth.SESSION_COOKIE, token, auth.SESSION_MAX_AGE)
    _clear_cookie(response, request, auth.LOGIN_COOKIE)
    log.info("dashboard.signed_in", key_id=principal.key_id, tenant_id=principal.tenant_id)
    return response


@router.post("/signout")
async def sign_out(request: Request, state: State, session: Session) -> Response:
    """Clear the session cookie (CSRF-checked, so no other site can sign a user out)."""
    viewer = await _viewer(request, state, session)
    if viewer is None:
        return _to_signin(request)
    if not auth.csrf_ok(viewer, (await _form(request)).get("csrf_token", "")):
        return _error(request, viewer, 403, "Forbidden", "Missing or wrong CSRF token.")
    response = _redirect(request)
    _clear_cookie(response, request, auth.SESSION_COOKIE)
    return response


# -- inbox and packet ---------------------------------------------------------------------


@router.get("/inbox")
async def inbox(request: Request, state: State, session: Session) -> Response:
    """Packets awaiting a human in the viewer's tenant, oldest first."""
    viewer = await _viewer(request, state, session)
    if viewer is None:
        return _to_signin(request)
    page = await _service(request, state, session, viewer).awaiting(limit=INBOX_LIMIT, offset=0)
    packets = [packet.model_dump(mode="json") for packet in page.packets]
    context = {"packets": packets, "total": page.total}
    return _page(request, "inbox.html", context, viewer=viewer)


@router.get("/packets/{ref}")
async def packet_page(ref: str, request: Request, state: State, session: Session) -> Response:
    """One packet's context: summary, conversation, decisions and the HITL checkpoint."""
    viewer = await _viewer(request, state, session)
    if viewer is None:
        return _to_signin(request)
    packet_id = _packet_uuid(ref)
    if packet_id is None:
        return _not_found(request, viewer)
    try:
        packet = await _service(request, state, session, viewer).load(packet_id)
    except NotFound:
        return _not_found(request, viewer)
    context = {"packet": to_read(packet).model_dump(mode="json")}
    return _page(request, "packet.html", context, viewer=viewer)


@router.post("/packets/{ref}/respond")
async def respond(ref: str, request: Request, state: State, session: Session) -> Response:
    """Approve, reject, or edit the summary and approve: the HITL respond use case."""
    viewer = await _viewer(request, state, session)
    if viewer is None:
        return _to_signin(request)
    form = await _form(request)
    if not auth.csrf_ok(viewer, form.get("csrf_token", "")):
        return _error(request, viewer, 403, "Forbidden", "Missing or wrong CSRF token.")
    if not viewer.can_act:
        message = f"Your key's role ({viewer.role.value}) may view packets; acting needs agent."
        return _error(request, viewer, 403, "Forbidden", message)
    packet_id = _packet_uuid(ref)
    if packet_id is None:
        return _not_found(request, viewer)
    action = form.get("action", "")
    comment = form.get("comment", "").strip()
    summary = form.get("summary", "").strip()
    if action not in _RESPONSES or len(comment) > MAX_COMMENT:
        return _error(request, viewer, 400, "Bad request", "Unknown action or comment too long.")
    if action == "edit" and not 0 < len(summary) <= MAX_SUMMARY:
        return _error(request, viewer, 400, "Bad request", "The summary must not be empty.")
    service = _service(request, state, session, viewer)
    try:
        # A savepoint: an edit is undone when the response then fails (someone answered first).
        async with session.begin_nested():
            if action == "edit":
                packet = await service.load(packet_id)
                edited = PacketContext.model_validate({**packet.context, "summary": summary})
                await updates.update(
                    service,
                    packet_id,
                    PacketUpdate(context=edited),
                    actor=f"human:{viewer.responder}",
                )
            body = HitlRespond(
                response=_RESPONSES[action], responded_by=viewer.responder, notes=comment or None
            )
            await service.respond(packet_id, body)
    except NotFound:
        return _not_found(request, viewer)
    except DomainError as exc:
        return _error(request, viewer, exc.status, "Could not record the decision", exc.detail)
    except ValidationError:
        return _error(request, viewer, 400, "Bad request", "The edited packet is not valid.")
    log.info("dashboard.hitl_decision", packet_id=str(packet_id), action=action)
    return _redirect(request, "/inbox")


# -- live updates and static files --------------------------------------------------------


async def _wait_for_events(state: AppState, tenant_id: str) -> None:
    if state.broker is None:
        await asyncio.sleep(state.settings.stream_poll_seconds)
    else:
        await state.broker.wait(tenant_id, state.settings.stream_poll_seconds)


async def _stream_viewer(request: Request, state: AppState) -> tuple[Viewer | None, int]:
    async with unit_of_work(state.sessions) as session:
        viewer = await _viewer(request, state, session)
        newest = await streams.newest_id(session, viewer.tenant_id) if viewer else 0
    return viewer, newest


@router.get("/events")
async def events(
    request: Request,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
) -> Response:
    """Same-origin SSE of the viewer's tenant (session cookie auth) for the inbox script."""
    state = app_state(request)
    viewer, newest = await _stream_viewer(request, state)
    if viewer is None:
        return Response(status_code=401, headers={"Cache-Control": "no-store"})
    tenant_id = viewer.tenant_id
    slot = reserve(_open_streams, tenant_id, MAX_STREAMS_PER_TENANT)
    if slot is None:
        return Response(status_code=429, headers={"Retry-After": "30"})
    resume = streams.parse_last_event_id(last_event_id)  # as on /events; odd: start at now
    after_id = newest if resume is None else resume

    async def frames() -> AsyncIterator[ServerSentEvent]:
        nonlocal after_id
        checked = time.monotonic()
        yield ServerSentEvent(data=json.dumps({"type": "connected"}), event="connected")
        while True:
            async with unit_of_work(state.sessions) as session:
                if time.monotonic() - checked > STREAM_RECHECK_SECONDS:
                    checked = time.monotonic()
                    if await _viewer(request, state, session) is None:
                        return  # key revoked or session expired: end the stream
                batch = await streams.read_batch(session, tenant_id, after_id, STREAM_BATCH)
            for event in batch.events:
                after_id = event.id
                payload = json.dumps(streams.envelope(event))
                yield ServerSentEvent(data=payload, id=str(event.id))
            if batch.held_back:
                await asyncio.sleep(streams.HELD_BACK_RETRY_SECONDS)
            elif len(batch.events) < STREAM_BATCH:
                await _wait_for_events(state, tenant_id)

    return SlotResponse(
        frames(),
        slot=slot,
        ping=int(state.settings.stream_heartbeat_seconds),
        send_timeout=5.0,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


_STATIC_BODIES = {name: (_HERE / "static" / name).read_bytes() for name in _STATIC}


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    """The page's script and stylesheet (a fixed list: no path from the request is opened)."""
    if name not in _STATIC:
        return Response(status_code=404)
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP}
    return Response(_STATIC_BODIES[name], media_type=_STATIC[name], headers=headers)
