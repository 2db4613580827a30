"""SSRF guard: address classifier, URL shape rules, creation check and delivery-time pinning.

DNS is faked (socket.getaddrinfo is replaced), so nothing here depends on a resolver.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any

import pytest

from handoffrail_server.webhooks import egress

BLOCKED_ADDRESSES = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "192.168.255.255",
    "169.254.169.254",
    "169.254.0.1",
    "100.64.0.1",
    "100.127.255.254",
    "fc00::1",
    "fd12:3456::1",
    "fd00:ec2::254",
    "fe80::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "0.0.0.0",  # noqa: S104
    "::",
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.10",
    "198.18.0.1",
]
PUBLIC_ADDRESSES = ["93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700::1111", "2001:4860::8888"]
NEVER_EVEN_IF_PRIVATE = [
    "0.0.0.0",  # noqa: S104
    "::",
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    "240.0.0.1",
]
PRIVATE_ALLOWED_WHEN_ENABLED = ["127.0.0.1", "::1", "10.0.0.1", "192.168.1.1", "fd12::1"]


@pytest.mark.parametrize("literal", BLOCKED_ADDRESSES)
def test_private_loopback_link_local_cgnat_and_reserved_addresses_are_refused(
    literal: str,
) -> None:
    assert not egress.address_allowed(ipaddress.ip_address(literal), allow_private=False)


@pytest.mark.parametrize("literal", PUBLIC_ADDRESSES)
def test_public_unicast_addresses_are_allowed(literal: str) -> None:
    assert egress.address_allowed(ipaddress.ip_address(literal), allow_private=False)


@pytest.mark.parametrize("literal", PRIVATE_ALLOWED_WHEN_ENABLED)
def test_allow_private_permits_loopback_and_private_targets(literal: str) -> None:
    assert egress.address_allowed(ipaddress.ip_address(literal), allow_private=True)


@pytest.mark.parametrize("literal", NEVER_EVEN_IF_PRIVATE)
def test_allow_private_never_permits_multicast_unspecified_or_reserved(literal: str) -> None:
    assert not egress.address_allowed(ipaddress.ip_address(literal), allow_private=True)


def url_for(literal: str, path: str = "/hook") -> str:
    host = f"[{literal}]" if ":" in literal else literal
    return f"http://{host}:8080{path}"


@pytest.mark.parametrize("literal", BLOCKED_ADDRESSES)
def test_urls_with_blocked_literal_hosts_are_refused(literal: str) -> None:
    with pytest.raises(egress.EgressRefused):
        egress.check_url_shape(url_for(literal), allow_private=False)


@pytest.mark.parametrize("literal", PUBLIC_ADDRESSES)
def test_urls_with_public_literal_hosts_pass_the_shape_check(literal: str) -> None:
    scheme, host, port = egress.check_url_shape(url_for(literal), allow_private=False)
    assert (scheme, port) == ("http", 8080)
    assert ipaddress.ip_address(host) == ipaddress.ip_address(literal)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/hook",
        "http://LOCALHOST./hook",
        "http://api.localhost/hook",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://metadata/latest",
        "http://instance-data/latest/meta-data/",
    ],
)
def test_localhost_and_metadata_hostnames_are_refused(url: str) -> None:
    with pytest.raises(egress.EgressRefused):
        egress.check_url_shape(url, allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://93.184.216.34/hook",
        "file:///etc/passwd",
        "gopher://93.184.216.34/",
        "javascript:alert(1)",
        "93.184.216.34/hook",
        "http:///nohost",
        "http://93.184.216.34:99999/hook",
        # urlsplit raises ValueError on these
        "http://[abc/",
        "http://[::1",
        "http://[abc]/hook",
        "https://ex\u2100ample.com/",
        # urlsplit accepts these but httpx cannot build a request from them
        "http://93.184.216.34/hook\u0001",
        "http://93.184.216.34/h\tok",
        "http://xn--zz.example/hook",
        "http://93.184.216.34/" + "a" * 70_000,
        # host names no resolver would ever answer for
        "https://a..b/hook",
        "https://exa mple.com/",
        "https://%00.com/",
        "https://.com/",
        "https://-bad.example.com/",
        "https://bad-.example.com/",
        "https://" + "a" * 64 + ".example.com/",
        "https://" + "a." * 127 + "com/",
        # port 0
        "https://example.com:0/hook",
    ],
)
def test_non_http_schemes_and_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(egress.EgressRefused):
        egress.check_url_shape(url, allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "https://example.com./hook",
        "https://hooks.example-site.co.uk:8443/hook",
        "https://例え.jp/hook",
        "https://my_service.example.com/hook",
        "https://" + "a" * 63 + ".example.com/",
        "https://xn--r8jz45g.jp/hook",
    ],
)
def test_well_formed_host_names_pass_the_shape_check(url: str) -> None:
    egress.check_url_shape(url, allow_private=False)


def test_urls_up_to_the_length_cap_are_accepted_and_longer_ones_refused() -> None:
    base = "http://93.184.216.34/"
    longest = base + "a" * (egress.MAX_URL_LENGTH - len(base))
    assert egress.check_url_shape(longest, allow_private=False)[1] == "93.184.216.34"
    with pytest.raises(egress.EgressRefused, match="longer"):
        egress.check_url_shape(longest + "a", allow_private=False)


@pytest.mark.parametrize(
    "url",
    ["http://user:pass@93.184.216.34/hook", "https://token@93.184.216.34/hook"],
)
def test_credentials_in_the_url_are_refused(url: str) -> None:
    with pytest.raises(egress.EgressRefused, match="credentials"):
        egress.check_url_shape(url, allow_private=False)


def test_default_ports_follow_the_scheme() -> None:
    assert egress.check_url_shape("https://93.184.216.34/x", allow_private=False)[2] == 443
    assert egress.check_url_shape("http://93.184.216.34/x", allow_private=False)[2] == 80


def test_allow_private_accepts_loopback_urls_but_not_multicast() -> None:
    assert egress.check_url_shape("http://127.0.0.1:9/x", allow_private=True)[1] == "127.0.0.1"
    assert egress.check_url_shape("http://localhost:9/x", allow_private=True)[1] == "localhost"
    with pytest.raises(egress.EgressRefused):
        egress.check_url_shape("http://224.0.0.1/x", allow_private=True)
    with pytest.raises(egress.EgressRefused):
        egress.check_url_shape("http://0.0.0.0:9/x", allow_private=True)


# -- DNS (faked) -------------------------------------------------------------------------------

FAKE_DNS: dict[str, list[str]] = {
    "slow.example": ["10.1.2.3"],  # answers only after 30 s
    "public.example": ["93.184.216.34"],
    "dual.example": ["93.184.216.34", "2606:4700::1111"],
    "internal.example": ["10.1.2.3"],
    "sneaky.example": ["93.184.216.34", "127.0.0.1"],
    "mapped.example": ["::ffff:169.254.169.254"],
}


#: "slow.example" is answered when this is set (or after 30 s)
SLOW_ANSWER = threading.Event()


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve only FAKE_DNS names; everything else is NXDOMAIN (no real resolver used)."""

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name == "slow.example":
            SLOW_ANSWER.wait(30)
        if name not in FAKE_DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        infos = []
        for literal in FAKE_DNS[name]:
            family = socket.AF_INET6 if ":" in literal else socket.AF_INET
            sockaddr = (literal, int(port or 0), 0, 0) if ":" in literal else (literal, port)
            infos.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return infos

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


async def test_resolve_returns_literals_without_dns_and_dedupes_answers() -> None:
    assert await egress.resolve("127.0.0.1", 80) == [ipaddress.ip_address("127.0.0.1")]
    assert await egress.resolve("public.example", 80) == [ipaddress.ip_address("93.184.216.34")]
    assert len(await egress.resolve("dual.example", 443)) == 2
    assert await egress.resolve("nonexistent.invalid", 80) == []


async def test_creation_accepts_public_and_unresolvable_hostnames() -> None:
    await egress.check_at_creation("https://public.example/hook", allow_private=False)
    await egress.check_at_creation("https://dual.example/hook", allow_private=False)
    # DNS may be down at creation time: an unresolvable name is accepted
    await egress.check_at_creation("https://nonexistent.invalid/hook", allow_private=False)


@pytest.mark.parametrize("host", ["internal.example", "sneaky.example", "mapped.example"])
async def test_creation_refuses_hostnames_resolving_to_private_addresses(host: str) -> None:
    with pytest.raises(egress.EgressRefused, match="resolves"):
        await egress.check_at_creation(f"https://{host}/hook", allow_private=False)


async def test_a_lookup_past_its_time_counts_as_not_resolving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A create must not hold its database connection for the resolver's retries; a delivery
    to such a host is a failed attempt, as for a name that does not resolve."""
    monkeypatch.setattr(egress, "RESOLVE_SECONDS", 0.2)
    SLOW_ANSWER.clear()
    started = time.monotonic()
    try:
        assert await egress.resolve("slow.example", 443) == []
        await egress.check_at_creation("https://slow.example/hook", allow_private=False)
        with pytest.raises(egress.EgressRefused, match="does not resolve"):
            await egress.pin_address("https://slow.example/hook", allow_private=False)
        assert time.monotonic() - started < 10
    finally:
        SLOW_ANSWER.set()  # the resolver threads still waiting end now, not in 30 s


async def test_pin_address_refuses_a_hostname_that_does_not_resolve() -> None:
    with pytest.raises(egress.EgressRefused, match="does not resolve"):
        await egress.pin_address("https://nonexistent.invalid/hook", allow_private=False)


@pytest.mark.parametrize("host", ["internal.example", "sneaky.example", "mapped.example"])
async def test_pin_address_refuses_if_any_resolved_address_is_blocked(host: str) -> None:
    with pytest.raises(egress.EgressRefused):
        await egress.pin_address(f"https://{host}/hook", allow_private=False)


async def test_pin_address_returns_the_checked_address_to_connect_to() -> None:
    pinned = await egress.pin_address("https://public.example/hook", allow_private=False)
    assert pinned == ipaddress.ip_address("93.184.216.34")
    literal = await egress.pin_address("http://[2606:4700::1111]/hook", allow_private=False)
    assert literal == ipaddress.ip_address("2606:4700::1111")


async def test_pin_address_follows_dns_changes_between_creation_and_delivery() -> None:
    # accepted at creation while it pointed at a public address ...
    FAKE_DNS["rebind.example"] = ["93.184.216.34"]
    await egress.check_at_creation("https://rebind.example/hook", allow_private=False)
    FAKE_DNS["rebind.example"] = ["169.254.169.254"]
    try:
        # ... but delivery resolves again and refuses the metadata address (no DNS rebinding)
        with pytest.raises(egress.EgressRefused):
            await egress.pin_address("https://rebind.example/hook", allow_private=False)
    finally:
        del FAKE_DNS["rebind.example"]


async def test_pin_address_with_allow_private_reaches_loopback_only_as_asked() -> None:
    assert await egress.pin_address("http://127.0.0.1:9/x", allow_private=True) == (
        ipaddress.ip_address("127.0.0.1")
    )
    assert await egress.pin_address("http://internal.example/x", allow_private=True) == (
        ipaddress.ip_address("10.1.2.3")
    )
    with pytest.raises(egress.EgressRefused):
        await egress.pin_address("http://[ff02::1]/x", allow_private=True)
