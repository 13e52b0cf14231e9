"""Where webhooks may go (gateway.egress, no I/O): the addresses refused unless
``allow_private`` (every class Python flags, and the IPv6 ranges that tunnel or translate to
IPv4, which it does not), zone ids, and the URL check a PUT and every delivery make (https
only unless ``allow_http``; an address written in the URL, in any of its spellings)."""

from __future__ import annotations

import pytest

from gateway.egress import (
    AddressRefused,
    CheckingResolver,
    check_addresses,
    check_host,
    check_webhook_url,
    refused_address,
    url_refusal,
)
from gateway.settings import WebhookSettings
from storage.errors import InvalidInstructions

STRICT = WebhookSettings()
HTTP_ONLY = WebhookSettings(allow_http=True)
PRIVATE_ONLY = WebhookSettings(allow_private=True)
OPEN = WebhookSettings(allow_http=True, allow_private=True)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "private"),  # the cloud metadata service; also link-local
        ("fe80::1", "private"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "private"),  # noqa: S104 - an address to refuse, not one to bind
        ("::", "private"),
        ("240.0.0.1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("100.64.0.1", "not public"),  # carrier-grade NAT
    ],
)
def test_private_and_special_addresses_are_refused(address: str, reason: str) -> None:
    # The first matching kind is reported; Python counts many special ranges as private.
    assert refused_address(address) == reason


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        # 6to4: the whole range, whatever IPv4 address it embeds (public 8.8.8.8, loopback).
        ("2002:808:808::1", "6to4"),
        ("2002:7f00:1::1", "6to4"),
        ("2002:a00:1::", "6to4"),
        ("192.88.99.1", "6to4 relay"),
        # NAT64, the well-known prefix (RFC 6052) and the local-use one (RFC 8215).
        ("64:ff9b::808:808", "NAT64"),
        ("64:ff9b::7f00:1", "NAT64"),
        ("64:ff9b::a9fe:a9fe", "NAT64"),  # 169.254.169.254 through a translator
        ("64:ff9b:1::1", "NAT64 local-use"),
        ("64:ff9b:1:ffff::a00:1", "NAT64 local-use"),
        # Teredo: server and (obfuscated) client IPv4 addresses inside.
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("2001::1", "Teredo"),
        # Deprecated IPv4-compatible addresses (::a.b.c.d), public or not.
        ("::8.8.8.8", "IPv4-compatible"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("::10.0.0.1", "IPv4-compatible"),
        # Any address with a zone id: the interface picks the destination.
        ("fe80::1%eth0", "zone-scoped"),
        ("fe80::1%1", "zone-scoped"),
        ("2606:4700:4700::1111%eth0", "zone-scoped"),
        # What Python does not count as global, besides the classes above.
        ("198.18.0.1", "private"),  # benchmarking
        ("192.0.2.1", "private"),  # documentation (TEST-NET-1)
        ("203.0.113.9", "private"),  # documentation (TEST-NET-3)
        ("2001:db8::1", "private"),  # documentation
        ("100.127.255.254", "not public"),  # shared address space, its last address
    ],
)
def test_tunnelled_translated_scoped_and_non_global_addresses_are_refused(
    address: str, reason: str
) -> None:
    assert refused_address(address) == reason


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",  # IPv4-mapped: judged as the IPv4 address it is
        "2003::1",  # just past 6to4
        "2001:4860:4860::8888",  # in 2001::/16, past Teredo's /32 (and IANA's /23)
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refused_address(address) is None


# --- URLs -----------------------------------------------------------------------------------


def test_http_is_refused_unless_allowed() -> None:
    url = "http://hooks.example.com/in"
    assert url_refusal(url, STRICT) is not None
    assert url_refusal(url, PRIVATE_ONLY) is not None  # allow_private is not allow_http
    assert url_refusal(url, HTTP_ONLY) is None
    assert url_refusal("HTTPS://hooks.example.com/in", STRICT) is None
    with pytest.raises(InvalidInstructions) as refused:
        check_webhook_url(url, STRICT)
    assert refused.value.field == "webhook.url"
    assert "https://" in str(refused.value)
    check_webhook_url(url, HTTP_ONLY)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
        "https://10.0.0.5:8443/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[2002:7f00:1::1]/hook",  # 6to4
        "https://[64:ff9b::7f00:1]/hook",  # NAT64
        "https://[64:ff9b:1::a00:1]/hook",  # NAT64 local-use
        "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",  # Teredo
        "https://[::7f00:1]/hook",  # IPv4-compatible
        "https://[fe80::1%25eth0]/hook",  # a zone id, percent-encoded as URLs write it
        "https://[2606:4700:4700::1111%25eth0]/hook",  # a zone id on a public address
        "https://[::ffff:127.0.0.1]/hook",
        "https://2130706433/hook",  # 127.0.0.1 as one number
        "https://0x7f.1/hook",  # 127.0.0.1 in hex, with the middle parts left out
        "https://017700000001/hook",  # 127.0.0.1 in octal
        "https://127.1/hook",
        "https://100.64.0.1/hook",
    ],
)
def test_an_address_written_in_the_url_is_refused_unless_private_is_allowed(url: str) -> None:
    reason = url_refusal(url, STRICT)
    assert reason is not None and reason.startswith("names a ")
    with pytest.raises(InvalidInstructions) as refused:
        check_webhook_url(url, STRICT)
    assert refused.value.field == "webhook.url"
    assert url not in str(refused.value)  # the URL is never quoted back
    assert url_refusal(url, PRIVATE_ONLY) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/in",  # a name: resolved, and checked, when delivering
        "https://8.8.8.8/hook",
        "https://[2606:4700:4700::1111]:8443/hook",
        "https://1.example/hook",  # a name that starts like a number
    ],
)
def test_names_and_public_addresses_pass(url: str) -> None:
    assert url_refusal(url, STRICT) is None
    check_webhook_url(url, STRICT)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("fe80::1%eth0", "zone-scoped"),  # getaddrinfo answers link-local names with a zone
        ("2002:a00:1::1", "6to4"),
        ("64:ff9b::a00:1", "NAT64"),
        ("2001::a00:1", "Teredo"),
        ("::ffff:169.254.169.254", "private"),
    ],
)
def test_a_resolved_address_of_a_new_class_refuses_the_host(address: str, reason: str) -> None:
    # What the pre-connection check and the connection's own resolver run on each answer.
    with pytest.raises(AddressRefused) as refused:
        check_addresses("hooks.example.com", ["93.184.216.34", address])
    assert str(refused.value) == f"refused: hooks.example.com resolves to a {reason} address"
    check_addresses("hooks.example.com", ["93.184.216.34", "2606:4700:4700::1111"])


NOT_NAMES = ["a..b", f"{'a' * 64}.example", ".example.com"]


@pytest.mark.parametrize("host", NOT_NAMES)
def test_a_stored_host_that_is_no_dns_name_is_refused_at_every_setting(host: str) -> None:
    # A PUT refuses it (storage.instructions); one stored by an older version is refused
    # for good at delivery, before any lookup, whatever the settings allow.
    for settings in (STRICT, OPEN):
        reason = url_refusal(f"https://{host}/hook", settings)
        assert reason is not None and "not a valid DNS name" in reason


@pytest.mark.parametrize("host", NOT_NAMES)
async def test_a_lookup_of_a_host_that_is_no_dns_name_is_a_refusal(host: str) -> None:
    # getaddrinfo raises UnicodeError (IDNA) for these, not a gaierror: a refusal, never a
    # traceback nor a retry. No name is sent anywhere: the encoding fails first.
    with pytest.raises(AddressRefused) as refused:
        await check_host(f"https://{host}/hook")
    assert str(refused.value) == f"refused: {host} is not a valid DNS name"
    resolver = CheckingResolver()
    try:
        with pytest.raises(AddressRefused):
            await resolver.resolve(host, 443)
    finally:
        await resolver.close()
