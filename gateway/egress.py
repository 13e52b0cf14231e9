"""Where callvault's outgoing requests (webhooks) may go: the SSRF rules.

A webhook URL is the tenant's, and the request leaves from inside the operator's network,
so a URL must not be a way into that network.

* Unless ``allow_http`` is set, only ``https://`` URLs.
* Unless ``allow_private`` is set, no address that is not plainly public
  (`refused_address`): loopback, private, link-local, multicast, reserved, unspecified,
  anything Python does not count as global (shared 100.64/10, benchmarking, documentation
  ranges), the ranges that tunnel or translate to IPv4 (6to4 and its relay anycast, NAT64,
  Teredo, IPv4-compatible: a relay or a translator could carry the request to an inside
  IPv4 host) and any address with a zone id.

`check_webhook_url` refuses such a URL when it is PUT (422 on ``webhook.url``: the scheme,
and an address written in the URL, IPv4's legacy forms included; a name is not resolved
then, and a host that is no DNS name at all is refused by the document's own rules,
``storage.instructions.webhook_host_problem``). Each delivery refuses it for good
(``gateway.webhooks``): on the URL (`url_refusal`, a host that is no DNS name included), on
the host's resolved addresses before the request (`check_host`), and on the addresses the
connection actually uses (`CheckingResolver`), so DNS rebinding between the two cannot
reach the inside.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import ResolveResult

from gateway.settings import WebhookSettings
from storage.errors import InvalidInstructions
from storage.instructions import webhook_host_problem

__all__ = [
    "AddressRefused",
    "CheckingResolver",
    "check_addresses",
    "check_host",
    "check_webhook_url",
    "not_a_name",
    "refused_address",
    "url_refusal",
]


# IPv6 ranges that carry an IPv4 address, or a tunnel to one, and that Python's is_private and
# is_global do not all flag (nor the same way in every 3.11 release): through a 6to4 relay, a
# NAT64 translator or a Teredo server a request to them can reach an inside IPv4 host. Refused
# whole, whatever IPv4 address they embed: no webhook receiver has a reason to live there.
_TUNNELLED = (
    ("6to4", ipaddress.ip_network("2002::/16")),  # RFC 3056: 2002:<IPv4>::/48
    ("6to4 relay", ipaddress.ip_network("192.88.99.0/24")),  # RFC 7526, deprecated anycast
    ("NAT64", ipaddress.ip_network("64:ff9b::/96")),  # RFC 6052 well-known prefix
    ("NAT64 local-use", ipaddress.ip_network("64:ff9b:1::/48")),  # RFC 8215
    ("Teredo", ipaddress.ip_network("2001::/32")),  # RFC 4380
    ("IPv4-compatible", ipaddress.ip_network("::/96")),  # RFC 4291, deprecated ::a.b.c.d
)


def refused_address(address: str) -> str | None:
    """Why a webhook may not connect to ``address`` (an IP literal, possibly with a zone id),
    or None when it may."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            # fe80::1%eth0: an interface of this host picks the destination, not routing.
            return "zone-scoped"
        if ip.ipv4_mapped is not None:
            # ::ffff:127.0.0.1 is 127.0.0.1 on the wire; Python 3.11 does not look inside.
            ip = ip.ipv4_mapped
    if not (ip.is_loopback or ip.is_unspecified):  # ::1 and :: are in ::/96 too
        for kind, network in _TUNNELLED:
            if ip in network:
                return kind
    for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:  # shared address space (100.64/10) and the like
        return "not public"
    return None


# IPv4 as inet_aton reads it (and so getaddrinfo, when it meets a "name" like these):
# 2130706433, 0x7f.1, 017700000001 and 127.1 are all 127.0.0.1.
_LEGACY_IPV4 = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}")


def _address_in(host: str) -> str | None:
    """The IP address a URL's host (lowercase, without brackets) is written as, or None
    for a name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


def url_refusal(url: str, settings: WebhookSettings) -> str | None:
    """Why the settings forbid sending to ``url`` as written (its scheme; an address in it),
    or None. A host name passes: its addresses are checked when it is resolved."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https" and not settings.allow_http:
        return "must be an https:// URL (this gateway sends webhooks over TLS only)"
    if problem := webhook_host_problem(parts.hostname or ""):
        return problem  # stored by a version that did not check it: it never resolves
    if settings.allow_private:
        return None
    address = _address_in(parts.hostname or "")
    reason = None if address is None else refused_address(address)
    if reason is not None:
        return f"names a {reason} address, which webhooks may not reach"
    return None


def check_webhook_url(url: str, settings: WebhookSettings) -> None:
    """Refuse a webhook URL the settings forbid when it is PUT: `InvalidInstructions` on
    ``webhook.url`` (the URL is never quoted: it may carry a token)."""
    reason = url_refusal(url, settings)
    if reason is not None:
        raise InvalidInstructions("webhook.url", reason)


class AddressRefused(Exception):
    """The webhook host resolves to an address callvault may not connect to, or is no name
    a resolver can look up. Deliberately not an ``OSError``: aiohttp would wrap that into a
    retryable connection error."""


def not_a_name(host: str) -> AddressRefused:
    """The refusal of a host that getaddrinfo raised ``UnicodeError`` for: it encodes the
    host to IDNA first, and no retry will ever resolve one that has no such form."""
    return AddressRefused(f"refused: {host} is not a valid DNS name")


class CheckingResolver(aiohttp.ThreadedResolver):
    """aiohttp's resolver (``loop.getaddrinfo``) refusing private addresses: the addresses a
    connection is about to use are checked, not an earlier lookup's."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            results = await super().resolve(host, port, family)
        except UnicodeError:
            raise not_a_name(host) from None
        check_addresses(host, [result["host"] for result in results])
        return results


def check_addresses(host: str, addresses: list[str]) -> None:
    """``AddressRefused`` when any of the addresses ``host`` resolved to is refused."""
    for address in addresses:
        reason = refused_address(address)  # a zone id ("%eth0") included: it is refused
        if reason is not None:
            raise AddressRefused(f"refused: {host} resolves to a {reason} address")


async def check_host(url: str) -> None:
    """Resolve the URL's host now and refuse it (``AddressRefused``) when any address is
    refused, or when it is no name a resolver can look up. IP literals are checked here
    too: aiohttp connects to those without its resolver."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError:
        raise not_a_name(host) from None
    check_addresses(host, [str(info[4][0]) for info in infos])
