"""SSRF guard: which addresses a webhook may reach, checked at creation and at every delivery.

A delivery resolves the host, refuses private, loopback, link-local, CGNAT, reserved and cloud
metadata addresses, and then connects to the very address it checked (no DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_BLOCKED_HOSTNAMES = {"localhost", "metadata.google.internal", "metadata", "instance-data"}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
#: longest URL accepted, here as well as by the API, so rows stored before any cap stay bounded
MAX_URL_LENGTH = 2048
#: seconds a lookup may take; past it the host counts as not resolving (the system resolver
#: can take 5 s per attempt and server, while a webhook create holds its database connection)
RESOLVE_SECONDS = 5.0


#: one DNS label as sent on the wire (IDNA names arrive as `xn--` labels); `_` is tolerated,
#: as resolvers and httpx do
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def _valid_hostname(ascii_host: str) -> bool:
    """A name of 1..253 characters of well-formed labels (the trailing root dot excepted)."""
    name = ascii_host[:-1] if ascii_host.endswith(".") else ascii_host
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


class EgressRefused(ValueError):
    """The URL may not be called."""


def address_allowed(address: IPAddress, *, allow_private: bool) -> bool:
    """True when `address` is a public unicast address (or private ones are allowed)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_multicast or address.is_unspecified:
        return False
    if allow_private and address.is_loopback:
        return True  # `::1` lies in the reserved `::/8` but is loopback
    if address.is_reserved:
        return False
    if allow_private:
        return True
    if address.is_loopback or address.is_link_local or address.is_private:
        return False
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return False
    return address.is_global


def check_url_shape(url: str, *, allow_private: bool) -> tuple[str, str, int]:
    """Validate scheme/host/port of `url`; returns (scheme, host, port). No DNS here.

    The URL must also be one httpx can build a request from, so a URL accepted here can never
    fail later at delivery (control characters, bad IDNA labels, unbalanced IPv6 brackets)."""
    if len(url) > MAX_URL_LENGTH:
        raise EgressRefused(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        built = httpx.URL(url)
        built.host  # noqa: B018 -- decoding the host is where bad IDNA labels fail
        raw_host = built.raw_host  # the host as sent: IDNA names as `xn--` labels
    except (ValueError, httpx.InvalidURL):  # IDNA errors are UnicodeError, a ValueError
        raise EgressRefused("webhook URL is malformed") from None
    if parts.scheme not in {"http", "https"}:
        raise EgressRefused("webhook URL must use http or https")
    if parts.username or parts.password:
        raise EgressRefused("webhook URL must not contain credentials")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise EgressRefused("webhook URL needs a host")
    try:
        port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise EgressRefused("webhook URL has an invalid port") from None
    if not 0 < port < 65536:
        raise EgressRefused("webhook URL has an invalid port")
    if not allow_private and (host in _BLOCKED_HOSTNAMES or host.endswith(".localhost")):
        raise EgressRefused(f"webhook host {host!r} is not allowed")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        if not _valid_hostname(raw_host.decode("ascii", "replace").lower()):
            raise EgressRefused("webhook URL's host is not a valid host name") from None
        return parts.scheme, host, port
    if not address_allowed(literal, allow_private=allow_private):
        raise EgressRefused("webhook URL points at a private or reserved address")
    return parts.scheme, host, port


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (empty when it does not resolve)."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_SECONDS):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError, TimeoutError):
        return []
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def check_at_creation(url: str, *, allow_private: bool) -> None:
    """Refuse blocked URLs; a hostname that does not resolve is accepted (DNS may be down)."""
    _scheme, host, port = check_url_shape(url, allow_private=allow_private)
    for address in await resolve(host, port):
        if not address_allowed(address, allow_private=allow_private):
            raise EgressRefused("webhook host resolves to a private or reserved address")


async def pin_address(url: str, *, allow_private: bool) -> IPAddress:
    """At delivery: resolve, refuse if ANY address is blocked, return the address to connect to."""
    _scheme, host, port = check_url_shape(url, allow_private=allow_private)
    addresses = await resolve(host, port)
    if not addresses:
        raise EgressRefused(f"webhook host {host!r} does not resolve")
    for address in addresses:
        if not address_allowed(address, allow_private=allow_private):
            raise EgressRefused("webhook host resolves to a private or reserved address")
    return addresses[0]
