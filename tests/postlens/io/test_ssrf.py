"""The SSRF guard: which resolved addresses an image fetch may connect to."""

from __future__ import annotations

import ipaddress
import re

import pytest

from postlens.io.ssrf import AddressPolicy, BlockedAddress, GuardedResolver, refusal_reason
from tests.support.fixed_dns import FixedResolver

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "10.255.255.254",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "0.0.0.0",
    "100.64.0.1",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:8.8.8.8",  # IPv4-mapped: never in DNS
    "2002:7f00:1::1",
    "2002:a00:1::1",
    "2002:808:808::1",  # 6to4 (embedding 127.0.0.1, 10.0.0.1, 8.8.8.8)
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1 (obfuscated)
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
]
ALLOWED = ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_embedded_address_is_named_in_the_reason() -> None:
    reason = refusal_reason(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert reason is not None and "127.0.0.1" in reason and "loopback" in reason


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://x/",
        "http://127.0.0.1/a.png",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http:///no-host",
    ],
)
def test_urls_refused_before_any_lookup(url: str) -> None:
    with pytest.raises(BlockedAddress):
        AddressPolicy.from_allowlist([]).check_url(url)


def test_host_names_are_left_to_the_resolver() -> None:
    AddressPolicy.from_allowlist([]).check_url("https://images.example.com/a.png")


def test_allowlist_takes_cidrs_and_host_names() -> None:
    policy = AddressPolicy.from_allowlist(["127.0.0.0/8", "images.internal", "10.1.2.3"])
    policy.check_address("anything", ipaddress.ip_address("127.0.0.2"))
    policy.check_address("images.internal", ipaddress.ip_address("192.168.0.9"))
    policy.check_address("x", ipaddress.ip_address("10.1.2.3"))
    with pytest.raises(BlockedAddress):
        policy.check_address("x", ipaddress.ip_address("10.1.2.4"))


async def test_resolver_refuses_a_name_that_resolves_to_a_private_address() -> None:
    resolver = GuardedResolver(AddressPolicy.from_allowlist([]), FixedResolver("10.0.0.5"))
    with pytest.raises(BlockedAddress, match=re.escape("10.0.0.5")):
        await resolver.resolve("internal.example", 80)


async def test_resolver_keeps_only_the_public_addresses_of_a_mixed_answer() -> None:
    resolver = GuardedResolver(AddressPolicy.from_allowlist([]), FixedResolver("127.0.0.1", "93.184.215.14"))
    assert [result["host"] for result in await resolver.resolve("mixed.example", 80)] == ["93.184.215.14"]


async def test_resolver_lets_allowlisted_hosts_through() -> None:
    resolver = GuardedResolver(AddressPolicy.from_allowlist(["images.internal"]), FixedResolver("10.0.0.5"))
    assert [result["host"] for result in await resolver.resolve("images.internal", 80)] == ["10.0.0.5"]
